// The agent's DNS budgets against the real server on loopback: who is a client (ACL: this host, the Node's
// spec.podCIDRs, dns.allowCIDRs; REFUSED no larger than the query), response-rate limiting with slip and the TCP
// fallback, the 1232-byte cap on forwarded UDP answers, and DNS-over-TCP slots (per source, total, eviction of idle
// and dribbling connections, the whole-message deadline). Sources other than 127.0.0.1 are other loopback addresses;
// the host's interfaces are given as 127.0.0.1 alone so that 127.0.0.2... are strangers.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { connect, type Socket } from 'node:net';
import dnsPacket from 'dns-packet';
import { loadAgentConfig } from '@edgemesh/common/config';
import { createRegistry } from '@edgemesh/common/admin';
import { Budgets } from '@edgemesh/common/budget';
import { silentLogger } from '@edgemesh/common/log';
import type { Registry } from 'prom-client';
import { ClusterModel } from '../packages/agent/src/cluster/model.ts';
import { ServiceIPs } from '../packages/agent/src/dns/serviceips.ts';
import { startDns, type DnsHandle } from '../packages/agent/src/dns/index.ts';
import { fixtureObjects } from '../packages/agent/src/dns/testfixture.ts';
import { DNS_TCP_BUDGET, DNS_TCP_DEADLINE, TCP_MESSAGE_DEADLINE_MS, TCP_MIN_EVICT_AGE_MS } from '../packages/agent/src/dns/server.ts';
import { startUpstream, type TestUpstream } from './lib/dnsupstream.ts';

const NODE = 'dns-limits';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Running { dns: DnsHandle; model: ClusterModel; registry: Registry; budgets: Budgets; port: number }

async function start(dnsCfg: Record<string, unknown>, upstreamPort?: number, interfaces = [{ address: '127.0.0.1', internal: false }]): Promise<Running> {
  const cfg = loadAgentConfig({ text: JSON.stringify({ nodeName: NODE, dns: { listen: '127.0.0.1:0', upstream: upstreamPort ? [`127.0.0.1:${upstreamPort}`] : ['127.0.0.1:9'], ...dnsCfg } }) });
  const model = new ClusterModel([]);
  const f = fixtureObjects();
  model.replace('Service', f.services);
  model.replace('EndpointSlice', f.slices);
  model.flush();
  const ips = new ServiceIPs({ mode: 'clusterIP', fakeCIDR: cfg.proxy.fakeCIDR, stateDir: '/nonexistent', log: silentLogger });
  ips.update(model.snapshot());
  model.subscribe((s) => ips.update(s));
  const registry = createRegistry('t_');
  const budgets = new Budgets({ registry, log: silentLogger });
  const dns = await startDns({ cfg, log: silentLogger, registry, snapshot: () => model.snapshot(), ips, budgets, interfaces: () => interfaces });
  return { dns, model, registry, budgets, port: dns.address.port };
}

async function metric(reg: Registry, name: string, labels: Record<string, string>): Promise<number> {
  const m = await reg.getSingleMetric(name)?.get();
  return m?.values.find((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val))?.value ?? 0;
}

function query(name: string, id: number, type: 'A' | 'TXT' = 'A', edns?: number): Buffer {
  return dnsPacket.encode({
    type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name }],
    additionals: edns ? [{ type: 'OPT', name: '.', udpPayloadSize: edns } as dnsPacket.Answer] : [],
  });
}

/** A UDP client bound to `src`, collecting every reply by ID. */
async function udpClient(src: string): Promise<{ sock: UdpSocket; replies: Map<number, Buffer>; ask(q: Buffer, port: number, waitMs?: number): Promise<Buffer | undefined> }> {
  const sock = createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, src, () => r()));
  const replies = new Map<number, Buffer>();
  const waiters = new Map<number, (b: Buffer) => void>();
  sock.on('message', (m) => {
    const id = m.readUInt16BE(0);
    replies.set(id, m);
    waiters.get(id)?.(m);
  });
  return {
    sock, replies,
    ask(q, port, waitMs = 1500) {
      const id = q.readUInt16BE(0);
      return new Promise((res) => {
        const t = setTimeout(() => { waiters.delete(id); res(undefined); }, waitMs);
        waiters.set(id, (b) => { clearTimeout(t); waiters.delete(id); res(b); });
        sock.send(q, port, '127.0.0.1');
      });
    },
  };
}

