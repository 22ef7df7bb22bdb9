import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ClusterModel, endpointPort, groupOf, normalizeService, normalizeSlice, prenormalize } from './model.ts';
import type { RawObject, Snapshot } from './types.ts';

const GROUPS = ['apps.kubeedge.io/belonging-to', 'apps.openyurt.io/nodepool', 'topology.kubernetes.io/zone'];

const svc = (name: string, spec: Record<string, unknown>, labels: Record<string, string> = {}, ns = 'shop'): RawObject => ({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: ns, labels }, spec });
const slice = (name: string, service: string, ports: unknown[], endpoints: unknown[], ns = 'shop', addressType = 'IPv4'): RawObject => ({
  apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name, namespace: ns, labels: { 'kubernetes.io/service-name': service } }, addressType, ports, endpoints,
});

test('several EndpointSlices merge per Service, deterministically, and follow slice updates and deletes', () => {
  const m = new ClusterModel(GROUPS);
  m.upsert('Service', svc('web', { clusterIP: '10.96.0.10', ports: [{ name: 'http', port: 80, targetPort: 'http-alt' }], selector: { app: 'web' } }));
  m.upsert('EndpointSlice', slice('web-b', 'web', [{ name: 'http', port: 8080 }], [{ addresses: ['10.0.0.3'], nodeName: 'n2', zone: 'z2' }]));
  m.upsert('EndpointSlice', slice('web-a', 'web', [{ name: 'http', port: 8080 }], [{ addresses: ['10.0.0.1'], nodeName: 'n1' }, { addresses: ['10.0.0.2'], hostname: 'web-0' }]));
  m.upsert('EndpointSlice', slice('other-ns', 'web', [{ port: 1 }], [{ addresses: ['10.9.9.9'] }], 'elsewhere'));
  let snap = m.flush();
  assert.deepEqual(snap.endpoints.get('shop/web')?.map((e) => [e.address, e.slice]), [['10.0.0.1', 'shop/web-a'], ['10.0.0.2', 'shop/web-a'], ['10.0.0.3', 'shop/web-b']]);
  assert.equal(snap.endpoints.get('shop/web')?.[2].zone, 'z2');
  assert.equal(snap.endpoints.get('shop/web')?.[1].hostname, 'web-0');
  assert.equal(snap.endpoints.has('elsewhere/web'), false, 'slices of a Service that does not exist are not published');
  m.remove('EndpointSlice', slice('web-a', 'web', [], []));
  m.upsert('EndpointSlice', slice('web-b', 'web', [{ name: 'http', port: 8080 }], [{ addresses: ['10.0.0.4'] }]));
  snap = m.flush();
  assert.deepEqual(snap.endpoints.get('shop/web')?.map((e) => e.address), ['10.0.0.4']);
});

test('named ports resolve through endpointPort(); several ports and protocols', () => {
  const s = normalizeService(svc('dns', { clusterIP: '10.96.0.53', ports: [
    { name: 'dns', port: 53, protocol: 'UDP', targetPort: 'dns' },
    { name: 'dns-tcp', port: 53, protocol: 'TCP', targetPort: 'dns-tcp' },
    { name: 'metrics', port: 9153, targetPort: 9153 },
  ] }))!;
  const sl = normalizeSlice(slice('dns-1', 'dns', [{ name: 'dns', port: 1053, protocol: 'UDP' }, { name: 'dns-tcp', port: 1054, protocol: 'TCP' }, { name: 'metrics', port: 9153 }], [{ addresses: ['10.0.0.9'] }]))!;
  const ep = sl.endpoints[0];
  assert.equal(endpointPort(ep, s.ports[0]), 1053);
  assert.equal(endpointPort(ep, s.ports[1]), 1054);
  assert.equal(endpointPort(ep, s.ports[2]), 9153);
  // A hand-written slice naming its port after the container port (targetPort name) also resolves.
  const web = normalizeService(svc('web', { ports: [{ name: 'http', port: 80, targetPort: 'web' }] }))!;
  const hand = normalizeSlice(slice('w', 'web', [{ name: 'web', port: 8081 }], [{ addresses: ['10.0.0.1'] }]))!;
  assert.equal(endpointPort(hand.endpoints[0], web.ports[0]), 8081);
  // A slice without ports uses a numeric targetPort; a named one cannot be resolved.
  const bare = normalizeSlice(slice('b', 'web', [], [{ addresses: ['10.0.0.1'] }]))!;
  assert.equal(endpointPort(bare.endpoints[0], normalizeService(svc('x', { ports: [{ port: 80, targetPort: '8080' }] }))!.ports[0]), 8080);
  assert.equal(endpointPort(bare.endpoints[0], web.ports[0]), undefined);
  // Service port defaults: protocol TCP, targetPort = port.
  assert.deepEqual(normalizeService(svc('d', { ports: [{ port: 7000 }] }))!.ports[0], { name: '', protocol: 'TCP', port: 7000, targetPort: 7000 });
});

