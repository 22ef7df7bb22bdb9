import { test } from 'node:test';
import assert from 'node:assert/strict';
import { inspect } from 'node:util';
import { ClusterModel } from './model.ts';
import { normalizeGateway, normalizeTlsSecret, normalizeVirtualService, parseDuration } from './istio.ts';
import { parseManifest } from './file.ts';
import type { RawObject } from './types.ts';

const gw = (name: string, spec: unknown, ns = 'edge'): RawObject => ({ apiVersion: 'networking.istio.io/v1', kind: 'Gateway', metadata: { name, namespace: ns }, spec });
const vs = (name: string, spec: unknown, ns = 'edge'): RawObject => ({ apiVersion: 'networking.istio.io/v1beta1', kind: 'VirtualService', metadata: { name, namespace: ns }, spec });
const CERT = '-----BEGIN CERTIFICATE-----\nTU9DSy1DRVJU\n-----END CERTIFICATE-----\n';
const KEY = '-----BEGIN PRIVATE KEY-----\nU1VQRVItU0VDUkVULUtFWQ==\n-----END PRIVATE KEY-----\n';
const tlsSecret = (name: string, ns = 'edge', extra: Record<string, unknown> = {}): RawObject => ({
  apiVersion: 'v1', kind: 'Secret', type: 'kubernetes.io/tls',
  metadata: { name, namespace: ns, annotations: { 'kubectl.kubernetes.io/last-applied-configuration': `{"data":{"tls.key":"${Buffer.from(KEY).toString('base64')}"}}` } },
  data: { 'tls.crt': Buffer.from(CERT).toString('base64'), 'tls.key': Buffer.from(KEY).toString('base64') },
  ...extra,
});

test('Gateway: servers with port, protocol (upper-cased), hosts and tls; malformed servers reject the Gateway', () => {
  const g = normalizeGateway(gw('public', {
    selector: { 'edgemesh.io/gateway': 'true' },
    servers: [
      { port: { number: 80, name: 'http', protocol: 'http' }, hosts: ['*'], tls: { httpsRedirect: true } },
      { port: { number: 443, name: 'https', protocol: 'HTTPS' }, hosts: ['shop/www.example.com'], tls: { mode: 'simple', credentialName: 'www-cert' } },
    ],
  }));
  assert.equal(g.key, 'edge/public');
  assert.deepEqual(g.selector, { 'edgemesh.io/gateway': 'true' });
  assert.deepEqual(g.servers.map((s) => [s.port, s.protocol, s.hosts, s.tls]), [
    [80, 'HTTP', ['*'], { mode: undefined, credentialName: undefined, httpsRedirect: true }],
    [443, 'HTTPS', ['shop/www.example.com'], { mode: 'SIMPLE', credentialName: 'www-cert', httpsRedirect: undefined }],
  ]);
  assert.throws(() => normalizeGateway(gw('bad', { servers: [{ port: { number: 0, protocol: 'HTTP' }, hosts: ['*'] }] })), /spec\.servers\[0\]\.port\.number/);
  assert.throws(() => normalizeGateway(gw('bad', { servers: [{ port: { number: 80 }, hosts: ['*'] }] })), /protocol is missing/);
  assert.throws(() => normalizeGateway(gw('bad', { servers: [{ port: { number: 80, protocol: 'HTTP' } }] })), /hosts is empty/);
});