/** One query over TCP from `src`; undefined when the server closes the connection without answering. */
function tcpAsk(q: Buffer, port: number, src = '127.0.0.1'): Promise<Buffer | undefined> {
  return new Promise((res) => {
    const c = connect({ port, host: '127.0.0.1', localAddress: src });
    let buf = Buffer.alloc(0);
    const t = setTimeout(() => { c.destroy(); res(undefined); }, 5000);
    c.on('connect', () => { const len = Buffer.alloc(2); len.writeUInt16BE(q.length); c.write(Buffer.concat([len, q])); });
    c.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) { clearTimeout(t); c.destroy(); res(buf.subarray(2, 2 + buf.readUInt16BE(0))); }
    });
    c.on('error', () => {});
    c.on('close', () => { clearTimeout(t); res(undefined); });
  });
}

/** A raw TCP connection from `src` and a promise of its close. */
async function rawTcp(port: number, src: string): Promise<{ sock: Socket; closed: Promise<void>; isClosed: () => boolean }> {
  const sock = connect({ port, host: '127.0.0.1', localAddress: src });
  sock.on('error', () => {});
  let done = false;
  const closed = new Promise<void>((r) => sock.once('close', () => { done = true; r(); }));
  await new Promise<void>((r) => { sock.once('connect', () => r()); sock.once('close', () => r()); });
  return { sock, closed, isClosed: () => done };
}

async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, j) => { t = setTimeout(() => j(new Error(`timed out: ${what}`)), ms); })]);
  } finally {
    clearTimeout(t);
  }
}

const rcode = (b: Buffer) => b.readUInt16BE(2) & 0xf;
const tc = (b: Buffer) => (b.readUInt16BE(2) & 0x0200) !== 0;
const ancount = (b: Buffer) => b.readUInt16BE(6);

describe('DNS clients (ACL)', () => {
  let r: Running;
  before(async () => { r = await start({ allowCIDRs: ['127.0.0.3/32'], rrl: { responsesPerSecond: 0 } }); });
  after(async () => { await r.dns.stop(); });

  test('this host is answered; a stranger gets REFUSED, no larger than its query, counted', async () => {
    const me = await udpClient('127.0.0.1');
    const stranger = await udpClient('127.0.0.2');
    try {
      const ok = await me.ask(query('web.default.svc.cluster.local', 1), r.port);
      assert.ok(ok && rcode(ok) === 0 && ancount(ok) === 1);
      // Even with a large EDNS size and a name with a big answer: header + question only.
      for (const [i, q] of [query('web.default.svc.cluster.local', 2, 'A', 4096), query('db.default.svc.cluster.local', 3), query('www.example.test', 4)].entries()) {
        const no = await stranger.ask(q, r.port);
        assert.ok(no, `reply ${i}`);
        assert.equal(rcode(no), 5, 'REFUSED');
        assert.equal(ancount(no), 0);
        assert.ok(no.length <= q.length, `refused ${no.length} B <= query ${q.length} B`);
      }
      assert.equal(await metric(r.registry, 'edgemesh_dns_refused_total', { transport: 'udp' }), 3);
      assert.equal(await tcpAsk(query('web.default.svc.cluster.local', 5), r.port, '127.0.0.2'), undefined, 'TCP from a stranger: closed at accept');
      assert.equal(await metric(r.registry, 'edgemesh_dns_refused_total', { transport: 'tcp' }), 1);
      const allowed = await udpClient('127.0.0.3');
      const a = await allowed.ask(query('web.default.svc.cluster.local', 6), r.port);
      assert.ok(a && rcode(a) === 0, 'dns.allowCIDRs is answered');
      allowed.sock.close();
    } finally {
      me.sock.close();
      stranger.sock.close();
    }
  });

  test('the Node\'s spec.podCIDRs become clients as the snapshot changes, and stop being clients when removed', async () => {
    const pod = await udpClient('127.0.1.5');
    try {
      const q = (id: number) => query('web.default.svc.cluster.local', id);
      assert.equal(rcode((await pod.ask(q(10), r.port))!), 5);
      r.model.replace('Node', [{ kind: 'Node', metadata: { name: NODE }, spec: { podCIDRs: ['127.0.1.0/24'] } }]);
      r.model.flush();
      const yes = (await pod.ask(q(11), r.port))!;
      assert.equal(rcode(yes), 0);
      assert.equal(ancount(yes), 1);
      assert.ok(await tcpAsk(q(12), r.port, '127.0.1.5'), 'TCP too');
      r.model.replace('Node', [{ kind: 'Node', metadata: { name: NODE }, spec: { podCIDRs: ['127.0.2.0/24'] } }]);
      r.model.flush();
      assert.equal(rcode((await pod.ask(q(13), r.port))!), 5);
      // Another node's pod CIDR does not count.
      r.model.replace('Node', [{ kind: 'Node', metadata: { name: 'someone-else' }, spec: { podCIDRs: ['127.0.1.0/24'] } }]);
      r.model.flush();
      assert.equal(rcode((await pod.ask(q(14), r.port))!), 5);
    } finally {
      pod.sock.close();
    }
  });
});

