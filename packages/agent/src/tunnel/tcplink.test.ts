// The TCP transport on loopback: mutual TLS 1.3 with link certificates, who may connect, the listener's budgets, and
// a link (HELLO proof over the TLS exporter) carrying frames.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect as netConnect } from 'node:net';
import { Budgets } from '@edgemesh/common/budget';
import { silentLogger } from '@edgemesh/common/log';
import { generateKeyPair } from '@edgemesh/common/tunnel/ed25519';
import { encodeFrame } from '@edgemesh/common/tunnel/frame';
import { makeRealClock } from './clock.ts';
import { checkHello, helloProof } from './identity.ts';
import { Link } from './link.ts';
import { encodeHello, SID_BYTES } from './linkproto.ts';
import { BUDGET_TCP_PENDING, dialTcpLink, REFUSAL_TCP_HANDSHAKE_TIMEOUT, REFUSAL_TCP_NOT_A_PEER, TcpLinkListener, TcpLinkTls, type TcpPeer } from './tcplink.ts';
import { fakeCa } from './testfixture.ts';

function node(cas: ReturnType<typeof fakeCa>, name: string, revoked?: Set<string>) {
  const keyPair = generateKeyPair();
  const cert = cas.issue(name, keyPair.publicKey);
  const identity = cas.identity(cert, revoked && { isRevoked: (c) => revoked.has(c.name) });
  return { name, keyPair, cert, identity, tls: new TcpLinkTls({ node: name, keyPair, identity }) };
}

async function listener(n: ReturnType<typeof node>, o: { peers?: string[]; maxPending?: number; handshakeTimeoutMs?: number } = {}) {
  const budgets = new Budgets();
  const accepted: TcpPeer[] = [];
  const refused: string[] = [];
  const l = new TcpLinkListener({
    port: 0, host: '127.0.0.1', tls: n.tls, identity: n.identity, budgets, log: silentLogger, isPeerNode: (x) => (o.peers ?? ['a']).includes(x),
    onPeer: (p) => accepted.push(p), onRefused: (why) => refused.push(why), maxPending: o.maxPending, handshakeTimeoutMs: o.handshakeTimeoutMs,
  });
  assert.equal(await l.listen(), true);
  return { l, budgets, accepted, refused, addr: { host: '127.0.0.1', port: l.port } };
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(cond(), what);
}

test('a dial reaches the node it meant: both sides learn the other\'s name and key, and share the TLS binding', async () => {
  const cas = fakeCa();
  const a = node(cas, 'a');
  const b = node(cas, 'b');
  const s = await listener(b);
  try {
    const p = await dialTcpLink([s.addr], 'b', a.tls, a.identity);
    await until(() => s.accepted.length === 1, 'b accepted the link');
    const q = s.accepted[0];
    assert.equal(p.node, 'b');
    assert.equal(q.node, 'a');
    assert.ok(p.remoteKey.equals(b.keyPair.publicKey));
    assert.ok(q.remoteKey.equals(a.keyPair.publicKey));
    assert.equal(p.binding.length, 32);
    assert.ok(p.binding.equals(q.binding), 'the exporter value is the same on both ends');
    assert.equal(p.socket.getProtocol(), 'TLSv1.3');
    p.socket.destroy();
    q.socket.destroy();
  } finally {
    await s.l.close();
  }
});

test('a dial that reaches another node than it meant fails before a link', async () => {
  const cas = fakeCa();
  const a = node(cas, 'a');
  const b = node(cas, 'b');
  const s = await listener(b);
  try {
    await assert.rejects(dialTcpLink([s.addr], 'c', a.tls, a.identity), /reached node b, not c/);
  } finally {
    await s.l.close();
  }
});

