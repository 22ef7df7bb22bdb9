// In-process proxy on loopback (intercept: none): listeners, routing, retries, resets, UDP sessions, LB by header.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { createSocket } from 'node:dgram';
import { createHash, randomBytes } from 'node:crypto';
import { PassThrough } from 'node:stream';
import { execa } from 'execa';
import { tmpdir } from 'node:os';
import { Registry } from 'prom-client';
import { silentLogger } from '@edgemesh/common/log';
import { ClusterModel } from '../packages/agent/src/cluster/model.ts';
import { ServiceIPs } from '../packages/agent/src/dns/serviceips.ts';
import { DirectDialer } from '../packages/agent/src/proxy/direct.ts';
import { keepAliveWaiting, sweepKeepAlive } from '../packages/agent/src/proxy/keepalive.ts';
import { Proxier } from '../packages/agent/src/proxy/proxier.ts';
import { DialError, type Deadline, type DialTarget, type Dialer } from '../packages/agent/src/proxy/dialer.ts';
import { node, service, slice } from './lib/proxyfixtures.ts';
import { trackHandles } from './lib/handles.ts';

const GROUP = 'apps.kubeedge.io/belonging-to';
const servers: { close(): void }[] = [];
after(() => { for (const s of servers) s.close(); });

/** TCP server on 127.0.0.x: 'echo' echoes, 'name' writes its name then ends after the client ends. */
async function tcpServer(host: string, kind: 'echo' | 'name', name = host): Promise<{ port: number; server: Server }> {
  const server = createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    if (kind === 'echo') s.pipe(s);
    else { s.write(name); s.on('data', () => {}); s.on('end', () => s.end()); }
  });
  await new Promise<void>((r) => server.listen(0, host, () => r()));
  servers.push(server);
  return { port: (server.address() as { port: number }).port, server };
}

async function udpEcho(host: string): Promise<number> {
  const s = createSocket('udp4');
  s.on('message', (m, r) => s.send(m, r.port, r.address));
  await new Promise<void>((r) => s.bind(0, host, () => r()));
  servers.push(s);
  return s.address().port;
}

function request(port: number, payload: Buffer | string = ''): Promise<{ data: Buffer; error?: string }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const s: Socket = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    s.setTimeout(5000, () => s.destroy(Object.assign(new Error('no progress in 5 s'), { code: 'TIMEOUT' })));
    s.on('connect', () => { if (payload.length) s.write(payload); s.end(); });
    s.on('data', (d) => chunks.push(d));
    s.on('error', (e: NodeJS.ErrnoException) => resolve({ data: Buffer.concat(chunks), error: e.code }));
    s.on('end', () => resolve({ data: Buffer.concat(chunks) }));
  });
}

async function setup(objects: ReturnType<typeof service>[], extra: Partial<ConstructorParameters<typeof Proxier>[0]> = {}) {
  const model = new ClusterModel([GROUP]);
  const registry = new Registry();
  const byKind = (k: string) => objects.filter((o) => o.kind === k);
  model.replace('Node', byKind('Node'));
  model.replace('Service', byKind('Service'));
  model.replace('EndpointSlice', byKind('EndpointSlice'));
  model.flush();
  // The agent's Service-IP table (clusterIP mode), fed from the model before the proxy sees a change, as in main.ts.
  const serviceIPs = new ServiceIPs({ mode: 'clusterIP', fakeCIDR: '9.251.0.0/16', stateDir: tmpdir(), log: silentLogger });
  serviceIPs.update(model.snapshot());
  const unsubscribe = model.subscribe((snap) => serviceIPs.update(snap));
  after(unsubscribe);
  const proxier = new Proxier({
    log: silentLogger, registry, model, serviceIPs, dialers: { direct: new DirectDialer() },
    thisNode: 'me', bindAddress: '127.0.0.1', routingDefault: 'cluster', dialTimeoutMs: 1000, ...extra,
  });
  await proxier.start();
  return { model, proxier, registry };
}

