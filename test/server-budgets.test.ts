// The server's budgets (packages/server/src/limits.ts) against hand-made agents on loopback: each limit refuses what
// is over it (counted under its name, the target of a flood hears nothing of the refused opens), and every lease is
// given back on every path: a stream that finishes, is reset by its opener, violates its credit, goes unanswered or
// loses a peer; a partial frame that completes, misses its deadline, or is dropped to make room; an unauthenticated
// connection that authenticates, closes or is evicted.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Server, type Socket } from 'node:net';
import { Registry } from 'prom-client';
import { Budgets } from '../packages/common/src/budget.ts';
import { FD_BUDGET_NAME, FdPressure } from '../packages/common/src/fds.ts';
import { silentLogger } from '../packages/common/src/log.ts';
import { encodeFrame } from '../packages/common/src/tunnel/frame.ts';
import { encodeData, encodeEnd, encodeCredit, encodeReset } from '../packages/common/src/tunnel/streams.ts';
import { RELAY_STREAM_TYPES, RELAY_WINDOW_BYTES, T } from '../packages/common/src/tunnel/protocol.ts';
import { RelayServer, type RelayIdentity } from '../packages/server/src/relay.ts';
import { relayIdentity } from '../packages/server/src/main.ts';
import { randomBytes } from 'node:crypto';
import { B, DEFAULT_LIMITS, type ServerLimits } from '../packages/server/src/limits.ts';
import { RawAgent } from './lib/raw-agent.ts';
import { TEST_TOKEN, startServer, waitFor } from './lib/tunnel-fixture.ts';

const TS = RELAY_STREAM_TYPES;

/** A server identity of its own (CA, pins: names are reused across tests with fresh keys) for a bare RelayServer. */
async function serverIdentity(): Promise<{ identity: RelayIdentity; stop(): Promise<void> }> {
  const { server } = await startServer();
  return { identity: relayIdentity(server.identity, randomBytes(20)), stop: () => server.stop() };
}

/** A RelayServer whose stop() also stops the identity's server. */
async function relayServer(o: Omit<ConstructorParameters<typeof RelayServer>[0], 'identity'>): Promise<RelayServer> {
  const id = await serverIdentity();
  const relay = new RelayServer({ ...o, identity: id.identity });
  const stop = relay.stop.bind(relay);
  relay.stop = async () => {
    await stop();
    await id.stop();
  };
  return relay;
}

async function relayWith(limits: Partial<ServerLimits>, extra: { openAnswerTimeoutMs?: number; partialFrameDeadlineMs?: number } = {}) {
  const registry = new Registry();
  const budgets = new Budgets({ registry, metricPrefix: 'edgemesh_server_' });
  const relay = await relayServer({ host: '127.0.0.1', port: 0, log: silentLogger, registry, budgets, limits, ...extra });
  const { port } = await relay.start();
  const agent = (node: string, localAddress?: string) => RawAgent.connect(node, port, '127.0.0.1', TEST_TOKEN, { localAddress });
  const used = (name: string) => budgets.get(name)!.used;
  return { relay, budgets, registry, port, agent, used };
}

