// The agent's DNS against real clients (dig, node's dns.Resolver) on a small cluster fed in-process, with a test
// upstream for forwarding. Listens on 127.0.0.1 with an ephemeral port.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Resolver } from 'node:dns/promises';
import { createSocket } from 'node:dgram';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import dnsPacket from 'dns-packet';
import { stringify } from 'yaml';
import { loadAgentConfig } from '@edgemesh/common/config';
import { silentLogger } from '@edgemesh/common/log';
import { Agent } from '../packages/agent/src/main.ts';
import type { RawObject } from '../packages/agent/src/cluster/types.ts';
import { fixtureObjects } from '../packages/agent/src/dns/testfixture.ts';
import { startUpstream, type TestUpstream } from './lib/dnsupstream.ts';

const run = promisify(execFile);

function bigSlice(): RawObject {
  return {
    kind: 'EndpointSlice', metadata: { name: 'big-1', namespace: 'default', labels: { 'kubernetes.io/service-name': 'big' } }, addressType: 'IPv4',
    endpoints: Array.from({ length: 100 }, (_, i) => ({ addresses: [`10.245.0.${i + 1}`], conditions: { ready: true } })), ports: [{ name: 'http', port: 80, protocol: 'TCP' }],
  };
}

function objects(): { services: RawObject[]; slices: RawObject[] } {
  const f = fixtureObjects();
  return {
    services: [...f.services, { kind: 'Service', metadata: { name: 'big', namespace: 'default' }, spec: { clusterIP: 'None', ports: [{ name: 'http', port: 80 }] } }],
    slices: [...f.slices, bigSlice()],
  };
}

/** Starts an agent (DNS on 127.0.0.1:0) and feeds it the cluster, as the file source would from manifestsDir. */
async function startAgent(stateDir: string, extra: Record<string, unknown>, objs = objects()): Promise<{ agent: Agent; port: number }> {
  const manifests = join(stateDir, 'manifests');
  rmSync(manifests, { recursive: true, force: true });
  const { mkdirSync } = await import('node:fs');
  mkdirSync(manifests, { recursive: true });
  writeFileSync(join(manifests, 'cluster.yaml'), [...objs.services, ...objs.slices].map((o) => stringify({ apiVersion: o.kind === 'Service' ? 'v1' : 'discovery.k8s.io/v1', ...o })).join('---\n'));
  const base = {
    nodeName: 'dns-test', stateDir,
    cluster: { source: 'file', manifestsDir: manifests },
    admin: { listen: '127.0.0.1:0' },
    tunnel: { enabled: false },
    proxy: { intercept: 'none', bindAddress: '127.0.0.1' },
    log: { level: 'silent' },
  };
  const dns = { listen: '127.0.0.1:0', ...(extra.dns as object) };
  const cfg = loadAgentConfig({ text: stringify({ ...base, ...extra, dns }) });
  const agent = new Agent(cfg, silentLogger);
  await agent.start();
  agent.model.replace('Service', objs.services);
  agent.model.replace('EndpointSlice', objs.slices);
  agent.model.flush();
  await agent.proxy?.settle(); // the proxy has reconciled the new snapshot: the agent is ready
  assert.ok(agent.dns, 'DNS started');
  return { agent, port: agent.dns.address.port };
}

async function dig(port: number, ...args: string[]): Promise<string> {
  const { stdout } = await run('dig', ['@127.0.0.1', '-p', String(port), '+time=3', '+tries=1', ...args]);
  return stdout;
}

const answerLines = (out: string) => out.split('\n').filter((l) => l && !l.startsWith(';'));

/** One A question over UDP from `sock`; resolves with the reply (throws after a generous deadline). */
function udpQuery(sock: ReturnType<typeof createSocket>, port: number, name: string): Promise<Buffer> {
  const id = 1 + Math.floor(Math.random() * 65000);
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { sock.off('message', on); reject(new Error(`no answer to ${name}`)); }, 10_000);
    const on = (m: Buffer) => {
      if (m.length < 2 || m.readUInt16BE(0) !== id) return;
      clearTimeout(t);
      sock.off('message', on);
      resolve(m);
    };
    sock.on('message', on);
    sock.send(dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type: 'A' }] }), port, '127.0.0.1');
  });
}