test('endpoint conditions: nil ready means ready; terminating endpoints are not ready but may still serve', () => {
  const sl = normalizeSlice(slice('s', 'web', [{ port: 80 }], [
    { addresses: ['10.0.0.1'] },
    { addresses: ['10.0.0.2'], conditions: { ready: false } },
    { addresses: ['10.0.0.3'], conditions: { ready: false, serving: true, terminating: true } },
    { addresses: ['10.0.0.4'], conditions: { terminating: true } },
    { addresses: [] },
  ]))!;
  assert.deepEqual(sl.endpoints.map((e) => [e.address, e.ready, e.serving, e.terminating]), [
    ['10.0.0.1', true, true, false],
    ['10.0.0.2', false, false, false],
    ['10.0.0.3', false, true, true],
    ['10.0.0.4', false, false, true],
  ]);
  assert.equal(normalizeSlice(slice('f', 'web', [], [{ addresses: ['a.example'] }], 'shop', 'FQDN')), undefined, 'FQDN slices carry no IPs');
  assert.equal(normalizeSlice(slice('v6', 'web', [], [{ addresses: ['fd00::1'] }], 'shop', 'IPv6'))!.endpoints[0].addressType, 'IPv6');
});

test('selector-less Services keep hand-managed slices; headless and ExternalName Services; Service fields', () => {
  const m = new ClusterModel(GROUPS);
  m.upsert('Service', svc('external-db', { clusterIP: '10.96.0.20', ports: [{ port: 5432 }] }));
  m.upsert('EndpointSlice', slice('external-db-1', 'external-db', [{ port: 5432 }], [{ addresses: ['192.0.2.10'] }]));
  m.upsert('Service', svc('headless', { clusterIP: 'None', ports: [{ port: 80 }], selector: { app: 'h' } }));
  m.upsert('Service', svc('ext', { type: 'ExternalName', externalName: 'db.example.com' }));
  m.upsert('Service', svc('sticky', {
    clusterIPs: ['10.96.0.30', 'fd00::30'], clusterIP: '10.96.0.30', ports: [{ port: 80 }], sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } },
    trafficDistribution: 'PreferClose', internalTrafficPolicy: 'Local',
  }, { tier: 'front' }));
  const snap = m.flush();
  const ext = snap.services.get('shop/external-db')!;
  assert.equal(ext.selector, undefined);
  assert.equal(snap.endpoints.get('shop/external-db')?.[0].address, '192.0.2.10');
  assert.equal(snap.services.get('shop/headless')?.headless, true);
  assert.deepEqual(snap.services.get('shop/headless')?.clusterIPs, []);
  assert.equal(snap.services.get('shop/ext')?.externalName, 'db.example.com');
  assert.deepEqual(snap.services.get('shop/ext')?.clusterIPs, []);
  const st = snap.services.get('shop/sticky')!;
  assert.deepEqual([st.clusterIPs, st.sessionAffinity, st.affinityTimeoutSeconds, st.trafficDistribution, st.internalTrafficPolicy, st.labels.tier], [['10.96.0.30', 'fd00::30'], 'ClientIP', 60, 'PreferClose', 'Local', 'front']);
  assert.equal(normalizeService(svc('dflt', { ports: [] }))!.affinityTimeoutSeconds, 10800);
  assert.ok(Object.isFrozen(snap) && Object.isFrozen(st) && Object.isFrozen(snap.endpoints.get('shop/external-db')));
});