test('TCP: 4 MB through the proxy arrives intact (sha256), half-close passes the echo back', async () => {
  const b = await tcpServer('127.0.0.2', 'echo');
  const { proxier, registry } = await setup([
    node('me'), service({ name: 'echo', ip: '10.96.0.1', ports: [{ port: 80, targetPort: b.port }] }),
    slice('echo', [{ port: b.port }], [{ ip: '127.0.0.2', node: 'me' }]),
  ]);
  try {
    const port = proxier.listenerPort('default/echo', 80)!;
    assert.ok(port > 0);
    const payload = randomBytes(4 << 20);
    const res = await request(port, payload);
    assert.equal(res.error, undefined);
    assert.equal(createHash('sha256').update(res.data).digest('hex'), createHash('sha256').update(payload).digest('hex'));
    const m = await registry.getSingleMetricAsString('edgemesh_proxy_connections_total');
    assert.match(m, /service="default\/echo",protocol="tcp",src_group="none",dst_group="none",tier="node"} 1/);
    const st = proxier.status().get('default/echo')!;
    assert.equal(st.routing, 'cluster');
    assert.deepEqual(st.tiers, { node: 1, group: 0, region: 0, cluster: 0 });
    assert.ok(proxier.ready());
  } finally {
    await proxier.stop();
  }
});

test('TCP: strict Service with no endpoint in the group is reset at once; prefer spills to another group', async () => {
  const other = await tcpServer('127.0.0.3', 'name', 'far');
  const { proxier, registry, model } = await setup([
    node('me', { [GROUP]: 'g1' }), node('far', { [GROUP]: 'g2' }),
    service({ name: 'strict', ip: '10.96.0.2', ports: [{ port: 80, targetPort: other.port }], annotations: { 'apps.kubeedge.io/service-topology': 'range-nodegroup' } }),
    slice('strict', [{ port: other.port }], [{ ip: '127.0.0.3', node: 'far' }]),
    service({ name: 'prefer', ip: '10.96.0.3', ports: [{ port: 80, targetPort: other.port }], spec: { trafficDistribution: 'PreferClose' } }),
    slice('prefer', [{ port: other.port }], [{ ip: '127.0.0.3', node: 'far' }]),
  ]);
  try {
    const r = await request(proxier.listenerPort('default/strict', 80)!, 'x');
    assert.equal(r.error, 'ECONNRESET'); // a reset, not a hang
    assert.equal(proxier.status().get('default/strict')!.routing, 'strict-group');
    const p = await request(proxier.listenerPort('default/prefer', 80)!, 'x');
    assert.equal(p.data.toString(), 'far');
    assert.match(await registry.getSingleMetricAsString('edgemesh_proxy_spillover_total'), /service="default\/prefer",from_tier="group",to_tier="cluster"} 1/);
    assert.match(await registry.getSingleMetricAsString('edgemesh_proxy_strict_empty_scope_services'), / 1$/m);
    assert.match(await registry.getSingleMetricAsString('edgemesh_proxy_refused_total'), /reason="strict_empty"} 1/);
    // Only a Node changes (far joins our group): the strict Service now has an endpoint in scope.
    model.upsert('Node', node('far', { [GROUP]: 'g1' }));
    model.flush();
    await proxier.settle();
    assert.equal((await request(proxier.listenerPort('default/strict', 80)!, 'x')).data.toString(), 'far');
    assert.match(await registry.getSingleMetricAsString('edgemesh_proxy_strict_empty_scope_services'), / 0$/m);
  } finally {
    await proxier.stop();
  }
});

test('TCP: a refusing endpoint is retried on another one, then ejected; endpoint changes are followed', async () => {
  const good = await tcpServer('127.0.0.4', 'name', 'good');
  const dead = await tcpServer('127.0.0.5', 'name', 'dead');
  dead.server.close(); // refuses from now on
  const port = good.port;
  const eps = [{ ip: '127.0.0.4', node: 'me' }, { ip: '127.0.0.5', node: 'me' }];
  // Same port number on both addresses: the dead one listens nowhere on that port.
  const { proxier, registry, model } = await setup([
    node('me'), service({ name: 'web', ip: '10.96.0.4', ports: [{ port: 80, targetPort: port }] }),
    slice('web', [{ port }], eps),
  ]);
  try {
    const lp = proxier.listenerPort('default/web', 80)!;
    for (let i = 0; i < 6; i++) assert.equal((await request(lp, 'x')).data.toString(), 'good');
    assert.match(await registry.getSingleMetricAsString('edgemesh_proxy_dial_failures_total'), /code="refused"} [1-9]/);
    assert.match(await registry.getSingleMetricAsString('edgemesh_proxy_ejections_total'), /service="default\/web"} 1/);
    // The good endpoint leaves: nothing left -> reset.
    model.upsert('EndpointSlice', slice('web', [{ port }], [{ ip: '127.0.0.5', node: 'me' }]));
    model.flush();
    await proxier.settle();
    assert.equal((await request(lp, 'x')).error, 'ECONNRESET');
    // The Service goes away: its listener closes.
    model.replace('Service', []);
    model.flush();
    await proxier.settle();
    assert.equal(proxier.listenerPort('default/web', 80), undefined);
  } finally {
    await proxier.stop();
  }
});

