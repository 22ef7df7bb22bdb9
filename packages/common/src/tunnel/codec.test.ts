import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { encodeFrame, encodeStreamFrame, FrameDecoder, FrameError } from './frame.ts';
import { agentProof, ControlMac, serverProof, newNonce } from './auth.ts';
import { bindingRequest, bindingSuccess, BINDING_REQUEST, BINDING_SUCCESS, decodeStun, looksLikeStun, newTxid, stunKey } from './stun.ts';
import { generateKeyPair, keyPairFromSecret, signRaw, verifyRaw } from './ed25519.ts';

test('frames survive arbitrary chunking', () => {
  const frames = [encodeFrame(1, Buffer.from('hello')), encodeStreamFrame(20, 7, randomBytes(1000)), encodeFrame(9)];
  const all = Buffer.concat(frames);
  const dec = new FrameDecoder();
  const out = [];
  for (let i = 0; i < all.length; i += 3) out.push(...dec.push(all.subarray(i, i + 3)));
  assert.equal(out.length, 3);
  assert.equal(out[0].payload.toString(), 'hello');
  assert.equal(out[1].payload.readUInt32BE(0), 7);
  assert.equal(out[1].payload.length, 1004);
  assert.equal(out[2].payload.length, 0);
  assert.equal(dec.pending, 0);
});

test('a big frame trickled in many chunks: pending counts what is held, the frame comes out whole once', () => {
  const payload = randomBytes(200_000);
  const all = Buffer.concat([encodeFrame(3, payload), encodeFrame(4, Buffer.from('next'))]);
  const dec = new FrameDecoder();
  const out = [];
  let held = 0;
  for (let i = 0; i < all.length; i += 997) {
    const part = all.subarray(i, i + 997);
    const got = dec.push(part);
    out.push(...got);
    held = got.length ? dec.pending : held + part.length;
    assert.equal(dec.pending, held);
  }
  assert.deepEqual(out.map((f) => f.type), [3, 4]);
  assert.ok(out[0].payload.equals(payload));
  assert.equal(out[1].payload.toString(), 'next');
  assert.equal(dec.pending, 0);
});

test('an oversized frame is an error, not an allocation', () => {
  const b = Buffer.alloc(5);
  b[0] = 1;
  b.writeUInt32BE(0xffffffff, 1);
  assert.throws(() => new FrameDecoder().push(b), FrameError);
});

test('proofs bind role, nonces, node and key', () => {
  const a = newNonce(), s = newNonce(), k = randomBytes(32);
  assert.notDeepEqual(serverProof('t'.repeat(16), a, s), serverProof('t'.repeat(16), s, a));
  assert.notDeepEqual(agentProof('t'.repeat(16), a, s, 'n1', k), agentProof('t'.repeat(16), a, s, 'n2', k));
  assert.notDeepEqual(agentProof('t'.repeat(16), a, s, 'n1', k), agentProof('u'.repeat(16), a, s, 'n1', k));
});

test('control MACs reject forgery, replay and reflection', () => {
  const key = randomBytes(32);
  const agent = new ControlMac(key, 'agent');
  const server = new ControlMac(key, 'server');
  const m1 = agent.seal(10, Buffer.from('{"a":1}'));
  assert.equal(server.open(10, m1)?.toString(), '{"a":1}');
  assert.equal(server.open(10, m1), undefined, 'replay accepted');
  const m2 = agent.seal(10, Buffer.from('{"a":2}'));
  const forged = Buffer.from(m2);
  forged[2] ^= 1;
  assert.equal(server.open(10, forged), undefined, 'forgery accepted');
  assert.equal(server.open(11, m2), undefined, 'type change accepted');
  assert.equal(agent.open(10, m2), undefined, 'reflection accepted');
  assert.equal(server.open(10, m2)?.toString(), '{"a":2}');
});

test('STUN binding request/response round trip with integrity and fingerprint', () => {
  const key = stunKey('x'.repeat(16));
  const tx = newTxid();
  const req = bindingRequest(tx, key);
  assert.ok(looksLikeStun(req));
  const d = decodeStun(req, key)!;
  assert.equal(d.type, BINDING_REQUEST);
  assert.ok(d.integrity && d.fingerprint);
  assert.equal(decodeStun(req, stunKey('y'.repeat(16)))!.integrity, false);
  const res = bindingSuccess(tx, { host: '203.0.113.7', port: 40001 }, key);
  const r = decodeStun(res, key)!;
  assert.equal(r.type, BINDING_SUCCESS);
  assert.deepEqual(r.mapped, { host: '203.0.113.7', port: 40001 });
  assert.ok(r.integrity);
  const r6 = decodeStun(bindingSuccess(tx, { host: '2001:db8::1', port: 5 }, key), key)!;
  assert.deepEqual(r6.mapped, { host: '2001:db8:0:0:0:0:0:1', port: 5 });
  const bad = Buffer.from(res);
  bad[bad.length - 1] ^= 1;
  assert.equal(decodeStun(bad, key), undefined, 'bad fingerprint accepted');
});

test('STUN decoder never throws on garbage', () => {
  const key = stunKey('x'.repeat(16));
  const valid = bindingRequest(newTxid(), key);
  for (let i = 0; i < 3000; i++) {
    const b = i % 2 ? randomBytes(i % 120) : Buffer.from(valid);
    if (i % 2 === 0) for (let j = 0; j < 1 + (i % 4); j++) b[(i * 7 + j * 13) % b.length] = (i * 31 + j) & 255;
    decodeStun(b, key);
  }
});