test('the EdgeMesh opt-out label removes a Service, also when added later', () => {
  const m = new ClusterModel(GROUPS);
  m.upsert('Service', svc('web', { ports: [{ port: 80 }] }));
  m.upsert('Service', svc('skip', { ports: [{ port: 80 }] }, { 'service.edgemesh.kubeedge.io/service-proxy-name': '' }));
  let snap = m.flush();
  assert.deepEqual([...snap.services.keys()], ['shop/web']);
  m.upsert('Service', svc('web', { ports: [{ port: 80 }] }, { 'service.edgemesh.kubeedge.io/service-proxy-name': 'other' }));
  snap = m.flush();
  assert.equal(snap.services.size, 0);
  // Opted-out Services stay visible to DNS (answered with their ClusterIPs), never to the proxy.
  assert.deepEqual([...snap.optedOut!.keys()].sort(), ['shop/skip', 'shop/web']);
  m.upsert('Service', svc('web', { ports: [{ port: 80 }] }));
  snap = m.flush();
  assert.deepEqual([...snap.services.keys()], ['shop/web']);
  assert.deepEqual([...snap.optedOut!.keys()], ['shop/skip']);
  m.remove('Service', svc('skip', { ports: [{ port: 80 }] }));
  assert.equal(m.flush().optedOut!.size, 0);
});

test('node groups come from routing.groupLabels, first match wins', () => {
  const m = new ClusterModel(GROUPS);
  const node = (name: string, labels: Record<string, string>): RawObject => ({ apiVersion: 'v1', kind: 'Node', metadata: { name, labels }, status: { addresses: [{ type: 'InternalIP', address: '198.18.0.5' }] } });
  m.replace('Node', [
    node('a', { 'topology.kubernetes.io/zone': 'z1', 'apps.openyurt.io/nodepool': 'pool-1' }),
    node('b', { 'topology.kubernetes.io/zone': 'z2', 'apps.kubeedge.io/belonging-to': 'site-2', 'apps.openyurt.io/nodepool': 'pool-2' }),
    node('c', { other: 'x' }),
  ]);
  const snap = m.flush();
  assert.equal(snap.nodes.get('a')?.group, 'pool-1');
  assert.equal(snap.nodes.get('b')?.group, 'site-2');
  assert.equal(snap.nodes.get('c')?.group, undefined);
  assert.deepEqual(snap.nodes.get('a')?.addresses, ['198.18.0.5']);
  assert.deepEqual(snap.nodes.get('a')?.podCIDRs, []);
  assert.equal(groupOf({ x: '' , y: 'v' }, ['x', 'y']), 'v', 'an empty label value does not count');
});

test('nodes keep spec.podCIDRs (dual stack), else spec.podCIDR', () => {
  const m = new ClusterModel(GROUPS);
  m.replace('Node', [
    { apiVersion: 'v1', kind: 'Node', metadata: { name: 'dual' }, spec: { podCIDR: '10.244.1.0/24', podCIDRs: ['10.244.1.0/24', 'fd00:10:244:1::/64'] } },
    { apiVersion: 'v1', kind: 'Node', metadata: { name: 'old' }, spec: { podCIDR: '10.244.2.0/24' } },
    { apiVersion: 'v1', kind: 'Node', metadata: { name: 'none' }, spec: { podCIDRs: 'not-a-list' } },
  ]);
  const snap = m.flush();
  assert.deepEqual(snap.nodes.get('dual')?.podCIDRs, ['10.244.1.0/24', 'fd00:10:244:1::/64']);
  assert.deepEqual(snap.nodes.get('old')?.podCIDRs, ['10.244.2.0/24']);
  assert.deepEqual(snap.nodes.get('none')?.podCIDRs, []);
});

