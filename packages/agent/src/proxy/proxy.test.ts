import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Registry } from 'prom-client';
import { chooseDialer } from './choose.ts';
import { createProxyMetrics, forgetServiceSeries } from './metrics.ts';
import { endpointKey, headerFromRequestHead } from './portstate.ts';

test('dialer choice: same or unknown node direct, other node via the tunnel when there is one, else direct', () => {
  assert.equal(chooseDialer(undefined, 'a', true), 'direct');
  assert.equal(chooseDialer('', 'a', true), 'direct');
  assert.equal(chooseDialer('a', 'a', true), 'direct');
  assert.equal(chooseDialer('b', 'a', true), 'tunnel');
  assert.equal(chooseDialer('b', 'a', false), 'direct');
});

test('hashed header is read from the first request head, case-insensitively; absent or partial heads', () => {
  const head = Buffer.from('GET /x HTTP/1.1\r\nHost: a\r\nX-User:  alice \r\nx-other: 1\r\n\r\nbody: no');
  assert.equal(headerFromRequestHead(head, 'x-user'), 'alice');
  assert.equal(headerFromRequestHead(head, 'body'), undefined);
  assert.equal(headerFromRequestHead(Buffer.from('GET / HTTP/1.1\r\nX-User: bo'), 'x-user'), 'bo');
  assert.equal(headerFromRequestHead(Buffer.from('\x16\x03\x01binary'), 'x-user'), undefined);
  assert.equal(endpointKey('10.0.0.1', 80), '10.0.0.1:80');
  assert.equal(endpointKey('fd00::1', 80), '[fd00::1]:80');
});

test('relay buffers: a read buffer is never handed out again while a write of it is pending', async () => {
  const { relayReads } = await import('./direct.ts');
  // A sink that accepts writes but completes them only when told (like a socket whose kernel buffer is full).
  const pending: { data: Buffer; copy: Buffer; cb?: () => void }[] = [];
  let drainFn: (() => void) | undefined;
  let resumed = 0;
  const sink = {
    destroyed: false,
    get writableLength() { return pending.reduce((n, p) => n + p.data.length, 0); },
    write(data: Buffer, cb?: () => void) {
      pending.push({ data, copy: Buffer.from(data), cb });
      return this.writableLength < 16384;
    },
    once(_ev: string, fn: () => void) { drainFn = fn; return this; },
  };
  const r = relayReads(() => sink as never, () => ({ resume: () => { resumed++; } }) as never);
  const read = (text: string) => {
    const buf = r.buffer();
    const n = buf.write(text);
    return { buf, more: r.callback(n, buf) };
  };
  const a = read('first');
  assert.equal(a.more, true);
  const b = read('second'); // 'first' is still pending: must not land in the same memory
  assert.notEqual(b.buf, a.buf);
  for (const p of pending) assert.ok(p.data.equals(p.copy), 'a pending write was overwritten');
  // Completing the first write frees the reused buffer again.
  pending.shift()!.cb?.();
  const c = read('third');
  assert.equal(c.buf, a.buf);
  for (const p of pending) assert.ok(p.data.equals(p.copy), 'a pending write was overwritten');
  // Backpressure: a write over the high-water mark pauses reading until the sink drains.
  const big = r.buffer();
  big.fill(1, 0, 20000);
  assert.equal(r.callback(20000, big), false);
  drainFn!();
  assert.equal(resumed, 1);
  // A write completed synchronously (nothing left pending) frees the buffer at once.
  pending.length = 0;
  const syncSink = { destroyed: false, writableLength: 0, write: () => true, once() { return this; } };
  const r2 = relayReads(() => syncSink as never, () => ({ resume() {} }) as never);
  const x = r2.buffer();
  r2.callback(3, x);
  assert.equal(r2.buffer(), x);
});

test('proxy config: bindAddress must be IPv4 with iptables interception; the error names the key', async () => {
  const { agentSchema } = await import('@edgemesh/common/config');
  const { validateProxyConfig } = await import('./proxier.ts');
  const cfg = (proxy: Record<string, string>) => agentSchema.parse({ proxy });
  assert.doesNotThrow(() => validateProxyConfig(cfg({})));
  assert.doesNotThrow(() => validateProxyConfig(cfg({ intercept: 'none', bindAddress: '::1' })));
  assert.throws(() => validateProxyConfig(cfg({ bindAddress: 'fd00::1' })), /proxy\.bindAddress: iptables interception is IPv4 only/);
});