describe('relay stream budgets', () => {
  let r: Awaited<ReturnType<typeof relayWith>>;
  before(async () => { r = await relayWith({ streamsPerPair: 2, streamsPerTarget: 3, streamsTotal: 100, pendingOpensPerOpener: 50 }, { openAnswerTimeoutMs: 60_000 }); });
  after(async () => { await r.relay.stop(); });

  test('one opener flooding one victim gets OPEN_FAIL limit past the pair limit; others still reach the victim until its target limit; the victim sees only admitted streams', async () => {
    const [evil, other, third, v] = await Promise.all([r.agent('evil'), r.agent('other'), r.agent('third'), r.agent('victim')]);
    try {
      const res = [];
      for (let i = 1; i <= 20; i++) res.push(await evil.open(i, 'victim'));
      assert.equal(res.filter((x) => x.rid !== undefined).length, 2, 'two streams admitted');
      assert.ok(res.slice(2).every((x) => x.fail === 'limit'));
      assert.equal(r.budgets.refused(B.pair), 18);
      assert.ok((await other.open(1, 'victim')).rid, 'another opener still reaches the victim');
      assert.equal((await third.open(1, 'victim')).fail, 'limit', 'the victim is the target of 3 streams: its limit');
      assert.equal(r.budgets.refused(B.perTarget), 1);
      assert.ok((await third.open(2, 'other')).rid, 'the target limit is per target');
      await waitFor(() => { v.take(-1); return true; });
      let incoming = 0;
      while (v.take(T.INCOMING)) incoming++;
      assert.equal(incoming, 3, 'the victim was told of the admitted streams only');
      assert.match(await r.registry.getSingleMetricAsString('edgemesh_server_budget_refusals_total'), /budget="relay_streams_per_pair"} 18/);
    } finally {
      for (const a of [evil, other, third, v]) a.close();
    }
    await waitFor(() => r.used(B.streams) === 0 && r.used(B.target) === 0 && r.used(B.pending) === 0, 5000, 'peer gone: everything given back');
  });

  test('leases are given back when a stream finishes, is reset by its opener, breaks its credit, or its target goes', async () => {
    const [a, b] = await Promise.all([r.agent('a1'), r.agent('b1')]);
    try {
      // success: data both ways, END both ways, acknowledged.
      const s1 = (await a.open(1, 'b1')).rid!;
      assert.equal(r.used(B.streams), 1);
      assert.equal(r.used(B.pending), 1, 'unanswered until the target sends');
      b.sock.write(encodeData(TS, s1, 0, Buffer.from('hi')));
      await waitFor(() => r.used(B.pending) === 0, 5000, 'answered');
      a.sock.write(encodeData(TS, s1, 0, Buffer.from('yo')));
      a.sock.write(encodeEnd(TS, s1, 2));
      b.sock.write(encodeEnd(TS, s1, 2));
      await waitFor(() => a.frames.some((f) => f.type === TS.END) && b.frames.some((f) => f.type === TS.END), 5000, 'ends relayed'); // two sockets: no order between them
      a.sock.write(encodeCredit(TS, s1, 3)); // END takes one position: fin + 1
      b.sock.write(encodeCredit(TS, s1, 3));
      await waitFor(() => r.used(B.streams) === 0, 5000, 'finished stream released');
      // abort: the opener resets.
      const s2 = (await a.open(2, 'b1')).rid!;
      a.sock.write(encodeReset(TS, s2));
      await waitFor(() => r.used(B.streams) === 0 && r.used(B.pending) === 0, 5000, 'reset stream released');
      // error: a credit violation resets the stream.
      const s3 = (await a.open(3, 'b1')).rid!;
      a.sock.write(encodeData(TS, s3, 0, Buffer.alloc(1)));
      a.sock.write(encodeData(TS, s3, RELAY_WINDOW_BYTES + 10, Buffer.alloc(1)));
      await waitFor(() => r.used(B.streams) === 0 && r.used(B.target) === 0, 5000, 'violating stream released');
      // peer gone: the target disconnects with a stream open.
      await a.open(4, 'b1');
      assert.equal(r.used(B.streams), 1);
      b.close();
      await waitFor(() => r.used(B.streams) === 0 && r.used(B.pending) === 0 && r.used(B.target) === 0, 5000, 'streams of a gone peer released');
    } finally {
      a.close();
      b.close();
    }
  });
});