test('Maglev on an HTTP header from a DestinationRule: the same header value always reaches the same endpoint', async () => {
  const a = await tcpServer('127.0.0.6', 'name', 'A');
  const port = a.port;
  const b = createServer({ allowHalfOpen: true }, (s) => { s.write('B'); s.on('data', () => {}); s.on('end', () => s.end()); });
  await new Promise<void>((r) => b.listen(port, '127.0.0.7', () => r()));
  servers.push(b);
  const { proxier, model } = await setup([
    node('me'), service({ name: 'api', ip: '10.96.0.5', ports: [{ port: 80, targetPort: port }] }),
    slice('api', [{ port }], [{ ip: '127.0.0.6', node: 'me' }, { ip: '127.0.0.7', node: 'me' }]),
  ]);
  try {
    model.replace('DestinationRule', [{ kind: 'DestinationRule', metadata: { name: 'api', namespace: 'default' }, spec: { host: 'api.default.svc.cluster.local', trafficPolicy: { loadBalancer: { consistentHash: { httpHeaderName: 'X-User' } } } } }]);
    model.flush();
    await proxier.settle();
    assert.equal(proxier.status().get('default/api')!.policy, 'maglev(header x-user)');
    const lp = proxier.listenerPort('default/api', 80)!;
    const seen = new Map<string, Set<string>>();
    for (let i = 0; i < 40; i++) {
      const user = `u${i % 8}`;
      const r = await request(lp, `GET / HTTP/1.1\r\nHost: api\r\nX-User: ${user}\r\n\r\n`);
      if (!seen.has(user)) seen.set(user, new Set());
      seen.get(user)!.add(r.data.toString());
    }
    for (const [u, s] of seen) assert.equal(s.size, 1, `user ${u} reached ${[...s]}`);
    assert.equal(new Set([...seen.values()].flatMap((s) => [...s])).size, 2, 'both endpoints serve some users');
  } finally {
    await proxier.stop();
  }
});

test('UDP: datagrams of various sizes come back whole per client session', async () => {
  const port = await udpEcho('127.0.0.8');
  const { proxier, registry } = await setup([
    node('me'), service({ name: 'dns', ip: '10.96.0.6', ports: [{ port: 53, protocol: 'UDP', targetPort: port }] }),
    slice('dns', [{ port, protocol: 'UDP' }], [{ ip: '127.0.0.8', node: 'me' }]),
  ]);
  try {
    const lp = proxier.listenerPort('default/dns', 53, 'UDP')!;
    const c = createSocket('udp4');
    await new Promise<void>((r) => c.bind(0, '127.0.0.1', () => r()));
    const sizes = [1, 512, 1400, 9000, 60000];
    const got: Buffer[] = [];
    const done = new Promise<void>((r) => c.on('message', (m) => { got.push(m); if (got.length === sizes.length) r(); }));
    const sent = sizes.map((n) => randomBytes(n));
    for (const d of sent) c.send(d, lp, '127.0.0.1');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([done, new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`only ${got.length} replies`)), 3000); })]);
    clearTimeout(timer);
    c.close();
    const key = (b: Buffer) => createHash('sha256').update(b).digest('hex');
    assert.deepEqual(got.map(key).sort(), sent.map(key).sort());
    assert.match(await registry.getSingleMetricAsString('edgemesh_proxy_udp_sessions'), / 1$/m);
  } finally {
    await proxier.stop();
  }
});

