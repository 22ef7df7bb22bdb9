import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Endpoint, NodeInfo, Service } from '../cluster/types.ts';
import { planRoutes, routingMode, selectTier, type RoutingDefault } from './routing.ts';

function svc(annotations: Record<string, string> = {}, extra: Partial<Service> = {}): Service {
  return {
    key: 'ns/web', namespace: 'ns', name: 'web', type: 'ClusterIP', clusterIPs: ['10.0.0.1'], headless: false,
    ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }], sessionAffinity: 'None',
    affinityTimeoutSeconds: 10800, internalTrafficPolicy: 'Cluster', labels: {}, annotations, ...extra,
  };
}

function node(name: string, group: string | undefined, labels: Record<string, string> = {}): NodeInfo {
  return { name, group, labels: { 'kubernetes.io/hostname': name, ...labels }, addresses: [] };
}

type Health = 'ready' | 'terminating' | 'down';
function ep(address: string, nodeName: string | undefined, h: Health = 'ready'): Endpoint {
  return {
    address, addresses: [address], addressType: 'IPv4', nodeName, ready: h === 'ready', serving: h !== 'down',
    terminating: h === 'terminating', ports: [], slice: 'ns/web-1',
  };
}

// me (a1) and a2 in group A (region r1); b1 in group B (region r1); c1 in group C (region r2); n0 has no group.
const R = 'topology.kubernetes.io/region';
const nodes = new Map<string, NodeInfo>([
  ['a1', node('a1', 'A', { [R]: 'r1', rack: 'x' })],
  ['a2', node('a2', 'A', { [R]: 'r1', rack: 'y' })],
  ['b1', node('b1', 'B', { [R]: 'r1', rack: 'x' })],
  ['c1', node('c1', 'C', { [R]: 'r2' })],
  ['n0', node('n0', undefined, { [R]: 'r2' })],
]);

const E = { a1: ep('10.1.0.1', 'a1'), a2: ep('10.1.0.2', 'a2'), b1: ep('10.2.0.1', 'b1'), c1: ep('10.3.0.1', 'c1'), n0: ep('10.4.0.1', 'n0'), nowhere: ep('10.5.0.1', undefined) };
const all = Object.values(E);

const addrs = (eps: readonly Endpoint[] | undefined) => (eps ?? []).map((e) => e.address).sort();
const first = (s: Service, eps: readonly Endpoint[], me = 'a1', def: RoutingDefault = 'prefer') => {
  const plan = planRoutes({ service: s, endpoints: eps, nodes, thisNode: me, routingDefault: def });
  return { plan, sel: selectTier(plan, () => true) };
};

test('routing mode precedence: each input alone and the documented order when several are present', () => {
  const cases: [Record<string, string>, Partial<Service>, string, string][] = [
    [{}, {}, 'prefer-group', 'routing.default'],
    [{ 'apps.kubeedge.io/service-topology': 'range-nodegroup' }, {}, 'strict-group', 'apps.kubeedge.io/service-topology'],
    [{ 'openyurt.io/topologyKeys': 'kubernetes.io/hostname' }, {}, 'strict-node', 'openyurt.io/topologyKeys'],
    [{ 'openyurt.io/topologyKeys': 'openyurt.io/nodepool' }, {}, 'strict-group', 'openyurt.io/topologyKeys'],
    [{ 'openyurt.io/topologyKeys': 'kubernetes.io/zone' }, {}, 'strict-group', 'openyurt.io/topologyKeys'],
    [{ topologyKeys: '["rack"]' }, {}, 'strict-group', 'topologyKeys'],
    [{ topologyKeys: '["kubernetes.io/hostname"]' }, {}, 'strict-node', 'topologyKeys'],
    [{ 'service.cilium.io/affinity': 'local' }, {}, 'prefer-group', 'service.cilium.io/affinity'],
    [{ 'service.cilium.io/affinity': 'remote' }, {}, 'prefer-remote', 'service.cilium.io/affinity'],
    [{ 'service.cilium.io/affinity': 'none' }, {}, 'cluster', 'service.cilium.io/affinity'],
    [{}, { trafficDistribution: 'PreferSameNode' }, 'prefer-node', 'spec.trafficDistribution'],
    [{}, { trafficDistribution: 'PreferClose' }, 'prefer-group', 'spec.trafficDistribution'],
    [{}, { trafficDistribution: 'PreferSameZone' }, 'prefer-group', 'spec.trafficDistribution'],
    [{}, { internalTrafficPolicy: 'Local' }, 'strict-node', 'spec.internalTrafficPolicy'],
    // Several inputs: internalTrafficPolicy > KubeEdge > OpenYurt > SuperEdge > Cilium > trafficDistribution.
    [{ 'apps.kubeedge.io/service-topology': 'range-nodegroup' }, { internalTrafficPolicy: 'Local' }, 'strict-node', 'spec.internalTrafficPolicy'],
    [{ 'apps.kubeedge.io/service-topology': 'range-nodegroup', 'openyurt.io/topologyKeys': 'kubernetes.io/hostname' }, {}, 'strict-group', 'apps.kubeedge.io/service-topology'],
    [{ 'openyurt.io/topologyKeys': 'kubernetes.io/hostname', topologyKeys: '["rack"]' }, {}, 'strict-node', 'openyurt.io/topologyKeys'],
    [{ topologyKeys: '["rack"]', 'service.cilium.io/affinity': 'none' }, {}, 'strict-group', 'topologyKeys'],
    [{ 'service.cilium.io/affinity': 'none' }, { trafficDistribution: 'PreferSameNode' }, 'cluster', 'service.cilium.io/affinity'],
  ];
  for (const [ann, extra, label, source] of cases) {
    const d = routingMode(svc(ann, extra), 'prefer');
    assert.equal(d.label, label, JSON.stringify({ ann, extra }));
    assert.equal(d.source, source, JSON.stringify({ ann, extra }));
    assert.equal(d.warning, undefined);
  }
  assert.equal(routingMode(svc(), 'strict').label, 'strict-group');
  assert.equal(routingMode(svc(), 'cluster').label, 'cluster');
});