test('unanswered opens: limited per opener, and reset at the answer deadline (both sides told, counted)', async () => {
  const r = await relayWith({ pendingOpensPerOpener: 3 }, { openAnswerTimeoutMs: 400 });
  const [a, v, w] = await Promise.all([r.agent('a'), r.agent('v'), r.agent('w')]);
  try {
    const ids = [];
    for (let i = 1; i <= 3; i++) ids.push((await a.open(i, i === 3 ? 'w' : 'v')).rid!);
    assert.equal((await a.open(9, 'w')).fail, 'limit', 'a fourth unanswered open refused');
    assert.equal(r.budgets.refused(B.perOpener), 1);
    w.sock.write(encodeData(TS, ids[2], 0, Buffer.from('answer')));
    await waitFor(() => r.used(B.pending) === 2, 5000, 'w answered');
    await waitFor(() => r.used(B.streams) === 1, 10_000, 'the two unanswered streams reset at the deadline');
    assert.equal(r.used(B.pending), 0);
    assert.equal(r.budgets.refused(B.openDeadline), 2);
    await waitFor(() => a.frames.filter((f) => f.type === T.RESET).length === 2 && v.frames.filter((f) => f.type === T.RESET).length === 2, 5000, 'both sides told');
    assert.ok((await a.open(10, 'v')).rid, 'room again');
  } finally {
    for (const x of [a, v, w]) x.close();
    await r.relay.stop();
  }
});

/** Writes a frame header announcing `len` bytes and `have` of them. */
function park(sock: Socket, len: number, have: number): void {
  const head = encodeFrame(0x7e, Buffer.alloc(0)); // a type nobody knows: once complete it is counted and dropped
  head.writeUInt32BE(len, 1);
  sock.write(Buffer.concat([head, Buffer.alloc(have)]));
}

test('partial frames: bytes counted while a frame is incomplete, dropped at the deadline, the longest-waiting dropped when the budget is full', async () => {
  const r = await relayWith({ partialFrameBytes: 1024 * 1024 }, { partialFrameDeadlineMs: 1500 });
  const a = await r.agent('pa');
  const b = await r.agent('pb');
  const c = await r.agent('pc');
  try {
    // A frame that completes gives its bytes back.
    park(c.sock, 1000, 600);
    await waitFor(() => r.used(B.frameBytes) === 605, 5000, 'partial bytes counted');
    c.sock.write(Buffer.alloc(400));
    await waitFor(() => r.used(B.frameBytes) === 0, 5000, 'completed frame released');
    // Budget full: a parks 600 KiB, b parks 600 KiB: a (waiting longest) is dropped, b keeps its bytes.
    park(a.sock, 1024 * 1024, 600 * 1024);
    await waitFor(() => r.used(B.frameBytes) === 600 * 1024 + 5, 5000, 'a counted');
    park(b.sock, 1024 * 1024, 600 * 1024);
    await waitFor(() => a.closed, 5000, 'a dropped to make room');
    await waitFor(() => r.used(B.frameBytes) === 600 * 1024 + 5, 5000, 'b counted, a given back');
    assert.equal(r.budgets.evictedCount(B.frameBytes), 1);
    // Deadline: b's frame never completes.
    await waitFor(() => b.closed, 10_000, 'b dropped at the frame deadline');
    assert.equal(r.used(B.frameBytes), 0);
    assert.ok(r.budgets.refused(B.frameDeadline) >= 1);
    assert.equal(c.closed, false, 'the agent whose frames complete is untouched');
  } finally {
    for (const x of [a, b, c]) x.close();
    await r.relay.stop();
  }
});

function rawConn(port: number, localAddress: string): Promise<Socket & { gone: boolean }> {
  return new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1', localAddress }) as Socket & { gone: boolean };
    s.gone = false;
    s.on('error', () => {});
    s.on('close', () => { s.gone = true; });
    s.on('connect', () => resolve(s));
  });
}

