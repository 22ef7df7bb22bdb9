// One punch attempt on fakes (no sockets) and a manual clock: the initiator connects on the first pong, the responder
// accepts the stream only from an address the peer authenticated from, peer-reflexive candidates, relay-only and
// timed-out attempts, birthday probing, and double close.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Duplex } from 'node:stream';
import { ManualClock } from './clock.ts';
import { PunchFailed, PunchSession, type PunchOptions } from './punchsession.ts';
import { BIRTHDAY_BATCH, punchSchedule, type Addr } from './punch.ts';
import { BIRTHDAY_BATCH_MS, PUNCH_GRACE_MS, PUNCH_TIMEOUT_MS } from './timers.ts';
import type { PeerChannel, PunchIO, UdpSock, UdpStream } from './udptypes.ts';

class FakeStream extends Duplex implements UdpStream {
  readonly id = 7;
  connected: { remoteId: number; port: number; host: string } | undefined;
  firewall!: (sock: UdpSock, port: number, host: string) => boolean;
  connect(_s: UdpSock, remoteId: number, port: number, host: string): void {
    this.connected = { remoteId, port, host };
  }
  changeRemote(): null {
    return null;
  }
  override _read(): void {}
  override _write(_c: Buffer, _e: BufferEncoding, cb: () => void): void {
    cb();
  }
}

function fakes(o: Partial<PunchOptions> = {}) {
  const clock = new ManualClock();
  const pings: { to: Addr; txid: Buffer; sock?: UdpSock; ttl?: number }[] = [];
  let n = 0;
  const channel: PeerChannel = {
    ping: (to, _id, sock, ttl) => {
      const txid = Buffer.alloc(12);
      txid.writeUInt32BE(++n);
      pings.push({ to, txid, sock, ttl });
      return txid;
    },
    pong: () => {},
    close: () => {},
  };
  const stream = new FakeStream();
  const opened: UdpSock[] = [];
  const closed: UdpSock[] = [];
  const main: UdpSock = {};
  const io: PunchIO = {
    main,
    newStream: (fw) => { stream.firewall = fw; return stream; },
    openSockets: (k) => { for (let i = 0; i < k; i++) opened.push({}); return opened.slice(); },
    closeSocket: (s) => { closed.push(s); },
  };
  const p = new PunchSession({ sid: '0123456789abcdef', requested: true, mode: 'normal', myNat: 'cone', io, channel, clock, ...o });
  let outcome: string | undefined;
  p.result.then(() => { outcome = 'direct'; }, (e: PunchFailed) => { outcome = e.outcome; });
  const settle = () => new Promise((r) => setImmediate(r));
  return { clock, pings, stream, opened, closed, main, p, outcome: () => outcome, settle };
}

const A = { host: '198.18.1.2', port: 20006, kind: 'lan' as const };
const B = { host: '203.0.113.9', port: 31000, kind: 'stun' as const };

test('initiator: pings every candidate on the schedule and connects to the first that answers', async () => {
  const f = fakes();
  f.p.start([A, B], 'cone', 42);
  f.clock.advance(0);
  assert.deepEqual(f.pings.map((x) => x.to.host), [A.host, B.host]);
  f.clock.advance(100);
  assert.equal(f.pings.length, 6, 'schedule: 0, 50, 100 ms');
  assert.equal(f.p.onPong(Buffer.alloc(12, 9), B, 55, f.main), false, 'a pong to a ping we never sent is not ours');
  assert.equal(f.p.onPong(f.pings[1].txid, B, 55, f.main), true);
  assert.deepEqual(f.stream.connected, { remoteId: 55, port: B.port, host: B.host });
  await f.settle();
  assert.equal(f.outcome(), 'direct');
  const r = await f.p.result;
  assert.deepEqual(r.remote, B);
  const sent = f.pings.length;
  f.clock.advance(5_000);
  assert.equal(f.pings.length, sent, 'no pings after success');
  assert.equal(f.clock.pending, 0);
});

