// The agent's DNS (same code path as the agent: startDns with an agent config, metrics on) serving a synthetic cluster
// of N Services, for bench/dns/run.ts. Prints "READY <port>" when listening. Args: PORT UPSTREAM_PORT SERVICES.
import { loadAgentConfig } from '@edgemesh/common/config';
import { createRegistry } from '@edgemesh/common/admin';
import { silentLogger } from '@edgemesh/common/log';
import { ClusterModel } from '../../packages/agent/src/cluster/model.ts';
import { ServiceIPs } from '../../packages/agent/src/dns/serviceips.ts';
import { startDns } from '../../packages/agent/src/dns/index.ts';
import { benchService } from './names.ts';

const [port, upstreamPort, count] = process.argv.slice(2).map(Number);
const cfg = loadAgentConfig({ text: `nodeName: bench\ndns:\n  listen: 127.0.0.1:${port}\n  upstream: ["127.0.0.1:${upstreamPort}"]\n` });
const model = new ClusterModel([]);
model.replace('Service', Array.from({ length: count }, (_, i) => {
  const s = benchService(i);
  return { kind: 'Service', metadata: { name: s.name, namespace: s.namespace }, spec: { clusterIP: s.ip, ports: [{ name: 'http', port: 80 }] } };
}));
model.flush();
const ips = new ServiceIPs({ mode: 'clusterIP', fakeCIDR: cfg.proxy.fakeCIDR, stateDir: '/nonexistent', log: silentLogger });
ips.update(model.snapshot());
const dns = await startDns({ cfg, log: silentLogger, registry: createRegistry('bench_'), snapshot: () => model.snapshot(), ips });
process.stdout.write(`READY ${dns.address.port}\n`);
process.on('SIGTERM', () => void dns.stop().then(() => process.exit(0)));
