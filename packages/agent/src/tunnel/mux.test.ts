// Sessions over fake links (frames queued and delivered on demand, a link can lose everything in flight): streams
// resume from the acknowledged offsets on another link, and an OPEN, OK or RESET lost with a link is repaired.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { FrameDecoder } from '@edgemesh/common/tunnel/frame';
import { ManualClock } from './clock.ts';
import { encodeOpen, L } from './linkproto.ts';
import { MAX_STREAMS_PER_SESSION, Session, type SessionLink } from './mux.ts';
import type { TunnelStream } from './stream.ts';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const HEADER = { target: { protocol: 'tcp' as const, serviceKey: 'ns/web', ip: '10.1.0.5', port: 8080 }, timeoutMs: 3000 };

interface FakeLink extends SessionLink { closed: boolean; lost: boolean; peer?: FakeLink; queue: Buffer[]; owner: Session }

let ids = 1;
function linkPair(a: Session, b: Session): [FakeLink, FakeLink] {
  const mk = (owner: Session): FakeLink => {
    const l: FakeLink = { id: ids++, closed: false, lost: false, queue: [], owner, send: (f) => { if (!l.lost) l.queue.push(f); } };
    return l;
  };
  const x = mk(a), y = mk(b);
  x.peer = y;
  y.peer = x;
  return [x, y];
}

/** Delivers everything queued on the links (both ways) until quiet; `rounds` lets streams react in between. */
async function pump(links: FakeLink[], rounds = 20): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    let moved = false;
    for (const l of links) {
      const frames = l.queue.splice(0);
      const dec = new FrameDecoder();
      for (const f of dec.push(Buffer.concat(frames))) {
        moved = true;
        if (!l.lost) l.peer!.owner.onFrame(l.peer!, f.type, f.payload);
      }
    }
    await new Promise((r) => setImmediate(r));
    if (!moved && i > 2) return;
  }
}

function pair() {
  const clock = new ManualClock();
  const a = new Session({ localSid: randomBytes(16), odd: true, clock });
  const b = new Session({ localSid: randomBytes(16), odd: false, clock });
  const served: string[] = [];
  const bStreams: TunnelStream[] = [];
  b.onIncoming = (_h, accept) => {
    const s = accept();
    bStreams.push(s);
    const h = createHash('sha256');
    s.on('data', (c: Buffer) => h.update(c));
    s.on('end', () => { const d = h.digest('hex'); served.push(d); s.end(d); });
    s.on('error', () => {});
  };
  return { clock, a, b, served, bStreams };
}

async function attachBoth(a: Session, b: Session, x: FakeLink, y: FakeLink): Promise<void> {
  a.attach(x);
  b.attach(y);
  await pump([x, y]);
  assert.ok(a.isResumed && b.isResumed, 'both sides resumed');
}

function reader(s: TunnelStream): () => string {
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  s.on('error', () => {});
  return () => Buffer.concat(chunks).toString();
}

test('a stream resumes on a new link from the acknowledged offsets: every byte arrives once, in order', async () => {
  const { a, b, served } = pair();
  const [x1, y1] = linkPair(a, b);
  await attachBoth(a, b, x1, y1);
  const { answered } = a.open(HEADER, 3000);
  await pump([x1, y1]);
  const { stream: s } = await answered;
  const got = reader(s);
  const one = randomBytes(400_000), two = randomBytes(400_000);
  s.write(one);
  await pump([x1, y1], 3);
  // The link dies with frames in flight both ways.
  x1.lost = y1.lost = true;
  a.detach(x1);
  b.detach(y1);
  s.end(two);
  await pump([x1, y1]);
  const [x2, y2] = linkPair(a, b);
  a.attach(x2); // only one side decides; the other follows
  await pump([x2, y2]);
  assert.ok(b.isResumed, 'b followed a to the new link');
  assert.equal(b.current, y2);
  assert.deepEqual(served, [sha(Buffer.concat([one, two]))]);
  assert.equal(got(), served[0], 'the reply came back too');
});

test('an OPEN lost with its link is sent again after the move', async () => {
  const { a, b, served } = pair();
  const [x1, y1] = linkPair(a, b);
  await attachBoth(a, b, x1, y1);
  x1.lost = true; // the OPEN goes nowhere
  const { answered } = a.open(HEADER, 3000);
  let ok: TunnelStream | undefined;
  answered.then((r) => { ok = r.stream; });
  await pump([x1, y1]);
  assert.equal(ok === undefined, true, "not answered yet");
  a.detach(x1);
  const [x2, y2] = linkPair(a, b);
  a.attach(x2);
  await pump([x2, y2]);
  assert.ok(ok, 'answered over the new link');
  ok.end('hi');
  await pump([x2, y2]);
  assert.deepEqual(served, [sha(Buffer.from('hi'))]);
});

