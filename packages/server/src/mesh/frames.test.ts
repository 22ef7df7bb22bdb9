import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FrameDecoder } from '@edgemesh/common/tunnel/frame';
import { T } from '@edgemesh/common/tunnel/protocol';
import {
  decodeHello, decodeMid, decodeOpen, decodeOpenFail, decodePing, decodePresence, decodeRendezvous, decodeRevocations, encodeHello, encodeOpen, encodeOpened,
  encodeOpenFail, encodePing, encodePresence, encodeRendezvous, encodeRevocations, M, MESH_FRAMES, PRESENCE_NAMES_PER_FRAME,
} from './frames.ts';

const one = (b: Buffer) => {
  const f = new FrameDecoder().push(b);
  assert.equal(f.length, 1);
  return f[0];
};

test('mesh frame types are one block (64-79) apart from every agent<->server type', () => {
  const agent = new Set<number>(Object.values(T));
  for (const f of MESH_FRAMES) {
    assert.ok(f.type >= 64 && f.type <= 79, f.name);
    assert.ok(!agent.has(f.type), f.name);
  }
  assert.equal(new Set(MESH_FRAMES.map((f) => f.type)).size, MESH_FRAMES.length);
});

test('HELLO, OPEN, OPENED, OPEN_FAIL, PING round-trip; trailing or missing bytes are refused', () => {
  const id = Buffer.from('0123456789abcdef', 'hex');
  const h = one(encodeHello(id));
  assert.equal(h.type, M.HELLO);
  assert.deepEqual(decodeHello(h.payload), { version: 1, id });
  assert.equal(decodeHello(Buffer.concat([h.payload, Buffer.from([0])])), undefined);
  const o = one(encodeOpen(7, 'node-a', 'node.b'));
  assert.deepEqual(decodeOpen(o.payload), { mid: 7, from: 'node-a', to: 'node.b' });
  assert.equal(decodeOpen(Buffer.concat([o.payload, Buffer.from([1])])), undefined);
  assert.equal(decodeOpen(o.payload.subarray(0, o.payload.length - 1)), undefined);
  assert.equal(decodeMid(one(encodeOpened(9)).payload), 9);
  assert.deepEqual(decodeOpenFail(one(encodeOpenFail(3, 'limit')).payload), { mid: 3, code: 'limit' });
  assert.equal(decodeOpenFail(Buffer.from([0, 0, 0, 3, 9])), undefined);
  assert.equal(decodePing(one(encodePing(M.PING, 1234.5)).payload), 1234.5);
});

test('presence is chunked; a name that is not a node name refuses the whole frame', () => {
  const names = Array.from({ length: PRESENCE_NAMES_PER_FRAME + 5 }, (_, i) => `n${i}`);
  const frames = encodePresence(M.PRESENCE_ADD, names);
  assert.equal(frames.length, 2);
  assert.deepEqual(frames.flatMap((f) => decodePresence(one(f).payload)!), names);
  assert.deepEqual(encodePresence(M.PRESENCE_DEL, []), []);
  const bad = Buffer.from([0, 1, 3, 0x2f, 0x2e, 0x2e]); // "/.."
  assert.equal(decodePresence(bad), undefined);
  assert.equal(decodePresence(Buffer.from([0, 2, 1, 0x61])), undefined); // count says 2, one name
  assert.throws(() => encodePresence(M.PRESENCE_ADD, ['bad name']));
});

test('rendezvous keeps the signed offer bytes unchanged; revocations split signature and body', () => {
  const offer = Buffer.from(JSON.stringify({ sid: '0011223344556677', sig: 'x' }));
  const r = decodeRendezvous(one(encodeRendezvous({ from: 'a', to: 'b', rttFromMs: 70_000, offer })).payload)!;
  assert.equal(r.from, 'a');
  assert.equal(r.to, 'b');
  assert.equal(r.rttFromMs, 0xffff, 'clamped to u16');
  assert.ok(r.offer.equals(offer));
  const sig = Buffer.alloc(64, 7);
  const v = decodeRevocations(one(encodeRevocations(Buffer.from('{}'), sig)).payload)!;
  assert.ok(v.signature.equals(sig));
  assert.equal(v.body.toString(), '{}');
  assert.equal(decodeRevocations(sig), undefined);
});