test('UDP: when the session endpoint leaves, the same client socket is moved to a live endpoint', async () => {
  const named = async (host: string, name: string) => {
    const s = createSocket('udp4');
    s.on('message', (_m, r) => s.send(name, r.port, r.address));
    await new Promise<void>((r) => s.bind(0, host, () => r()));
    servers.push(s);
    return s.address().port;
  };
  const port = await named('127.0.0.9', 'A');
  const s2 = createSocket('udp4');
  s2.on('message', (_m, r) => s2.send('B', r.port, r.address));
  await new Promise<void>((r) => s2.bind(port, '127.0.0.10', () => r()));
  servers.push(s2);
  const { proxier, model } = await setup([
    node('me'), service({ name: 'u', ip: '10.96.0.7', ports: [{ port: 53, protocol: 'UDP', targetPort: port }] }),
    slice('u', [{ port, protocol: 'UDP' }], [{ ip: '127.0.0.9', node: 'me' }]),
  ]);
  try {
    const lp = proxier.listenerPort('default/u', 53, 'UDP')!;
    const c = createSocket('udp4');
    await new Promise<void>((r) => c.bind(0, '127.0.0.1', () => r()));
    const ask = () => new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no reply')), 2000);
      c.once('message', (m) => { clearTimeout(t); resolve(m.toString()); });
      c.send('?', lp, '127.0.0.1');
    });
    assert.equal(await ask(), 'A');
    assert.equal(await ask(), 'A');
    model.upsert('EndpointSlice', slice('u', [{ port, protocol: 'UDP' }], [{ ip: '127.0.0.10', node: 'me' }]));
    model.flush();
    await proxier.settle();
    assert.equal(await ask(), 'B');
    c.close();
  } finally {
    await proxier.stop();
  }
});

test('TCP: a 16 MB download to a slow reader arrives intact (backpressure through the relay buffers)', async () => {
  const blob = randomBytes(16 << 20);
  const server = createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => {});
    // First half in one go (large reads on the proxy), then small paced writes (small reads while the proxy's
    // writes to the stalled client are still pending); the endpoint half-closes first.
    const half = blob.length / 2;
    s.write(blob.subarray(0, half));
    let off = half;
    const step = () => {
      while (off < blob.length) {
        const ok = s.write(blob.subarray(off, off + 3000));
        off += 3000;
        if (!ok) return s.once('drain', step);
        if (off % 30000 === 0) return setImmediate(step);
      }
      s.end();
    };
    step();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.11', () => r()));
  servers.push(server);
  const port = (server.address() as { port: number }).port;
  const { proxier } = await setup([
    node('me'), service({ name: 'dl', ip: '10.96.0.8', ports: [{ port: 80, targetPort: port }] }),
    slice('dl', [{ port }], [{ ip: '127.0.0.11', node: 'me' }]),
  ]);
  try {
    const lp = proxier.listenerPort('default/dl', 80)!;
    const got = await new Promise<Buffer>((resolve, reject) => {
      const chunks: Buffer[] = [];
      let n = 0;
      const s = connect({ host: '127.0.0.1', port: lp, allowHalfOpen: true });
      s.on('data', (d) => {
        chunks.push(d);
        // Stall now and then so the proxy's writes to us back up.
        if (++n % 16 === 0) { s.pause(); setTimeout(() => s.resume(), 20); }
      });
      s.on('end', () => { s.end(); resolve(Buffer.concat(chunks)); });
      s.on('error', reject);
    });
    assert.equal(got.length, blob.length);
    assert.ok(got.equals(blob), 'bytes differ');
  } finally {
    await proxier.stop();
  }
});

/** Resolves true once `p` settles within `ms`, false otherwise (a bounded wait, not a timing assertion). */
function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    p.then(() => { clearTimeout(t); resolve(true); }, () => { clearTimeout(t); resolve(true); });
  });
}

