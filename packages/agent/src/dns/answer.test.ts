import { test } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '@edgemesh/common/log';
import { ClusterModel } from '../cluster/model.ts';
import { answerCluster, reverseToIP, type ZoneView } from './answer.ts';
import { ServiceIPs } from './serviceips.ts';
import { fixtureObjects } from './testfixture.ts';
import type { Answer } from 'dns-packet';

const dataOf = (a: Answer): unknown => (a as { data?: unknown }).data;

function zone(mode: 'clusterIP' | 'fake' = 'clusterIP'): ZoneView {
  const m = new ClusterModel([]);
  const f = fixtureObjects();
  m.replace('Service', f.services);
  m.replace('EndpointSlice', f.slices);
  const snap = m.flush();
  const ips = new ServiceIPs({ mode, fakeCIDR: '9.251.0.0/16', stateDir: '/nonexistent-em-test', log: silentLogger });
  ips.update(snap);
  return { snap, ips, domain: 'cluster.local', ttl: 30, ownsIP: (ip) => ips.inFakePool(ip) };
}

test('A / AAAA for ClusterIP Services, case-insensitive, owner as asked', () => {
  const z = zone();
  const r = answerCluster(z, 'WEB.Default.svc.cluster.local.', 'A', 'IN')!;
  assert.equal(r.rcode, 'NOERROR');
  assert.equal(r.aa, true);
  assert.deepEqual(r.answers, [{ name: 'WEB.Default.svc.cluster.local', type: 'A', class: 'IN', ttl: 30, data: '10.96.0.10' }]);
  const v6 = answerCluster(z, 'dual.default.svc.cluster.local', 'AAAA', 'IN')!;
  assert.deepEqual(v6.answers.map(dataOf), ['fd00::11']);
  // NODATA: name exists, no AAAA -> NOERROR, empty answer, SOA in authority
  const nd = answerCluster(z, 'web.default.svc.cluster.local', 'AAAA', 'IN')!;
  assert.equal(nd.rcode, 'NOERROR');
  assert.equal(nd.answers.length, 0);
  assert.equal(nd.authorities[0].type, 'SOA');
});

test('NXDOMAIN with SOA for unknown names and search-path guesses; not ours outside the domain', () => {
  const z = zone();
  for (const n of ['nope.default.svc.cluster.local', 'web.default.svc.cluster.local.svc.cluster.local', 'web.nons.svc.cluster.local', 'x.y.cluster.local']) {
    const r = answerCluster(z, n, 'A', 'IN')!;
    assert.equal(r.rcode, 'NXDOMAIN', n);
    const soa = r.authorities[0];
    assert.equal(soa.type, 'SOA');
    assert.equal(soa.name, 'cluster.local');
    assert.equal(((soa as { data: unknown }).data as { minimum: number }).minimum, 30);
  }
  assert.equal(answerCluster(z, 'default.svc.cluster.local', 'A', 'IN')!.rcode, 'NOERROR'); // namespace exists
  assert.equal(answerCluster(z, 'web.default', 'A', 'IN'), undefined); // svc.ns is left to the forwarder
  assert.equal(answerCluster(z, 'example.com', 'A', 'IN'), undefined);
  assert.equal(answerCluster(z, 'notcluster.local', 'A', 'IN'), undefined);
  assert.equal(answerCluster(z, 'cluster.local', 'SOA', 'IN')!.answers[0].type, 'SOA');
});

test('headless: ready endpoint addresses; hostname and dashed-IP names; SRV per endpoint with endpoint port', () => {
  const z = zone();
  const r = answerCluster(z, 'db.default.svc.cluster.local', 'A', 'IN')!;
  assert.deepEqual(r.answers.map(dataOf).sort(), ['10.244.1.5', '10.244.2.6']);
  assert.deepEqual(answerCluster(z, 'db-0.db.default.svc.cluster.local', 'A', 'IN')!.answers.map(dataOf), ['10.244.1.5']);
  assert.deepEqual(answerCluster(z, '10-244-2-6.db.default.svc.cluster.local', 'A', 'IN')!.answers.map(dataOf), ['10.244.2.6']);
  assert.equal(answerCluster(z, 'db-2.db.default.svc.cluster.local', 'A', 'IN')!.rcode, 'NXDOMAIN'); // not ready
  const srv = answerCluster(z, '_pg._tcp.db.default.svc.cluster.local', 'SRV', 'IN')!;
  const targets = srv.answers.map((a) => dataOf(a) as { target: string; port: number }).sort((a, b) => a.target.localeCompare(b.target));
  assert.deepEqual(targets.map((t) => [t.target, t.port]), [['10-244-2-6.db.default.svc.cluster.local', 15432], ['db-0.db.default.svc.cluster.local', 15432]]);
  assert.equal(srv.additionals.length, 2);
});

