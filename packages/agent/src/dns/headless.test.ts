// Per-endpoint mesh IPs of headless Services: allocation (stable across restarts and churn, grace, the shared pool)
// and the DNS answers for every form (Service name, hostname, dashed address, SRV targets, PTR both ways, pod names).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Answer } from 'dns-packet';
import { silentLogger } from '@edgemesh/common/log';
import { ClusterModel } from '../cluster/model.ts';
import type { RawObject } from '../cluster/types.ts';
import { DirectRanges } from '../proxy/choose.ts';
import { answerCluster, DNS_SCHEMA_VERSION, type ZoneView } from './answer.ts';
import { FAKE_IP_FILE, FAKE_IP_GRACE_MS, firstChoice, intToIpv4, labelOwners, meshEndpoints, parseFakeCIDR, ServiceIPs } from './serviceips.ts';

const dataOf = (a: Answer): unknown => (a as { data?: unknown }).data;
const NEAR = 'near';

function svc(name: string, spec: Record<string, unknown>, ns = 'demo'): RawObject {
  return { kind: 'Service', metadata: { name, namespace: ns }, spec };
}

interface Ep { ip: string; node?: string; hostname?: string; ready?: boolean; terminating?: boolean }
function slice(name: string, svcName: string, eps: Ep[], ports: unknown[] = [{ name: 'http', port: 8080, protocol: 'TCP' }, { name: 'echo', port: 8081, protocol: 'UDP' }], ns = 'demo'): RawObject {
  return {
    kind: 'EndpointSlice', metadata: { name, namespace: ns, labels: { 'kubernetes.io/service-name': svcName } }, addressType: 'IPv4', ports,
    endpoints: eps.map((e) => ({ addresses: [e.ip], nodeName: e.node, hostname: e.hostname, conditions: { ready: e.ready ?? true, terminating: e.terminating } })),
  };
}

/** web: web-0, web-1 on the far node, web-2 on this node, an unnamed pod on the far node, one in a flat range. */
const WEB: Ep[] = [
  { ip: '10.244.3.10', node: 'far', hostname: 'web-0' },
  { ip: '10.244.3.11', node: 'far', hostname: 'web-1' },
  { ip: '10.244.1.10', node: NEAR, hostname: 'web-2' },
  { ip: '10.244.3.12', node: 'far' },
  { ip: '10.250.0.5', node: 'far2', hostname: 'web-3' },
];

function model(eps: Ep[] = WEB): ClusterModel {
  const m = new ClusterModel([]);
  m.replace('Service', [
    svc('web', { clusterIP: 'None', ports: [{ name: 'http', port: 8080 }, { name: 'echo', port: 8081, protocol: 'UDP' }] }),
    svc('api', { clusterIP: '10.96.0.20', ports: [{ name: 'http', port: 80 }] }),
  ]);
  m.replace('EndpointSlice', [slice('web-1', 'web', eps)]);
  return m;
}

const MESH = { thisNode: NEAR, directCIDRs: ['10.250.0.0/16'] };

function table(dir: string, mode: 'clusterIP' | 'fake' = 'fake', now = () => 1_000_000): ServiceIPs {
  return new ServiceIPs({ mode, fakeCIDR: '9.251.0.0/16', stateDir: dir, log: silentLogger, now, meshEndpoints: MESH });
}

function withDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'em-mesh-'));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('meshEndpoints: only endpoints this node cannot reach as they are (other node, outside directCIDRs, with a TCP/UDP port)', () => {
  const m = model([...WEB, { ip: '10.244.3.20', node: 'far', hostname: 'noports' }]);
  m.replace('EndpointSlice', [slice('web-1', 'web', WEB), slice('web-2', 'web', [{ ip: '10.244.3.20', node: 'far', hostname: 'noports' }], [])]);
  const got = meshEndpoints(m.flush(), NEAR, new DirectRanges(MESH.directCIDRs));
  assert.deepEqual([...got.keys()].sort(), ['demo/web/10-244-3-12', 'demo/web/web-0', 'demo/web/web-1']);
  assert.equal(got.get('demo/web/web-0')!.endpoint.address, '10.244.3.10');
});

test('labelOwners: a label shared by a terminating pod and its ready successor belongs to the ready one', () => {
  const m = model([{ ip: '10.244.3.10', node: 'far', hostname: 'web-0', ready: false, terminating: true }, { ip: '10.244.3.99', node: 'far', hostname: 'web-0' }]);
  const snap = m.flush();
  assert.equal(labelOwners(snap.endpoints.get('demo/web')!).get('web-0')!.address, '10.244.3.99');
});