describe('agent DNS with real clients', () => {
  let dir: string;
  let up: TestUpstream;
  let agent: Agent;
  let port: number;
  let resolver: Resolver;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'em-dns-'));
    up = await startUpstream({
      records: {
        'www.example.test': [{ name: 'www.example.test', type: 'A', ttl: 300, data: '192.0.2.10' }],
        '.': [{ name: '.', type: 'NS', ttl: 300, data: 'a.root.test' }],
        'example.org': [{ name: 'example.org', type: 'A', ttl: 300, data: '192.0.2.7' }],
        'slow.example.test': [{ name: 'slow.example.test', type: 'A', ttl: 300, data: '192.0.2.11' }],
        'big.example.test': Array.from({ length: 40 }, (_, i) => ({ name: 'big.example.test', type: 'A' as const, ttl: 300, data: `192.0.2.${i + 1}` })),
      },
      delayMs: { 'slow.example.test': 300 },
    });
    ({ agent, port } = await startAgent(dir, { dns: { upstream: [`127.0.0.1:${up.port}`] } }));
    resolver = new Resolver({ timeout: 4000, tries: 1 });
    resolver.setServers([`127.0.0.1:${port}`]);
  });
  after(async () => {
    await agent?.stop();
    await up?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('readiness check and /status use the DNS listeners and the Service IP table', () => {
    assert.equal(agent.admin.ready().ok, true);
    assert.equal(agent.admin.checks.has('dns'), true);
    const web = agent.status().services.find((s) => s.name === 'default/web');
    assert.equal(web?.ip, '10.96.0.10');
    assert.equal(agent.serviceIPs.serviceFor('10.96.0.10'), 'default/web');
  });

  test('A, AAAA, SRV, PTR with node dns.Resolver', async () => {
    assert.deepEqual(await resolver.resolve4('web.default.svc.cluster.local'), ['10.96.0.10']);
    assert.deepEqual(await resolver.resolve6('dual.default.svc.cluster.local'), ['fd00::11']);
    const srv = await resolver.resolveSrv('_http._tcp.web.default.svc.cluster.local');
    assert.deepEqual(srv.map(({ name, port, priority, weight }) => ({ name, port, priority, weight })), [{ name: 'web.default.svc.cluster.local', port: 80, priority: 0, weight: 100 }]);
    assert.deepEqual(await resolver.reverse('10.96.0.10'), ['web.default.svc.cluster.local']);
    assert.deepEqual((await resolver.resolve4('db.default.svc.cluster.local')).sort(), ['10.244.1.5', '10.244.2.6']);
    assert.deepEqual(await resolver.resolve4('db-0.db.default.svc.cluster.local'), ['10.244.1.5']);
  });

  test('NXDOMAIN and NODATA map to ENOTFOUND / ENODATA; ExternalName resolves through the CNAME', async () => {
    await assert.rejects(resolver.resolve4('nope.default.svc.cluster.local'), { code: 'ENOTFOUND' });
    await assert.rejects(resolver.resolve6('web.default.svc.cluster.local'), { code: 'ENODATA' });
    assert.deepEqual(await resolver.resolveCname('ext.default.svc.cluster.local'), ['example.org']);
    assert.deepEqual(await resolver.resolve4('ext.default.svc.cluster.local'), ['192.0.2.7']);
    assert.deepEqual(await resolver.resolve4('alias.default.svc.cluster.local'), ['10.96.0.10']);
  });

  test('dig: A, headless, SRV, PTR, ExternalName, NXDOMAIN + SOA, NODATA, TCP', async () => {
    assert.deepEqual(answerLines(await dig(port, 'web.default.svc.cluster.local', 'A', '+short')), ['10.96.0.10']);
    assert.deepEqual(answerLines(await dig(port, 'db.default.svc.cluster.local', 'A', '+short')).sort(), ['10.244.1.5', '10.244.2.6']);
    const srv = answerLines(await dig(port, '_pg._tcp.db.default.svc.cluster.local', 'SRV', '+short')).sort();
    assert.deepEqual(srv, ['0 50 15432 10-244-2-6.db.default.svc.cluster.local.', '0 50 15432 db-0.db.default.svc.cluster.local.']);
    assert.deepEqual(answerLines(await dig(port, '-x', '10.96.0.10', '+short')), ['web.default.svc.cluster.local.']);
    const ext = await dig(port, 'ext.default.svc.cluster.local', 'A', '+noall', '+answer');
    assert.match(ext, /ext\.default\.svc\.cluster\.local\.\s+30\s+IN\s+CNAME\s+example\.org\./);
    assert.match(ext, /example\.org\.\s+\d+\s+IN\s+A\s+192\.0\.2\.7/);
    const nx = await dig(port, 'web.default.svc.cluster.local.svc.cluster.local', 'A');
    assert.match(nx, /status: NXDOMAIN/);
    assert.match(nx, /flags: qr aa rd ra;/);
    assert.match(nx, /AUTHORITY SECTION:\ncluster\.local\.\s+30\s+IN\s+SOA\s+ns\.dns\.cluster\.local\. hostmaster\.cluster\.local\. \d+ 7200 1800 86400 30/);
    const nodata = await dig(port, 'web.default.svc.cluster.local', 'AAAA');
    assert.match(nodata, /status: NOERROR/);
    assert.match(nodata, /ANSWER: 0, AUTHORITY: 1/);
    assert.deepEqual(answerLines(await dig(port, '+tcp', 'web.default.svc.cluster.local', 'A', '+short')), ['10.96.0.10']);
    assert.match(await dig(port, 'web.default.svc.cluster.local', 'A'), /EDNS: version: 0/);
  });

  test('dig: TC over UDP on a large headless answer, the full answer over TCP', async () => {
    const udp = await dig(port, '+notcp', '+ignore', 'big.default.svc.cluster.local', 'A');
    assert.match(udp, /flags: qr aa tc rd ra;/);
    assert.equal(answerLines(udp).length, 0);
    const retried = await dig(port, 'big.default.svc.cluster.local', 'A', '+short'); // dig retries over TCP itself
    assert.equal(answerLines(retried).length, 100);
    assert.equal(answerLines(await dig(port, '+tcp', 'big.default.svc.cluster.local', 'A', '+short')).length, 100);
  });

  test('forwarding: answered by the upstream, second query from the cache, TCP to the upstream on TC', async () => {
    const cachedAt = performance.now();
    assert.deepEqual(answerLines(await dig(port, 'www.example.test', 'A', '+short')), ['192.0.2.10']);
    assert.equal(up.counts.byName.get('www.example.test'), 1);
    const second = await dig(port, 'www.example.test', 'A', '+noall', '+answer');
    // The cached answer's TTL is the upstream's 300 s minus the whole seconds it has sat in the cache: bounded by the
    // time measured around the two queries (however slow the machine), not by a fixed window.
    const agedS = Math.ceil((performance.now() - cachedAt) / 1000);
    const ttl = Number(/www\.example\.test\.\s+(\d+)\s+IN\s+A\s+192\.0\.2\.10/.exec(second)?.[1]);
    assert.ok(ttl <= 300 && ttl >= 300 - agedS - 1, `cached TTL ${ttl} after ${agedS} s in the cache: ${second}`);
    assert.deepEqual(await resolver.resolve4('www.example.test'), ['192.0.2.10']);
    assert.equal(up.counts.byName.get('www.example.test'), 1, 'served from the cache');
    const metrics = await agent.registry.metrics();
    assert.match(metrics, /edgemesh_dns_cache_total\{cache="forward",result="hit"\} [1-9]/);
    assert.match(metrics, /edgemesh_dns_queries_total\{type="A",rcode="NOERROR",source="forward"\} [1-9]/);
    assert.match(metrics, /edgemesh_dns_upstream_duration_seconds_count\{upstream="0",outcome="ok"\} [1-9]/);

    const tcpBefore = up.counts.tcp;
    assert.equal((await resolver.resolve4('big.example.test')).length, 40);
    assert.equal(up.counts.tcp, tcpBefore + 1, 'the agent retried the truncated upstream answer over TCP');
    await assert.rejects(resolver.resolve4('missing.example.test'), { code: 'ENOTFOUND' });
    await assert.rejects(resolver.resolve4('missing.example.test'), { code: 'ENOTFOUND' });
    assert.equal(up.counts.byName.get('missing.example.test'), 1, 'NXDOMAIN cached from the SOA minimum');
    assert.deepEqual(answerLines(await dig(port, '.', 'NS', '+short')), ['a.root.test.']); // the root name is forwarded too
  });

  test('forwarding: identical concurrent questions make one upstream query; replies keep each client ID', async () => {
    const sock = createSocket('udp4');
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
    const got = new Map<number, string>();
    const all = new Promise<void>((resolve) => sock.on('message', (m) => {
      const p = dnsPacket.decode(m);
      got.set(p.id!, String((p.answers?.[0] as { data?: unknown } | undefined)?.data));
      if (got.size === 20) resolve();
    }));
    for (let id = 1; id <= 20; id++) sock.send(dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name: 'slow.example.test', type: 'A' }] }), port, '127.0.0.1');
    await all;
    sock.close();
    assert.deepEqual([...got.keys()].sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i + 1));
    assert.ok([...got.values()].every((v) => v === '192.0.2.11'));
    assert.equal(up.counts.byName.get('slow.example.test'), 1);
  });

  test('malformed datagrams are counted and dropped; the server keeps answering', async () => {
    const sock = createSocket('udp4');
    const rnd = (n: number) => Buffer.from(Array.from({ length: n }, () => Math.floor(Math.random() * 256)));
    const sends: Promise<void>[] = [];
    for (let i = 0; i < 300; i++) {
      const pkt = i % 3 === 0 ? rnd(5) : i % 3 === 1 ? Buffer.concat([Buffer.from([0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12]), rnd(i % 7)]) : rnd(12 + (i % 300));
      sends.push(new Promise((r) => sock.send(pkt, port, '127.0.0.1', () => r())));
      // Every 25 datagrams a real question from the same socket: once it is answered the server has read everything
      // sent before it, so its receive buffer never overflows (a paced wait, not a sleep).
      if (i % 25 === 24) await udpQuery(sock, port, 'web.default.svc.cluster.local');
    }
    await Promise.all(sends);
    await new Promise<void>((r) => sock.close(() => r()));
    assert.deepEqual(await resolver.resolve4('web.default.svc.cluster.local'), ['10.96.0.10']);
    const m = await agent.registry.metrics();
    const malformed = Number(/edgemesh_dns_malformed_total\{transport="udp"\} (\d+)/.exec(m)?.[1] ?? 0);
    assert.ok(malformed >= 100, `malformed ${malformed}`);

    // TCP: garbage frames, a zero-length frame, then a frame that claims 65535 bytes and stops; then a real query.
    const { connect } = await import('node:net');
    const c = connect(port, '127.0.0.1');
    await new Promise<void>((r) => c.once('connect', () => r()));
    const frame = (b: Buffer) => Buffer.concat([Buffer.from([b.length >> 8, b.length & 255]), b]);
    c.on('error', () => {});
    c.resume();
    const closed = new Promise((r) => c.once('close', r));
    // Half-close after the garbage: the server has read all of it when it closes its side (not after a sleep).
    c.end(Buffer.concat([frame(rnd(3)), frame(Buffer.alloc(0)), frame(rnd(40)), Buffer.from([0xff, 0xff]), rnd(100)]));
    await closed;
    assert.deepEqual(answerLines(await dig(port, '+tcp', 'web.default.svc.cluster.local', 'A', '+short')), ['10.96.0.10']);
    const m2 = await agent.registry.metrics();
    assert.ok(Number(/edgemesh_dns_malformed_total\{transport="tcp"\} (\d+)/.exec(m2)?.[1] ?? 0) >= 2);
  });
});

