// Two servers: agent a is on both, agent b only on the second. a reaches b through the server both are on (relay),
// and the rendezvous, sent through every server, still upgrades the pair to a direct path.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import type { Server } from 'node:net';
import { join } from 'node:path';
import { makeSnapshot, sendAndHash, startHashSink, startServer, startTunnel, waitFor, type TestAgent } from './lib/tunnel-fixture.ts';
import { TunnelDialer } from '../packages/agent/src/tunnel/dialer.ts';
import type { EdgemeshServer } from '../packages/server/src/main.ts';

let s1: EdgemeshServer;
let s2: EdgemeshServer;
let a: TestAgent;
let b: TestAgent;
let backend: Server;
let backendPort: number;

before(async () => {
  // Servers of one mesh share the cluster CA (agents pin it; peers' certificates are checked against it).
  const x = await startServer();
  const y = await startServer(undefined, { caFile: join(x.stateDir, 'ca.crt'), caKeyFile: join(x.stateDir, 'ca.key') });
  s1 = x.server;
  s2 = y.server;
  ({ sink: backend, port: backendPort } = await startHashSink());
  const snap = makeSnapshot([{ service: 'default/sink', ip: '127.0.0.1', port: backendPort, node: 'b' }], ['a']);
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
  const reply = await sendAndHash(s, data);
  assert.equal(reply, createHash('sha256').update(data).digest('hex'));
  // The first server does not have b (refused the open); the second relayed.
  assert.match(await s1.registry.getSingleMetricAsString('edgemesh_server_relay_streams_total'), /outcome="no-peer"} [1-9]/);
  assert.match(await s2.registry.getSingleMetricAsString('edgemesh_server_relay_streams_total'), /outcome="ok"} [1-9]/);
  await waitFor(() => a.tunnel.status().peers.some((p) => p.node === 'b' && p.path === 'direct'), 15_000, 'direct');
});
