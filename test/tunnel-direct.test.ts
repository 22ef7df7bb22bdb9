// In-process: two agents' tunnels on loopback with the UDP socket enabled. The first stream goes on the relay at
// once, punching upgrades the peer to a direct UDX+Noise link, later streams use it; forged pings are dropped.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import type { Server } from 'node:net';
import { createSocket, type Socket } from 'node:dgram';
import { makeSnapshot, sendAndHash, startHashSink, startServer, startTunnel, waitFor, type TestAgent } from './lib/tunnel-fixture.ts';
import { TunnelDialer } from '../packages/agent/src/tunnel/dialer.ts';
import { encodePing, keyId, P, pingKey } from '../packages/agent/src/tunnel/ping.ts';
import type { EdgemeshServer } from '../packages/server/src/main.ts';

/** Generous: a busy 2-core machine can stall the event loop for seconds. */
const DEADLINE_MS = 15_000;

/**
 * Resolves once `u` receives a marker datagram sent to it from 127.0.0.1 after everything the agent may have answered:
 * the agent had handled (and counted) our pings before the marker was sent, and loopback delivers to `u`'s queue in
 * order, so an answer, had there been one, is in `answers` by then. A positive marker instead of a silent wait.
 */
/** Polls an async condition until it holds; throws after DEADLINE_MS. */
async function until(cond: () => Promise<boolean>, what: () => string): Promise<void> {
  const end = Date.now() + DEADLINE_MS;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function afterMarker(u: Socket): Promise<void> {
  const tag = Buffer.from(`marker-${Math.random().toString(36).slice(2)}`);
  const seen = new Promise<void>((r) => u.on('message', (m) => { if (m.equals(tag)) r(); }));
  const m = createSocket('udp4');
  await new Promise<void>((r) => m.bind(0, '127.0.0.1', r));
  m.send(tag, u.address().port, '127.0.0.1');
  try {
    await Promise.race([seen, new Promise((_, rej) => setTimeout(() => rej(new Error('the marker datagram never arrived')), DEADLINE_MS).unref())]);
  } finally {
    m.close();
  }
}

let server: EdgemeshServer;
let a: TestAgent;
let b: TestAgent;
let backend: Server;
let backendPort: number;

before(async () => {
  const s = await startServer();
  server = s.server;
  ({ sink: backend, port: backendPort } = await startHashSink());
  const snap = makeSnapshot([{ service: 'default/sink', ip: '127.0.0.1', port: backendPort, node: 'b' }], ['a']);
  a = await startTunnel('a', [`127.0.0.1:${s.port}`], () => snap, { listenPort: 0 });
  b = await startTunnel('b', [`127.0.0.1:${s.port}`], () => snap, { listenPort: 0 });
  await waitFor(() => a.tunnel.servers[0].connected && b.tunnel.servers[0].connected, 10_000, 'agents connected');
});

after(async () => {
  await a?.stop();
  await b?.stop();
  await server?.stop();
  backend?.close();
});

test('first stream on the relay at once, then the peer is upgraded to a direct path', async () => {
  const dialer = new TunnelDialer(a.tunnel);
  const data = randomBytes(1024 * 1024);
  const target = { serviceKey: 'default/sink', protocol: 'tcp' as const, ip: '127.0.0.1', port: backendPort, nodeName: 'b' };
  const s1 = await dialer.dialTcp(target);
  assert.equal(await sendAndHash(s1, data), createHash('sha256').update(data).digest('hex'));
  await waitFor(() => a.tunnel.status().peers.some((p) => p.node === 'b' && p.path === 'direct'), 15_000, 'direct path');
  await waitFor(() => b.tunnel.status().peers.some((p) => p.node === 'a' && p.path === 'direct'), 15_000, 'direct path on b');
  assert.equal(a.tunnel.status().nat.type, 'cone');
  const big = randomBytes(8 * 1024 * 1024);
  const s2 = await dialer.dialTcp(target);
  assert.equal(await sendAndHash(s2, big), createHash('sha256').update(big).digest('hex'));
  const m = await a.registry.getSingleMetricAsString('edgemesh_tunnel_streams_opened_total');
  assert.match(m, /path="direct",outcome="ok"} [1-9]/);
  // The first stream goes on whichever verified link is up first: the relay's, or on loopback often the punched one
  // (both wait for the peer's certificate in its HELLO).
  assert.match(m, /outcome="ok"} [1-9]/);
});

