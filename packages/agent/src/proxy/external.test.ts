import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Service } from '../cluster/types.ts';
import { NODE_LOCAL } from '../intercept/rules.ts';
import { externalDestinations, needsExternalListener } from './external.ts';

function svc(extra: Partial<Service>): Service {
  return {
    key: 'ns/web', namespace: 'ns', name: 'web', type: 'ClusterIP', clusterIPs: ['10.96.0.1'], headless: false,
    ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }], sessionAffinity: 'None',
    affinityTimeoutSeconds: 10800, internalTrafficPolicy: 'Cluster', labels: {}, annotations: {}, ...extra,
  };
}

test('external destinations: nodePort on every local address, externalIPs and load-balancer IPs on the service port', () => {
  const sp = { name: 'http', protocol: 'TCP' as const, port: 80, targetPort: 8080, nodePort: 30080 };
  assert.deepEqual(externalDestinations(svc({ type: 'NodePort', externalIPs: ['192.0.2.1', '2001:db8::1', '192.0.2.1'] }), sp), [
    { ip: NODE_LOCAL, port: 30080, kind: 'nodePort' },
    { ip: '192.0.2.1', port: 80, kind: 'externalIP' },
  ]);
  assert.deepEqual(externalDestinations(svc({ type: 'LoadBalancer', externalIPs: ['192.0.2.1'], loadBalancerIPs: ['192.0.2.1', '198.51.100.5'] }), sp), [
    { ip: NODE_LOCAL, port: 30080, kind: 'nodePort' },
    { ip: '192.0.2.1', port: 80, kind: 'externalIP' },
    { ip: '198.51.100.5', port: 80, kind: 'loadBalancer' },
  ]);
  // LoadBalancer without allocated node ports (allocateLoadBalancerNodePorts: false): only its IPs.
  assert.deepEqual(externalDestinations(svc({ type: 'LoadBalancer', loadBalancerIPs: ['198.51.100.5'] }), { ...sp, nodePort: undefined }), [{ ip: '198.51.100.5', port: 80, kind: 'loadBalancer' }]);
  // A ClusterIP Service: externalIPs only; a stray nodePort or ingress IP is ignored.
  assert.deepEqual(externalDestinations(svc({ externalIPs: ['192.0.2.9'], loadBalancerIPs: ['198.51.100.5'] }), sp), [{ ip: '192.0.2.9', port: 80, kind: 'externalIP' }]);
  assert.deepEqual(externalDestinations(svc({}), sp), []);
});

test('only externalTrafficPolicy Local needs a listener of its own', () => {
  assert.equal(needsExternalListener(svc({ type: 'NodePort', externalTrafficPolicy: 'Local' })), true);
  assert.equal(needsExternalListener(svc({ type: 'NodePort', externalTrafficPolicy: 'Cluster' })), false);
  assert.equal(needsExternalListener(svc({ type: 'NodePort' })), false);
});