test('malformed inputs are ignored with a warning and the next input decides', () => {
  const d = routingMode(svc({ topologyKeys: 'rack', 'apps.kubeedge.io/service-topology': 'bogus' }, { trafficDistribution: 'PreferSameNode' }), 'cluster');
  assert.equal(d.label, 'prefer-node');
  assert.match(d.warning!, /service-topology/);
  assert.equal(routingMode(svc({ topologyKeys: '[]' }), 'cluster').label, 'cluster');
  assert.match(routingMode(svc({ topologyKeys: '{"a":1}' }), 'cluster').warning!, /JSON array/);
});

test('matrix: mode x this node (grouped / groupless) x endpoint health -> endpoints used', () => {
  const strictGroup = svc({ 'apps.kubeedge.io/service-topology': 'range-nodegroup' });
  const strictNode = svc({}, { internalTrafficPolicy: 'Local' });
  const preferNode = svc({}, { trafficDistribution: 'PreferSameNode' });
  const preferGroup = svc({ 'service.cilium.io/affinity': 'local' });
  const remote = svc({ 'service.cilium.io/affinity': 'remote' });
  const superedge = svc({ topologyKeys: '["rack"]' });
  const cluster = svc({}, {});
  type Row = [string, Service, string, readonly Endpoint[], string[] | 'reset', string?];
  const rows: Row[] = [
    // strict group from a1 (group A)
    ['strict-group all ready', strictGroup, 'a1', all, ['10.1.0.1', '10.1.0.2']],
    ['strict-group only other groups', strictGroup, 'a1', [E.b1, E.c1], 'reset'],
    ['strict-group in-group down', strictGroup, 'a1', [ep('10.1.0.2', 'a2', 'down'), E.b1], 'reset'],
    ['strict-group in-group terminating used when none ready', strictGroup, 'a1', [ep('10.1.0.2', 'a2', 'terminating'), E.b1], ['10.1.0.2']],
    ['strict-group ready preferred over terminating', strictGroup, 'a1', [ep('10.1.0.9', 'a2', 'terminating'), E.a2], ['10.1.0.2']],
    // a node with no group is its own scope
    ['strict-group groupless node: own endpoints', strictGroup, 'n0', all, ['10.4.0.1']],
    ['strict-group groupless node: none local', strictGroup, 'n0', [E.a1, E.c1], 'reset'],
    ['strict-group unknown node', strictGroup, 'zz', all, 'reset'],
    // strict node
    ['strict-node local', strictNode, 'a1', all, ['10.1.0.1']],
    ['strict-node none local', strictNode, 'a2', [E.a1, E.b1], 'reset'],
    // SuperEdge label scope: rack=x shared by a1 and b1
    ['superedge rack', superedge, 'a1', all, ['10.1.0.1', '10.2.0.1']],
    ['superedge rack other', superedge, 'a2', [E.a1, E.b1, E.c1], 'reset'],
    // prefer node: node -> group -> region -> cluster
    ['prefer-node local', preferNode, 'a1', all, ['10.1.0.1'], undefined],
    ['prefer-node spill to group', preferNode, 'a1', [E.a2, E.b1, E.c1], ['10.1.0.2'], 'node'],
    ['prefer-node local down spills', preferNode, 'a1', [ep('10.1.0.1', 'a1', 'down'), E.b1, E.c1], ['10.2.0.1'], 'node'],
    ['prefer-node spill to region', preferNode, 'a1', [E.b1, E.c1], ['10.2.0.1'], 'node'],
    // prefer group: node+group -> region -> cluster
    ['prefer-group in group', preferGroup, 'a1', all, ['10.1.0.1', '10.1.0.2']],
    ['prefer-group spill to region', preferGroup, 'a1', [E.b1, E.c1, E.nowhere], ['10.2.0.1'], 'group'],
    ['prefer-group spill to cluster', preferGroup, 'a1', [E.c1, E.nowhere], ['10.3.0.1', '10.5.0.1'], 'group'],
    ['prefer-group only terminating anywhere', preferGroup, 'a1', [ep('10.3.0.9', 'c1', 'terminating')], ['10.3.0.9'], 'group'],
    ['prefer-group groupless node spills', preferGroup, 'n0', [E.a1, E.c1], ['10.3.0.1'], 'group'],
    ['prefer-group nothing', preferGroup, 'a1', [ep('10.3.0.9', 'c1', 'down')], 'reset'],
    // Cilium remote: other groups first, own group as fallback
    ['remote prefers others', remote, 'a1', all, ['10.2.0.1', '10.3.0.1', '10.4.0.1', '10.5.0.1']],
    ['remote falls back to own group', remote, 'a1', [E.a1, E.a2], ['10.1.0.1', '10.1.0.2'], 'cluster'],
    // cluster
    ['cluster all', cluster, 'a1', [...all, ep('10.9.0.1', 'c1', 'down')], addrs(all)],
    ['cluster only terminating', cluster, 'a1', [ep('10.9.0.1', 'c1', 'terminating'), ep('10.9.0.2', 'c1', 'down')], ['10.9.0.1']],
  ];
  for (const [name, s, me, eps, want, spilled] of rows) {
    const def: RoutingDefault = s === cluster ? 'cluster' : 'prefer';
    const { plan, sel } = first(s, eps, me, def);
    if (want === 'reset') {
      assert.equal(sel, undefined, name);
      if (plan.decision.mode.mode === 'strict') assert.equal(plan.emptyScope, true, name);
    } else {
      assert.deepEqual(addrs(sel?.endpoints), want.sort(), name);
      assert.equal(plan.emptyScope, false, name);
      assert.equal(sel?.spilledFrom, spilled, name);
    }
  }
});