test('pings from a third party (unknown key, or a known key id with a forged MAC) are dropped', async () => {
  const port = a.tunnel.udp!.port;
  const u = createSocket('udp4');
  await new Promise<void>((r) => u.bind(0, '127.0.0.1', r));
  const bKey = (b.tunnel.opts.keyPair.publicKey);
  const forged = encodePing(randomBytes(32), { type: P.PING, keyId: keyId(bKey), txid: randomBytes(12), counter: 1n << 60n, streamId: 1 });
  const stranger = encodePing(randomBytes(32), { type: P.PING, keyId: randomBytes(8), txid: randomBytes(12), counter: 1n, streamId: 1 });
  const answers: Buffer[] = [];
  u.on('message', (m) => { if (!m.toString().startsWith('marker-')) answers.push(m); });
  let m = '';
  const count = async (reason: string) => {
    m = await a.registry.getSingleMetricAsString('edgemesh_tunnel_pings_rejected_total');
    return Number(new RegExp(`reason="${reason}"} (\\d+)`).exec(m)?.[1] ?? 0);
  };
  const before = { badMac: await count('bad-mac'), unknown: await count('unknown-peer') };
  for (let i = 0; i < 5; i++) {
    u.send(forged, port, '127.0.0.1');
    u.send(stranger, port, '127.0.0.1');
    u.send(Buffer.concat([Buffer.from([0x00]), randomBytes(49)]), port, '127.0.0.1');
  }
  // Every one of ours handled and rejected (at least: other agents on this machine may add strays of their own).
  await until(async () => (await count('bad-mac')) - before.badMac >= 5 && (await count('unknown-peer')) - before.unknown >= 5, () => `the forged pings to be rejected\n${m}`);
  await afterMarker(u);
  u.close();
  assert.equal(answers.length, 0, 'a forged ping was answered');
  assert.ok(a.tunnel.status().peers.some((p) => p.node === 'b' && p.path === 'direct'), 'the direct path survived');
});

test('a correctly MAC\'d ping with an old counter (a replay) is dropped and not answered', async () => {
  const direct = a.tunnel.udp!;
  const ak = a.tunnel.opts.keyPair;
  const bk = b.tunnel.opts.keyPair;
  // The test knows b's secret key, so it can make a genuine ping "from b" - but with a counter long passed.
  const key = pingKey(bk.secretKey, bk.publicKey, ak.publicKey);
  const old = encodePing(key, { type: P.PING, keyId: keyId(bk.publicKey), txid: randomBytes(12), counter: 1n, streamId: 1 });
  const u = createSocket('udp4');
  await new Promise<void>((r) => u.bind(0, '127.0.0.1', r));
  const answers: Buffer[] = [];
  const attacker = `127.0.0.1:${u.address().port}`;
  u.on('message', (m) => { if (!m.toString().startsWith('marker-')) answers.push(m); });
  const replays = async () => Number(/reason="replay"} (\d+)/.exec(await a.registry.getSingleMetricAsString('edgemesh_tunnel_pings_rejected_total'))?.[1] ?? 0);
  const before = await replays();
  for (let i = 0; i < 3; i++) u.send(old, direct.port, '127.0.0.1');
  await until(async () => (await replays()) - before >= 3, () => 'the replays to be rejected');
  await afterMarker(u);
  u.close();
  assert.equal(answers.length, 0, 'a replayed ping was answered');
  assert.equal((await replays()) - before, 3, 'each replay rejected once');
  assert.ok(a.tunnel.status().peers.some((p) => p.node === 'b' && p.path === 'direct' && p.remote !== attacker), 'the path did not move');
});
