import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough, type Duplex } from 'node:stream';
import { Registry } from 'prom-client';
import { silentLogger } from '@edgemesh/common/log';
import { choosePath, DirectRanges, needsMeshIP, reachOf } from './choose.ts';
import { DialError, dialDeadline, type DatagramChannel, type DialTarget, type Dialer } from './dialer.ts';
import { DirectDialer } from './direct.ts';
import { FlatDialer, FlatPaths, NOT_FLAT_HOLD_MS, notFlatReason } from './flat.ts';
import { createProxyMetrics } from './metrics.ts';

test('directCIDRs: IPv4 and IPv6 ranges; reach and path per endpoint', () => {
  const r = new DirectRanges(['10.244.0.0/16', 'fd00:10::/64', 'bogus']);
  assert.deepEqual(r.cidrs, ['10.244.0.0/16', 'fd00:10::/64']);
  assert.equal(r.has('10.244.9.9'), true);
  assert.equal(r.has('10.245.0.1'), false);
  assert.equal(r.has('fd00:10::5'), true);
  assert.equal(r.has('not-an-ip'), false);
  assert.equal(new DirectRanges([]).has('10.244.0.1'), false);

  assert.equal(reachOf('a', '10.244.1.1', 'a', r), 'local');
  assert.equal(reachOf(undefined, '10.9.9.9', 'a', r), 'local');
  assert.equal(reachOf('', '10.9.9.9', 'a', r), 'local');
  assert.equal(reachOf('b', '10.244.1.1', 'a', r), 'flat');
  assert.equal(reachOf('b', '10.9.9.9', 'a', r), 'remote');

  // path: local -> direct; flat -> direct-with-fallback unless the node was found not flat; remote -> tunnel
  assert.equal(choosePath('local', true, true), 'direct');
  assert.equal(choosePath('flat', true, true), 'flat');
  assert.equal(choosePath('flat', true, false), 'tunnel');
  assert.equal(choosePath('remote', true, true), 'tunnel');
  // no tunnel configured: everything is dialed as it is
  assert.equal(choosePath('remote', false, true), 'direct');
  assert.equal(choosePath('flat', false, false), 'direct');

  // mesh IPs only for endpoints reachable only through the tunnel
  assert.equal(needsMeshIP('remote', true), true);
  assert.equal(needsMeshIP('flat', true), false);
  assert.equal(needsMeshIP('local', true), false);
  assert.equal(needsMeshIP('remote', false), false);
});

test('notFlatReason: timeouts and missing routes mean "not flat"; a refusal proves the route', () => {
  assert.equal(notFlatReason(new DialError('timeout', 'x')), 'timeout');
  assert.equal(notFlatReason(new DialError('unreachable', 'x', 'EHOSTUNREACH')), 'unreachable');
  assert.equal(notFlatReason(new DialError('unreachable', 'x', 'ENETUNREACH')), 'unreachable');
  assert.equal(notFlatReason(new DialError('refused', 'x', 'ECONNREFUSED')), undefined);
  assert.equal(notFlatReason(new DialError('unreachable', 'x', 'EMFILE')), undefined, 'out of descriptors says nothing about the route');
  assert.equal(notFlatReason(Object.assign(new Error('x'), { code: 'EHOSTUNREACH' })), 'unreachable');
  assert.equal(notFlatReason(undefined), undefined);
});

/** A DirectDialer double: answers from a script instead of sockets, counting calls. */
class ScriptedDirect extends DirectDialer {
  calls: DialTarget[] = [];
  next: () => Promise<Duplex>;
  constructor(next: () => Promise<Duplex>) {
    super();
    this.next = next;
  }
  override dialTcp(target: DialTarget): Promise<Duplex> {
    this.calls.push(target);
    return this.next();
  }
  override openUdp(target: DialTarget): Promise<DatagramChannel> {
    this.calls.push(target);
    return this.next() as unknown as Promise<DatagramChannel>;
  }
}

function tunnelDouble(): Dialer & { calls: DialTarget[] } {
  const calls: DialTarget[] = [];
  return {
    calls,
    dialTcp: async (t) => { calls.push(t); return new PassThrough(); },
    openUdp: async (t) => { calls.push(t); throw new Error('not in this test'); },
  };
}

function setup(direct: ScriptedDirect) {
  let now = 1_000;
  const registry = new Registry();
  const metrics = createProxyMetrics(registry);
  const paths = new FlatPaths({ cidrs: ['10.244.0.0/16'], metrics, log: silentLogger, now: () => now });
  const tunnel = tunnelDouble();
  const dialer = new FlatDialer(paths, () => tunnel, { base: direct });
  return { paths, tunnel, dialer, registry, advance: (ms: number) => { now += ms; } };
}