test('allocation: hashed first choice, stable across restarts and endpoint churn, shared pool with Service fake IPs', () => withDir((dir) => {
  const m = model();
  const t1 = table(dir);
  t1.update(m.flush());
  const ips = new Map([...t1.endpointIPs()].map(([k, v]) => [k, v.ip]));
  assert.equal(ips.size, 3);
  const pool = parseFakeCIDR('9.251.0.0/16');
  assert.equal(ips.get('demo/web/web-0'), intToIpv4(firstChoice(pool, 'demo/web/web-0')));
  const api = t1.ipsFor('demo/api')[0];
  assert.ok(![...ips.values()].includes(api), 'never the IP of a Service');
  assert.equal(new Set(ips.values()).size, 3);
  assert.equal(t1.endpointFor(ips.get('demo/web/web-1')!)?.label, 'web-1');
  assert.equal(t1.podMeshIP('demo', '10.244.3.10')?.ip, ips.get('demo/web/web-0'));
  assert.equal(t1.podMeshIP('other', '10.244.3.10'), undefined);
  const file = JSON.parse(readFileSync(join(dir, FAKE_IP_FILE), 'utf8'));
  assert.equal(file.endpoints['demo/web/web-0'].ip, ips.get('demo/web/web-0'));

  // Restart, and churn: web-1 is rescheduled with a new pod IP, a new pod web-4 arrives, the unnamed pod leaves.
  const churned = WEB.map((e) => (e.hostname === 'web-1' ? { ...e, ip: '10.244.3.77' } : e)).filter((e) => e.ip !== '10.244.3.12');
  const t2 = table(dir);
  t2.update(model([...churned, { ip: '10.244.3.40', node: 'far', hostname: 'web-4' }]).flush());
  assert.equal(t2.endpointIP('demo/web', 'web-0')?.ip, ips.get('demo/web/web-0'));
  assert.equal(t2.endpointIP('demo/web', 'web-1')?.ip, ips.get('demo/web/web-1'), 'a new pod IP keeps the name\'s mesh IP');
  assert.equal(t2.endpointIP('demo/web', 'web-1')?.address, '10.244.3.77');
  assert.ok(t2.endpointIP('demo/web', 'web-4'));
  assert.equal(t2.endpointIP('demo/web', '10-244-3-12'), undefined, 'gone: not answered');
  // Same hash input on a fresh node (no state file): the same first choices.
  withDir((other) => {
    const t3 = table(other);
    t3.update(model().flush());
    assert.equal(t3.endpointIP('demo/web', 'web-0')?.ip, ips.get('demo/web/web-0'));
  });
}));

test('allocation: a gone endpoint keeps its mesh IP through the grace period, then it is released', () => withDir((dir) => {
  let now = 5_000_000;
  const t = table(dir, 'fake', () => now);
  const m = model();
  t.update(m.flush());
  const ip = t.endpointIP('demo/web', 'web-1')!.ip;
  m.replace('EndpointSlice', [slice('web-1', 'web', WEB.filter((e) => e.hostname !== 'web-1'))]);
  t.update(m.flush());
  assert.equal(t.endpointIP('demo/web', 'web-1'), undefined);
  assert.equal(t.endpointFor(ip), undefined);
  assert.equal(JSON.parse(readFileSync(join(dir, FAKE_IP_FILE), 'utf8')).endpoints['demo/web/web-1'].goneSince, now);
  now += FAKE_IP_GRACE_MS - 1;
  m.replace('EndpointSlice', [slice('web-1', 'web', WEB)]);
  t.update(m.flush());
  assert.equal(t.endpointIP('demo/web', 'web-1')?.ip, ip, 'back within the grace: same IP');
  m.replace('EndpointSlice', [slice('web-1', 'web', WEB.filter((e) => e.hostname !== 'web-1'))]);
  t.update(m.flush());
  now += FAKE_IP_GRACE_MS + 1;
  t.update(m.flush());
  assert.equal(JSON.parse(readFileSync(join(dir, FAKE_IP_FILE), 'utf8')).endpoints['demo/web/web-1'], undefined);
  // A pod moving onto this node gives its mesh IP up (grace): it is answered by its own IP from here.
  m.replace('EndpointSlice', [slice('web-1', 'web', WEB.map((e) => (e.hostname === 'web-0' ? { ...e, node: NEAR } : e)))]);
  t.update(m.flush());
  assert.equal(t.endpointIP('demo/web', 'web-0'), undefined);
}));

