import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Endpoint, NodeInfo, Service, Snapshot } from '../cluster/types.ts';
import { authorizeServe, forbiddenAddress, type ServePolicy } from './authorize.ts';

const GROUP = 'apps.kubeedge.io/belonging-to';
const node = (name: string, labels: Record<string, string> = {}): NodeInfo => ({ name, labels, group: labels[GROUP], addresses: [] });
const svc = (name: string, extra: Partial<Service> = {}): Service => ({
  key: `ns/${name}`, namespace: 'ns', name, type: 'ClusterIP', clusterIPs: ['10.96.0.9'], headless: false,
  ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }], sessionAffinity: 'None', affinityTimeoutSeconds: 10800,
  internalTrafficPolicy: 'Cluster', labels: {}, annotations: {}, ...extra,
});
const ep = (ip: string, nodeName: string | undefined, extra: Partial<Endpoint> = {}): Endpoint => ({
  address: ip, addresses: [ip], addressType: ip.includes(':') ? 'IPv6' : 'IPv4', nodeName, ready: true, serving: true, terminating: false,
  ports: [{ name: 'http', port: 8080, protocol: 'TCP' }], slice: 's', ...extra,
});

function snapshot(): Snapshot {
  const services = new Map<string, Service>([
    ['ns/web', svc('web')],
    ['ns/local', svc('local', { internalTrafficPolicy: 'Local' })],
    ['ns/site', svc('site', { annotations: { 'apps.kubeedge.io/service-topology': 'range-nodegroup' } })],
    ['ns/zoned', svc('zoned', { annotations: { topologyKeys: '["zone"]' } })],
  ]);
  const endpoints = new Map<string, Endpoint[]>([
    ['ns/web', [ep('10.1.0.5', 'me'), ep('10.2.0.7', 'other'), ep('127.0.0.1', 'me'), ep('10.1.0.6', 'me', { ready: false, serving: false }),
      ep('10.1.0.8', 'me', { ready: false, serving: true, terminating: true }), ep('10.1.0.9', undefined), ep('169.254.169.254', 'me'),
      ep('224.0.0.1', 'me'), ep('0.0.0.0', 'me'), ep('::ffff:127.0.0.1', 'me'), ep('fd00::5', 'me')]],
    ['ns/local', [ep('10.1.0.5', 'me')]],
    ['ns/site', [ep('10.1.0.5', 'me')]],
    ['ns/zoned', [ep('10.1.0.5', 'me')]],
  ]);
  const nodes = new Map<string, NodeInfo>([
    ['me', node('me', { [GROUP]: 'shop-1', zone: 'z1' })],
    ['peer', node('peer', { [GROUP]: 'shop-1' })],
    ['far', node('far', { [GROUP]: 'shop-2', zone: 'z1' })],
    ['other', node('other', { [GROUP]: 'shop-1' })],
  ]);
  return { version: 1, services, endpoints, nodes, destinationRules: new Map() };
}

const snap = snapshot();
const policy: ServePolicy = { self: 'me', routingDefault: 'prefer' };
const ask = (caller: string, serviceKey: string, ip: string, port = 8080, protocol: 'tcp' | 'udp' = 'tcp', p = policy) =>
  authorizeServe(snap, p, { caller, target: { serviceKey, protocol, ip, port } });
const reason = (d: ReturnType<typeof ask>) => (d.ok ? 'ok' : d.reason);

test('an endpoint on this node that is ready is served to a cluster node', () => {
  assert.deepEqual(ask('peer', 'ns/web', '10.1.0.5'), { ok: true });
  assert.deepEqual(ask('far', 'ns/web', '10.1.0.5'), { ok: true }, 'prefer routing: any cluster node');
  assert.deepEqual(ask('peer', 'ns/web', 'fd00::5'), { ok: true });
});

test('callers that are not Nodes of the cluster (or claim to be this node) are refused', () => {
  assert.equal(reason(ask('not-a-cluster-node', 'ns/web', '10.1.0.5')), 'not-a-node');
  assert.equal(reason(ask('me', 'ns/web', '10.1.0.5')), 'not-a-node');
  assert.equal(reason(ask('', 'ns/web', '10.1.0.5')), 'not-a-node');
});

