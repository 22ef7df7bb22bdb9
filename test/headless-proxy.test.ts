// In-process on loopback (intercept: none): proxy.directCIDRs dials another node's endpoint directly (no tunnel
// stream), and a headless Service's far endpoints get mesh IPs whose listeners reach exactly their endpoint, TCP and
// UDP, through a tunnel double that plays the far agent (its target check included).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect, type Server } from 'node:net';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { silentLogger } from '@edgemesh/common/log';
import { ClusterModel } from '../packages/agent/src/cluster/model.ts';
import type { RawObject } from '../packages/agent/src/cluster/types.ts';
import { ServiceIPs } from '../packages/agent/src/dns/serviceips.ts';
import { DirectDialer } from '../packages/agent/src/proxy/direct.ts';
import { Proxier } from '../packages/agent/src/proxy/proxier.ts';
import { ListenerPorts } from '../packages/agent/src/proxy/ports.ts';
import { DialError, type DialTarget, type Dialer } from '../packages/agent/src/proxy/dialer.ts';
import { checkTarget } from '../packages/agent/src/tunnel/target.ts';
import { node, service, slice } from './lib/proxyfixtures.ts';

const GROUP = 'apps.kubeedge.io/belonging-to';
const closers: (() => void)[] = [];
const dirs: string[] = [];
after(() => {
  for (const c of closers) c();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A TCP server on `host:port` that writes its name and ends after the client ends (port 0: any). */
async function nameServer(host: string, name: string, port = 0): Promise<number> {
  const server: Server = createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    s.write(name);
    s.on('data', () => {});
    s.on('end', () => s.end());
  });
  await new Promise<void>((r) => server.listen(port, host, () => r()));
  closers.push(() => server.close());
  return (server.address() as { port: number }).port;
}

/** A UDP server on `host:port` answering `<name>:<datagram>`. */
async function udpNamed(host: string, name: string, port = 0): Promise<number> {
  const s: UdpSocket = createSocket('udp4');
  s.on('message', (m, r) => s.send(Buffer.concat([Buffer.from(`${name}:`), m]), r.port, r.address));
  await new Promise<void>((r) => s.bind(port, host, () => r()));
  closers.push(() => s.close());
  return s.address().port;
}

function get(port: number): Promise<{ data: string; error?: string }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const s = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    s.setTimeout(5000, () => s.destroy(Object.assign(new Error('no progress in 5 s'), { code: 'TIMEOUT' })));
    s.on('connect', () => s.end());
    s.on('data', (d) => chunks.push(d));
    s.on('error', (e: NodeJS.ErrnoException) => resolve({ data: Buffer.concat(chunks).toString(), error: e.code }));
    s.on('end', () => resolve({ data: Buffer.concat(chunks).toString() }));
  });
}

async function udpAsk(port: number, msg: string): Promise<string> {
  const s = createSocket('udp4');
  try {
    await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
    const reply = new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no UDP reply in 5 s')), 5000);
      s.once('message', (m) => { clearTimeout(t); resolve(m.toString()); });
    });
    s.send(msg, port, '127.0.0.1');
    return await reply;
  } finally {
    s.close();
  }
}

/**
 * A tunnel double that plays the far agent: it admits only what the real serving side admits (tunnel/target.ts, on
 * the far agent's snapshot — the same model here) and then dials the endpoint itself. Counts streams.
 */
function farTunnel(model: ClusterModel): Dialer & { streams: DialTarget[] } {
  const direct = new DirectDialer();
  const streams: DialTarget[] = [];
  const admit = (t: DialTarget) => {
    streams.push(t);
    const d = checkTarget(model.snapshot(), t);
    if (!d.ok) throw new DialError('forbidden', d.reason);
  };
  return {
    streams,
    dialTcp: async (t, signal) => { admit(t); return direct.dialTcp(t, signal); },
    openUdp: async (t, signal) => { admit(t); return direct.openUdp(t, signal); },
  };
}

