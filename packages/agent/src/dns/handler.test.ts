import { test } from 'node:test';
import assert from 'node:assert/strict';
import dnsPacket from 'dns-packet';
import type { Packet, RecordType } from 'dns-packet';
import { silentLogger } from '@edgemesh/common/log';
import { ClusterModel } from '../cluster/model.ts';
import type { RawObject } from '../cluster/types.ts';
import { DnsHandler } from './handler.ts';
import { noMetrics, type DnsMetrics } from './metrics.ts';
import { ServiceIPs } from './serviceips.ts';
import { fixtureObjects } from './testfixture.ts';
import type { Answer } from 'dns-packet';

const dataOf = (a: Answer): unknown => (a as { data?: unknown }).data;

function setup() {
  const model = new ClusterModel([]);
  const f = fixtureObjects();
  const big: RawObject = {
    kind: 'EndpointSlice', metadata: { name: 'big-1', namespace: 'default', labels: { 'kubernetes.io/service-name': 'big' } }, addressType: 'IPv4',
    endpoints: Array.from({ length: 120 }, (_, i) => ({ addresses: [`10.245.${i >> 8}.${i & 255}`], conditions: { ready: true } })), ports: [{ name: 'http', port: 80, protocol: 'TCP' }],
  };
  model.replace('Service', [...f.services, { kind: 'Service', metadata: { name: 'big', namespace: 'default' }, spec: { clusterIP: 'None', ports: [{ name: 'http', port: 80 }] } }]);
  model.replace('EndpointSlice', [...f.slices, big]);
  model.flush();
  const ips = new ServiceIPs({ mode: 'clusterIP', fakeCIDR: '9.251.0.0/16', stateDir: '/nonexistent-em-test', log: silentLogger });
  ips.update(model.snapshot());
  model.subscribe((s) => ips.update(s));
  const counts = { malformed: 0, hits: 0, misses: 0, queries: 0, truncated: 0 };
  const metrics: DnsMetrics = {
    ...noMetrics,
    malformed: () => { counts.malformed++; },
    cache: (kind, hit) => { if (kind === 'answer') { if (hit) counts.hits++; else counts.misses++; } },
    query: () => { counts.queries++; },
    truncated: () => { counts.truncated++; },
  };
  const h = new DnsHandler({ domain: 'cluster.local', ttl: 30, snapshot: () => model.snapshot(), ips, metrics });
  return { model, h, counts };
}

const query = (name: string, type: string, extra: Partial<Packet> = {}): Buffer =>
  dnsPacket.encode({ type: 'query', id: 4242, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type: type as RecordType, class: 'IN' }], ...extra });

function sync(r: Buffer | null | Promise<Buffer | null>): Buffer {
  assert.ok(r instanceof Buffer, 'expected a synchronous reply');
  return r;
}

test('answers A with echoed ID/question/RD, RA+AA set; a repeat is served from the encoded cache with its own ID', () => {
  const { h, counts } = setup();
  const r1 = dnsPacket.decode(sync(h.handle(query('Web.default.svc.cluster.local', 'A'), false)));
  assert.equal(r1.id, 4242);
  assert.equal(r1.flag_qr && r1.flag_aa && r1.flag_rd && r1.flag_ra, true);
  assert.equal(r1.questions![0].name, 'Web.default.svc.cluster.local');
  assert.deepEqual(r1.answers!.map(dataOf), ['10.96.0.10']);
  const q2 = query('Web.default.svc.cluster.local', 'A');
  q2.writeUInt16BE(777, 0);
  const r2 = dnsPacket.decode(sync(h.handle(q2, false)));
  assert.equal(r2.id, 777);
  assert.deepEqual(r2.answers!.map(dataOf), ['10.96.0.10']);
  assert.equal(counts.hits, 1);
});

test('a cluster change invalidates cached answers', async () => {
  const { h, model } = setup();
  assert.equal(dnsPacket.decode(sync(h.handle(query('web.default.svc.cluster.local', 'A'), false))).answers!.map(dataOf)[0], '10.96.0.10');
  model.upsert('Service', { kind: 'Service', metadata: { name: 'web', namespace: 'default' }, spec: { clusterIP: '10.96.0.99', ports: [{ port: 80 }] } });
  model.flush();
  assert.equal(dnsPacket.decode(sync(h.handle(query('web.default.svc.cluster.local', 'A'), false))).answers!.map(dataOf)[0], '10.96.0.99');
});

test('EDNS0: OPT echoed with our size; BADVERS for version 1; NXDOMAIN carries the SOA', () => {
  const { h } = setup();
  const opt = { name: '.', type: 'OPT', udpPayloadSize: 4096, extendedRcode: 0, ednsVersion: 0, flags: 0, options: [] } as never;
  const r = dnsPacket.decode(sync(h.handle(query('nope.default.svc.cluster.local', 'A', { additionals: [opt] }), false)));
  assert.equal((r as unknown as { rcode: string }).rcode, 'NXDOMAIN');
  assert.equal(r.authorities![0].type, 'SOA');
  const o = r.additionals!.find((a) => a.type === 'OPT') as { udpPayloadSize: number };
  assert.equal(o.udpPayloadSize, 1232);
  const bad = sync(h.handle(query('web.default.svc.cluster.local', 'A', { additionals: [{ ...(opt as object), ednsVersion: 1 } as never] }), false));
  const d = dnsPacket.decode(bad);
  assert.equal((d.additionals![0] as { extendedRcode: number }).extendedRcode, 1); // 16 = BADVERS
  assert.equal(bad.readUInt16BE(2) & 0xf, 0);
});

