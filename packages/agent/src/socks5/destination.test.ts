import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ClusterModel } from '../cluster/model.ts';
import { DialError } from '../proxy/dialer.ts';
import { ServiceConnectError } from '../proxy/connect.ts';
import { REP } from './codec.ts';
import { replyForError, resolveDestination, type DestinationContext } from './destination.ts';

const m = new ClusterModel([]);
m.replace('Service', [
  { apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'demo' }, spec: { clusterIP: '10.96.0.10', ports: [{ port: 80 }] } },
  { apiVersion: 'v1', kind: 'Service', metadata: { name: 'legacy', namespace: 'demo', labels: { 'service.edgemesh.kubeedge.io/service-proxy-name': 'other' } }, spec: { clusterIP: '10.96.0.11', ports: [{ port: 80 }] } },
]);
m.replace('Node', [{ apiVersion: 'v1', kind: 'Node', metadata: { name: 'edge-b' } }, { apiVersion: 'v1', kind: 'Node', metadata: { name: 'Node-1.Example.com' } }]);
const ctx: DestinationContext = { snapshot: m.flush(), serviceForIP: (ip) => (ip === '10.96.0.10' || ip === '9.251.0.7' ? 'demo/web' : undefined), domain: 'cluster.local' };
const dom = (host: string, port = 80) => resolveDestination({ addressType: 'domain', host, port }, ctx);

test('Service names in every form, case-insensitive, trailing dot', () => {
  for (const h of ['web.demo.svc.cluster.local', 'WEB.demo.svc.cluster.local.', 'web.demo.svc', 'web.demo']) {
    assert.deepEqual(dom(h), { kind: 'service', serviceKey: 'demo/web', port: 80 }, h);
  }
  assert.deepEqual(dom('api.demo.svc.cluster.local'), { kind: 'refused', reply: REP.HOST_UNREACHABLE, reason: 'no Service demo/api' });
  assert.equal((dom('legacy.demo') as { reply: number }).reply, REP.NOT_ALLOWED, 'opted out: not ours to proxy');
  assert.equal(resolveDestination({ addressType: 'domain', host: 'web.demo.svc.mesh.example', port: 80 }, { ...ctx, domain: 'mesh.example' }).kind, 'service');
});

test('nodes by name (case-insensitive), before the two-label Service form', () => {
  assert.deepEqual(dom('edge-b', 22), { kind: 'node', node: 'edge-b', port: 22 });
  assert.deepEqual(dom('node-1.example.com', 22), { kind: 'node', node: 'Node-1.Example.com', port: 22 });
  assert.equal((dom('edge-c', 22) as { reply: number }).reply, REP.HOST_UNREACHABLE, 'unknown node');
  assert.equal((dom('www.example.com', 443) as { reply: number }).reply, REP.HOST_UNREACHABLE, 'outside the cluster');
});

test('IPs: Service IPs only (clusterIP or fake), never an open proxy; junk names; port 0', () => {
  assert.deepEqual(resolveDestination({ addressType: 'ipv4', host: '10.96.0.10', port: 80 }, ctx), { kind: 'service', serviceKey: 'demo/web', port: 80 });
  assert.deepEqual(dom('9.251.0.7'), { kind: 'service', serviceKey: 'demo/web', port: 80 }, 'an IP sent as a domain');
  assert.equal((resolveDestination({ addressType: 'ipv4', host: '192.0.2.1', port: 80 }, ctx) as { reply: number }).reply, REP.NOT_ALLOWED);
  assert.equal((resolveDestination({ addressType: 'ipv6', host: '::1', port: 22 }, ctx) as { reply: number }).reply, REP.NOT_ALLOWED);
  assert.equal((dom('127.0.0.1', 22) as { reply: number }).reply, REP.NOT_ALLOWED);
  for (const junk of ['a b', 'web..demo', '', '\x00web.demo', 'we\u00e9.demo', 'x'.repeat(300)]) {
    assert.equal((dom(junk) as { reply: number }).reply, REP.HOST_UNREACHABLE, JSON.stringify(junk));
  }
  assert.equal((dom('web.demo', 0) as { reply: number }).reply, REP.NOT_ALLOWED);
});

test('reply codes for connect failures', () => {
  const svc = (reason: ConstructorParameters<typeof ServiceConnectError>[0], code?: ConstructorParameters<typeof DialError>[0]) => replyForError(new ServiceConnectError(reason, 'x', code));
  assert.equal(svc('no_port'), REP.CONNECTION_REFUSED);
  assert.equal(svc('no_service'), REP.HOST_UNREACHABLE);
  assert.equal(svc('not_proxied'), REP.NOT_ALLOWED);
  assert.equal(svc('strict_empty'), REP.NETWORK_UNREACHABLE);
  assert.equal(svc('no_endpoint'), REP.HOST_UNREACHABLE);
  assert.equal(svc('dial_failed', 'refused'), REP.CONNECTION_REFUSED);
  assert.equal(svc('dial_failed', 'timeout'), REP.HOST_UNREACHABLE);
  assert.equal(svc('dial_failed', 'no-route'), REP.NETWORK_UNREACHABLE);
  assert.equal(svc('limit'), REP.GENERAL_FAILURE);
  assert.equal(replyForError(new DialError('forbidden', 'port not allowed')), REP.NOT_ALLOWED);
  assert.equal(replyForError(new DialError('refused', 'x')), REP.CONNECTION_REFUSED);
  assert.equal(replyForError(new DialError('unreachable', 'x')), REP.HOST_UNREACHABLE);
  assert.equal(replyForError(new DialError('no-route', 'x')), REP.NETWORK_UNREACHABLE);
  assert.equal(replyForError(new Error('bug')), REP.GENERAL_FAILURE);
});