async function setup(objects: RawObject[], o: { directCIDRs?: string[]; stateDir?: string; mode?: 'clusterIP' | 'fake'; successor?: boolean } = {}) {
  const model = new ClusterModel([GROUP]);
  const registry = new Registry();
  const byKind = (k: string) => objects.filter((x) => x.kind === k);
  model.replace('Node', byKind('Node'));
  model.replace('Service', byKind('Service'));
  model.replace('EndpointSlice', byKind('EndpointSlice'));
  model.flush();
  const stateDir = o.stateDir ?? mkdtempSync(join(tmpdir(), 'em-headless-'));
  if (!o.stateDir) dirs.push(stateDir);
  const serviceIPs = new ServiceIPs({ mode: o.mode ?? 'fake', fakeCIDR: '9.251.0.0/16', stateDir, log: silentLogger, meshEndpoints: { thisNode: 'me', directCIDRs: o.directCIDRs ?? [] } });
  serviceIPs.update(model.snapshot());
  const unsubscribe = model.subscribe((snap) => serviceIPs.update(snap));
  after(unsubscribe);
  const tunnel = farTunnel(model);
  // A successor taking over reads the running agent's port table and binds the same ports alongside it (SO_REUSEPORT).
  const ports = new ListenerPorts({ stateDir, log: silentLogger, writable: !o.successor });
  const proxier = new Proxier({
    log: silentLogger, registry, model, serviceIPs, dialers: { direct: new DirectDialer(), tunnel }, ports, sharePorts: o.successor,
    thisNode: 'me', bindAddress: '127.0.0.1', routingDefault: 'cluster', dialTimeoutMs: 2000, directCIDRs: o.directCIDRs,
  });
  await proxier.start();
  return { model, proxier, registry, serviceIPs, tunnel, stateDir };
}

test('proxy.directCIDRs: an endpoint on another node inside the range is dialed directly (no tunnel stream opened)', async () => {
  const port = await nameServer('127.0.0.21', 'far-pod');
  const objects = [
    node('me'), node('far'),
    service({ name: 'web', ip: '10.96.0.21', ports: [{ port: 80, targetPort: port }] }),
    slice('web', [{ port }], [{ ip: '127.0.0.21', node: 'far' }]),
  ];
  const flat = await setup(objects, { directCIDRs: ['127.0.0.0/8'] });
  try {
    for (let i = 0; i < 3; i++) assert.deepEqual(await get(flat.proxier.listenerPort('default/web', 80)!), { data: 'far-pod' });
    assert.equal(flat.tunnel.streams.length, 0, 'no tunnel stream');
    assert.deepEqual(flat.proxier.flatStatus(), { directCIDRs: ['127.0.0.0/8'], notFlat: [] });
    assert.match(await flat.registry.getSingleMetricAsString('edgemesh_proxy_connections_total'), /service="default\/web",protocol="tcp",src_group="none",dst_group="none",tier="cluster"} 3/);
  } finally {
    await flat.proxier.stop();
  }
  // The same cluster without the range: through the tunnel.
  const tunneled = await setup(objects);
  try {
    assert.deepEqual(await get(tunneled.proxier.listenerPort('default/web', 80)!), { data: 'far-pod' });
    assert.equal(tunneled.tunnel.streams.length, 1);
    assert.equal(tunneled.proxier.flatStatus(), undefined);
  } finally {
    await tunneled.proxier.stop();
  }
});

const HEADLESS_NAME = 'db';