test('large headless answer: TC and no records over UDP, all of it over TCP', () => {
  const { h, counts } = setup();
  const udp = dnsPacket.decode(sync(h.handle(query('big.default.svc.cluster.local', 'A'), false)));
  assert.equal(udp.flag_tc, true);
  assert.equal(udp.answers!.length, 0);
  assert.equal(counts.truncated, 1);
  const tcp = dnsPacket.decode(sync(h.handle(query('big.default.svc.cluster.local', 'A'), true)));
  assert.equal(tcp.flag_tc, false);
  assert.equal(tcp.answers!.length, 120);
});

test('FORMERR for two questions, NOTIMP for other opcodes, SERVFAIL outside the cluster without upstreams', async () => {
  const { h } = setup();
  const two = dnsPacket.encode({ type: 'query', id: 9, questions: [{ name: 'a.cluster.local', type: 'A' }, { name: 'b.cluster.local', type: 'A' }] });
  assert.equal(sync(h.handle(two, false)).readUInt16BE(2) & 0xf, 1);
  const notify = query('web.default.svc.cluster.local', 'A');
  notify.writeUInt16BE(notify.readUInt16BE(2) | (4 << 11), 2);
  assert.equal(sync(h.handle(notify, false)).readUInt16BE(2) & 0xf, 4);
  const r = await h.handle(query('example.com', 'A'), false);
  assert.equal(rcodeOf(r!), 'SERVFAIL');
});

/** Deterministic PRNG so a failure reproduces. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s / 2 ** 32;
  };
}

test('fuzz: random, mutated, truncated, oversized and pointer-loop packets never throw; malformed are counted', async () => {
  const { h, counts } = setup();
  const rnd = prng(0xdeadbeef);
  const seeds = [query('web.default.svc.cluster.local', 'A'), query('_pg._tcp.db.default.svc.cluster.local', 'SRV'), query('10.0.96.10.in-addr.arpa', 'PTR'), query('big.default.svc.cluster.local', 'A')];
  const cases: Buffer[] = [];
  for (let i = 0; i < 3000; i++) cases.push(Buffer.from(Array.from({ length: Math.floor(rnd() * 80) }, () => Math.floor(rnd() * 256))));
  for (let i = 0; i < 6000; i++) {
    const b = Buffer.from(seeds[i % seeds.length]);
    const flips = 1 + Math.floor(rnd() * 4);
    for (let j = 0; j < flips; j++) b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
    cases.push(rnd() < 0.3 ? b.subarray(0, Math.floor(rnd() * b.length)) : b);
  }
  // Compression-pointer loop in the question name (points at itself), and a forward pointer.
  const loop = Buffer.from(seeds[0].subarray(0, 12));
  loop.writeUInt16BE(1, 4);
  cases.push(Buffer.concat([loop, Buffer.from([0xc0, 12, 0, 1, 0, 1])]), Buffer.concat([loop, Buffer.from([0xc0, 40, 0, 1, 0, 1])]));
  // Header claims 65535 of everything; oversized message.
  const claims = Buffer.from(seeds[0]);
  claims.writeUInt16BE(0xffff, 6); claims.writeUInt16BE(0xffff, 8); claims.writeUInt16BE(0xffff, 10);
  cases.push(claims, Buffer.concat([seeds[0], Buffer.alloc(70_000, 0xc0)]));
  let replies = 0;
  for (const c of cases) {
    for (const tcp of [false, true]) {
      let r: Buffer | null;
      try {
        r = await h.handle(c, tcp);
      } catch (e) {
        assert.fail(`handler threw on ${c.toString('hex')}: ${(e as Error).message}`);
      }
      if (r) {
        replies++;
        assert.ok(r.length >= 12);
        assert.equal(r.readUInt16BE(0), c.readUInt16BE(0)); // replies keep the query ID
        if (!tcp) assert.ok(r.length <= 1232);
      }
    }
  }
  assert.ok(counts.malformed > 1000, `malformed counted: ${counts.malformed}`);
  assert.ok(replies > 100);
  // Still answering correctly afterwards.
  assert.equal(dnsPacket.decode(sync(h.handle(query('web.default.svc.cluster.local', 'A'), false))).answers!.map(dataOf)[0], '10.96.0.10');
});

function rcodeOf(b: Buffer): string {
  return (dnsPacket.decode(b) as unknown as { rcode: string }).rcode;
}

test('an exception while following an ExternalName is SERVFAIL (like any other cluster answer), not a dropped query', async () => {
  const { model } = setup();
  const ips = { version: 1, ipsFor: (): readonly string[] => { throw new Error('table bug'); }, serviceFor: () => undefined, entries: () => new Map(), onChange: () => () => {}, endpointIP: () => undefined, endpointFor: () => undefined, endpointIPs: () => new Map(), podMeshIP: () => undefined, mode: 'clusterIP' as const };
  const h = new DnsHandler({ domain: 'cluster.local', ttl: 30, snapshot: () => model.snapshot(), ips });
  const r = h.handle(query('alias.default.svc.cluster.local', 'A'), false);
  assert.ok(r instanceof Promise);
  const b = await r;
  assert.ok(b, 'a reply');
  const p = dnsPacket.decode(b);
  assert.equal(p.id, 4242);
  assert.equal((p.flags ?? 0) & 0xf, 2); // SERVFAIL
});