describe('agent DNS edge cases', () => {
  test('SERVFAIL when the only upstream is dead', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'em-dns-'));
    const dead = createSocket('udp4');
    await new Promise<void>((r) => dead.bind(0, '127.0.0.1', () => r()));
    const deadPort = dead.address().port;
    await new Promise<void>((r) => dead.close(() => r()));
    const { agent, port } = await startAgent(dir, { dns: { upstream: [`127.0.0.1:${deadPort}`] } });
    try {
      assert.match(await dig(port, 'www.example.test', 'A'), /status: SERVFAIL/);
      const r = new Resolver({ timeout: 4000, tries: 1 });
      r.setServers([`127.0.0.1:${port}`]);
      await assert.rejects(r.resolve4('other.example.test'), { code: 'ESERVFAIL' });
      assert.deepEqual(await r.resolve4('web.default.svc.cluster.local'), ['10.96.0.10']); // cluster names unaffected
    } finally {
      await agent.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('fake IP mode: the same IP for a Service across an agent restart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'em-dns-'));
    const cfg = { proxy: { intercept: 'none', bindAddress: '127.0.0.1', ipMode: 'fake', fakeCIDR: '9.251.0.0/16' }, dns: { upstream: [] } };
    try {
      const a1 = await startAgent(dir, cfg);
      const ip1 = answerLines(await dig(a1.port, 'web.default.svc.cluster.local', 'A', '+short'));
      assert.equal(ip1.length, 1);
      assert.match(ip1[0], /^9\.251\.\d+\.\d+$/);
      assert.deepEqual(answerLines(await dig(a1.port, '-x', ip1[0], '+short')), ['web.default.svc.cluster.local.']);
      assert.equal(a1.agent.status().services.find((s) => s.name === 'default/web')?.ip, ip1[0]);
      await a1.agent.stop();
      // Restart with the Services in another order plus a new one that could collide: web keeps its IP.
      const o = objects();
      o.services.reverse().push({ kind: 'Service', metadata: { name: 'newcomer', namespace: 'default' }, spec: { ports: [{ port: 80 }] } });
      const a2 = await startAgent(dir, cfg, o);
      try {
        assert.deepEqual(answerLines(await dig(a2.port, 'web.default.svc.cluster.local', 'A', '+short')), ip1);
        assert.equal(a2.agent.serviceIPs.serviceFor(ip1[0]), 'default/web');
      } finally {
        await a2.agent.stop();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('forwarder failover', () => {
  test('a silent upstream times out, a refusing one fails at once; the next answers and is preferred afterwards', async (t) => {
    // The forwarder's per-upstream timeout runs on a mocked clock: it fires on tick(), never early or late.
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const TIMEOUT_MS = 300;
    const { Forwarder, parseUpstream } = await import('../packages/agent/src/dns/forward.ts');
    const up = await startUpstream({ records: { 'a.example.test': [{ name: 'a.example.test', type: 'A', ttl: 60, data: '192.0.2.1' }], 'b.example.test': [{ name: 'b.example.test', type: 'A', ttl: 60, data: '192.0.2.2' }] } });
    const silent = createSocket('udp4'); // receives and never answers
    await new Promise<void>((r) => silent.bind(0, '127.0.0.1', () => r()));
    let silentGot = 0;
    silent.on('message', () => { silentGot++; });
    const closed = createSocket('udp4');
    await new Promise<void>((r) => closed.bind(0, '127.0.0.1', () => r()));
    const closedPort = closed.address().port;
    await new Promise<void>((r) => closed.close(() => r()));
    const outcomes: string[] = [];
    const fw = new Forwarder({
      upstreams: [parseUpstream(`127.0.0.1:${silent.address().port}`), parseUpstream(`127.0.0.1:${closedPort}`), parseUpstream(`127.0.0.1:${up.port}`)],
      timeoutMs: TIMEOUT_MS, log: silentLogger, hooks: { onUpstream: (_u, _s, o) => outcomes.push(o) },
    });
    const q = (name: string) => ({ questionBytes: dnsPacket.encode({ questions: [{ name, type: 'A' }] }).subarray(12), name, type: 'A', class: 'IN', do: false, cd: false });
    try {
      const asked = new Promise((r) => silent.once('message', r));
      const resolving = fw.resolve(q('a.example.test'));
      await asked; // the question reached the silent upstream...
      t.mock.timers.tick(TIMEOUT_MS - 1);
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(outcomes, [], '...and the forwarder waits for it until the timeout');
      t.mock.timers.tick(1);
      const a = await resolving;
      assert.equal(a.rcode, 0);
      assert.equal((a.answers[0] as { data: string }).data, '192.0.2.1');
      assert.deepEqual(outcomes, ['timeout', 'error', 'ok']);
      assert.equal(silentGot, 1);
      // The failed upstreams are now tried last: the next question goes straight to the working one.
      outcomes.length = 0;
      const b = await fw.resolve(q('b.example.test'));
      assert.equal((b.answers[0] as { data: string }).data, '192.0.2.2');
      assert.deepEqual(outcomes, ['ok']);
    } finally {
      silent.close();
      await up.close();
    }
  });
});