async function headlessCluster(): Promise<{ objects: RawObject[]; port: number }> {
  // Three pods on different loopback addresses, the same port (the endpoints' port), each answering its own name.
  const port = await nameServer('127.0.0.31', 'db-0');
  await nameServer('127.0.0.32', 'db-1', port);
  await nameServer('127.0.0.33', 'db-2', port);
  for (const [ip, name] of [['127.0.0.31', 'db-0'], ['127.0.0.32', 'db-1'], ['127.0.0.33', 'db-2']]) await udpNamed(ip, name, port);
  const objects = [
    node('me', { [GROUP]: 'g1' }), node('far', { [GROUP]: 'g2' }),
    service({ name: HEADLESS_NAME, ip: 'None', ports: [{ name: 'tcp', port }, { name: 'udp', port, protocol: 'UDP' }] }),
    slice(HEADLESS_NAME, [{ name: 'tcp', port }, { name: 'udp', port, protocol: 'UDP' }], [
      { ip: '127.0.0.31', node: 'far', hostname: 'db-0' },
      { ip: '127.0.0.32', node: 'far', hostname: 'db-1' },
      { ip: '127.0.0.33', node: 'me', hostname: 'db-2' },
    ]),
  ];
  return { objects, port };
}

test('headless: each far endpoint\'s mesh IP reaches exactly that endpoint (TCP and UDP), through the far agent\'s target check', async () => {
  const { objects, port } = await headlessCluster();
  const { proxier, registry, serviceIPs, tunnel, model } = await setup(objects);
  try {
    const key = `default/${HEADLESS_NAME}`;
    assert.ok(serviceIPs.endpointIP(key, 'db-0') && serviceIPs.endpointIP(key, 'db-1'));
    assert.equal(serviceIPs.endpointIP(key, 'db-2'), undefined, 'the pod on this node keeps its own IP');
    for (const name of ['db-0', 'db-1']) {
      const lp = proxier.meshListenerPort(key, name, port)!;
      assert.ok(lp > 0, `${name} has a TCP listener`);
      for (let i = 0; i < 5; i++) assert.deepEqual(await get(lp), { data: name }, 'exactly that endpoint, every time');
      const up = proxier.meshListenerPort(key, name, port, 'UDP')!;
      assert.equal(await udpAsk(up, 'ping'), `${name}:ping`);
    }
    assert.equal(proxier.meshListenerPort(key, 'db-2', port), undefined);
    // Every stream went to the endpoint's own address, and the far agent's check admitted it.
    assert.deepEqual(new Set(tunnel.streams.map((t) => `${t.protocol} ${t.ip}:${t.port} ${t.serviceKey} ${t.nodeName}`)), new Set([
      `tcp 127.0.0.31:${port} ${key} far`, `udp 127.0.0.31:${port} ${key} far`, `tcp 127.0.0.32:${port} ${key} far`, `udp 127.0.0.32:${port} ${key} far`,
    ]));
    // Rules: each mesh IP x each endpoint port -> its listener; readiness counts these listeners.
    const rules = proxier.rules().filter((r) => r.comment.startsWith(`${key}/`));
    const ip0 = serviceIPs.endpointIP(key, 'db-0')!.ip;
    assert.deepEqual(rules.filter((r) => r.ip === ip0).map((r) => `${r.protocol}/${r.port}->${r.toPort}`).sort(),
      [`tcp/${port}->${proxier.meshListenerPort(key, 'db-0', port)}`, `udp/${port}->${proxier.meshListenerPort(key, 'db-0', port, 'UDP')}`].sort());
    assert.equal(rules.length, 4);
    assert.ok(proxier.ready());
    const m = await registry.getSingleMetricAsString('edgemesh_proxy_endpoint_connections_total');
    assert.match(m, new RegExp(`service="${key}",endpoint="db-0",protocol="tcp"} 5`));
    assert.match(m, new RegExp(`service="${key}",endpoint="db-1",protocol="udp"} 1`));
    assert.deepEqual(proxier.meshStatus().map((e) => [e.name, e.ip, e.address, e.node, e.listeners.length]).sort(),
      [['db-0', ip0, '127.0.0.31', 'far', 2], ['db-1', serviceIPs.endpointIP(key, 'db-1')!.ip, '127.0.0.32', 'far', 2]]);

    // The Service's own strictness applies (and nothing else): strict group, the far node in another group -> reset.
    model.upsert('Service', service({ name: HEADLESS_NAME, ip: 'None', ports: [{ name: 'tcp', port }, { name: 'udp', port, protocol: 'UDP' }], annotations: { 'apps.kubeedge.io/service-topology': 'range-nodegroup' } }));
    model.flush();
    await proxier.settle();
    assert.equal((await get(proxier.meshListenerPort(key, 'db-0', port)!)).error, 'ECONNRESET');
    model.upsert('Node', node('far', { [GROUP]: 'g1' }));
    model.flush();
    await proxier.settle();
    assert.deepEqual(await get(proxier.meshListenerPort(key, 'db-0', port)!), { data: 'db-0' });

    // db-1 leaves: its listeners close, its metric series go; db-0 is untouched.
    model.upsert('EndpointSlice', slice(HEADLESS_NAME, [{ name: 'tcp', port }, { name: 'udp', port, protocol: 'UDP' }], [
      { ip: '127.0.0.31', node: 'far', hostname: 'db-0' }, { ip: '127.0.0.33', node: 'me', hostname: 'db-2' },
    ]));
    model.flush();
    await proxier.settle();
    await new Promise((r) => setImmediate(r));
    assert.equal(proxier.meshListenerPort(key, 'db-1', port), undefined);
    const after1 = await registry.getSingleMetricAsString('edgemesh_proxy_endpoint_connections_total');
    assert.doesNotMatch(after1, /endpoint="db-1"/);
    assert.match(after1, /endpoint="db-0"/);
    assert.ok(proxier.ready());
  } finally {
    await proxier.stop();
  }
});