test('the end of a request head is found even when "\\r\\n\\r\\n" is split across reads', async () => {
  const { headComplete } = await import('./portstate.ts');
  const none = Buffer.alloc(0);
  assert.equal(headComplete(none, Buffer.from('GET / HTTP/1.1\r\nX-User: a\r\n\r\n')), true);
  assert.equal(headComplete(none, Buffer.from('GET / HTTP/1.1\r\nX-User: a\r\n')), false);
  assert.equal(headComplete(Buffer.from('GET / HTTP/1.1\r\nX-User: a\r\n'), Buffer.from('\r\n')), true);
  assert.equal(headComplete(Buffer.from('GET / HTTP/1.1\r\nX-User: a\r\n\r'), Buffer.from('\nbody')), true);
  assert.equal(headComplete(Buffer.from('GET / HTTP/1.1\r'), Buffer.from('\n\r')), false);
});

test('a Service that left the cluster has its metric series dropped; other Services keep theirs', async () => {
  const registry = new Registry();
  const m = createProxyMetrics(registry);
  for (const service of ['shop/web', 'shop/api']) {
    m.connections.inc({ service, protocol: 'tcp', src_group: 'g1', dst_group: 'g2', tier: 'group' });
    m.bytes.inc({ service, direction: 'in' }, 10);
    m.active.inc({ service, protocol: 'tcp' });
    m.refused.inc({ service, protocol: 'tcp', reason: 'strict_empty' });
    m.ejections.inc({ service });
  }
  m.listeners.inc({ protocol: 'tcp' });
  await forgetServiceSeries(m, 'shop/web');
  const text = await registry.metrics();
  assert.doesNotMatch(text, /service="shop\/web"/);
  for (const name of ['connections_total', 'bytes_total', 'active', 'refused_total', 'ejections_total']) {
    assert.match(text, new RegExp(`edgemesh_proxy_${name}\\{[^}]*service="shop/api"`), name);
  }
  assert.match(text, /edgemesh_proxy_listeners\{protocol="tcp"\} 1/);
});

test('adoptRelayed: the accepted socket\'s reads go into the sink; the new socket counts in the server until it closes', async () => {
  const { adoptRelayed } = await import('./direct.ts');
  const { createServer, connect } = await import('node:net');
  const { PassThrough } = await import('node:stream');
  const sink = new PassThrough();
  const got: Buffer[] = [];
  sink.on('data', (b: Buffer) => got.push(Buffer.from(b)));
  let adopted: import('node:net').Socket | undefined;
  const server = createServer({ pauseOnConnect: true, allowHalfOpen: true }, (raw) => {
    adopted = adoptRelayed(raw, sink as never);
    assert.ok(adopted, 'a paused, unread socket is adopted');
    assert.equal(raw.destroyed, true);
    adopted.resume();
    adopted.once('end', () => adopted!.end('bye'));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const c = connect((server.address() as import('node:net').AddressInfo).port, '127.0.0.1');
  const reply: Buffer[] = [];
  c.on('data', (b) => reply.push(b));
  c.write(Buffer.alloc(200_000, 7));
  const until = async (cond: () => boolean) => {
    for (let i = 0; i < 1000 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  };
  await until(() => got.reduce((n, b) => n + b.length, 0) >= 200_000);
  assert.equal(Buffer.concat(got).length, 200_000);
  assert.ok(Buffer.concat(got).every((x) => x === 7));
  // The server's close waits for the adopted connection (drain/takeover count on it).
  let closed = false;
  const serverClosed = new Promise<void>((r) => server.close(() => { closed = true; r(); }));
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(closed, false);
  c.end();
  await new Promise((r) => c.once('close', r));
  assert.equal(Buffer.concat(reply).toString(), 'bye');
  await serverClosed;
  // A socket that has read already is not adopted.
  const s2 = createServer((raw) => {
    raw.once('data', () => { assert.equal(adoptRelayed(raw, sink as never), undefined); raw.destroy(); });
  });
  await new Promise<void>((r) => s2.listen(0, '127.0.0.1', () => r()));
  const c2 = connect((s2.address() as import('node:net').AddressInfo).port, '127.0.0.1');
  c2.on('error', () => {});
  c2.write('x');
  await new Promise((r) => c2.once('close', r));
  await new Promise<void>((r) => s2.close(() => r()));
});
