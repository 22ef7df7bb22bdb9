// In-process: server + two agents' tunnel modules on loopback. Streams through the relay, end-to-end encryption
// (the relay never sees plaintext), authentication, node-name claims, the no-open-proxy rule, UDP, flow control.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { createSocket } from 'node:dgram';
import { TEST_TOKEN, makeSnapshot, sendAndHash, startServer, startTunnel, waitFor, type TestAgent } from './lib/tunnel-fixture.ts';
import { TunnelDialer } from '../packages/agent/src/tunnel/dialer.ts';
import { DialError } from '../packages/agent/src/proxy/dialer.ts';
import type { EdgemeshServer } from '../packages/server/src/main.ts';

let server: EdgemeshServer;
let port: number;
let a: TestAgent;
let b: TestAgent;
let backend: Server;
let backendPort: number;
let udpEcho: ReturnType<typeof createSocket>;
let tap: Server;
let tapped: Buffer[] = [];
const tappedUp: Buffer[] = [];
const held: Socket[] = [];

before(async () => {
  ({ server, port } = await startServer());
  // Backend on node b: answers "sha256 of everything received" when the client half-closes; "hold" connections
  // never read (a slow reader).
  backend = createServer((s) => {
    const h = createHash('sha256');
    let first = true;
    s.on('data', (c: Buffer) => {
      if (first && c.subarray(0, 4).toString() === 'HOLD') {
        s.pause();
        held.push(s);
        return;
      }
      first = false;
      h.update(c);
    });
    s.on('end', () => s.end(h.digest('hex')));
    s.on('error', () => {});
  });
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
  backendPort = (backend.address() as { port: number }).port;
  udpEcho = createSocket('udp4');
  udpEcho.on('message', (m, r) => udpEcho.send(m, r.port, r.address));
  await new Promise<void>((r) => udpEcho.bind(0, '127.0.0.1', r));
  const snap = makeSnapshot([
    { service: 'default/sink', ip: '127.0.0.1', port: backendPort, node: 'b' },
    { service: 'default/echo', ip: '127.0.0.1', port: udpEcho.address().port, protocol: 'UDP', node: 'b' },
  ], ['a']);
  // Node b reaches the server through a tap that records every byte the server sends it.
  tap = createServer((down) => {
    const up = connect(port, '127.0.0.1');
    up.on('data', (c: Buffer) => tapped.push(Buffer.from(c)));
    down.on('data', (c: Buffer) => tappedUp.push(Buffer.from(c)));
    down.pipe(up);
    up.pipe(down);
    down.on('error', () => up.destroy());
    up.on('error', () => down.destroy());
  });
  await new Promise<void>((r) => tap.listen(0, '127.0.0.1', r));
  const tapPort = (tap.address() as { port: number }).port;
  a = await startTunnel('a', [`127.0.0.1:${port}`], () => snap);
  b = await startTunnel('b', [`127.0.0.1:${tapPort}`], () => snap);
  await waitFor(() => a.tunnel.servers[0].connected && b.tunnel.servers[0].connected, 10_000, 'agents connected');
});

after(async () => {
  for (const s of held) s.destroy();
  await a?.stop();
  await b?.stop();
  await server?.stop();
  backend?.close();
  tap?.close();
  udpEcho?.close();
});

test('a TCP stream through the relay carries 4 MB intact, and the relay sees only ciphertext', async () => {
  const dialer = new TunnelDialer(a.tunnel);
  // A recognisable plaintext pattern: a 32-byte marker repeated; if the relay saw plaintext it would be in the tap.
  const marker = randomBytes(32);
  const data = Buffer.concat(Array.from({ length: (4 * 1024 * 1024) / 32 }, () => marker));
  tapped = [];
  const s = await dialer.dialTcp({ serviceKey: 'default/sink', protocol: 'tcp', ip: '127.0.0.1', port: backendPort, nodeName: 'b' });
  const reply = await sendAndHash(s, data);
  assert.equal(reply, createHash('sha256').update(data).digest('hex'));
  const seen = Buffer.concat(tapped);
  assert.ok(seen.length >= data.length, `relay carried ${seen.length} bytes`);
  assert.equal(seen.indexOf(marker), -1, 'plaintext marker visible at the relay');
  // Nor did the cluster token ever cross the wire, in either direction.
  const all = Buffer.concat([...tapped, ...tappedUp]);
  assert.equal(all.indexOf(Buffer.from(TEST_TOKEN)), -1);
  assert.deepEqual(a.tunnel.status().peers.map((p) => [p.node, p.path]), [['b', 'relay']]);
});