test('allocation in clusterIP mode: headless endpoints still get mesh IPs; Services keep their ClusterIPs', () => withDir((dir) => {
  const t = table(dir, 'clusterIP');
  t.update(model().flush());
  assert.deepEqual(t.ipsFor('demo/api'), ['10.96.0.20']);
  assert.equal(t.endpointIPs().size, 3);
  const ip = t.endpointIP('demo/web', 'web-0')!.ip;
  assert.ok(t.inFakePool(ip));
  // Without the tunnel (no meshEndpoints option) and in clusterIP mode there is no pool at all, as before.
  const plain = new ServiceIPs({ mode: 'clusterIP', fakeCIDR: '9.251.0.0/16', stateDir: dir, log: silentLogger });
  plain.update(model().flush());
  assert.equal(plain.endpointIPs().size, 0);
  assert.equal(plain.inFakePool(ip), false);
}));

function zone(t: ServiceIPs, m: ClusterModel): ZoneView {
  return { snap: m.snapshot(), ips: t, domain: 'cluster.local', ttl: 30, ownsIP: (ip) => t.inFakePool(ip) };
}

test('DNS: every headless name form answers the mesh IP of a far endpoint and the pod IP of a near or flat one', () => withDir((dir) => {
  const m = model();
  const t = table(dir);
  t.update(m.flush());
  const z = zone(t, m);
  const mesh = (label: string) => t.endpointIP('demo/web', label)!.ip;
  const a = (name: string) => answerCluster(z, name, 'A', 'IN')!.answers.map(dataOf).sort();
  assert.deepEqual(a('web.demo.svc.cluster.local'), [mesh('web-0'), mesh('web-1'), mesh('10-244-3-12'), '10.244.1.10', '10.250.0.5'].sort());
  assert.deepEqual(a('web-0.web.demo.svc.cluster.local'), [mesh('web-0')]);
  assert.deepEqual(a('WEB-1.web.demo.svc.cluster.local'), [mesh('web-1')]);
  assert.deepEqual(a('web-2.web.demo.svc.cluster.local'), ['10.244.1.10'], 'on this node: its real pod IP');
  assert.deepEqual(a('web-3.web.demo.svc.cluster.local'), ['10.250.0.5'], 'in proxy.directCIDRs: its real pod IP');
  assert.deepEqual(a('10-244-3-12.web.demo.svc.cluster.local'), [mesh('10-244-3-12')], 'the dashed-address name');
  assert.equal(answerCluster(z, 'web-0.web.demo.svc.cluster.local', 'AAAA', 'IN')!.answers.length, 0);
  // pods by name: the mesh IP when the pod backs a headless Service there and is far; otherwise its own address
  assert.deepEqual(a('10-244-3-10.demo.pod.cluster.local'), [mesh('web-0')]);
  assert.deepEqual(a('10-244-1-10.demo.pod.cluster.local'), ['10.244.1.10']);
  assert.deepEqual(a('10-244-3-10.other.pod.cluster.local'), ['10.244.3.10']);
}));

test('DNS: SRV targets are the endpoint names, with their mesh IPs in the additional section', () => withDir((dir) => {
  const m = model();
  const t = table(dir);
  t.update(m.flush());
  const z = zone(t, m);
  const srv = answerCluster(z, '_http._tcp.web.demo.svc.cluster.local', 'SRV', 'IN')!;
  const targets = srv.answers.map((x) => dataOf(x) as { target: string; port: number }).map((d) => `${d.target}:${d.port}`).sort();
  assert.deepEqual(targets, ['10-244-3-12.web.demo.svc.cluster.local:8080', 'web-0.web.demo.svc.cluster.local:8080', 'web-1.web.demo.svc.cluster.local:8080', 'web-2.web.demo.svc.cluster.local:8080', 'web-3.web.demo.svc.cluster.local:8080']);
  const add = new Map(srv.additionals.map((x) => [x.name, dataOf(x)]));
  assert.equal(add.get('web-0.web.demo.svc.cluster.local'), t.endpointIP('demo/web', 'web-0')!.ip);
  assert.equal(add.get('web-2.web.demo.svc.cluster.local'), '10.244.1.10');
  const udp = answerCluster(z, '_echo._udp.web.demo.svc.cluster.local', 'SRV', 'IN')!;
  assert.equal(udp.answers.length, 5);
  assert.ok(udp.answers.every((x) => (dataOf(x) as { port: number }).port === 8081));
}));

