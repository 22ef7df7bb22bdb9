import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { checkTarget } from './target.ts';
import { DatagramDecoder, encodeDatagram } from './datagram.ts';
import { CreditStream } from './credit.ts';
import { loadOrCreateKeyPair, KEY_FILE } from './keys.ts';
import { parseHeader } from './mux.ts';
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

test('stream headers are validated', () => {
  assert.ok(parseHeader(Buffer.from(JSON.stringify({ protocol: 'tcp', serviceKey: 'a/b', ip: '1.2.3.4', port: 80 }))));
  assert.equal(parseHeader(Buffer.from(JSON.stringify({ protocol: 'sctp', serviceKey: 'a/b', ip: '1.2.3.4', port: 80 }))), undefined);
  assert.equal(parseHeader(Buffer.from(JSON.stringify({ protocol: 'tcp', serviceKey: 'a/b', ip: '1.2.3.4', port: 70000 }))), undefined);
  assert.equal(parseHeader(Buffer.from('not json')), undefined);
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

test('CreditStream sends no more than its window until credit comes back', async () => {
  const sent: Buffer[] = [];
  const s = new CreditStream({ data: (c) => sent.push(c), credit: () => {}, end: () => {}, reset: () => {}, closed: () => {} }, 1000);
  s.write(Buffer.alloc(2500));
  await new Promise((r) => setImmediate(r));
  assert.equal(sent.reduce((n, c) => n + c.length, 0), 1000);
  s.onCredit(1000);
  assert.equal(sent.reduce((n, c) => n + c.length, 0), 2000);
  s.onCredit(5000);
  assert.equal(sent.reduce((n, c) => n + c.length, 0), 2500);
  s.destroy();
});

test('CreditStream grants credit as its reader consumes', async () => {
  const credits: number[] = [];
  const s = new CreditStream({ data: () => {}, credit: (n) => credits.push(n), end: () => {}, reset: () => {}, closed: () => {} }, 4000);
  s.onData(Buffer.alloc(1500));
  assert.deepEqual(credits, [1500]);
  s.destroy();
  // A window larger than the readable buffer: a reader that stops holds the credit back until it reads again.
  const slow = new CreditStream({ data: () => {}, credit: (n) => credits.push(n), end: () => {}, reset: () => {}, closed: () => {} }, 400_000);
  slow.pause();
  slow.onData(Buffer.alloc(100_000));
  const before = credits.length;
  slow.read();
  slow.resume();
  await new Promise((r) => setImmediate(r));
  assert.ok(credits.length > before);
  slow.destroy();
});

test('CreditStream resets a stream whose peer sends beyond the credit it was granted (bounded buffering)', () => {
  let resets = 0;
  const s = new CreditStream({ data: () => {}, credit: () => {}, end: () => {}, reset: () => { resets++; }, closed: () => {} }, 400_000);
  s.on('error', () => {});
  s.pause();
  s.onData(Buffer.alloc(300_000));
  assert.equal(s.destroyed, false, 'within the window');
  s.onData(Buffer.alloc(100_001));
  assert.equal(s.destroyed, true);
  assert.equal(resets, 1, 'the peer is told');
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

test('a link dying under an abandoned stream (no error listener) does not throw', async () => {
  const { Mux } = await import('./mux.ts');
  const m = new Mux(() => {}, true);
  const pending = m.open({ protocol: 'tcp', serviceKey: 'a/b', ip: '1.2.3.4', port: 80 });
  pending.catch(() => {});
  m.close(new Error('path died'));
  await assert.rejects(pending);
  const s = new CreditStream({ data: () => {}, credit: () => {}, end: () => {}, reset: () => {}, closed: () => {} });
  s.onReset();
  await new Promise((r) => setImmediate(r));
  assert.equal(s.destroyed, true);
});

test('departedNodes: only nodes that were listed and are gone', () => {
  const next = new Map([['a', 1], ['c', 1]]);
  assert.deepEqual(departedNodes(['a', 'b'], next), ['b']);
  assert.deepEqual(departedNodes([], next), []);
  assert.deepEqual(departedNodes(['a', 'c'], next), []);
});

test('a stream accepted after its link died is closed at once (the local socket it is spliced to is released)', async () => {
  const { Mux, M } = await import('./mux.ts');
  const { encodeStreamFrame } = await import('@edgemesh/common/tunnel/frame');
  const m = new Mux(() => {}, true);
  let accept: (() => CreditStream) | undefined;
  m.onIncoming = (_h, a) => { accept = a; };
  m.push(encodeStreamFrame(M.OPEN, 2, Buffer.from(JSON.stringify({ protocol: 'tcp', serviceKey: 'ns/web', ip: '10.1.0.5', port: 8080 }))));
  assert.ok(accept, 'incoming stream offered');
  m.close(new Error('path died'));
  const s = accept();
  const closed = new Promise((r) => s.on('close', r));
  assert.equal(s.destroyed, true);
  await closed;
});

test('streams the peer opens count against the per-link limit, also while their dial is under way', async () => {
  const { Mux, M, MAX_STREAMS_PER_LINK } = await import('./mux.ts');
  const { encodeStreamFrame, FrameDecoder } = await import('@edgemesh/common/tunnel/frame');
  const out = new FrameDecoder();
  const answers: number[] = [];
  const m = new Mux((b) => { for (const f of out.push(b)) answers.push(f.type); }, true);
  let offered = 0;
  m.onIncoming = () => { offered++; }; // never answered: every dial hangs
  const header = Buffer.from(JSON.stringify({ protocol: 'tcp', serviceKey: 'ns/web', ip: '10.1.0.5', port: 8080 }));
  for (let i = 0; i <= MAX_STREAMS_PER_LINK; i++) m.push(encodeStreamFrame(M.OPEN, 2 + 2 * i, header));
  assert.equal(offered, MAX_STREAMS_PER_LINK);
  assert.deepEqual(answers, [M.ERR]);
  m.close();
});