test('responder: the stream is accepted only from an address the peer authenticated from', async () => {
  const f = fakes({ requested: false });
  f.p.start([A], 'cone', 42);
  assert.equal(f.stream.firewall(f.main, 4444, '192.0.2.66'), true, 'a stranger is dropped');
  f.p.onPing({ host: '203.0.113.50', port: 4000 });
  assert.equal(f.stream.firewall(f.main, 4000, '203.0.113.50'), false, 'the verified address gets through');
  assert.deepEqual(f.stream.connected, { remoteId: 42, port: 4000, host: '203.0.113.50' });
  await f.settle();
  assert.equal(f.outcome(), 'direct');
});

test('a ping from an address not among the candidates is a peer-reflexive candidate: pinged at once', () => {
  const f = fakes();
  f.p.start([A], 'cone', 42);
  f.clock.advance(0);
  const before = f.pings.length;
  f.p.onPing({ host: '203.0.113.77', port: 5555 });
  assert.equal(f.pings.length, before + 1);
  assert.deepEqual(f.pings.at(-1)!.to, { host: '203.0.113.77', port: 5555 });
  f.p.onPing({ host: '203.0.113.77', port: 5555 });
  assert.equal(f.pings.length, before + 1, 'only once');
  f.p.close();
});

test('both sides symmetric: relay-only at once; no answer: failed after the schedule and a grace period', async () => {
  const sym = fakes({ myNat: 'symmetric' });
  sym.p.start([B], 'symmetric', 1);
  await sym.settle();
  assert.equal(sym.outcome(), 'relay-only');
  assert.equal(sym.pings.length, 0);
  assert.equal(sym.stream.destroyed, true);

  const f = fakes();
  f.p.start([A, B], 'cone', 1);
  const last = punchSchedule(PUNCH_TIMEOUT_MS).at(-1)!;
  f.clock.advance(last + PUNCH_GRACE_MS - 1);
  await f.settle();
  assert.equal(f.outcome(), undefined, 'still waiting for a late pong');
  f.clock.advance(1);
  await f.settle();
  assert.equal(f.outcome(), 'failed');
  assert.equal(f.pings.length, punchSchedule(PUNCH_TIMEOUT_MS).length * 2);
  assert.equal(f.clock.pending, 0);
});

test('birthday mode: the easy side probes random ports of the hard side in batches; the hard side opens sockets and answers there', async () => {
  const easy = fakes({ mode: 'birthday' });
  easy.p.start([B], 'symmetric', 1);
  easy.clock.advance(210); // the hard side's head start (200 ms), then the first batch
  assert.equal(easy.pings.length, BIRTHDAY_BATCH);
  assert.ok(easy.pings.every((x) => x.to.host === B.host));
  easy.clock.advance(BIRTHDAY_BATCH_MS);
  assert.equal(easy.pings.length, 2 * BIRTHDAY_BATCH);
  assert.equal(easy.p.role, 'initiator');
  easy.p.close();

  const hard = fakes({ mode: 'birthday', myNat: 'symmetric', requested: false });
  hard.p.start([B], 'cone', 1);
  hard.clock.advance(0);
  assert.ok(hard.opened.length > 0);
  assert.equal(hard.pings.length, hard.opened.length, 'one low-TTL ping per socket');
  assert.ok(hard.pings.every((x) => x.ttl === 5));
  const winner = hard.opened[3];
  hard.p.onPing({ host: B.host, port: 40404 });
  assert.equal(hard.stream.firewall(winner, 40404, B.host), false);
  await hard.settle();
  assert.equal(hard.outcome(), 'direct');
  assert.equal((await hard.p.result).socket, winner);
  assert.equal(hard.closed.length, hard.opened.length - 1, 'the losing sockets are closed');
});

test('double close: cancelled once, the stream destroyed, no timer left', async () => {
  const f = fakes();
  f.p.start([A], 'cone', 1);
  f.p.close();
  f.p.close();
  await f.settle();
  assert.equal(f.outcome(), 'cancelled');
  assert.equal(f.stream.destroyed, true);
  assert.equal(f.clock.pending, 0);
  assert.equal(f.p.onPong(Buffer.alloc(12), A, 1, f.main), false);
});