test('DNS: PTR both ways — the mesh IP and the pod IP both name the endpoint; an unallocated pool address is NXDOMAIN', () => withDir((dir) => {
  const m = model();
  const t = table(dir, 'clusterIP');
  t.update(m.flush());
  const z = zone(t, m);
  const rev = (ip: string) => ip.split('.').reverse().join('.') + '.in-addr.arpa';
  const ptr = (ip: string) => answerCluster(z, rev(ip), 'PTR', 'IN');
  const ip0 = t.endpointIP('demo/web', 'web-0')!.ip;
  assert.deepEqual(ptr(ip0)!.answers.map(dataOf), ['web-0.web.demo.svc.cluster.local']);
  assert.deepEqual(ptr('10.244.3.10')!.answers.map(dataOf), ['web-0.web.demo.svc.cluster.local']);
  assert.deepEqual(ptr(t.endpointIP('demo/web', '10-244-3-12')!.ip)!.answers.map(dataOf), ['10-244-3-12.web.demo.svc.cluster.local']);
  // forward again: the PTR target's A record is the mesh IP
  assert.deepEqual(answerCluster(z, 'web-0.web.demo.svc.cluster.local', 'A', 'IN')!.answers.map(dataOf), [ip0]);
  const unused = ['9.251.0.1', '9.251.0.2', '9.251.0.3'].find((ip) => !t.endpointFor(ip))!;
  assert.equal(ptr(unused)!.rcode, 'NXDOMAIN');
  assert.equal(ptr('10.96.0.20')!.answers.map(dataOf)[0], 'api.demo.svc.cluster.local');
}));

test('DNS spec: dns-version TXT "1.1.0"; a headless Service without ready endpoints is NXDOMAIN', () => withDir((dir) => {
  const m = model(WEB.map((e) => ({ ...e, ready: false })));
  const t = table(dir);
  t.update(m.flush());
  const z = zone(t, m);
  const v = answerCluster(z, 'dns-version.cluster.local', 'TXT', 'IN')!;
  assert.equal(v.rcode, 'NOERROR');
  assert.equal(v.aa, true);
  assert.deepEqual(v.answers.map(dataOf), [[DNS_SCHEMA_VERSION]]);
  assert.equal(DNS_SCHEMA_VERSION, '1.1.0');
  const other = answerCluster(z, 'dns-version.cluster.local', 'A', 'IN')!;
  assert.equal(other.rcode, 'NOERROR');
  assert.equal(other.answers.length, 0);
  assert.equal(answerCluster(z, 'web.demo.svc.cluster.local', 'A', 'IN')!.rcode, 'NXDOMAIN');
  assert.equal(answerCluster(z, 'api.demo.svc.cluster.local', 'A', 'IN')!.rcode, 'NOERROR');
}));

test('the shared pool: an address one table holds is never handed out by the other', async () => {
  const { reconcileFake } = await import('./serviceips.ts');
  const r = parseFakeCIDR('10.9.0.0/29'); // 6 usable
  const want = firstChoice(r, 'ns/svc/web-0');
  const res = reconcileFake(new Map(), ['ns/svc/web-0'], 0, r, FAKE_IP_GRACE_MS, new Set([want]));
  assert.notEqual(res.entries.get('ns/svc/web-0')!.ip, want);
  // An entry of the previous allocation that now collides with the other table is dropped and re-allocated.
  const again = reconcileFake(new Map([['ns/svc/web-0', { ip: want }]]), ['ns/svc/web-0'], 0, r, FAKE_IP_GRACE_MS, new Set([want]));
  assert.notEqual(again.entries.get('ns/svc/web-0')!.ip, want);
  assert.equal(again.changed, true);
  // A full pool (every address held by the other table) hands out nothing.
  const all = new Set([1, 2, 3, 4, 5, 6].map((i) => r.network + i));
  assert.deepEqual(reconcileFake(new Map(), ['a/b/c'], 0, r, FAKE_IP_GRACE_MS, all).exhausted, ['a/b/c']);
});
