// Two servers: agent a is on both, agent b only on the second. a reaches b through the server both are on (relay),
// and the rendezvous, sent through every server, still upgrades the pair to a direct path.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:net';
import { makeSnapshot, startServer, startTunnel, waitFor, type TestAgent } from './lib/tunnel-fixture.ts';
import { TunnelDialer } from '../packages/agent/src/tunnel/dialer.ts';
import type { EdgemeshServer } from '../packages/server/src/main.ts';

let s1: EdgemeshServer;
let s2: EdgemeshServer;
let a: TestAgent;
let b: TestAgent;
let backend: Server;
let backendPort: number;

before(async () => {
  const x = await startServer();
  const y = await startServer();
  s1 = x.server;
  s2 = y.server;
  backend = createServer((c) => {
    const h = createHash('sha256');
    c.on('data', (d: Buffer) => h.update(d));
    c.on('end', () => c.end(h.digest('hex')));
    c.on('error', () => {});
  });
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
  backendPort = (backend.address() as { port: number }).port;
  const snap = makeSnapshot([{ service: 'default/sink', ip: '127.0.0.1', port: backendPort, node: 'b' }]);
  a = await startTunnel('a', [`127.0.0.1:${x.port}`, `127.0.0.1:${y.port}`], () => snap, { listenPort: 0 });
  b = await startTunnel('b', [`127.0.0.1:${y.port}`], () => snap, { listenPort: 0 });
  await waitFor(() => a.tunnel.servers.every((s) => s.connected) && b.tunnel.servers[0].connected, 10_000, 'connected');
});

after(async () => {
  await a?.stop();
  await b?.stop();
  await s1?.stop();
  await s2?.stop();
  backend?.close();
});

test('a peer is reachable through any server both are on, and still gets a direct path', async () => {
  const dialer = new TunnelDialer(a.tunnel);
  const target = { serviceKey: 'default/sink', protocol: 'tcp' as const, ip: '127.0.0.1', port: backendPort, nodeName: 'b' };
  const data = randomBytes(256 * 1024);
  const s = await dialer.dialTcp(target);
  const reply = await new Promise<string>((resolve, reject) => {
    let r = '';
    s.on('data', (c: Buffer) => { r += c.toString(); });
    s.on('end', () => resolve(r));
    s.on('error', reject);
    s.end(data);
  });
  assert.equal(reply, createHash('sha256').update(data).digest('hex'));
  // The first server does not have b (refused the open); the second relayed.
  assert.match(await s1.registry.getSingleMetricAsString('edgemesh_server_relay_streams_total'), /outcome="no-peer"} [1-9]/);
  assert.match(await s2.registry.getSingleMetricAsString('edgemesh_server_relay_streams_total'), /outcome="ok"} [1-9]/);
  await waitFor(() => a.tunnel.status().peers.some((p) => p.node === 'b' && p.path === 'direct'), 15_000, 'direct');
});