test('unauthenticated connections: per source and in total; a handshake that succeeds gives its slot back; the oldest idle one is evicted once old enough', async () => {
  const r = await relayWith({ unauthPerSource: 2, unauthTotal: 3 });
  const socks: (Socket & { gone: boolean })[] = [];
  try {
    socks.push(await rawConn(r.port, '127.0.0.2'), await rawConn(r.port, '127.0.0.2'));
    await waitFor(() => r.used(B.unauth) === 2, 5000, 'two held');
    socks.push(await rawConn(r.port, '127.0.0.2'));
    await waitFor(() => socks[2].gone, 5000, 'third from the same source refused (all young)');
    assert.ok(r.budgets.refused(B.unauthPerSource) >= 1);
    const ok = await r.agent('u1', '127.0.0.3');
    assert.equal(r.used(B.unauth), 2, 'authenticated: slot given back');
    socks.push(await rawConn(r.port, '127.0.0.3'));
    await waitFor(() => r.used(B.unauth) === 3, 5000, 'third in total');
    socks.push(await rawConn(r.port, '127.0.0.4'));
    await waitFor(() => socks[4].gone, 5000, 'fourth in total refused');
    assert.ok(r.budgets.refused(B.unauth) >= 1);
    await new Promise((res) => setTimeout(res, 1200)); // UNAUTH_MIN_EVICT_AGE_MS
    const late = await r.agent('u2', '127.0.0.4');
    assert.ok(late, 'an agent gets in once the idle ones are old enough to evict');
    assert.ok(r.budgets.evictedCount(B.unauth) >= 1);
    assert.ok(socks[0].gone, 'the oldest idle one was evicted');
    for (const s of socks) s.destroy();
    ok.close();
    late.close();
    await waitFor(() => r.used(B.unauth) === 0, 5000, 'closed: all slots back');
  } finally {
    for (const s of socks) s.destroy();
    await r.relay.stop();
  }
  assert.deepEqual(Object.keys(DEFAULT_LIMITS).sort(), ['partialFrameBytes', 'pendingOpensPerOpener', 'streamsPerPair', 'streamsPerTarget', 'streamsTotal', 'unauthPerSource', 'unauthTotal']);
});

test('control messages over the per-agent rate are paced, not lost: every PING of a burst is answered, in order, and the pause counted', async () => {
  const r = await relayWith({});
  const a = await r.agent('chatty');
  const b = await r.agent('quiet');
  try {
    const n = 600; // over CONTROL_MSGS_BURST (400): the rest waits for the bucket
    for (let i = 1; i <= n; i++) a.control(T.PING, { t: i });
    const got: number[] = [];
    await waitFor(() => { for (let m = a.take(T.PONG); m; m = a.take(T.PONG)) got.push(m.t as number); return got.length >= n; }, 20_000, 'all PONGs');
    assert.deepEqual(got, Array.from({ length: n }, (_, i) => i + 1), 'each answered once, in order');
    assert.ok(r.budgets.refused(B.controlRate) >= 1, 'the pause was counted');
    b.control(T.PING, { t: 7 });
    assert.equal((await b.next(T.PONG)).t, 7, 'another agent is not held up');
  } finally {
    a.close();
    b.close();
    await r.relay.stop();
  }
});

test('descriptor reserve: when descriptors run short new unauthenticated connections are shed (counted); an accept error is counted, never thrown', async () => {
  const registry = new Registry();
  const budgets = new Budgets({ registry, metricPrefix: 'edgemesh_server_' });
  const fds = new FdPressure({ budgets, reserve: Number.MAX_SAFE_INTEGER }); // every descriptor is in the reserve
  const relay = await relayServer({ host: '127.0.0.1', port: 0, log: silentLogger, registry, budgets, fds });
  const { port } = await relay.start();
  try {
    const s = await rawConn(port, '127.0.0.5');
    await waitFor(() => s.gone, 5000, 'shed');
    assert.ok(budgets.refused(FD_BUDGET_NAME) >= 1);
    assert.equal(budgets.get(B.unauth)!.used, 0);
    const err = Object.assign(new Error('accept EMFILE'), { code: 'EMFILE' });
    (relay as unknown as { server: Server }).server.emit('error', err);
    assert.equal(budgets.refused(B.acceptError), 1);
    assert.equal(fds.shed(), true, 'EMFILE marks descriptors exhausted until the next sample');
  } finally {
    await relay.stop();
  }
});