test('a host process asking dns.listen directly (its source is that address) is answered even before the interface list shows it', async () => {
  const r = await start({ rrl: { responsesPerSecond: 0 } }, undefined, []);
  const c = await udpClient('127.0.0.1');
  try {
    const a = await c.ask(query('web.default.svc.cluster.local', 1), r.port);
    assert.ok(a && rcode(a) === 0 && ancount(a) === 1);
  } finally {
    c.sock.close();
    await r.dns.stop();
  }
});

describe('DNS response-rate limiting', () => {
  let r: Running;
  let up: TestUpstream;
  before(async () => {
    const txt = 'x'.repeat(250);
    up = await startUpstream({ records: { 'big.example.test': Array.from({ length: 8 }, () => ({ name: 'big.example.test', type: 'TXT', ttl: 300, data: txt })) } });
    r = await start({ rrl: { responsesPerSecond: 5, slip: 2, windowSeconds: 1 } }, up.port);
  });
  after(async () => { await r.dns.stop(); await up.close(); });

  test('a flood of one answer to one /24 is limited (half slipped as TC), counted; TCP still answers; other names are not limited', async () => {
    const c = await udpClient('127.0.0.1');
    try {
      const n = 40;
      for (let i = 0; i < n; i++) c.sock.send(query('web.default.svc.cluster.local', 100 + i), r.port, '127.0.0.1');
      await sleep(500);
      const got = [...c.replies.values()];
      const full = got.filter((b) => !tc(b) && ancount(b) === 1).length;
      const slipped = got.filter((b) => tc(b) && ancount(b) === 0).length;
      assert.ok(full >= 5 && full < n / 2, `about one second's worth answered (${full})`);
      assert.ok(slipped >= (n - full) / 2 - 1, `every second limited answer slipped (${slipped})`);
      assert.ok(got.length < n, 'the rest dropped');
      const dropped = await metric(r.registry, 'edgemesh_dns_rrl_total', { action: 'dropped' });
      const slips = await metric(r.registry, 'edgemesh_dns_rrl_total', { action: 'slipped' });
      assert.equal(slips, slipped);
      assert.equal(dropped + slips + full, n);
      for (const b of got.filter(tc)) assert.ok(b.length <= query('web.default.svc.cluster.local', 0).length, 'a slip is no larger than the query');
      // The real client's retry over TCP is answered in full.
      const viaTcp = await tcpAsk(query('web.default.svc.cluster.local', 200), r.port);
      assert.ok(viaTcp && ancount(viaTcp) === 1);
      // Another name from the same prefix has its own account.
      const other = await c.ask(query('dual.default.svc.cluster.local', 201), r.port);
      assert.ok(other && rcode(other) === 0 && !tc(other));
      // After the window the flooded name is answered over UDP again.
      let back: Buffer | undefined;
      for (let i = 0; i < 20 && !(back && !tc(back) && ancount(back) === 1); i++) {
        await sleep(500);
        back = await c.ask(query('web.default.svc.cluster.local', 210 + i), r.port, 500);
      }
      assert.ok(back && !tc(back) && ancount(back) === 1, 'recovered');
    } finally {
      c.sock.close();
    }
  });

  test('forwarded answers keep the 1232-byte UDP cap whatever EDNS size the client asks; TCP gets all of it', async () => {
    const c = await udpClient('127.0.0.1');
    try {
      const u = (await c.ask(query('big.example.test', 300, 'TXT', 4096), r.port))!;
      assert.ok(u, 'answered');
      assert.ok(u.length <= 1232, `${u.length} B`);
      assert.equal(tc(u), true);
      const t = (await tcpAsk(query('big.example.test', 301, 'TXT'), r.port))!;
      assert.equal(ancount(t), 8);
      assert.ok(t.length > 1232);
    } finally {
      c.sock.close();
    }
  });
});