test('VirtualService: http matches, weights, rewrite, timeout; tcp and tls routes; unsupported fields are listed, not dropped silently', () => {
  const v = normalizeVirtualService(vs('web', {
    hosts: ['WWW.example.com'],
    gateways: ['public'],
    http: [
      { match: [{ uri: { prefix: '/api' }, headers: { 'X-Env': { exact: 'beta' } } }, { uri: { exact: '/login' }, ignoreUriCase: true }], route: [{ destination: { host: 'api', port: { number: 8080 } }, weight: 90 }, { destination: { host: 'api-canary' }, weight: 10 }], rewrite: { uri: '/' }, timeout: '1.5s' },
      { match: [{ uri: { prefix: '/' }, queryParams: { a: { exact: 'b' } } }], route: [{ destination: { host: 'web.shop.svc.cluster.local' } }], fault: { abort: {} } },
    ],
    tcp: [{ match: [{ port: 31400 }], route: [{ destination: { host: 'db', port: { number: 5432 } } }] }],
    tls: [{ match: [{ port: 443, sniHosts: ['DB.example.com'] }], route: [{ destination: { host: 'db', port: { number: 5433 } } }] }],
  }));
  assert.deepEqual(v.hosts, ['www.example.com']);
  assert.deepEqual(v.http[0].match[0].uri, { prefix: '/api' });
  assert.deepEqual(v.http[0].match[0].headers, { 'x-env': { exact: 'beta' } });
  assert.equal(v.http[0].match[1].ignoreUriCase, true);
  assert.deepEqual(v.http[0].route.map((d) => [d.host, d.port, d.weight]), [['api', 8080, 90], ['api-canary', undefined, 10]]);
  assert.equal(v.http[0].rewriteUri, '/');
  assert.equal(v.http[0].timeoutMs, 1500);
  assert.deepEqual(v.http[1].route.map((d) => d.weight), [100], 'a lone destination takes all traffic');
  assert.deepEqual(v.http[1].match[0].unsupported, ['queryParams']);
  assert.deepEqual(v.http[1].unsupported, ['fault']);
  assert.deepEqual(v.tcp[0].match[0].port, 31400);
  assert.deepEqual(v.tls[0].match[0].sniHosts, ['db.example.com']);
  assert.throws(() => normalizeVirtualService(vs('x', { http: [] })), /spec\.hosts is empty/);
  assert.throws(() => normalizeVirtualService(vs('x', { hosts: ['a'], http: [{ route: [{ destination: {} }] }] })), /destination\.host is missing/);
  assert.throws(() => normalizeVirtualService(vs('x', { hosts: ['a'], http: [{ route: [{ destination: { host: 'a' }, weight: -1 }] }] })), /weight/);
});

test('durations', () => {
  assert.equal(parseDuration('5s'), 5000);
  assert.equal(parseDuration('250ms'), 250);
  assert.equal(parseDuration('2m'), 120_000);
  assert.equal(parseDuration('soon'), undefined);
  assert.equal(parseDuration(5), undefined);
});

test('TLS Secrets: data or stringData; other types ignored; a TLS Secret without its key is rejected without showing values', () => {
  const t = normalizeTlsSecret(tlsSecret('www-cert'))!;
  assert.equal(t.cert.reveal().toString(), CERT);
  assert.equal(t.privateKey.reveal().toString(), KEY);
  assert.equal(normalizeTlsSecret({ apiVersion: 'v1', kind: 'Secret', type: 'Opaque', metadata: { name: 'o' }, data: { password: 'aHVudGVyMg==' } }), undefined);
  const sd = normalizeTlsSecret({ apiVersion: 'v1', kind: 'Secret', type: 'kubernetes.io/tls', metadata: { name: 's' }, stringData: { 'tls.crt': CERT, 'tls.key': KEY } })!;
  assert.equal(sd.fingerprint, t.fingerprint, 'same material, same fingerprint');
  try {
    normalizeTlsSecret({ apiVersion: 'v1', kind: 'Secret', type: 'kubernetes.io/tls', metadata: { name: 'half', namespace: 'edge' }, data: { 'tls.crt': Buffer.from(CERT).toString('base64') } });
    assert.fail('expected an error');
  } catch (e) {
    assert.match((e as Error).message, /Secret edge\/half: a kubernetes.io\/tls Secret needs tls.crt and tls.key/);
    assert.ok(!(e as Error).message.includes('TU9DSy'), 'no value in the message');
  }
  // Nothing of the material shows when the object is logged, inspected or serialised.
  const shown = [JSON.stringify(t), inspect(t, { depth: 5 }), String(t.privateKey)].join('\n');
  assert.ok(!shown.includes('SUPER') && !shown.includes('U1VQRVI') && !shown.includes('PRIVATE KEY'), shown);
  assert.match(shown, /redacted/);
});