test('SRV for ClusterIP Services, wrong proto NXDOMAIN, other qtype NODATA', () => {
  const z = zone();
  const srv = answerCluster(z, '_http._tcp.web.default.svc.cluster.local', 'SRV', 'IN')!;
  assert.deepEqual(srv.answers.map(dataOf), [{ priority: 0, weight: 100, port: 80, target: 'web.default.svc.cluster.local' }]);
  assert.deepEqual(srv.additionals.map(dataOf), ['10.96.0.10']);
  assert.equal(answerCluster(z, '_http._udp.web.default.svc.cluster.local', 'SRV', 'IN')!.rcode, 'NXDOMAIN');
  assert.equal(answerCluster(z, '_dns._udp.web.default.svc.cluster.local', 'SRV', 'IN')!.answers.length, 1);
  const nd = answerCluster(z, '_http._tcp.web.default.svc.cluster.local', 'A', 'IN')!;
  assert.equal(nd.rcode, 'NOERROR');
  assert.equal(nd.answers.length, 0);
  // all named ports at the Service name
  assert.equal(answerCluster(z, 'web.default.svc.cluster.local', 'SRV', 'IN')!.answers.length, 2);
});

test('ExternalName: CNAME plus a chase target; CNAME question is not chased', () => {
  const z = zone();
  const r = answerCluster(z, 'ext.default.svc.cluster.local', 'A', 'IN')!;
  assert.deepEqual(r.answers, [{ name: 'ext.default.svc.cluster.local', type: 'CNAME', class: 'IN', ttl: 30, data: 'example.org' }]);
  assert.equal(r.chase, 'example.org');
  assert.equal(answerCluster(z, 'ext.default.svc.cluster.local', 'CNAME', 'IN')!.chase, undefined);
});

test('PTR for Service IPs and headless endpoints; fake mode owns its pool', () => {
  const z = zone();
  const r = answerCluster(z, '10.0.96.10.in-addr.arpa', 'PTR', 'IN')!;
  assert.deepEqual(r.answers.map(dataOf), ['web.default.svc.cluster.local']);
  const v6 = answerCluster(z, '1.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa', 'PTR', 'IN')!;
  assert.deepEqual(v6.answers.map(dataOf), ['dual.default.svc.cluster.local']);
  assert.deepEqual(answerCluster(z, '5.1.244.10.in-addr.arpa', 'PTR', 'IN')!.answers.map(dataOf), ['db-0.db.default.svc.cluster.local']);
  assert.equal(answerCluster(z, '1.1.1.1.in-addr.arpa', 'PTR', 'IN'), undefined); // forwarded

  const fz = zone('fake');
  const ip = fz.ips.ipsFor('default/web')[0];
  assert.ok(ip.startsWith('9.251.'));
  assert.deepEqual(answerCluster(fz, 'web.default.svc.cluster.local', 'A', 'IN')!.answers.map(dataOf), [ip]);
  const rev = ip.split('.').reverse().join('.') + '.in-addr.arpa';
  assert.deepEqual(answerCluster(fz, rev, 'PTR', 'IN')!.answers.map(dataOf), ['web.default.svc.cluster.local']);
  assert.equal(answerCluster(fz, '0.0.251.9.in-addr.arpa', 'PTR', 'IN')!.rcode, 'NXDOMAIN');
  assert.equal(reverseToIP('01.0.0.10.in-addr.arpa'), undefined);
  assert.equal(reverseToIP('1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa'), '::1');
});