test('DestinationRules: host and load balancer policy; a rule without host is rejected', () => {
  const m = new ClusterModel(GROUPS);
  const rejected: string[] = [];
  m.onReject = (kind, key, reason) => rejected.push(`${kind} ${key}: ${reason}`);
  const dr = (name: string, spec: unknown): RawObject => ({ apiVersion: 'networking.istio.io/v1', kind: 'DestinationRule', metadata: { name, namespace: 'shop' }, spec });
  m.upsert('DestinationRule', dr('rr', { host: 'web', trafficPolicy: { loadBalancer: { simple: 'ROUND_ROBIN' } } }));
  m.upsert('DestinationRule', dr('hash', { host: 'web.shop.svc.cluster.local', trafficPolicy: { loadBalancer: { consistentHash: { httpHeaderName: 'x-user' } } } }));
  m.upsert('DestinationRule', dr('nohost', {}));
  const snap = m.flush();
  assert.equal(snap.destinationRules.get('shop/rr')?.simple, 'ROUND_ROBIN');
  assert.deepEqual(snap.destinationRules.get('shop/hash')?.consistentHash, { httpHeaderName: 'x-user', useSourceIp: undefined });
  assert.deepEqual(rejected, ['DestinationRule shop/nohost: DestinationRule shop/nohost: spec.host is missing']);
});

test('snapshots: coalesced per tick, versioned, immutable; malformed upserts keep the old object; raw state exported', async () => {
  const m = new ClusterModel(GROUPS);
  const seen: Snapshot[] = [];
  m.subscribe((s) => seen.push(s));
  let failures = 0;
  m.onListenerError = () => failures++;
  m.subscribe(() => { throw new Error('buggy consumer'); });
  m.upsert('Service', svc('a', { ports: [{ port: 80 }] }));
  m.upsert('Service', svc('b', { ports: [{ port: 81 }] }));
  m.upsert('Service', { apiVersion: 'v1', kind: 'Service', metadata: { name: 'nons' }, spec: { ports: [{ port: 82 }] } });
  await new Promise((r) => setImmediate(r));
  assert.equal(seen.length, 1, 'one snapshot for a synchronous batch');
  assert.equal(failures, 1);
  assert.deepEqual([...seen[0].services.keys()], ['shop/a', 'shop/b', 'default/nons']);
  const v = seen[0].version;
  m.upsert('Service', svc('a', { ports: [{ port: 70000 }] })); // malformed: rejected, old version stays
  m.remove('Service', { metadata: { name: 'nons' } }); // no namespace = default
  const snap = m.flush();
  assert.equal(snap.version, v + 1);
  assert.equal(snap.services.get('shop/a')?.ports[0].port, 80);
  assert.equal(snap.services.has('default/nons'), false);
  assert.equal(seen[0].services.size, 3, 'an old snapshot never changes');
  assert.deepEqual(m.rawState().services.map((o) => o.metadata?.name), ['a', 'b']);
  assert.equal(m.flush().version, snap.version, 'no change, no new snapshot');
});