test('TCP: a client that half-closed and is then closed by the proxy (stop) leaves no connection to the endpoint', async () => {
  let endpointSide: Socket | undefined;
  const gotEnd = Promise.withResolvers<void>();
  const closed = Promise.withResolvers<void>();
  // The endpoint reads the request and its FIN, then keeps streaming a slow answer (never ends on its own).
  const server = createServer({ allowHalfOpen: true }, (s) => {
    endpointSide = s;
    s.on('error', () => {});
    s.on('data', () => {});
    s.on('end', () => gotEnd.resolve());
    s.on('close', () => closed.resolve());
    const t = setInterval(() => { if (!s.destroyed) s.write('x'); }, 20);
    s.on('close', () => clearInterval(t));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.12', () => r()));
  servers.push(server);
  const port = (server.address() as { port: number }).port;
  const { proxier } = await setup([
    node('me'), service({ name: 'hc', ip: '10.96.0.9', ports: [{ port: 80, targetPort: port }] }),
    slice('hc', [{ port }], [{ ip: '127.0.0.12', node: 'me' }]),
  ]);
  const c = connect({ host: '127.0.0.1', port: proxier.listenerPort('default/hc', 80)!, allowHalfOpen: true });
  c.on('error', () => {});
  c.on('data', () => {});
  try {
    c.end('request');
    assert.ok(await within(gotEnd.promise, 10_000), 'the endpoint never saw the request and FIN');
  } finally {
    await proxier.stop();
  }
  // The proxy closed its side of the client connection: the endpoint's connection must go too.
  const gone = await within(closed.promise, 10_000);
  c.destroy();
  endpointSide?.destroy();
  assert.ok(gone, 'the connection to the endpoint was left open after the client side closed');
});

test('UDP: when a Service turns strict (internalTrafficPolicy: Local), a session to another node\'s endpoint moves to this node\'s', async () => {
  const named = async (host: string, name: string, port = 0) => {
    const s = createSocket('udp4');
    s.on('message', (_m, r) => s.send(name, r.port, r.address));
    await new Promise<void>((r) => s.bind(port, host, () => r()));
    servers.push(s);
    return s.address().port;
  };
  const port = await named('127.0.0.13', 'far');
  await named('127.0.0.14', 'local', port);
  const ports = [{ port: 53, protocol: 'UDP' as const, targetPort: port }];
  const { proxier, model } = await setup([
    node('me'), node('far'), service({ name: 'lu', ip: '10.96.0.10', ports }),
    slice('lu', [{ port, protocol: 'UDP' }], [{ ip: '127.0.0.13', node: 'far' }]),
  ]);
  const c = createSocket('udp4');
  try {
    const lp = proxier.listenerPort('default/lu', 53, 'UDP')!;
    await new Promise<void>((r) => c.bind(0, '127.0.0.1', () => r()));
    const ask = () => new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no reply')), 2000);
      c.once('message', (m) => { clearTimeout(t); resolve(m.toString()); });
      c.send('?', lp, '127.0.0.1');
    });
    assert.equal(await ask(), 'far');
    // The far endpoint stays ready; only the Service's routing changes, and a local endpoint appears.
    model.upsert('Service', service({ name: 'lu', ip: '10.96.0.10', ports, spec: { internalTrafficPolicy: 'Local' } }));
    model.upsert('EndpointSlice', slice('lu', [{ port, protocol: 'UDP' }], [{ ip: '127.0.0.13', node: 'far' }, { ip: '127.0.0.14', node: 'me' }]));
    model.flush();
    await proxier.settle();
    assert.equal(await ask(), 'local');
  } finally {
    c.close();
    await proxier.stop();
  }
});

test('TCP: a retry never goes back to the endpoint that just failed, even when the endpoints were re-read meanwhile (ClientIP affinity)', async () => {
  const good = await tcpServer('127.0.0.16', 'name', 'good');
  const port = good.port;
  const eps = [{ ip: '127.0.0.15', node: 'me' }, { ip: '127.0.0.16', node: 'me' }];
  const objects = [
    node('me'), service({ name: 'aff', ip: '10.96.0.11', ports: [{ port: 80, targetPort: port }], spec: { sessionAffinity: 'ClientIP' } }),
    slice('aff', [{ port }], eps),
  ];
  const dialed: string[] = [];
  let model: ClusterModel | undefined;
  const direct = new DirectDialer();
  // 127.0.0.15 (the first pick: round robin over sorted keys) refuses; while its dial is failing the EndpointSlice is re-delivered unchanged (new objects).
  const dialer: Dialer = {
    async dialTcp(t: DialTarget, deadline?: Deadline) {
      dialed.push(t.ip);
      if (t.ip !== '127.0.0.15') return direct.dialTcp(t, deadline);
      model!.upsert('EndpointSlice', slice('aff', [{ port }], eps.map((e) => ({ ...e }))));
      model!.flush();
      throw new DialError('refused', 'refused (test)');
    },
    openUdp: (t, deadline) => direct.openUdp(t, deadline),
  };
  const env = await setup(objects, { dialers: { direct: dialer } });
  model = env.model;
  try {
    const lp = env.proxier.listenerPort('default/aff', 80)!;
    for (let i = 0; i < 4; i++) {
      dialed.length = 0;
      const res = await request(lp, 'x');
      assert.equal(res.data.toString(), 'good', `connection ${i}: dialed ${dialed.join(', ')}, error ${res.error}`);
      assert.equal(new Set(dialed).size, dialed.length, `connection ${i} dialed an endpoint twice: ${dialed.join(', ')}`);
    }
  } finally {
    await env.proxier.stop();
  }
});