test('only endpoints of the named Service with a matching port and protocol (no open proxy)', () => {
  assert.equal(reason(ask('peer', 'ns/nope', '10.1.0.5')), 'unknown-service');
  assert.equal(reason(ask('peer', 'ns/web', '10.1.0.5', 22)), 'not-an-endpoint');
  assert.equal(reason(ask('peer', 'ns/web', '10.1.0.5', 8080, 'udp')), 'not-an-endpoint');
  assert.equal(reason(ask('peer', 'ns/web', '10.9.9.9')), 'not-an-endpoint');
});

test('an endpoint on another node, or on no node, is never served (no pivot)', () => {
  assert.equal(reason(ask('peer', 'ns/web', '10.2.0.7')), 'other-node');
  assert.equal(reason(ask('peer', 'ns/web', '10.1.0.9')), 'other-node');
});

test('not ready endpoints are refused; serving-terminating ones are served', () => {
  assert.equal(reason(ask('peer', 'ns/web', '10.1.0.6')), 'not-ready');
  assert.deepEqual(ask('peer', 'ns/web', '10.1.0.8'), { ok: true });
});

test('loopback, unspecified, link-local and multicast endpoint addresses are never served', () => {
  for (const ip of ['127.0.0.1', '::ffff:127.0.0.1', '169.254.169.254', '224.0.0.1', '0.0.0.0']) assert.equal(reason(ask('peer', 'ns/web', ip)), 'address', ip);
  assert.deepEqual(ask('peer', 'ns/web', '127.0.0.1', 8080, 'tcp', { ...policy, allowLoopback: true }), { ok: true }, 'the loopback-only test switch');
  assert.equal(forbiddenAddress('::1'), 'a loopback address');
  assert.match(forbiddenAddress('ff02::1') ?? '', /multicast/);
  assert.match(forbiddenAddress('fe80::1') ?? '', /link-local/);
  assert.match(forbiddenAddress('255.255.255.255') ?? '', /reserved/);
  assert.equal(forbiddenAddress('::'), 'an unspecified, link-local, multicast or reserved address');
  assert.equal(forbiddenAddress('not-an-ip'), 'not an IP address');
  assert.equal(forbiddenAddress('10.1.0.5'), undefined);
  assert.equal(forbiddenAddress('2001:db8::1'), undefined);
});

test('strict-node Services are never served to another node', () => {
  assert.equal(reason(ask('peer', 'ns/local', '10.1.0.5')), 'strict-node');
});

test('strict-group Services are served only to callers in this node\'s group', () => {
  assert.deepEqual(ask('peer', 'ns/site', '10.1.0.5'), { ok: true });
  assert.equal(reason(ask('far', 'ns/site', '10.1.0.5')), 'strict-group');
  // routing.default strict makes every Service without its own topology strict-group.
  const strict = { ...policy, routingDefault: 'strict' as const };
  assert.deepEqual(ask('peer', 'ns/web', '10.1.0.5', 8080, 'tcp', strict), { ok: true });
  assert.equal(reason(ask('far', 'ns/web', '10.1.0.5', 8080, 'tcp', strict)), 'strict-group');
  // SuperEdge topologyKeys: the same value of a listed label.
  assert.deepEqual(ask('far', 'ns/zoned', '10.1.0.5'), { ok: true });
  assert.equal(reason(ask('peer', 'ns/zoned', '10.1.0.5')), 'strict-group');
});

test('a groupless node serves strict-group Services to nobody else (it is its own scope)', () => {
  const s = { ...snap, nodes: new Map(snap.nodes).set('me', node('me')).set('peer', node('peer')) };
  assert.equal(authorizeServe(s, policy, { caller: 'peer', target: { serviceKey: 'ns/site', protocol: 'tcp', ip: '10.1.0.5', port: 8080 } }).ok, false);
});