test('pod names (pods insecure) and non-IN classes', () => {
  const z = zone();
  assert.deepEqual(answerCluster(z, '10-1-2-3.default.pod.cluster.local', 'A', 'IN')!.answers.map(dataOf), ['10.1.2.3']);
  assert.equal(answerCluster(z, '10-1-2-300.default.pod.cluster.local', 'A', 'IN')!.rcode, 'NXDOMAIN');
  assert.equal(answerCluster(z, 'web.default.svc.cluster.local', 'A', 'CH')!.rcode, 'REFUSED');
});

test('names DNS cannot carry: a bad externalName is NODATA, an over-long hostname falls back to the dashed address', () => {
  const m = new ClusterModel([]);
  m.replace('Service', [
    { kind: 'Service', metadata: { name: 'bad', namespace: 'default' }, spec: { type: 'ExternalName', externalName: 'x'.repeat(70) + '.example.org' } },
    { kind: 'Service', metadata: { name: 'hl', namespace: 'default' }, spec: { clusterIP: 'None' } },
  ]);
  m.replace('EndpointSlice', [{ kind: 'EndpointSlice', metadata: { name: 'hl-1', namespace: 'default', labels: { 'kubernetes.io/service-name': 'hl' } }, addressType: 'IPv4', endpoints: [{ addresses: ['10.1.1.1'], hostname: 'h'.repeat(64) }] }]);
  const snap = m.flush();
  const ips = new ServiceIPs({ mode: 'clusterIP', fakeCIDR: '9.251.0.0/16', stateDir: '/nonexistent-em-test', log: silentLogger });
  ips.update(snap);
  const z: ZoneView = { snap, ips, domain: 'cluster.local', ttl: 30 };
  const bad = answerCluster(z, 'bad.default.svc.cluster.local', 'A', 'IN')!;
  assert.equal(bad.rcode, 'NOERROR');
  assert.equal(bad.answers.length, 0);
  assert.deepEqual(answerCluster(z, '10-1-1-1.hl.default.svc.cluster.local', 'A', 'IN')!.answers.map(dataOf), ['10.1.1.1']);
  assert.deepEqual(answerCluster(z, '1.1.1.10.in-addr.arpa', 'PTR', 'IN')!.answers.map(dataOf), ['10-1-1-1.hl.default.svc.cluster.local']);
});

test('a Service that opted out of the mesh still resolves, to its own ClusterIP even in fake mode (never a fake IP)', () => {
  const m = new ClusterModel([]);
  const f = fixtureObjects();
  const legacy = {
    apiVersion: 'v1', kind: 'Service',
    metadata: { name: 'legacy', namespace: 'default', labels: { 'service.edgemesh.kubeedge.io/service-proxy-name': 'kube-proxy' } },
    spec: { clusterIP: '10.96.7.7', ports: [{ name: 'http', protocol: 'TCP', port: 80 }] },
  };
  m.replace('Service', [...f.services, legacy]);
  m.replace('EndpointSlice', f.slices);
  const snap = m.flush();
  const ips = new ServiceIPs({ mode: 'fake', fakeCIDR: '9.251.0.0/16', stateDir: '/nonexistent-em-test', log: silentLogger });
  ips.update(snap);
  assert.deepEqual(ips.ipsFor('default/legacy'), [], 'the proxy never intercepts it');
  const z: ZoneView = { snap, ips, domain: 'cluster.local', ttl: 30, ownsIP: (ip) => ips.inFakePool(ip) };
  assert.deepEqual(answerCluster(z, 'legacy.default.svc.cluster.local', 'A', 'IN')!.answers.map(dataOf), ['10.96.7.7']);
  const srv = answerCluster(z, '_http._tcp.legacy.default.svc.cluster.local', 'SRV', 'IN')!;
  assert.deepEqual(srv.answers.map(dataOf), [{ priority: 0, weight: 100, port: 80, target: 'legacy.default.svc.cluster.local' }]);
  // Meshed Services in the same zone still get fake IPs.
  assert.match(String(answerCluster(z, 'web.default.svc.cluster.local', 'A', 'IN')!.answers.map(dataOf)[0]), /^9\.251\./);
});