test('streams to endpoints the remote agent does not know are refused (no open proxy)', async () => {
  const dialer = new TunnelDialer(a.tunnel);
  await assert.rejects(
    dialer.dialTcp({ serviceKey: 'default/sink', protocol: 'tcp', ip: '127.0.0.1', port: 22, nodeName: 'b' }),
    (e: unknown) => e instanceof DialError && e.code === 'forbidden',
  );
  await assert.rejects(
    dialer.dialTcp({ serviceKey: 'kube-system/other', protocol: 'tcp', ip: '127.0.0.1', port: backendPort, nodeName: 'b' }),
    (e: unknown) => e instanceof DialError && e.code === 'forbidden',
  );
});

test('unknown node: unreachable', async () => {
  const dialer = new TunnelDialer(a.tunnel);
  await assert.rejects(
    dialer.dialTcp({ serviceKey: 'default/sink', protocol: 'tcp', ip: '127.0.0.1', port: backendPort, nodeName: 'nobody' }),
    (e: unknown) => e instanceof DialError && e.code === 'unreachable',
  );
});

test('UDP datagrams keep their boundaries through the tunnel', async () => {
  const dialer = new TunnelDialer(a.tunnel);
  const ch = await dialer.openUdp({ serviceKey: 'default/echo', protocol: 'udp', ip: '127.0.0.1', port: udpEcho.address().port, nodeName: 'b' });
  const got: Buffer[] = [];
  ch.onMessage((d) => got.push(d));
  const sent = [Buffer.from('one'), randomBytes(1200), Buffer.from('three')];
  for (const d of sent) ch.send(d);
  await waitFor(() => got.length === 3, 5000, 'echoes');
  assert.deepEqual(got.map((d) => d.toString('hex')).sort(), sent.map((d) => d.toString('hex')).sort());
  ch.close();
});

test('a reader that stops reading does not stall another stream on the same link', async () => {
  const dialer = new TunnelDialer(a.tunnel);
  const heldBefore = held.length;
  const slow = await dialer.dialTcp({ serviceKey: 'default/sink', protocol: 'tcp', ip: '127.0.0.1', port: backendPort, nodeName: 'b' });
  slow.on('error', () => {});
  slow.write(Buffer.from('HOLD'));
  // Far more than the credit window plus socket buffers: the slow stream's writer must block.
  const big = randomBytes(32 * 1024 * 1024);
  let slowDone = false;
  slow.write(big, () => { slowDone = true; });
  // The backend has the slow connection and stopped reading it (instead of sleeping and hoping it got there).
  await waitFor(() => held.length > heldBefore, 15_000, 'the backend to hold the slow connection');
  const data = randomBytes(2 * 1024 * 1024);
  const fast = await dialer.dialTcp({ serviceKey: 'default/sink', protocol: 'tcp', ip: '127.0.0.1', port: backendPort, nodeName: 'b' });
  assert.equal(await sendAndHash(fast, data), createHash('sha256').update(data).digest('hex'));
  assert.equal(slowDone, false, 'the slow stream should still be blocked by its credit');
  assert.ok(slow.writableLength > 0, 'the slow stream still holds unsent data');
  slow.destroy();
});