test('an OK lost with its link: the opener learns from the peer\'s ATTACH that the stream is open', async () => {
  const { a, b, served } = pair();
  const [x1, y1] = linkPair(a, b);
  await attachBoth(a, b, x1, y1);
  const { answered } = a.open(HEADER, 3000);
  let ok: TunnelStream | undefined;
  answered.then((r) => { ok = r.stream; });
  // Deliver a's OPEN, then lose b's answer.
  await pump([x1], 2);
  y1.lost = true;
  await pump([x1, y1]);
  assert.equal(ok === undefined, true, "not answered yet");
  b.detach(y1);
  a.detach(x1);
  const [x2, y2] = linkPair(a, b);
  b.attach(y2);
  await pump([x2, y2]);
  assert.ok(ok, 'the open completed through the ATTACH exchange');
  ok.end('yo');
  await pump([x2, y2]);
  assert.deepEqual(served, [sha(Buffer.from('yo'))]);
});

test('a RESET lost with its link is repaired: the side that still has the stream gets it reset', async () => {
  const { a, b, bStreams } = pair();
  const [x1, y1] = linkPair(a, b);
  await attachBoth(a, b, x1, y1);
  const { answered } = a.open(HEADER, 3000);
  await pump([x1, y1]);
  const { stream: s } = await answered;
  s.on('error', () => {});
  x1.lost = true;
  s.destroy(new Error('client went away'));
  await pump([x1, y1]);
  assert.equal(bStreams[0].destroyed, false, 'b never heard');
  a.detach(x1);
  b.detach(y1);
  const [x2, y2] = linkPair(a, b);
  a.attach(x2);
  await pump([x2, y2]);
  assert.equal(bStreams[0].destroyed, true);
});

test('an old ATTACH arriving late over a slower link does not pull the session back', async () => {
  const { a, b } = pair();
  const [x1, y1] = linkPair(a, b);
  const [x2, y2] = linkPair(a, b);
  a.attach(x1);
  const stale = x1.queue.splice(0); // held back on the slow link
  a.attach(x2);
  await pump([x2, y2]);
  assert.equal(b.current, y2);
  for (const f of new FrameDecoder().push(Buffer.concat(stale))) b.onFrame(y1, f.type, f.payload);
  assert.equal(b.current, y2, 'the stale request was ignored');
});

test('an ATTACH sent before the peer heard of a stream, arriving after its OK (another link), does not drop it', async () => {
  const { a, b, served } = pair();
  const [x1, y1] = linkPair(a, b);
  await attachBoth(a, b, x1, y1);
  // b moves to a new link; its ATTACH (listing no stream) is slow to arrive there.
  const [x2, y2] = linkPair(a, b);
  b.attach(y2);
  const held = y2.queue.splice(0);
  // a opens on the old link; b answers the way the OPEN came: a has the stream established.
  const { answered } = a.open(HEADER, 3000);
  await pump([x1, y1]);
  const { stream: s } = await answered;
  const got = reader(s);
  // Now b's ATTACH arrives: its state predates the stream, so it must not count as "the peer lost it".
  for (const f of new FrameDecoder().push(Buffer.concat(held))) a.onFrame(x2, f.type, f.payload);
  await pump([x1, y1, x2, y2]);
  assert.equal(s.destroyed, false, 'the stream was kept');
  s.end('after the move');
  await pump([x1, y1, x2, y2]);
  assert.deepEqual(served, [sha(Buffer.from('after the move'))]);
  assert.equal(got(), served[0], 'the reply came back over the new link');
});

test('a stream the peer really dropped (absent from its answer to a later ATTACH) is ended', async () => {
  const { a, b, bStreams } = pair();
  const [x1, y1] = linkPair(a, b);
  await attachBoth(a, b, x1, y1);
  const { answered } = a.open(HEADER, 3000);
  await pump([x1, y1]);
  const { stream: s } = await answered;
  s.on('error', () => {});
  // b drops the stream and its RESET is lost with the old link.
  y1.lost = true;
  bStreams[0].destroy();
  await pump([x1, y1]);
  a.detach(x1);
  b.detach(y1);
  const [x2, y2] = linkPair(a, b);
  a.attach(x2);
  await pump([x2, y2]);
  assert.equal(s.destroyed, true, 'ended: the peer answered an ATTACH sent after the stream opened without it');
});

test('streams the peer opens count against the session limit, also while their dial is under way', async () => {
  const { a, b } = pair();
  const [x, y] = linkPair(a, b);
  await attachBoth(a, b, x, y);
  let offered = 0;
  b.onIncoming = () => { offered++; }; // never answered: every dial hangs
  for (let i = 0; i <= MAX_STREAMS_PER_SESSION; i++) x.send(encodeOpen(1 + 2 * i, HEADER));
  const answers: number[] = [];
  y.send = (f) => { answers.push(f[0]); };
  await pump([x]);
  assert.equal(offered, MAX_STREAMS_PER_SESSION);
  assert.deepEqual(answers, [L.ERR]);
});