test('the model publishes Gateways and VirtualServices, and only the TLS Secrets a Gateway references (snapshot and raw state)', () => {
  const m = new ClusterModel([]);
  const rejected: string[] = [];
  m.onReject = (kind, key, reason) => rejected.push(`${kind} ${key}: ${reason}`);
  m.upsert('Secret', tlsSecret('www-cert'));
  m.upsert('Secret', tlsSecret('unused-cert'));
  m.upsert('Secret', tlsSecret('www-cert', 'other-ns'));
  m.upsert('Secret', { apiVersion: 'v1', kind: 'Secret', type: 'Opaque', metadata: { name: 'db-password', namespace: 'edge' }, data: { p: 'aHVudGVyMg==' } });
  let snap = m.flush();
  assert.equal(snap.tlsSecrets?.size, 0, 'no Gateway yet: no Secret in the snapshot');
  assert.deepEqual(m.rawState().secrets, []);
  m.upsert('Gateway', gw('public', { servers: [{ port: { number: 443, protocol: 'HTTPS' }, hosts: ['*'], tls: { mode: 'SIMPLE', credentialName: 'www-cert' } }] }));
  m.upsert('VirtualService', vs('web', { hosts: ['*'], gateways: ['public'], http: [{ route: [{ destination: { host: 'web' } }] }] }));
  snap = m.flush();
  assert.deepEqual([...snap.gateways!.keys()], ['edge/public']);
  assert.deepEqual([...snap.virtualServices!.keys()], ['edge/web']);
  assert.deepEqual([...snap.tlsSecrets!.keys()], ['edge/www-cert'], 'only the referenced one, from the Gateway\'s namespace');
  const raw = m.rawState().secrets;
  assert.equal(raw.length, 1);
  assert.deepEqual(Object.keys(raw[0].metadata!), ['name', 'namespace'], 'no annotations (kubectl\'s plaintext copy) in the state');
  assert.deepEqual(Object.keys(raw[0].data as object).sort(), ['tls.crt', 'tls.key']);
  // The Gateway goes: the Secret leaves the snapshot and the state file (it stays known, so it comes back with a Gateway).
  m.remove('Gateway', gw('public', {}));
  snap = m.flush();
  assert.equal(snap.tlsSecrets?.size, 0);
  assert.deepEqual(m.rawState().secrets, []);
  m.upsert('Gateway', gw('public', { servers: [{ port: { number: 443, protocol: 'HTTPS' }, hosts: ['*'], tls: { mode: 'SIMPLE', credentialName: 'unused-cert' } }] }));
  assert.deepEqual([...m.flush().tlsSecrets!.keys()], ['edge/unused-cert']);
  m.remove('Secret', tlsSecret('unused-cert'));
  assert.equal(m.flush().tlsSecrets?.size, 0);
  assert.deepEqual(rejected, []);
});

test('file source parses Gateway, VirtualService and Secret documents; a broken one is skipped naming the document', () => {
  const text = `apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: edge}
spec: {servers: [{port: {number: 8080, protocol: HTTP}, hosts: ["*"]}]}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: web, namespace: edge}
spec: {hosts: ["*"], gateways: [public], http: [{route: [{destination: {host: web}}]}]}
---
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata: {name: www-cert, namespace: edge}
stringData: {tls.crt: "${CERT.replace(/\n/g, '\\n')}", tls.key: "${KEY.replace(/\n/g, '\\n')}"}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: edge}
spec: {gateways: [public]}
`;
  const p = parseManifest(text);
  assert.equal(p.objects.get('Gateway')!.length, 1);
  assert.equal(p.objects.get('VirtualService')!.length, 1);
  assert.equal(p.objects.get('Secret')!.length, 1);
  assert.deepEqual(p.skipped, [{ doc: 3, reason: 'VirtualService edge/broken: spec.hosts is empty' }]);
});
