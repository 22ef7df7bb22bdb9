import { test } from 'node:test';
import assert from 'node:assert/strict';
import { normalizeGateway, normalizeVirtualService } from '../cluster/istio.ts';
import type { IstioGateway, VirtualService } from '../cluster/types.ts';
import { destinationService, planGateway, type PlanInput } from './plan.ts';

const gw = (name: string, spec: unknown, ns = 'edge'): IstioGateway => normalizeGateway({ apiVersion: 'networking.istio.io/v1', kind: 'Gateway', metadata: { name, namespace: ns }, spec });
const vs = (name: string, spec: unknown, ns = 'edge'): VirtualService => normalizeVirtualService({ apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', metadata: { name, namespace: ns }, spec });
const plan = (gateways: IstioGateway[], virtualServices: VirtualService[], extra: Partial<PlanInput> = {}) =>
  planGateway({ gateways, virtualServices, nodeLabels: { 'edgemesh.io/gateway': 'true', 'kubernetes.io/hostname': 'edge-a' }, domain: 'cluster.local', ...extra });
const http = (port: number, hosts = ['*'], tls?: unknown) => ({ port: { number: port, name: `http-${port}`, protocol: 'HTTP' }, hosts, ...(tls ? { tls } : {}) });

test('Gateways are served by the nodes their selector matches (labels of the Node); empty selector: every gateway node', () => {
  const p = plan([
    gw('mine', { selector: { 'edgemesh.io/gateway': 'true' }, servers: [http(8080)] }),
    gw('other', { selector: { istio: 'ingressgateway' }, servers: [http(8081)] }),
    gw('any', { servers: [http(8082)] }),
  ], []);
  assert.deepEqual(p.gateways, ['edge/any', 'edge/mine']);
  assert.deepEqual(p.listeners.map((l) => [l.port, l.kind]), [[8080, 'http'], [8082, 'http']]);
  assert.deepEqual(plan([gw('mine', { selector: { a: 'b' }, servers: [http(1)] }), gw('any', { servers: [http(2)] })], [], { nodeLabels: undefined }).gateways, ['edge/any'], 'unknown Node: only selector-less Gateways');
});

test('listener kinds; one kind per port (first server wins); unsupported protocols and TLS modes are warned and skipped', () => {
  const p = plan([gw('a', { servers: [
    http(80),
    { port: { number: 443, protocol: 'HTTPS' }, hosts: ['a.example.com'], tls: { mode: 'SIMPLE', credentialName: 'a-cert' } },
    { port: { number: 443, protocol: 'TLS' }, hosts: ['db.example.com'], tls: { mode: 'PASSTHROUGH' } },
    { port: { number: 80, protocol: 'TCP' }, hosts: ['*'] },
    { port: { number: 5432, protocol: 'TCP' }, hosts: ['*'] },
    { port: { number: 9000, protocol: 'GRPC' }, hosts: ['*'] },
    { port: { number: 8443, protocol: 'HTTPS' }, hosts: ['*'], tls: { mode: 'MUTUAL', credentialName: 'x' } },
    { port: { number: 8444, protocol: 'HTTPS' }, hosts: ['*'], tls: { mode: 'SIMPLE' } },
  ] })], [], { secretKeys: new Set(['edge/a-cert']) });
  assert.deepEqual(p.listeners.map((l) => [l.port, l.kind, l.servers.length]), [[80, 'http', 1], [443, 'tls', 2], [5432, 'tcp', 1]]);
  assert.deepEqual(p.listeners[1].tls.map((t) => [t.hosts, t.mode, t.secret, t.inner]), [[['a.example.com'], 'terminate', 'edge/a-cert', 'http'], [['db.example.com'], 'passthrough', undefined, undefined]]);
  assert.deepEqual(p.secrets, ['edge/a-cert']);
  const warned = p.warnings.join('\n');
  assert.match(warned, /server 3 \(port 80 TCP\): port 80 is already a http listener/);
  assert.match(warned, /protocol GRPC is not supported/);
  assert.match(warned, /tls.mode MUTUAL is not supported/);
  assert.match(warned, /server 7 .*SIMPLE needs tls.credentialName/);
  assert.match(plan([gw('a', { servers: [{ port: { number: 443, protocol: 'HTTPS' }, hosts: ['*'], tls: { mode: 'SIMPLE', credentialName: 'gone' } }] })], [], { secretKeys: new Set() }).warnings.join('\n'), /Secret edge\/gone \(kubernetes.io\/tls\) not found/);
});

test('VirtualServices bind by Gateway reference, host namespace and host intersection', () => {
  const g = gw('public', { servers: [http(80, ['*.example.com', 'shop/shop.example.org', './internal.example.net'])] });
  const route = [{ route: [{ destination: { host: 'web' } }] }];
  const p = plan([g], [
    vs('short', { hosts: ['www.example.com'], gateways: ['public'], http: route }),
    vs('full', { hosts: ['api.example.com'], gateways: ['edge/public'], http: route }, 'apps'),
    vs('short-elsewhere', { hosts: ['x.example.com'], gateways: ['public'], http: route }, 'apps'),
    vs('mesh-only', { hosts: ['m.example.com'], http: route }),
    vs('shop', { hosts: ['shop.example.org'], gateways: ['edge/public'], http: route }, 'shop'),
    vs('shop-wrong-ns', { hosts: ['shop.example.org'], gateways: ['edge/public'], http: route }, 'apps'),
    vs('internal', { hosts: ['internal.example.net'], gateways: ['public'], http: route }),
    vs('wide', { hosts: ['*'], gateways: ['public'], http: route }),
    vs('unrelated', { hosts: ['other.org'], gateways: ['public'], http: route }),
  ]);
  const hosts = p.listeners[0].vhosts.map((v) => `${v.hosts.join(',')} -> ${v.routes[0].destinations[0].serviceKey}`);
  // In VirtualService key order (selection at request time is by specificity, not by this order).
  assert.deepEqual(hosts, [
    'api.example.com -> apps/web',
    'internal.example.net -> edge/web',
    'www.example.com -> edge/web',
    '*.example.com,internal.example.net -> edge/web', // wide: the server hosts it may bind (shop/ is another namespace's)
    'shop.example.org -> shop/web',
  ]);
});

test('HTTP routes: order kept, port- and gateway-restricted matches, unsupported conditions warned, subsets and outside hosts skipped', () => {
  const g = gw('public', { servers: [http(80), http(8080)] });
  const p = plan([g], [vs('web', { hosts: ['*'], gateways: ['public'], http: [
    { match: [{ uri: { prefix: '/api' }, port: 8080 }], route: [{ destination: { host: 'api.apps', port: { number: 9000 } } }] },
    { match: [{ uri: { regex: '^/(a+)+$' } }], route: [{ destination: { host: 'web' } }] },
    { match: [{ uri: { exact: '/v2' } }], route: [{ destination: { host: 'web', subset: 'v2' } }] },
    { route: [{ destination: { host: 'www.google.com' } }, { destination: { host: 'web.edge.svc.cluster.local', port: { number: 80 } }, weight: 20 }], timeout: '3s', rewrite: { uri: '/' } },
  ] })]);
  const l80 = p.listeners.find((l) => l.port === 80)!;
  const l8080 = p.listeners.find((l) => l.port === 8080)!;
  // Two HTTP servers of one Gateway on two ports: one vhost per server.
  assert.deepEqual(l8080.vhosts[0].routes.map((r) => r.id), ['edge/web#http0', 'edge/web#http1', 'edge/web#http3']);
  assert.deepEqual(l80.vhosts[0].routes.map((r) => r.id), ['edge/web#http1', 'edge/web#http3'], 'the port-8080 match is out on 80');
  const last = l80.vhosts[0].routes[1];
  assert.deepEqual(last.destinations, [{ serviceKey: 'edge/web', port: 80, weight: 20 }]);
  assert.equal(last.timeoutMs, 3000);
  assert.equal(last.rewriteUri, '/');
  assert.deepEqual(l8080.vhosts[0].routes[0].destinations, [{ serviceKey: 'apps/api', port: 9000, weight: 100 }]);
  const warned = p.warnings.join('\n');
  assert.match(warned, /edge\/web#http1: uri regex is not supported/);
  assert.match(warned, /edge\/web#http2: destination web subset v2: subsets are not supported/);
  assert.match(warned, /edge\/web#http2: no destination this gateway can reach; route skipped/);
  assert.match(warned, /edge\/web#http3: destination www.google.com is not a Service of the cluster/);
});

test('TLS: passthrough routes by sniHosts; SIMPLE with TLS terminates to tcp routes; TCP listeners take tcp routes by port', () => {
  const g = gw('public', { servers: [
    { port: { number: 443, protocol: 'TLS' }, hosts: ['*.db.example.com'], tls: { mode: 'PASSTHROUGH' } },
    { port: { number: 443, protocol: 'TLS' }, hosts: ['mq.example.com'], tls: { mode: 'SIMPLE', credentialName: 'mq-cert' } },
    { port: { number: 5432, protocol: 'TCP' }, hosts: ['*'] },
  ] });
  const p = plan([g], [
    vs('db', { hosts: ['*.db.example.com'], gateways: ['public'], tls: [
      { match: [{ port: 443, sniHosts: ['pg.db.example.com'] }], route: [{ destination: { host: 'pg', port: { number: 5432 } } }] },
      { match: [{ sniHosts: ['*.db.example.com'] }], route: [{ destination: { host: 'other-db', port: { number: 5432 } } }] },
    ], tcp: [{ match: [{ port: 5432 }], route: [{ destination: { host: 'pg', port: { number: 5432 } } }] }, { match: [{ port: 1 }], route: [{ destination: { host: 'nope' } }] }] }),
    vs('mq', { hosts: ['mq.example.com'], gateways: ['public'], tcp: [{ route: [{ destination: { host: 'mq', port: { number: 5672 } } }] }] }),
  ]);
  const tls = p.listeners.find((l) => l.port === 443)!;
  assert.deepEqual(tls.tls[0].routes.map((r) => [r.sniHosts, r.destinations[0].serviceKey]), [[['pg.db.example.com'], 'edge/pg'], [['*.db.example.com'], 'edge/other-db']]);
  assert.deepEqual([tls.tls[1].mode, tls.tls[1].inner, tls.tls[1].routes.map((r) => r.destinations[0].serviceKey)], ['terminate', 'tcp', ['edge/mq']]);
  const tcp = p.listeners.find((l) => l.port === 5432)!;
  assert.deepEqual(tcp.routes.map((r) => r.destinations[0].serviceKey), ['edge/pg', 'edge/mq'], 'the port-1 match is out; routes in VirtualService key order');
});

test('a listener without routes is warned about; destination host forms', () => {
  assert.match(plan([gw('a', { servers: [http(80)] })], []).warnings.join('\n'), /port 80 \(http\): no VirtualService routes here/);
  assert.equal(destinationService('web', 'edge', 'cluster.local'), 'edge/web');
  assert.equal(destinationService('web.apps', 'edge', 'cluster.local'), 'apps/web');
  assert.equal(destinationService('web.apps.svc', 'edge', 'cluster.local'), 'apps/web');
  assert.equal(destinationService('WEB.apps.svc.cluster.local.', 'edge', 'cluster.local'), 'apps/web');
  assert.equal(destinationService('web.apps.svc.other.domain', 'edge', 'cluster.local'), undefined);
  assert.equal(destinationService('www.example.com', 'edge', 'cluster.local'), undefined);
  assert.equal(destinationService('bad_name', 'edge', 'cluster.local'), undefined);
});