test('the listener refuses a caller that is not a peer node, is revoked, or has another CA\'s certificate', async () => {
  const cas = fakeCa();
  const revoked = new Set(['r']);
  const b = node(cas, 'b', revoked);
  const s = await listener(b, { peers: ['a', 'r', 'x'] });
  try {
    const stranger = node(cas, 'z');
    const r = node(cas, 'r');
    // A certificate of another CA (the dialer itself trusts ours, so only the listener's check decides).
    const foreign = node(fakeCa(), 'x');
    const other = { ...foreign, identity: { ourCert: () => foreign.cert.raw, verifyPeer: stranger.identity.verifyPeer } };
    other.tls = new TcpLinkTls({ node: 'x', keyPair: foreign.keyPair, identity: other.identity });
    for (const c of [stranger, r, other]) {
      // The dialer sees the connection closed (before or right after its own check).
      await dialTcpLink([s.addr], 'b', c.tls, c.identity).then((p) => new Promise<void>((res) => { p.socket.once('close', () => res()); p.socket.resume(); }), () => {});
    }
    await until(() => s.refused.length === 3, 'three refusals');
    assert.match(s.refused[0], /z is not a peer node/);
    assert.match(s.refused[1], /refused: revoked/);
    assert.match(s.refused[2], /refused: (wrong-issuer|bad-signature)/);
    assert.equal(s.budgets.refused(REFUSAL_TCP_NOT_A_PEER), 3);
    assert.equal(s.accepted.length, 0);
  } finally {
    await s.l.close();
  }
});

test('the listener holds at most maxPending unverified connections and drops a handshake over its time', async () => {
  const cas = fakeCa();
  const b = node(cas, 'b');
  const s = await listener(b, { maxPending: 2, handshakeTimeoutMs: 300 });
  const socks = Array.from({ length: 3 }, () => netConnect(s.addr.port, '127.0.0.1'));
  const closed = socks.map((x) => new Promise<void>((r) => x.on('close', () => r())));
  for (const x of socks) x.on('error', () => {});
  try {
    await until(() => s.budgets.refused(BUDGET_TCP_PENDING) === 1, 'the third connection is refused');
    await Promise.all(closed);
    assert.equal(s.budgets.refused(REFUSAL_TCP_HANDSHAKE_TIMEOUT), 2, 'the two silent ones timed out');
    // Their leases came back: a real dial goes through.
    const a = node(cas, 'a');
    const p = await dialTcpLink([s.addr], 'b', a.tls, a.identity);
    p.socket.destroy();
  } finally {
    await s.l.close();
  }
});

test('a link over TLS: HELLO proofs bound to the exporter check on both sides, frames flow, a proof from another connection fails', async () => {
  const cas = fakeCa();
  const a = node(cas, 'a');
  const b = node(cas, 'b');
  const s = await listener(b);
  const clock = makeRealClock((e) => { throw e; });
  const sid = (x: number) => Buffer.alloc(SID_BYTES, x);
  const mk = (me: ReturnType<typeof node>, peer: string, p: TcpPeer, initiator: boolean, mySid: Buffer) => Link.overTls({ stream: p.socket, kind: 'tcp', remote: p.remote }, {
    keyPair: me.keyPair, peer, initiator, clock,
    hello: (hh, rk) => encodeHello({ sid: mySid, peerSid: Buffer.alloc(SID_BYTES), proof: helloProof(me.keyPair, rk, hh, mySid, Buffer.alloc(SID_BYTES)), identity: me.identity.ourCert() }),
  }, p.remoteKey, p.binding);
  try {
    const p = await dialTcpLink([s.addr], 'b', a.tls, a.identity);
    await until(() => s.accepted.length === 1, 'accepted');
    const la = mk(a, 'b', p, true, sid(1));
    const lb = mk(b, 'a', s.accepted[0], false, sid(2));
    const [ha, hb] = await Promise.all([la.hello, lb.hello]);
    assert.ok(!('why' in checkHello(a.identity, a.keyPair, 'b', la, ha)), 'a accepts b\'s HELLO');
    assert.ok(!('why' in checkHello(b.identity, b.keyPair, 'a', lb, hb)), 'b accepts a\'s HELLO');
    // The same HELLO presented on a connection with another binding is refused.
    const other = { remoteKey: la.remoteKey, handshakeHash: Buffer.alloc(32, 7) };
    assert.deepEqual((checkHello(a.identity, a.keyPair, 'b', other, ha) as { reason: string }).reason, 'proof');
    const got: Buffer[] = [];
    lb.start((_t, payload) => got.push(payload));
    la.start(() => {});
    const big = Buffer.alloc(300_000, 9);
    la.send(encodeFrame(6, big));
    await until(() => got.length === 1, 'the frame arrived');
    assert.ok(got[0].equals(big));
    assert.equal(la.transport, 'tcp');
    assert.equal(la.kind, 'direct');
    la.close();
    lb.close();
  } finally {
    await s.l.close();
  }
});
