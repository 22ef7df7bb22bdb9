import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { checkTarget } from './target.ts';
import { DatagramDecoder, encodeDatagram } from './datagram.ts';
import { FrameDecoder } from '@edgemesh/common/tunnel/frame';
import { TunnelStream, type StreamIO } from './stream.ts';
import { loadOrCreateKeyPair, KEY_FILE } from './keys.ts';
import { decodeOpen, encodeOpen } from './linkproto.ts';
import { departedNodes } from './tunnel.ts';
import type { Snapshot } from '../cluster/types.ts';

const snap: Snapshot = {
  version: 1,
  services: new Map([['ns/web', {
    key: 'ns/web', namespace: 'ns', name: 'web', type: 'ClusterIP', clusterIPs: ['10.0.0.1'], headless: false,
    ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }], sessionAffinity: 'None', affinityTimeoutSeconds: 10800,
    internalTrafficPolicy: 'Cluster', labels: {}, annotations: {},
  }]]),
  endpoints: new Map([['ns/web', [{
    address: '10.1.0.5', addresses: ['10.1.0.5'], addressType: 'IPv4', nodeName: 'b', ready: true, serving: true, terminating: false,
    ports: [{ name: 'http', port: 8080, protocol: 'TCP' }], slice: 'ns/web-1',
  }]]]),
  nodes: new Map(),
  destinationRules: new Map(),
};

test('checkTarget allows only endpoints of known Services with matching port and protocol', () => {
  assert.deepEqual(checkTarget(snap, { protocol: 'tcp', serviceKey: 'ns/web', ip: '10.1.0.5', port: 8080 }), { ok: true });
  assert.equal(checkTarget(snap, { protocol: 'udp', serviceKey: 'ns/web', ip: '10.1.0.5', port: 8080 }).ok, false);
  assert.equal(checkTarget(snap, { protocol: 'tcp', serviceKey: 'ns/web', ip: '10.1.0.5', port: 22 }).ok, false);
  assert.equal(checkTarget(snap, { protocol: 'tcp', serviceKey: 'ns/web', ip: '127.0.0.1', port: 8080 }).ok, false);
  assert.equal(checkTarget(snap, { protocol: 'tcp', serviceKey: 'ns/other', ip: '10.1.0.5', port: 8080 }).ok, false);
});

test('stream headers (OPEN) carry a DialTarget and the caller\'s remaining time; bad ones are refused', () => {
  const target = { protocol: 'tcp' as const, serviceKey: 'ns/web', ip: '10.1.0.5', port: 8080 };
  const [f] = new FrameDecoder().push(encodeOpen(4, { target, timeoutMs: 2750 }));
  assert.deepEqual(decodeOpen(f.payload), { id: 4, header: { target, timeoutMs: 2750 } });
  const bad = Buffer.from(f.payload);
  bad[4] = 9; // no such protocol
  assert.deepEqual(decodeOpen(bad), { id: 4, header: undefined });
  assert.equal(decodeOpen(Buffer.alloc(2)), undefined);
  const [g] = new FrameDecoder().push(encodeOpen(6, { target: { ...target, ip: 'not-an-ip' }, timeoutMs: 1 }));
  assert.equal(decodeOpen(g.payload)?.header, undefined);
});

test('datagrams keep their boundaries across any chunking', () => {
  const ds = [Buffer.alloc(0), randomBytes(1), randomBytes(1400), randomBytes(65535)];
  const wire = Buffer.concat(ds.map(encodeDatagram));
  const dec = new DatagramDecoder();
  const out: Buffer[] = [];
  for (let i = 0; i < wire.length; i += 1000) out.push(...dec.push(wire.subarray(i, i + 1000)));
  assert.deepEqual(out, ds);
  assert.throws(() => encodeDatagram(Buffer.alloc(65536)));
});

const io = (o: Partial<StreamIO> = {}): StreamIO => ({ canSend: () => true, data: () => {}, credit: () => {}, end: () => {}, reset: () => {}, closed: () => {}, ...o });

test('TunnelStream sends no more than its window beyond the acknowledgement', async () => {
  const sent: [number, number][] = [];
  const s = new TunnelStream(io({ data: (off, c) => sent.push([off, c.length]) }), 1000);
  s.write(Buffer.alloc(2500));
  await new Promise((r) => setImmediate(r));
  const total = () => sent.reduce((n, [, l]) => n + l, 0);
  assert.equal(total(), 1000);
  s.onCredit(1000);
  assert.equal(total(), 2000);
  s.onCredit(6000); // beyond what was written: ignored
  assert.equal(total(), 2000);
  s.onCredit(2000);
  assert.equal(total(), 2500);
  assert.deepEqual(sent.map(([o]) => o), [0, 1000, 2000], 'every frame names its offset');
  s.destroy();
});