describe('DNS over TCP slots', () => {
  let r: Running;
  before(async () => { r = await start({ rrl: { responsesPerSecond: 0 }, allowCIDRs: ['127.0.0.0/8'], tcp: { maxConnections: 4, maxPerSource: 2 } }); });
  after(async () => { await r.dns.stop(); });
  const q = (id: number) => query('web.default.svc.cluster.local', id);

  test('a connection dribbling one message is dropped at the whole-message deadline (counted); pipelined queries are answered', async () => {
    const d = await rawTcp(r.port, '127.0.0.10');
    const msg = q(1);
    const framed = Buffer.concat([Buffer.from([0, msg.length]), msg]);
    let i = 0;
    const t0 = Date.now();
    const drip = setInterval(() => { if (!d.isClosed() && i < framed.length - 1) d.sock.write(framed.subarray(i, ++i)); }, 200);
    await within(d.closed, TCP_MESSAGE_DEADLINE_MS + 8000, 'dribbler dropped');
    clearInterval(drip);
    assert.ok(Date.now() - t0 >= TCP_MESSAGE_DEADLINE_MS - 100, 'not before the deadline');
    assert.equal(r.budgets.refused(DNS_TCP_DEADLINE), 1);
    // Two queries in one segment, both answered on one connection.
    const p = await rawTcp(r.port, '127.0.0.10');
    let got = Buffer.alloc(0);
    p.sock.on('data', (b) => { got = Buffer.concat([got, b]); });
    const m2 = q(2);
    const m3 = q(3);
    p.sock.write(Buffer.concat([Buffer.from([0, m2.length]), m2, Buffer.from([0, m3.length]), m3]));
    const ids = () => {
      const out: number[] = [];
      for (let o = 0; o + 2 <= got.length && o + 2 + got.readUInt16BE(o) <= got.length; o += 2 + got.readUInt16BE(o)) out.push(got.readUInt16BE(o + 2));
      return out;
    };
    await within((async () => { while (ids().length < 2) await sleep(20); })(), 5000, 'two answers');
    assert.deepEqual(ids(), [2, 3]);
    p.sock.destroy();
  });

  test('per source and in total: full slots evict the oldest idle or dribbling connection for a newcomer; too young = refused', async () => {
    await within((async () => { while (r.dns.server.tcpConnections > 0) await sleep(20); })(), 5000, 'slots free');
    const refusedBefore = r.budgets.refused(`${DNS_TCP_BUDGET}_per_source`);
    const a1 = await rawTcp(r.port, '127.0.0.11');
    const a2 = await rawTcp(r.port, '127.0.0.11');
    const a3 = await rawTcp(r.port, '127.0.0.11');
    await within(a3.closed, 5000, 'third from one source refused (the others are too young to evict)');
    assert.equal(r.budgets.refused(`${DNS_TCP_BUDGET}_per_source`), refusedBefore + 1);
    await sleep(TCP_MIN_EVICT_AGE_MS + 50);
    const a4 = await rawTcp(r.port, '127.0.0.11');
    await within(a1.closed, 5000, 'oldest of the source evicted');
    assert.equal(a4.isClosed(), false);
    // Fill the total (4) with dribblers from two more sources; a real query from a fifth source gets through.
    const dribblers = [await rawTcp(r.port, '127.0.0.12'), await rawTcp(r.port, '127.0.0.12')];
    for (const d of dribblers) d.sock.write(Buffer.from([0]));
    assert.equal(r.dns.server.tcpConnections, 4);
    await sleep(TCP_MIN_EVICT_AGE_MS + 50);
    a2.sock.write(Buffer.from([0])); // a2 is dribbling now too; a4 is idle and older than the age floor
    const ans = await tcpAsk(q(20), r.port, '127.0.0.13');
    assert.ok(ans && ancount(ans) === 1, 'a real client gets its answer');
    await within(a4.closed, 5000, 'the idle connection went first');
    assert.ok(r.budgets.evictedCount(DNS_TCP_BUDGET) >= 2);
    for (const c of [a2, a4, ...dribblers]) c.sock.destroy();
  });
});
