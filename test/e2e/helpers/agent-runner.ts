// Runs the real Agent (proxy with iptables interception) inside a network namespace for the proxy e2e test.
// Usage: node agent-runner.ts CONFIG.yaml OBJECTS.json [REASSERT_MS]. The cluster model is fed from OBJECTS.json
// (the same objects are written as manifests into cluster.manifestsDir by the test). Prints one line `READY` once
// the proxy is ready, with JSON: listener port per `ns/svc:port/PROTO`, sync duration, RSS. SIGTERM stops it (rules
// removed) and exits 0. Also used by bench/proxy/run.ts.
// AGENT_RUNNER_TUNNEL_STANDIN=1 (bench/proxy's flat phase): the agent gets a tunnel dialer that refuses every dial and
// counts them, so that endpoints of other nodes inside proxy.directCIDRs take the flat path (proxy/flat.ts: that path
// exists only when a tunnel is there to fall back to); `STOPPED {"tunnelDials":N}` on stdout at SIGTERM says whether
// any dial fell back.
import { readFileSync } from 'node:fs';
import { loadAgentConfig } from '@edgemesh/common/config';
import { createLogger } from '@edgemesh/common/log';
import { handleSignals } from '@edgemesh/common/process';
import { Agent } from '../../../packages/agent/src/main.ts';
import type { RawObject, ResourceKind } from '../../../packages/agent/src/cluster/types.ts';
import { DialError, type Dialer } from '../../../packages/agent/src/proxy/dialer.ts';

const [cfgFile, objFile, reassert] = process.argv.slice(2);
const cfg = loadAgentConfig({ file: cfgFile, env: {} });
const log = createLogger(cfg.log.level, 'agent-runner', { node: cfg.nodeName });
const agent = new Agent(cfg, log);
if (reassert) agent.proxyTuning.reassertMs = Number(reassert);
const objects = JSON.parse(readFileSync(objFile, 'utf8')) as RawObject[];
for (const kind of ['Node', 'Service', 'EndpointSlice', 'DestinationRule'] as ResourceKind[]) agent.model.replace(kind, objects.filter((o) => o.kind === kind));
agent.model.flush();
let tunnelDials = 0;
if (process.env.AGENT_RUNNER_TUNNEL_STANDIN === '1') {
  const refuse = (): Promise<never> => {
    tunnelDials++;
    return Promise.reject(new DialError('unreachable', 'tunnel stand-in: no tunnel in this run'));
  };
  agent.dialers.tunnel = { dialTcp: refuse, openUdp: refuse } satisfies Dialer;
}
handleSignals(log, async () => {
  await agent.stop();
  process.stdout.write(`STOPPED ${JSON.stringify({ tunnelDials })}\n`);
});
await agent.start();
const deadline = Date.now() + 10_000;
while (!agent.proxy?.ready()) {
  if (Date.now() > deadline) throw new Error('proxy not ready after 10 s');
  await new Promise((r) => setTimeout(r, 50));
}
const ports: Record<string, number> = {};
for (const [key, st] of agent.proxy.status()) for (const l of st.listeners) ports[`${key}:${l.port}/${l.protocol}`] = l.proxyPort;
const sync = (await agent.registry.getSingleMetric('edgemesh_intercept_sync_duration_seconds')?.get())?.values ?? [];
const syncSum = sync.find((v) => (v as { metricName?: string }).metricName?.endsWith('_sum'))?.value ?? 0;
const syncCount = sync.find((v) => (v as { metricName?: string }).metricName?.endsWith('_count'))?.value ?? 0;
const services = Object.keys(ports).length <= 50 ? agent.status().services : undefined;
process.stdout.write(`READY ${JSON.stringify({ services, ports, syncs: syncCount, syncMsAvg: syncCount ? (syncSum / syncCount) * 1000 : null, rssBytes: process.memoryUsage().rss })}\n`);