test('TunnelStream acknowledges as its reader consumes', async () => {
  const acks: number[] = [];
  const s = new TunnelStream(io({ credit: (n) => acks.push(n) }), 4000);
  s.onData(0, Buffer.alloc(1500));
  assert.deepEqual(acks, [1500]);
  s.destroy();
  // A window larger than the readable buffer: a reader that stops holds the acknowledgement back until it reads again.
  const slow = new TunnelStream(io({ credit: (n) => acks.push(n) }), 400_000);
  slow.pause();
  slow.onData(0, Buffer.alloc(100_000));
  const before = acks.length;
  slow.read();
  slow.resume();
  await new Promise((r) => setImmediate(r));
  assert.ok(acks.length > before);
  slow.destroy();
});

test('TunnelStream resets a stream whose peer sends beyond its window (bounded buffering); repeats are trimmed', () => {
  let resets = 0;
  const s = new TunnelStream(io({ reset: () => { resets++; } }), 400_000);
  const got: Buffer[] = [];
  s.on('data', (c: Buffer) => got.push(c));
  s.on('error', () => {});
  s.pause();
  s.onData(0, Buffer.from('abcdef'));
  s.onData(3, Buffer.from('defgh'));
  s.onData(20, Buffer.from('gap'));
  assert.equal(s.readableLength, 8, 'repeated bytes trimmed, the gap dropped');
  s.onData(8, Buffer.alloc(300_000));
  assert.equal(s.destroyed, false, 'within the window');
  s.onData(300_008, Buffer.alloc(100_001));
  assert.equal(s.destroyed, true);
  assert.equal(resets, 1, 'the peer is told');
});

test('TunnelStream resends from the offset the peer reports after a move, and keeps only unacknowledged bytes', async () => {
  const sent: [number, string][] = [];
  let up = true;
  const s = new TunnelStream(io({ canSend: () => up, data: (off, c) => sent.push([off, c.toString()]) }), 1000);
  s.write('hello ');
  s.write('world');
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(sent, [[0, 'hello '], [6, 'world']]);
  up = false; // the transport died; the peer had received 'hel' and acknowledged 2 bytes
  s.write('!');
  await new Promise((r) => setImmediate(r));
  assert.equal(sent.length, 2, 'nothing is sent without a transport');
  up = true;
  sent.length = 0;
  s.resumeFrom(3, 2);
  assert.deepEqual(sent, [[3, 'lo '], [6, 'world'], [11, '!']]);
  s.destroy();
});

test('a stream destroyed after its END lingers until the END is acknowledged, then resets (the reply is never cut)', async () => {
  const frames: string[] = [];
  let closed = false;
  const s = new TunnelStream(io({ data: (o, c) => frames.push(`data ${o} ${c.length}`), end: (f) => frames.push(`end ${f}`), reset: () => frames.push('reset'), closed: () => { closed = true; } }));
  s.end(Buffer.alloc(10));
  await new Promise((r) => s.once('finish', r));
  s.destroy();
  assert.deepEqual(frames, ['data 0 10', 'end 10']);
  assert.equal(closed, false, 'kept for resumption');
  s.resumeFrom(4, 0);
  assert.deepEqual(frames.slice(2), ['data 4 6', 'end 10'], 'still resent after a move');
  s.onCredit(11);
  assert.deepEqual(frames.slice(-1), ['reset']);
  assert.equal(closed, true);
});

test('a reset after the peer ended is not an error: the reader gets every byte, then the stream closes', async () => {
  const s = new TunnelStream(io());
  let err: Error | undefined;
  s.on('error', (e) => { err = e; });
  s.pause();
  s.onData(0, Buffer.from('the whole reply'));
  s.onEnd(15);
  s.onReset();
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  s.resume();
  await new Promise((r) => s.once('close', r));
  assert.equal(Buffer.concat(chunks).toString(), 'the whole reply');
  assert.equal(err, undefined);
});

test('the node key is created once with mode 0600 and reloaded', () => {
  const dir = mkdtempSync(join(tmpdir(), 'emkey-'));
  try {
    const a = loadOrCreateKeyPair(join(dir, 'state'));
    assert.equal(a.created, true);
    assert.equal(statSync(join(dir, 'state', KEY_FILE)).mode & 0o777, 0o600);
    const b = loadOrCreateKeyPair(join(dir, 'state'));
    assert.equal(b.created, false);
    assert.deepEqual(b.pair.publicKey, a.pair.publicKey);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('departedNodes: only nodes that were listed and are gone', () => {
  const next = new Map([['a', 1], ['c', 1]]);
  assert.deepEqual(departedNodes(['a', 'b'], next), ['b']);
  assert.deepEqual(departedNodes([], next), []);
  assert.deepEqual(departedNodes(['a', 'c'], next), []);
});