test('ed25519 raw keys sign, verify and round-trip', () => {
  const kp = generateKeyPair();
  const sig = signRaw(kp.secretKey, Buffer.from('m'));
  assert.ok(verifyRaw(kp.publicKey, Buffer.from('m'), sig));
  assert.equal(verifyRaw(kp.publicKey, Buffer.from('n'), sig), false);
  assert.deepEqual(keyPairFromSecret(kp.secretKey)?.publicKey, kp.publicKey);
  const broken = Buffer.from(kp.secretKey);
  broken[40] ^= 1;
  assert.equal(keyPairFromSecret(broken), undefined);
});

test('stream frames: the same layout for every layer, decoded only when well-formed', async () => {
  const { decodeStreamFrame, encodeCredit, encodeData, encodeEnd, encodeReset } = await import('./streams.ts');
  const t = { DATA: 20, CREDIT: 21, END: 22, RESET: 23 };
  const dec = new FrameDecoder();
  const big = 2 ** 40 + 5;
  const frames = dec.push(Buffer.concat([encodeData(t, 7, big, Buffer.from('abc')), encodeCredit(t, 7, big + 3), encodeEnd(t, 7, big + 3), encodeReset(t, 7)]));
  assert.deepEqual(frames.map((f) => decodeStreamFrame(t, f.type, f.payload)), [
    { kind: 'data', id: 7, offset: big, bytes: Buffer.from('abc') },
    { kind: 'credit', id: 7, ack: big + 3 },
    { kind: 'end', id: 7, fin: big + 3 },
    { kind: 'reset', id: 7 },
  ]);
  assert.equal(decodeStreamFrame(t, t.CREDIT, Buffer.alloc(8)), undefined, 'old 8-byte credit');
  assert.equal(decodeStreamFrame(t, t.DATA, Buffer.alloc(11)), undefined);
  assert.equal(decodeStreamFrame(t, 99, Buffer.alloc(12)), undefined);
  // DATA built in a buffer the caller gives (a Noise link's, encrypted in place): that buffer, the same bytes.
  const sizes: number[] = [];
  const own = Buffer.alloc(64, 0xee);
  const inPlace = encodeData(t, 7, big, Buffer.from('abc'), (n) => { sizes.push(n); return own.subarray(0, n); });
  assert.deepEqual(sizes, [5 + 12 + 3]);
  assert.equal(inPlace.buffer, own.buffer);
  assert.deepEqual(inPlace, encodeData(t, 7, big, Buffer.from('abc')));
});

test('FlowWindow: in-order bytes within the window; repeats trimmed, gaps and overflow refused', async () => {
  const { FlowWindow } = await import('./streams.ts');
  const w = new FlowWindow(100);
  assert.deepEqual(w.data(0, 60), { ok: true, skip: 0 });
  assert.deepEqual(w.data(50, 20), { ok: true, skip: 10 }, 'overlap: only the new bytes');
  assert.deepEqual(w.data(0, 30), { ok: false, why: 'duplicate' });
  assert.deepEqual(w.data(80, 5), { ok: false, why: 'gap' });
  assert.deepEqual(w.data(70, 31), { ok: false, why: 'overflow' }, 'beyond ack + window');
  assert.equal(w.acknowledge(71), false, 'cannot acknowledge bytes not taken');
  assert.equal(w.acknowledge(70), true);
  assert.equal(w.acknowledge(60), false, 'acknowledgements only grow');
  assert.deepEqual(w.data(70, 100), { ok: true, skip: 0 });
  assert.equal(w.end(169), false, 'END only at the next position');
  assert.equal(w.end(170), true);
  assert.equal(w.next, 171, 'END takes one position');
  assert.equal(w.acknowledge(171), true);
});

test('control messages are validated into typed values; candidates bounded, bad ones dropped', async () => {
  const { decodeControl, encodeControl, MAX_CANDIDATES, T } = await import('./protocol.ts');
  const key = randomBytes(32);
  const cand = [{ host: '1.2.3.4', port: 5, kind: 'lan' }, { host: 'evil.example', port: 5 }, { host: '1.2.3.4', port: 0 }, 'x', ...Array(40).fill({ host: '1.1.1.1', port: 1 })];
  const sig = randomBytes(64);
  const body = Buffer.from(JSON.stringify({ to: 'b', sid: '0123456789abcdef', mode: 'weird', cand, nat: 'cone', streamId: 9, ts: 1, cert: key.toString('base64'), sig: sig.toString('base64') }));
  const m = decodeControl(T.RENDEZVOUS, body)!;
  assert.equal(m.cand[0].kind, 'lan');
  assert.ok(m.cand.length <= MAX_CANDIDATES);
  assert.ok(m.cand.every((c) => c.host !== 'evil.example' && c.port > 0));
  assert.equal(m.mode, 'normal', 'an unknown mode falls back');
  assert.deepEqual(m.sig, sig, 'base64 fields arrive as Buffers');
  assert.equal(decodeControl(T.RENDEZVOUS, Buffer.from(JSON.stringify({ sid: 'x', cand: [], streamId: 1 }))), undefined, 'bad sid');
  assert.equal(decodeControl(T.ENROLL, Buffer.from(JSON.stringify({ v: 3, method: 'join', name: 'n', key: 'AAAA', token: '', sig: sig.toString('base64') }))), undefined, 'short key');
  const again = decodeControl(T.ENROLL, encodeControl(T.ENROLL, { v: 3, method: 'join', name: 'n', key, token: 't', sig }));
  assert.deepEqual(again, { v: 3, method: 'join', name: 'n', key, token: 't', sig });
  assert.equal(decodeControl(T.PING, Buffer.from('not json')), undefined);
});