test('a second agent claiming an enrolled node name with another key is refused, also once the first is gone (the name is pinned)', async () => {
  const snap = makeSnapshot([]);
  const c1 = await startTunnel('dup', [`127.0.0.1:${port}`], () => snap);
  await waitFor(() => c1.tunnel.servers[0].connected, 10_000, 'first dup');
  const c2 = await startTunnel('dup', [`127.0.0.1:${port}`], () => snap);
  try {
    await waitFor(() => (c2.tunnel.servers[0].lastError ?? '').includes('name-pinned'), 10_000, 'refusal');
    assert.equal(c2.tunnel.servers[0].connected, false);
    await c1.stop();
    // The disconnected node's name stays its own: the impostor keeps being refused across its reconnects.
    const attempts = async () => Number(/outcome="name-pinned"} (\d+)/.exec(await server.registry.getSingleMetricAsString('edgemesh_server_auth_total'))?.[1] ?? 0);
    const before = await attempts();
    const end = Date.now() + 20_000;
    while ((await attempts()) < before + 2 && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
    assert.ok((await attempts()) >= before + 2, 'the impostor retried');
    assert.equal(c2.tunnel.servers[0].connected, false);
    assert.equal(server.relay.agents.has('dup'), false);
  } finally {
    await c1.stop();
    await c2.stop();
  }
});

test('an agent with the wrong token is refused', async () => {
  const snap = makeSnapshot([]);
  const bad = await startTunnel('intruder', [`127.0.0.1:${port}`], () => snap, { token: 'wrong-token-0123456789abcdef' });
  try {
    await waitFor(() => bad.tunnel.servers[0].lastError !== null, 10_000, 'refusal');
    assert.equal(bad.tunnel.servers[0].connected, false);
    assert.match(bad.tunnel.servers[0].lastError!, /unauthorized/);
    const metrics = await server.registry.getSingleMetricAsString('edgemesh_server_auth_total');
    assert.match(metrics, /outcome="unauthorized"/);
    assert.equal(server.relay.agents.has('intruder'), false);
  } finally {
    await bad.stop();
  }
});

test('a node that leaves the cluster snapshot is forgotten: its links are closed and its peer state dropped', async () => {
  const dialer = new TunnelDialer(a.tunnel);
  const s = await dialer.dialTcp({ serviceKey: 'default/sink', protocol: 'tcp', ip: '127.0.0.1', port: backendPort, nodeName: 'b' });
  const closed = new Promise((r) => s.on('close', r));
  s.on('error', () => {});
  const link = a.tunnel.peers.get('b')?.current;
  assert.ok(link, 'a has a link to b');
  const base = makeSnapshot([]);
  const withNodes = (names: string[]) => ({ ...base, version: base.version + names.length, nodes: new Map(names.map((n) => [n, { name: n, labels: {}, addresses: [] }])) });
  a.tunnel.onSnapshot(withNodes(['a', 'b']));
  assert.ok(a.tunnel.peers.has('b'), 'still a member: kept');
  a.tunnel.onSnapshot(withNodes(['a']));
  assert.equal(a.tunnel.peers.has('b'), false);
  assert.equal(link.closed, true);
  await closed;
  assert.deepEqual(a.tunnel.status().peers, []);
});

test('a node forgotten while its relay link is being set up is not brought back by that link', async () => {
  const dialer = new TunnelDialer(a.tunnel);
  const base = makeSnapshot([]);
  const withNodes = (names: string[]) => ({ ...base, nodes: new Map(names.map((n) => [n, { name: n, labels: {}, addresses: [] }])) });
  a.tunnel.onSnapshot(withNodes(['a', 'b']));
  assert.equal(a.tunnel.peers.get('b')?.current, undefined, 'no link to b yet');
  const pending = dialer.dialTcp({ serviceKey: 'default/sink', protocol: 'tcp', ip: '127.0.0.1', port: backendPort, nodeName: 'b' });
  a.tunnel.onSnapshot(withNodes(['a']));
  await assert.rejects(pending, (e: unknown) => e instanceof DialError && e.code === 'unreachable');
  assert.equal(a.tunnel.peers.has('b'), false);
});
