import { test } from 'node:test';
import assert from 'node:assert/strict';
import dnsPacket from 'dns-packet';
import { ACL_CACHE_MAX, ClientAcl, clientRanges, normalizeAddress } from './acl.ts';
import { refusedReply } from './wire.ts';

const IFACES = [
  { address: '127.0.0.1', internal: true, cidr: '127.0.0.1/8' },
  { address: '::1', internal: true, cidr: '::1/128' },
  { address: '198.18.1.10', internal: false, cidr: '198.18.1.10/24' },
  { address: '169.254.96.16', internal: false, cidr: '169.254.96.16/32' },
  { address: 'fe80::1', internal: false, cidr: 'fe80::1/64' },
];

test('acl: clients are this host (interface addresses, loopback), the Node\'s addresses and podCIDRs, dns.allowCIDRs', () => {
  const ranges = clientRanges({
    interfaces: IFACES,
    node: { addresses: ['198.18.1.10', '203.0.113.7', 'edge-a.example'], podCIDRs: ['10.244.1.0/24', 'fd00:10:244:1::/64', 'garbage'] },
    allowCIDRs: ['192.0.2.0/28'],
  });
  const acl = new ClientAcl(ranges);
  const yes = ['127.0.0.1', '127.9.9.9', '::1', '198.18.1.10', '169.254.96.16', 'fe80::1', '203.0.113.7', '10.244.1.1', '10.244.1.254',
    'fd00:10:244:1::abcd', '192.0.2.15', '::ffff:10.244.1.7', '::ffff:127.0.0.1'];
  const no = ['198.18.1.11', '198.18.1.1', '10.244.2.1', '192.0.2.16', 'fd00:10:244:2::1', 'fe80::2', '8.8.8.8', '::ffff:10.244.2.1', 'not-an-ip', ''];
  for (const a of yes) assert.equal(acl.isClient(a), true, a);
  for (const a of no) assert.equal(acl.isClient(a), false, a);
  // Twice: the cached answer is the same.
  for (const a of [...yes, ...no]) assert.equal(acl.isClient(a), yes.includes(a), `${a} (cached)`);
  const why = Object.fromEntries(ranges.map((r) => [`${r.address}/${r.prefix}`, r.why]));
  assert.equal(why['198.18.1.10/32'], 'local', 'an interface address is a single host, never its LAN subnet');
  assert.equal(why['127.0.0.1/8'], 'loopback');
  assert.equal(why['10.244.1.0/24'], 'podCIDR');
  assert.equal(why['192.0.2.0/28'], 'allowCIDRs');
  assert.equal(ranges.filter((r) => r.address === '198.18.1.10').length, 1, 'duplicates are listed once');
});

test('acl: without a Node (not in the snapshot yet) only this host and dns.allowCIDRs are clients', () => {
  const acl = new ClientAcl(clientRanges({ interfaces: IFACES, allowCIDRs: [] }));
  assert.equal(acl.isClient('127.0.0.1'), true, 'loopback (the lo interface)');
  assert.equal(acl.isClient('::1'), true);
  assert.equal(acl.isClient('198.18.1.10'), true);
  assert.equal(acl.isClient('10.244.1.1'), false);
});

test('acl: the decision cache stays bounded under a flood of spoofed sources', () => {
  const acl = new ClientAcl(clientRanges({ interfaces: [], allowCIDRs: ['10.0.0.0/8'] }));
  for (let i = 0; i < ACL_CACHE_MAX * 2 + 10; i++) acl.isClient(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`);
  const size = (acl as unknown as { cache: Map<string, boolean> }).cache.size;
  assert.ok(size <= ACL_CACHE_MAX, `cache ${size}`);
  assert.equal(acl.isClient('11.0.0.1'), false);
});

test('acl: address normalisation (IPv4-mapped, zone ids)', () => {
  assert.equal(normalizeAddress('::ffff:10.0.0.1'), '10.0.0.1');
  assert.equal(normalizeAddress('::FFFF:10.0.0.1'), '10.0.0.1');
  assert.equal(normalizeAddress('fe80::1%eth0'), 'fe80::1');
  assert.equal(normalizeAddress('::ffff:abcd'), '::ffff:abcd');
  assert.equal(normalizeAddress('10.0.0.1'), '10.0.0.1');
});

test('REFUSED reply: header + question only, never larger than the query, echoes ID/RD/opcode', () => {
  const q = dnsPacket.encode({
    type: 'query', id: 4321, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name: 'web.default.svc.cluster.local' }],
    additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 4096 } as dnsPacket.Answer],
  });
  const r = refusedReply(q)!;
  assert.ok(r.length <= q.length, `${r.length} <= ${q.length}`);
  const d = dnsPacket.decode(r);
  assert.equal(d.id, 4321);
  assert.equal((d as unknown as { rcode: string }).rcode, 'REFUSED');
  assert.equal(d.type, 'response');
  assert.equal(d.flag_rd, true);
  assert.equal(d.questions?.[0]?.name, 'web.default.svc.cluster.local');
  assert.equal((d.answers ?? []).length + (d.additionals ?? []).length, 0);
  // Garbage after a header: header-only REFUSED (12 bytes), still no larger.
  const junk = Buffer.concat([q.subarray(0, 12), Buffer.from([0xff, 0xff, 0xff])]);
  const rj = refusedReply(junk)!;
  assert.equal(rj.length, 12);
  assert.equal(rj.readUInt16BE(4), 0);
  assert.equal(refusedReply(Buffer.alloc(5)), null, 'shorter than a header: dropped');
  const resp = Buffer.from(q);
  resp.writeUInt16BE(0x8000, 2);
  assert.equal(refusedReply(resp), null, 'a response is never answered (no reflection loops)');
});
