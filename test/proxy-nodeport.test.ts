// In-process proxy on loopback with proxy.nodePorts (intercept: none, a recording interceptor): the interception
// rules for nodePorts, externalIPs and load-balancer IPs, the listener of its own for externalTrafficPolicy Local
// (strict node: a reset when this node has no endpoint), persisted external listener ports, /status.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { silentLogger } from '@edgemesh/common/log';
import { ClusterModel } from '../packages/agent/src/cluster/model.ts';
import type { RawObject } from '../packages/agent/src/cluster/types.ts';
import { ServiceIPs } from '../packages/agent/src/dns/serviceips.ts';
import { NODE_LOCAL, type InterceptRule } from '../packages/agent/src/intercept/rules.ts';
import { DirectDialer } from '../packages/agent/src/proxy/direct.ts';
import { ListenerPorts } from '../packages/agent/src/proxy/ports.ts';
import { Proxier } from '../packages/agent/src/proxy/proxier.ts';
import { node, service, slice } from './lib/proxyfixtures.ts';

const dirs: string[] = [];
const servers: Server[] = [];
after(() => {
  for (const s of servers) s.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A TCP server on `host` that writes its name and closes. */
async function named(host: string, name: string): Promise<number> {
  const server = createServer((s) => { s.on('error', () => {}); s.end(name); });
  await new Promise<void>((r) => server.listen(0, host, () => r()));
  servers.push(server);
  return (server.address() as { port: number }).port;
}

function call(port: number): Promise<{ data: string; error?: string }> {
  return new Promise((resolve) => {
    let data = '';
    const s: Socket = connect({ host: '127.0.0.1', port });
    s.setTimeout(5000, () => s.destroy(Object.assign(new Error('no answer in 5 s'), { code: 'TIMEOUT' })));
    s.on('data', (d) => { data += d; });
    s.on('error', (e: NodeJS.ErrnoException) => resolve({ data, error: e.code }));
    s.on('end', () => resolve({ data }));
  });
}

interface Env { model: ClusterModel; proxier: Proxier; rules: () => readonly InterceptRule[]; ports: ListenerPorts }

async function setup(objects: RawObject[], opts: { nodePorts?: boolean; stateDir?: string } = {}): Promise<Env> {
  const model = new ClusterModel([]);
  const byKind = (k: string) => objects.filter((o) => o.kind === k);
  model.replace('Node', byKind('Node'));
  model.replace('Service', byKind('Service'));
  model.replace('EndpointSlice', byKind('EndpointSlice'));
  model.flush();
  const stateDir = opts.stateDir ?? mkdtempSync(join(tmpdir(), 'em-np-'));
  if (!opts.stateDir) dirs.push(stateDir);
  const serviceIPs = new ServiceIPs({ mode: 'clusterIP', fakeCIDR: '9.251.0.0/16', stateDir, log: silentLogger });
  serviceIPs.update(model.snapshot());
  const unsubscribe = model.subscribe((snap) => serviceIPs.update(snap));
  after(unsubscribe);
  let last: readonly InterceptRule[] = [];
  let gen = 0;
  const interceptor = { setDesired: (r: readonly InterceptRule[]) => { last = r; return ++gen; }, appliedFor: () => true, healthy: () => true };
  const ports = new ListenerPorts({ stateDir, log: silentLogger, writable: true });
  const proxier = new Proxier({
    log: silentLogger, registry: new Registry(), model, serviceIPs, dialers: { direct: new DirectDialer() }, interceptor, ports,
    thisNode: 'me', bindAddress: '127.0.0.1', routingDefault: 'cluster', dialTimeoutMs: 1000, nodePorts: opts.nodePorts ?? true,
  });
  await proxier.start();
  return { model, proxier, rules: () => last, ports };
}

const brief = (r: InterceptRule) => `${r.ip} ${r.protocol} ${r.port} -> ${r.toPort} (${r.comment})`;

test('externalTrafficPolicy Cluster: the nodePort, externalIPs and load-balancer IPs lead to the service port\'s own listener', async () => {
  const far = await named('127.0.0.3', 'far');
  const objects = [
    node('me'), node('far'),
    service({ name: 'web', ip: '10.96.0.10', ports: [{ name: 'http', port: 80, targetPort: far, nodePort: 30080 }, { name: 'dns', port: 53, protocol: 'UDP', nodePort: 30053 }], spec: { type: 'LoadBalancer', externalIPs: ['192.0.2.7', '2001:db8::7'] } }),
    slice('web', [{ name: 'http', port: far }, { name: 'dns', port: 53, protocol: 'UDP' }], [{ ip: '127.0.0.3', node: 'far' }]),
  ];
  (objects[2] as { status?: unknown }).status = { loadBalancer: { ingress: [{ ip: '198.51.100.5' }, { ip: '198.51.100.6', ipMode: 'Proxy' }] } };
  const { proxier, rules } = await setup(objects);
  try {
    const tcp = proxier.listenerPort('default/web', 80)!;
    const udp = proxier.listenerPort('default/web', 53, 'UDP')!;
    assert.deepEqual(rules().map(brief).sort(), [
      `10.96.0.10 tcp 80 -> ${tcp} (default/web:80)`,
      `10.96.0.10 udp 53 -> ${udp} (default/web:53)`,
      `192.0.2.7 tcp 80 -> ${tcp} (default/web:80 externalIP)`,
      `192.0.2.7 udp 53 -> ${udp} (default/web:53 externalIP)`,
      `198.51.100.5 tcp 80 -> ${tcp} (default/web:80 loadBalancer)`,
      `198.51.100.5 udp 53 -> ${udp} (default/web:53 loadBalancer)`,
      `${NODE_LOCAL} tcp 30080 -> ${tcp} (default/web:80 nodePort)`,
      `${NODE_LOCAL} udp 30053 -> ${udp} (default/web:53 nodePort)`,
    ].sort());
    assert.equal(proxier.status().get('default/web')!.externalRouting, undefined, 'no listener of its own');
    assert.equal((await call(tcp)).data, 'far', 'the Service\'s routing (cluster) reaches the other node');
  } finally {
    await proxier.stop();
  }
});

test('externalTrafficPolicy Local: a listener of its own, strict node (reset without a local endpoint); the Service IP keeps its routing', async () => {
  const far = await named('127.0.0.3', 'far');
  const here = await named('127.0.0.2', 'here');
  const port = (p: number) => ({ name: 'http', port: 80, targetPort: p, nodePort: 30081 });
  const svc = (p: number, etp: 'Local' | 'Cluster') => service({ name: 'loc', ip: '10.96.0.11', ports: [port(p)], spec: { type: 'NodePort', externalTrafficPolicy: etp, externalIPs: ['192.0.2.8'] } });
  const env = await setup([node('me'), node('far'), svc(far, 'Local'), slice('loc', [{ name: 'http', port: far }], [{ ip: '127.0.0.3', node: 'far' }])]);
  const { proxier, model, rules } = env;
  try {
    const own = proxier.listenerPort('default/loc', 80)!;
    const st = proxier.status().get('default/loc')!;
    assert.equal(st.externalRouting, 'strict-node');
    assert.equal(st.routing, 'cluster', 'in-cluster callers keep the Service\'s routing');
    const ext = st.listeners.find((l) => l.external)!.proxyPort;
    assert.notEqual(ext, own);
    assert.deepEqual(rules().map(brief).sort(), [
      `10.96.0.11 tcp 80 -> ${own} (default/loc:80)`,
      `192.0.2.8 tcp 80 -> ${ext} (default/loc:80 externalIP)`,
      `${NODE_LOCAL} tcp 30081 -> ${ext} (default/loc:80 nodePort)`,
    ].sort());
    assert.equal((await call(ext)).error, 'ECONNRESET', 'no endpoint on this node: reset at once');
    assert.equal((await call(own)).data, 'far', 'the Service IP still reaches the other node');
    assert.equal(env.ports.get('default/loc:80/TCP/external'), ext, 'the external listener\'s port is persisted');

    // An endpoint on this node: external traffic stays here.
    model.replace('EndpointSlice', [slice('loc', [{ name: 'http', port: here }], [{ ip: '127.0.0.3', node: 'far' }, { ip: '127.0.0.2', node: 'me' }])]);
    model.replace('Service', [svc(here, 'Local')]);
    model.flush();
    await proxier.settle();
    for (let i = 0; i < 4; i++) assert.equal((await call(ext)).data, 'here');

    // Back to Cluster: the external listener goes, the external rules lead to the service port's listener.
    model.replace('Service', [svc(here, 'Cluster')]);
    model.flush();
    await proxier.settle();
    assert.equal(proxier.status().get('default/loc')!.externalRouting, undefined);
    assert.deepEqual(rules().filter((r) => r.ip !== '10.96.0.11').map((r) => r.toPort), [own, own]);
    assert.equal(env.ports.get('default/loc:80/TCP/external'), undefined);
  } finally {
    await proxier.stop();
  }
});

test('a restarted proxy binds the external listener on its persisted port; proxy.nodePorts off: no external rules', async () => {
  const here = await named('127.0.0.2', 'here');
  const stateDir = mkdtempSync(join(tmpdir(), 'em-np-'));
  dirs.push(stateDir);
  const objects = [
    node('me'),
    service({ name: 'p', ip: '10.96.0.12', ports: [{ port: 80, targetPort: here, nodePort: 30082 }], spec: { type: 'NodePort', externalTrafficPolicy: 'Local' } }),
    slice('p', [{ port: here }], [{ ip: '127.0.0.2', node: 'me' }]),
  ];
  const first = await setup(objects, { stateDir });
  const ext = first.proxier.status().get('default/p')!.listeners.find((l) => l.external)!.proxyPort;
  await first.proxier.stop();
  const second = await setup(objects, { stateDir });
  try {
    assert.equal(second.proxier.status().get('default/p')!.listeners.find((l) => l.external)!.proxyPort, ext);
    assert.equal((await call(ext)).data, 'here');
  } finally {
    await second.proxier.stop();
  }
  const off = await setup(objects, { nodePorts: false });
  try {
    assert.deepEqual(off.rules().map((r) => r.ip), ['10.96.0.12'], 'only the Service IP');
    assert.equal(off.proxier.status().get('default/p')!.listeners.length, 1, 'no external listener');
  } finally {
    await off.proxier.stop();
  }
});