test('a service-port listener that cannot open (address not on this host) leaves no socket behind', async () => {
  // Exactly the sockets this test opens (not a process-wide count that earlier tests' closing sockets also move).
  const handles = trackHandles(['UDPWRAP', 'TCPSERVERWRAP']);
  try {
    for (let i = 0; i < 3; i++) {
      const { proxier } = await setup([
        node('me'), service({ name: 'nobind', ip: '10.96.0.12', ports: [{ port: 53, protocol: 'UDP' }, { port: 80 }] }),
        slice('nobind', [{ port: 53, protocol: 'UDP' }, { port: 80 }], [{ ip: '127.0.0.17', node: 'me' }]),
      ], { bindAddress: '192.0.2.1' }); // TEST-NET-1, not on this host: binding fails with EADDRNOTAVAIL
      assert.equal(proxier.listenerPort('default/nobind', 53, 'UDP'), undefined);
      await proxier.stop();
    }
    const end = Date.now() + 10_000;
    while (handles.open().length && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(handles.open(), [], 'sockets left behind');
  } finally {
    handles.stop();
  }
});

test('readiness follows generations: listeners and the rules of the current snapshot, after the cluster synced; later reconciles never take it away, a wrong kernel does', async () => {
  // A fake interceptor: the test decides when rules reach the "kernel" and whether it holds them.
  let gen = 0;
  let inKernel = 0;
  let kernelOk = true;
  const desired: number[] = [];
  const interceptor = {
    setDesired: (rules: readonly unknown[]) => { desired.push(rules.length); return ++gen; },
    appliedFor: (g: number) => inKernel >= g,
    healthy: () => kernelOk,
  };
  let phase: 'synced' | 'offline' | 'empty' = 'empty';
  const b = await tcpServer('127.0.0.2', 'echo');
  const { proxier, model } = await setup([
    node('me'), service({ name: 'a', ip: '10.96.0.21', ports: [{ port: 80, targetPort: b.port }] }),
    slice('a', [{ port: b.port }], [{ ip: '127.0.0.2', node: 'me' }]),
  ], { interceptor, cluster: () => phase });
  try {
    assert.ok(proxier.listenerPort('default/a', 80), 'listeners open before the source synced');
    assert.deepEqual(desired, [], 'no rules from a snapshot that is not the cluster yet (a predecessor\'s or leftover rules stay)');
    assert.equal(proxier.ready(), false);
    phase = 'synced';
    proxier.kick();
    await proxier.settle();
    assert.deepEqual(desired, [1]);
    assert.equal(proxier.ready(), false, 'rules handed over, not in the kernel yet');
    inKernel = gen;
    assert.equal(proxier.ready(), true);
    // A new Service: its rules are pending, readiness stays (it never regresses on a reconcile)...
    model.replace('Service', [
      service({ name: 'a', ip: '10.96.0.21', ports: [{ port: 80, targetPort: b.port }] }),
      service({ name: 'b', ip: '10.96.0.22', ports: [{ port: 80, targetPort: b.port }] }),
    ]);
    model.flush();
    await proxier.settle();
    assert.equal(inKernel < gen, true);
    assert.equal(proxier.ready(), true);
    // ...but a kernel found holding other rules (flushed, not re-asserted yet) does take it away.
    kernelOk = false;
    assert.equal(proxier.ready(), false);
    kernelOk = true;
    assert.equal(proxier.ready(), true);
  } finally {
    await proxier.stop();
  }
});

test('TCP: upload through a tunnel-like upstream (not a socket) arrives intact: relayed reads are copied, the pooled buffers reused at once', async () => {
  // An echo "tunnel stream" that keeps what it was given until read (as a tunnel stream's queue does).
  const streams: PassThrough[] = [];
  const tunnel: Dialer = {
    dialTcp: async () => {
      const s = new PassThrough({ allowHalfOpen: true });
      streams.push(s);
      return s;
    },
    openUdp: () => Promise.reject(new DialError('unreachable', 'no udp here')),
  };
  const { proxier } = await setup([
    node('me'), node('far'), service({ name: 'far', ip: '10.96.0.9', ports: [{ port: 80, targetPort: 9 }] }),
    slice('far', [{ port: 9 }], [{ ip: '10.244.9.9', node: 'far' }]),
  ], { dialers: { direct: new DirectDialer(), tunnel } });
  try {
    const port = proxier.listenerPort('default/far', 80)!;
    const payload = randomBytes(8 << 20);
    // A client that reads only after a while: the echo backs up into the stream's queue, which then holds chunks
    // read long ago (a pooled buffer handed to it would have been overwritten by later reads by then).
    const res = await new Promise<{ data: Buffer; error?: string }>((resolve) => {
      const chunks: Buffer[] = [];
      const s = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
      s.setTimeout(10_000, () => s.destroy(Object.assign(new Error('no progress in 10 s'), { code: 'TIMEOUT' })));
      s.pause();
      s.on('connect', () => { s.write(payload); s.end(); setTimeout(() => s.resume(), 300); });
      s.on('data', (d) => chunks.push(d));
      s.on('error', (e: NodeJS.ErrnoException) => resolve({ data: Buffer.concat(chunks), error: e.code }));
      s.on('end', () => resolve({ data: Buffer.concat(chunks) }));
    });
    assert.equal(res.error, undefined);
    assert.equal(streams.length, 1);
    assert.equal(res.data.length, payload.length);
    assert.equal(createHash('sha256').update(res.data).digest('hex'), createHash('sha256').update(payload).digest('hex'));
  } finally {
    await proxier.stop();
  }
});

test('TCP: keepalive is turned on by the sweep for a connection still open, on both legs (ss shows the keepalive timer)', async () => {
  const b = await tcpServer('127.0.0.2', 'echo');
  const { proxier } = await setup([
    node('me'), service({ name: 'ka', ip: '10.96.0.7', ports: [{ port: 80, targetPort: b.port }] }),
    slice('ka', [{ port: b.port }], [{ ip: '127.0.0.2', node: 'me' }]),
  ]);
  const s = connect({ host: '127.0.0.1', port: proxier.listenerPort('default/ka', 80)! });
  try {
    s.on('error', () => {});
    await new Promise<void>((r) => s.once('connect', () => r()));
    s.write('ping');
    await new Promise<void>((r) => s.once('data', () => r())); // dialed and relaying both ways
    // The proxy's two sockets: the accepted one (local address = the listener) and its dial (peer = the echo server).
    const lport = proxier.listenerPort('default/ka', 80)!;
    const legs = async () => {
      const out = (await execa('ss', ['-tnoH', 'state', 'established'])).stdout.split('\n');
      const local = (l: string) => l.trim().split(/\s+/)[2];
      const peer = (l: string) => l.trim().split(/\s+/)[3];
      return { client: out.filter((l) => local(l) === `127.0.0.1:${lport}`), upstream: out.filter((l) => peer(l) === `127.0.0.2:${b.port}`) };
    };
    assert.ok(keepAliveWaiting() >= 1);
    const before = await legs();
    assert.equal(before.client.length, 1);
    assert.equal(before.upstream.length, 1);
    assert.ok(![...before.client, ...before.upstream].some((l) => l.includes('keepalive')), `no keepalive before the sweep: ${JSON.stringify(before)}`);
    sweepKeepAlive();
    const after = await legs();
    assert.ok(after.client.length === 1 && after.client[0].includes('keepalive'), `the accepted socket has keepalive: ${JSON.stringify(after)}`);
    assert.ok(after.upstream.length === 1 && after.upstream[0].includes('keepalive'), `the dialed socket has keepalive: ${JSON.stringify(after)}`);
    assert.equal(keepAliveWaiting(), 0);
  } finally {
    s.destroy();
    await proxier.stop();
  }
});
