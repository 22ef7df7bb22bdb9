import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import dnsPacket from 'dns-packet';
import type { Answer } from 'dns-packet';
import { ConfigError } from '@edgemesh/common/config';
import { silentLogger } from '@edgemesh/common/log';
import { ageRecords, cacheTtl, Forwarder, chooseUpstreams, MAX_NEGATIVE_TTL_S, parseResolvConf, parseUpstream } from './forward.ts';

test('parseUpstream: ip, ip:port, [v6]:port, bare v6; bad input names the key', () => {
  assert.deepEqual(parseUpstream('1.1.1.1'), { host: '1.1.1.1', port: 53, key: '1.1.1.1:53' });
  assert.deepEqual(parseUpstream('127.0.0.1:5353'), { host: '127.0.0.1', port: 5353, key: '127.0.0.1:5353' });
  assert.deepEqual(parseUpstream('[fd00::1]:54'), { host: 'fd00::1', port: 54, key: '[fd00::1]:54' });
  assert.equal(parseUpstream('2001:db8::1').port, 53);
  assert.throws(() => parseUpstream('dns.google'), (e: Error) => e instanceof ConfigError && e.key === 'dns.upstream');
  assert.throws(() => parseUpstream('1.1.1.1:70000'), ConfigError);
});

test('resolv.conf nameservers; the agent itself is skipped (no loops), duplicates dropped', () => {
  const rc = '# comment\nsearch default.svc.cluster.local\nnameserver 169.254.96.16\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\noptions ndots:5\nnameserver 10.0.0.2\n';
  assert.deepEqual(parseResolvConf(rc), ['169.254.96.16', '10.0.0.2', 'fe80::1%eth0', '10.0.0.2']);
  assert.deepEqual(chooseUpstreams([], rc, { host: '169.254.96.16', port: 53 }).map((u) => u.key), ['10.0.0.2:53', '[fe80::1%eth0]:53']);
  // wildcard listen: loopback and own addresses on the same port are us
  const rc2 = 'nameserver 127.0.0.53\nnameserver 192.168.1.5\nnameserver 192.168.1.1\n';
  assert.deepEqual(chooseUpstreams([], rc2, { host: '0.0.0.0', port: 53 }, new Set(['192.168.1.5'])).map((u) => u.key), ['192.168.1.1:53']);
  // another port on our own address is fine
  assert.deepEqual(chooseUpstreams(['127.0.0.1:5300'], undefined, { host: '127.0.0.1', port: 53 }).map((u) => u.key), ['127.0.0.1:5300']);
  assert.deepEqual(chooseUpstreams([], undefined, { host: '127.0.0.1', port: 53 }), []);
});

test('cacheTtl: min TTL of answers, SOA-bounded negative caching, errors never cached', () => {
  const a = (ttl: number): Answer => ({ name: 'x', type: 'A', ttl, data: '192.0.2.1' });
  const soa = (ttl: number, minimum: number): Answer => ({ name: 'example', type: 'SOA', ttl, data: { mname: 'ns', rname: 'h', minimum } });
  assert.equal(cacheTtl(0, [a(300), a(60)], []), 60);
  assert.equal(cacheTtl(3, [], [soa(900, 120)]), 120);
  assert.equal(cacheTtl(0, [], [soa(30, 120)]), 30); // NODATA
  assert.equal(cacheTtl(3, [], [soa(9000, 9000)]), MAX_NEGATIVE_TTL_S);
  assert.equal(cacheTtl(3, [], []), 0);
  assert.equal(cacheTtl(2, [a(300)], []), 0);
  assert.deepEqual(ageRecords([a(10)], 4).map((r) => (r as { ttl: number }).ttl), [6]);
  assert.deepEqual(ageRecords([a(3)], 4).map((r) => (r as { ttl: number }).ttl), [0]);
});

test('an upstream the kernel refuses to connect to (EACCES on broadcast) is a failed upstream, not a crash', async () => {
  const outcomes: string[] = [];
  const fw = new Forwarder({ upstreams: [parseUpstream('255.255.255.255:53')], timeoutMs: 1000, log: silentLogger, hooks: { onUpstream: (_u, _s, o) => outcomes.push(o) } });
  const questionBytes = dnsPacket.encode({ questions: [{ name: 'example.org', type: 'A', class: 'IN' }] }).subarray(12);
  const a = await fw.resolve({ questionBytes, name: 'example.org', type: 'A', class: 'IN', do: false, cd: false });
  assert.equal(a.rcode, 2); // SERVFAIL
  assert.deepEqual(outcomes, ['error']);
});

test('distinct questions waiting on upstreams are capped: beyond the cap SERVFAIL at once, no new upstream socket', async () => {
  const silent = createSocket('udp4'); // an upstream that never answers
  await new Promise<void>((r) => silent.bind(0, '127.0.0.1', () => r()));
  try {
    const fw = new Forwarder({ upstreams: [parseUpstream(`127.0.0.1:${silent.address().port}`)], timeoutMs: 300, maxInflight: 2, log: silentLogger });
    const ask = (name: string) => fw.resolve({ questionBytes: dnsPacket.encode({ questions: [{ name, type: 'A', class: 'IN' }] }).subarray(12), name, type: 'A', class: 'IN', do: false, cd: false });
    const waiting = [ask('a.example'), ask('b.example'), ask('a.example')]; // the repeat joins the first
    const third = await ask('c.example');
    assert.equal(third.rcode, 2);
    assert.equal(fw.upstreamQueries, 2);
    for (const a of await Promise.all(waiting)) assert.equal(a.rcode, 2); // timed out
  } finally {
    silent.close();
  }
});

test('close(): a question waiting on a silent upstream gets SERVFAIL at once and its socket is released', async () => {
  const silent = createSocket('udp4');
  await new Promise<void>((r) => silent.bind(0, '127.0.0.1', () => r()));
  const udpHandles = () => process.getActiveResourcesInfo().filter((r) => r === 'UDPWrap').length;
  const settled = async (n: number) => {
    const deadline = Date.now() + 5000;
    while (udpHandles() !== n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    return udpHandles();
  };
  try {
    const before = await settled(1); // only `silent` (earlier tests' sockets have finished closing)
    assert.equal(before, 1);
    const fw = new Forwarder({ upstreams: [parseUpstream(`127.0.0.1:${silent.address().port}`)], timeoutMs: 60_000, log: silentLogger });
    const ask = (name: string) => fw.resolve({ questionBytes: dnsPacket.encode({ questions: [{ name, type: 'A', class: 'IN' }] }).subarray(12), name, type: 'A', class: 'IN', do: false, cd: false });
    const waiting = ask('a.example');
    await new Promise((r) => setImmediate(r));
    assert.equal(udpHandles(), before + 1);
    fw.close();
    assert.equal((await waiting).rcode, 2);
    assert.equal((await ask('b.example')).rcode, 2);
    assert.equal(fw.upstreamQueries, 1);
    assert.equal(await settled(before), before);
  } finally {
    silent.close();
  }
});