const target: DialTarget = { serviceKey: 'ns/web', protocol: 'tcp', ip: '10.244.2.7', port: 80, nodeName: 'far' };

test('flat dial: a direct success opens no tunnel stream', async () => {
  const sock = new PassThrough();
  const direct = new ScriptedDirect(async () => sock);
  const { dialer, tunnel, paths } = setup(direct);
  assert.ok(dialer instanceof DirectDialer, 'the TCP proxy hands it the client socket like any direct dial');
  assert.equal(await dialer.dialTcp(target), sock);
  assert.equal(direct.calls.length, 1);
  assert.equal(tunnel.calls.length, 0);
  assert.equal(paths.nodeFlat('far'), true);
});

test('flat dial: no route -> the same dial goes over the tunnel, the node is held "not flat", then probed again', async () => {
  const direct = new ScriptedDirect(async () => { throw new DialError('timeout', 'dial timed out'); });
  const { dialer, tunnel, paths, registry, advance } = setup(direct);
  const s = await dialer.dialTcp(target);
  assert.ok(s instanceof PassThrough, 'the tunnel stream');
  assert.equal(tunnel.calls.length, 1);
  assert.equal(paths.nodeFlat('far'), false);
  assert.deepEqual(paths.status().notFlat.map((n) => [n.node, n.reason]), [['far', 'timeout']]);
  const text = await registry.metrics();
  assert.match(text, /edgemesh_proxy_flat_fallbacks_total\{reason="timeout"\} 1/);
  assert.match(text, /edgemesh_proxy_flat_nodes_unreachable 1/);
  // Within the hold the path choice is the tunnel (no direct attempt at all); after it, direct is tried again.
  advance(NOT_FLAT_HOLD_MS - 1);
  assert.equal(paths.nodeFlat('far'), false);
  advance(1);
  assert.equal(paths.nodeFlat('far'), true);
  assert.match(await registry.metrics(), /edgemesh_proxy_flat_nodes_unreachable 0/);
  assert.equal(paths.nodeFlat('other'), true, 'other nodes are unaffected');
});

test('flat dial: a refusal is passed on (the route works), and so is a failure once the caller gave up', async () => {
  const refused = new ScriptedDirect(async () => { throw new DialError('refused', 'ECONNREFUSED', 'ECONNREFUSED'); });
  const a = setup(refused);
  await assert.rejects(a.dialer.dialTcp(target), (e: DialError) => e.code === 'refused');
  assert.equal(a.tunnel.calls.length, 0);
  assert.equal(a.paths.nodeFlat('far'), true);

  const timeout = new ScriptedDirect(async () => { throw new DialError('timeout', 'x'); });
  const b = setup(timeout);
  const gaveUp = AbortSignal.abort();
  await assert.rejects(b.dialer.dialTcp(target, dialDeadline(3000, gaveUp)), (e: DialError) => e.code === 'timeout');
  assert.equal(b.tunnel.calls.length, 0);
});

test('flat dial: after a fallback with relayTo, the tunnel stream is piped into the client socket', async () => {
  const direct = new ScriptedDirect(async () => { throw new DialError('unreachable', 'x', 'EHOSTUNREACH'); });
  const { dialer, tunnel } = setup(direct);
  const client = new PassThrough();
  const got: Buffer[] = [];
  client.on('data', (b: Buffer) => got.push(b));
  const s = await dialer.dialTcp(target, undefined, client as never);
  assert.equal(tunnel.calls.length, 1);
  s.push(Buffer.from('reply'));
  await new Promise((r) => setImmediate(r));
  assert.equal(Buffer.concat(got).toString(), 'reply');
});

test('flat UDP: an ICMP "no route" on the channel marks the node; a channel that just closes does not', async () => {
  const closers: ((e?: Error) => void)[] = [];
  const channel = (): DatagramChannel => ({ send() {}, onMessage() {}, close() {}, onClose(fn) { closers.push(fn); } });
  const direct = new ScriptedDirect(async () => channel() as unknown as Duplex);
  const { dialer, paths } = setup(direct);
  await dialer.openUdp({ ...target, protocol: 'udp' });
  closers[0]();
  assert.equal(paths.nodeFlat('far'), true);
  await dialer.openUdp({ ...target, protocol: 'udp' });
  closers[1](Object.assign(new Error('unreachable'), { code: 'EHOSTUNREACH' }));
  assert.equal(paths.nodeFlat('far'), false);
});