test('headless: mesh listener ports and mesh IPs are persisted in stateDir; a successor binds them alongside (SO_REUSEPORT), a restart binds the same ones', async () => {
  const { objects, port } = await headlessCluster();
  const stateDir = mkdtempSync(join(tmpdir(), 'em-headless-'));
  dirs.push(stateDir);
  const key = `default/${HEADLESS_NAME}`;
  const first = await setup(objects, { stateDir, mode: 'clusterIP' });
  const before = { ip: first.serviceIPs.endpointIP(key, 'db-0')!.ip, tcp: first.proxier.meshListenerPort(key, 'db-0', port), udp: first.proxier.meshListenerPort(key, 'db-0', port, 'UDP') };
  // A successor (takeover) binds the very same mesh listener ports while the first still holds them, and is ready.
  const successor = await setup(objects, { stateDir, mode: 'clusterIP', successor: true });
  try {
    assert.deepEqual({ ip: successor.serviceIPs.endpointIP(key, 'db-0')!.ip, tcp: successor.proxier.meshListenerPort(key, 'db-0', port), udp: successor.proxier.meshListenerPort(key, 'db-0', port, 'UDP') }, before);
    assert.ok(successor.proxier.ready());
  } finally {
    await successor.proxier.stop();
  }
  await first.proxier.stop();
  const second = await setup(objects, { stateDir, mode: 'clusterIP' });
  try {
    assert.deepEqual({ ip: second.serviceIPs.endpointIP(key, 'db-0')!.ip, tcp: second.proxier.meshListenerPort(key, 'db-0', port), udp: second.proxier.meshListenerPort(key, 'db-0', port, 'UDP') }, before);
    assert.deepEqual(await get(before.tcp!), { data: 'db-0' });
  } finally {
    await second.proxier.stop();
  }
});

test('headless: an endpoint inside proxy.directCIDRs gets no mesh IP (DNS answers its pod IP; nothing to intercept)', async () => {
  const { objects, port } = await headlessCluster();
  const { proxier, serviceIPs, tunnel } = await setup(objects, { directCIDRs: ['127.0.0.32/32'] });
  try {
    const key = `default/${HEADLESS_NAME}`;
    assert.ok(serviceIPs.endpointIP(key, 'db-0'));
    assert.equal(serviceIPs.endpointIP(key, 'db-1'), undefined);
    assert.equal(proxier.meshListenerPort(key, 'db-1', port), undefined);
    assert.deepEqual(await get(proxier.meshListenerPort(key, 'db-0', port)!), { data: 'db-0' });
    assert.equal(tunnel.streams.length, 1);
  } finally {
    await proxier.stop();
  }
});