test('per-tier counts and tier of each endpoint; cluster-default uses every usable endpoint', () => {
  const { plan } = first(svc(), [...all, ep('10.9.9.9', 'a1', 'down')], 'a1', 'cluster');
  assert.deepEqual(plan.counts, { node: 1, group: 1, region: 1, cluster: 3 });
  assert.equal(plan.tierOf.get(E.b1), 'region');
  assert.equal(plan.tierOf.get(E.nowhere), 'cluster');
  assert.equal(plan.steps[0].endpoints.length, 6);
});

test('unhealthy (ejected) endpoints: prefer spills past them, strict keeps its scope', () => {
  const preferNode = svc({}, { trafficDistribution: 'PreferSameNode' });
  const { plan } = first(preferNode, all);
  const sel = selectTier(plan, (e) => e !== E.a1);
  assert.deepEqual(addrs(sel!.endpoints), ['10.1.0.2']);
  assert.equal(sel!.spilledFrom, 'node');
  const strict = first(svc({ 'apps.kubeedge.io/service-topology': 'range-nodegroup' }), all).plan;
  const s2 = selectTier(strict, () => false);
  assert.deepEqual(addrs(s2!.endpoints), ['10.1.0.1', '10.1.0.2']);
  // Excluded endpoints (already tried for this connection) are skipped, even in strict scope.
  assert.deepEqual(addrs(selectTier(strict, () => true, new Set([E.a1]))!.endpoints), ['10.1.0.2']);
  assert.equal(selectTier(strict, () => true, new Set([E.a1, E.a2])), undefined);
});

test('external traffic: externalTrafficPolicy Local is strict node before every other input; Cluster follows the Service', () => {
  const local = svc({ 'apps.kubeedge.io/service-topology': 'range-nodegroup' }, { type: 'NodePort', externalTrafficPolicy: 'Local' });
  assert.deepEqual([routingMode(local, 'prefer', true).label, routingMode(local, 'prefer', true).source], ['strict-node', 'spec.externalTrafficPolicy']);
  // The same Service's in-cluster traffic (its Service IP) keeps its own routing.
  assert.equal(routingMode(local, 'prefer').label, 'strict-group');
  const cluster = svc({}, { type: 'NodePort', externalTrafficPolicy: 'Cluster', trafficDistribution: 'PreferSameNode' });
  assert.equal(routingMode(cluster, 'prefer', true).label, 'prefer-node', 'externalTrafficPolicy Cluster: the Service\'s routing');
  assert.equal(routingMode(svc(), 'cluster', true).label, 'cluster');
  // Strict node from outside: only this node's endpoints, none here = empty scope (the caller resets).
  const plan = planRoutes({ service: local, endpoints: all, nodes, thisNode: 'a1', routingDefault: 'prefer', external: true });
  assert.deepEqual(addrs(plan.steps[0].endpoints), ['10.1.0.1']);
  const away = planRoutes({ service: local, endpoints: [E.b1, E.c1], nodes, thisNode: 'a1', routingDefault: 'prefer', external: true });
  assert.equal(away.emptyScope, true);
  const plain = svc({}, { type: 'NodePort', externalTrafficPolicy: 'Local' });
  const inside = planRoutes({ service: plain, endpoints: [E.b1, E.c1], nodes, thisNode: 'a1', routingDefault: 'prefer' });
  assert.equal(inside.emptyScope, false, 'in-cluster callers of the same Service are not bound by externalTrafficPolicy');
  assert.equal(inside.decision.label, 'prefer-group');
});