test('a stream accepted after the session ended is closed at once (its local socket is released)', async () => {
  const { a, b } = pair();
  const [x, y] = linkPair(a, b);
  await attachBoth(a, b, x, y);
  let accept: (() => TunnelStream) | undefined;
  b.onIncoming = (_h, acc) => { accept = acc; };
  a.open(HEADER, 3000).answered.catch(() => {});
  await pump([x, y]);
  assert.ok(accept);
  b.close(new Error('gone'));
  const s = accept();
  await new Promise((r) => s.once('close', r));
  assert.equal(s.destroyed, true);
});

test('both sides moving at once, each to another link, end on one link (the odd side\'s): no session on two paths', async () => {
  for (const [aOn, order] of [['direct', 'direct-first'], ['direct', 'relay-first'], ['relay', 'direct-first'], ['relay', 'relay-first']] as const) {
    const { a, b, served } = pair();
    const [ra, rb] = linkPair(a, b);
    const [da, db] = linkPair(a, b);
    // a (odd) moves to one link while b, which has not seen that one yet, moves to the other.
    a.attach(aOn === 'direct' ? da : ra);
    b.attach(aOn === 'direct' ? rb : db);
    await pump(order === 'direct-first' ? [da, db, ra, rb] : [ra, rb, da, db]);
    const want = aOn === 'direct' ? [da, db] : [ra, rb];
    assert.equal(a.current, want[0], `${aOn} ${order}: a stays on its link`);
    assert.equal(b.current, want[1], `${aOn} ${order}: b follows a`);
    assert.ok(a.isResumed && b.isResumed, `${aOn} ${order}: both resumed`);
    const { stream, answered } = a.open(HEADER, 3000);
    const read = reader(stream!);
    stream!.end('ping');
    await pump([da, db, ra, rb]);
    await answered;
    assert.equal(read(), sha(Buffer.from('ping')), `${aOn} ${order}: a stream works after`);
    assert.equal(served.length, 1);
    // Nothing went on the link the session left.
    const left = aOn === 'direct' ? [ra, rb] : [da, db];
    let sent = 0;
    for (const l of left) { const send = l.send; l.send = (f) => { sent++; send(f); }; }
    const s2 = a.open(HEADER, 3000);
    reader(s2.stream!);
    s2.stream!.end('again');
    await pump([da, db, ra, rb]);
    await s2.answered;
    assert.equal(sent, 0, `${aOn} ${order}: the left link carries nothing`);
  }
});

test('moves crossing in any order on three links end with both sides on one link, resumed, where the last moves went; a stream carried through them is intact', async () => {
  // Random schedules (seeded: a failure names its seed): each side moves a few times (PeerPaths' choice changing as
  // links come and go), frames are delivered one at a time from any link in random order (each link in order), and
  // both sides' last move is to the same link. The old rule (the even side follows, the odd side keeps its own on a
  // cross) left about one schedule in twenty on two links for good.
  const SCHEDULES = 300;
  let seed = 1;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  for (let n = 0; n < SCHEDULES; n++) {
    const { a, b, served } = pair();
    const ls = [linkPair(a, b), linkPair(a, b), linkPair(a, b)];
    const all = ls.flat();
    const deliverOne = () => {
      const busy = all.filter((l) => l.queue.length);
      if (!busy.length) return false;
      const l = busy[Math.floor(rnd() * busy.length)];
      for (const f of new FrameDecoder().push(l.queue.shift()!)) l.peer!.owner.onFrame(l.peer!, f.type, f.payload);
      return true;
    };
    await attachBoth(a, b, ls[0][0], ls[0][1]);
    const { stream, answered } = a.open(HEADER, 3000);
    const read = reader(stream!);
    const sent: Buffer[] = [];
    const final = 1 + Math.floor(rnd() * 2);
    const moves = [0, 1].map(() => [...Array.from({ length: Math.floor(rnd() * 3) }, () => Math.floor(rnd() * 3)), final]);
    while (moves[0].length || moves[1].length) {
      const r = rnd();
      if (r < 0.5) deliverOne();
      else if (r < 0.6) { const c = randomBytes(1 + Math.floor(rnd() * 2000)); sent.push(c); stream!.write(c); }
      else {
        const side = moves[0].length && (!moves[1].length || rnd() < 0.5) ? 0 : 1;
        const to = ls[moves[side].shift()!][side];
        const s = side === 0 ? a : b;
        if (s.current !== to) s.attach(to);
      }
      if (rnd() < 0.2) await new Promise((res) => setImmediate(res));
    }
    for (let i = 0; i < 10_000 && deliverOne(); i++);
    const why = `schedule ${n}`;
    assert.equal(a.current, ls[final][0], `${why}: a on the link both moved to last`);
    assert.equal(b.current, ls[final][1], `${why}: b on the link both moved to last`);
    assert.ok(a.isResumed && b.isResumed, `${why}: both resumed`);
    stream!.end();
    await pump(all, 200);
    await answered;
    assert.equal(read(), sha(Buffer.concat(sent)), `${why}: every byte arrived once, in order`);
    assert.equal(served.length, 1);
  }
});