test('external destinations: nodePorts of NodePort/LoadBalancer Services, externalIPs, load-balancer ingress IPs, externalTrafficPolicy', () => {
  const np = normalizeService(svc('np', {
    type: 'NodePort', clusterIP: '10.96.0.20', externalTrafficPolicy: 'Local', externalIPs: ['192.0.2.7', 'not-an-ip', '192.0.2.7', '2001:db8::7'],
    ports: [{ name: 'http', port: 80, targetPort: 8080, nodePort: 30080 }, { name: 'dns', port: 53, protocol: 'UDP', nodePort: 30053 }, { name: 'bad', port: 81, nodePort: 70000 }],
  }))!;
  assert.equal(np.type, 'NodePort');
  assert.deepEqual(np.ports.map((p) => p.nodePort), [30080, 30053, undefined]);
  assert.equal(np.externalTrafficPolicy, 'Local');
  assert.deepEqual(np.externalIPs, ['192.0.2.7', '2001:db8::7'], 'IPs only, each once');
  assert.deepEqual(np.loadBalancerIPs, [], 'ingress IPs only for LoadBalancer Services');

  const lb = normalizeService({
    ...svc('lb', { type: 'LoadBalancer', clusterIP: '10.96.0.21', ports: [{ port: 443, nodePort: 31443 }] }),
    status: { loadBalancer: { ingress: [{ ip: '198.51.100.1' }, { hostname: 'lb.example.com' }, { ip: '198.51.100.2', ipMode: 'Proxy' }, { ip: '198.51.100.3', ipMode: 'VIP' }] } },
  })!;
  assert.deepEqual(lb.ports.map((p) => p.nodePort), [31443]);
  assert.deepEqual(lb.loadBalancerIPs, ['198.51.100.1', '198.51.100.3'], 'ipMode Proxy and hostname-only entries are not intercepted');
  assert.equal(lb.externalTrafficPolicy, 'Cluster');

  // A ClusterIP Service keeps no nodePort (the API server clears it; a hand-written manifest may still carry one).
  const cip = normalizeService(svc('cip', { clusterIP: '10.96.0.22', externalIPs: ['192.0.2.8'], ports: [{ port: 80, nodePort: 30081 }] }))!;
  assert.equal(cip.ports[0].nodePort, undefined);
  assert.equal('nodePort' in cip.ports[0], false);
  assert.deepEqual(cip.externalIPs, ['192.0.2.8'], 'externalIPs work on any Service type');
  assert.equal(cip.externalTrafficPolicy, 'Cluster');
});

test('prenormalize: put() takes the normalised form a source already made of that object, and normalises others itself', () => {
  const s = svc('web', { clusterIP: '10.96.0.10', ports: [{ port: 80 }] });
  const sl = slice('web-a', 'web', [{ port: 8080 }], [{ addresses: ['10.0.0.1'] }]);
  const unlabelled: RawObject = { apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'stray', namespace: 'shop' }, addressType: 'IPv4', endpoints: [] };
  const pre = prenormalize('Service', s);
  assert.equal(prenormalize('EndpointSlice', unlabelled), undefined);
  assert.equal(prenormalize('EndpointSlice', sl)?.key, 'shop/web-a');
  assert.throws(() => prenormalize('Service', svc('bad', { ports: [{ port: 0 }] })), /port must be/);
  const m = new ClusterModel(GROUPS);
  m.replace('Service', [s]);
  m.replace('EndpointSlice', [sl, unlabelled]);
  let snap = m.flush();
  assert.equal(snap.services.get('shop/web'), pre, 'the same object: not normalised a second time');
  assert.deepEqual(snap.endpoints.get('shop/web')?.map((e) => e.address), ['10.0.0.1']);
  assert.equal(m.rawState().endpointSlices.length, 2, 'an unlabelled slice is still kept raw, as without prenormalize');
  // An object nobody prenormalised is normalised by put() as before.
  const other = svc('api', { clusterIP: '10.96.0.11', ports: [{ port: 81 }] });
  m.upsert('Service', other);
  snap = m.flush();
  assert.equal(snap.services.get('shop/api')?.ports[0].port, 81);
  assert.notEqual(snap.services.get('shop/api'), normalizeService(other));
});
