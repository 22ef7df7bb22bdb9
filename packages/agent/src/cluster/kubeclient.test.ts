import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import type { IncomingMessage } from 'node:http';
import { get, inClusterConnection, KUBE_MAX_EVENT_BYTES, kubeconfigConnection, KubeHttpError, list, readEvents, type WatchEvent } from './kubeclient.ts';

const tmp = () => mkdtempSync(join(tmpdir(), 'em-kc-'));

test('kubeconfig: current context, token, CA data, client certificate files relative to the kubeconfig', () => {
  const dir = tmp();
  writeFileSync(join(dir, 'client.crt'), 'CERT');
  writeFileSync(join(dir, 'client.key'), 'KEY');
  const text = `apiVersion: v1
kind: Config
current-context: edge
clusters:
- {name: other, cluster: {server: "https://other:6443"}}
- {name: main, cluster: {server: "https://10.0.0.1:6443/", certificate-authority-data: ${Buffer.from('CA').toString('base64')}, tls-server-name: kubernetes}}
users:
- {name: admin, user: {token: abc, client-certificate: client.crt, client-key: ${join(dir, 'client.key')}}}
contexts:
- {name: edge, context: {cluster: main, user: admin}}
`;
  const c = kubeconfigConnection(text, join(dir, 'kubeconfig'));
  assert.equal(c.server, 'https://10.0.0.1:6443');
  assert.equal(c.skipTLSVerify, false);
  assert.equal(c.tlsServerName, 'kubernetes');
  assert.equal(c.ca?.().toString(), 'CA');
  assert.equal(c.cert?.().toString(), 'CERT');
  assert.equal(c.key?.().toString(), 'KEY');
  assert.equal(c.token?.(), 'abc');
});

test('kubeconfig: tokenFile re-read per request, plain http needs no TLS, basic auth; refusals name cluster.kubeconfig', () => {
  const dir = tmp();
  writeFileSync(join(dir, 'tok'), 'one\n');
  const cfg = (user: string, server = 'http://127.0.0.1:10550') => `current-context: c\nclusters: [{name: k, cluster: {server: "${server}"}}]\nusers: [{name: u, user: ${user}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n`;
  const c = kubeconfigConnection(cfg('{tokenFile: tok}'), join(dir, 'kubeconfig'));
  assert.equal(c.skipTLSVerify, true);
  assert.equal(c.token?.(), 'one');
  writeFileSync(join(dir, 'tok'), 'two\n');
  assert.equal(c.token?.(), 'two');
  assert.deepEqual(kubeconfigConnection(cfg('{username: a, password: b}'), '/k').basic, { username: 'a', password: 'b' });
  assert.throws(() => kubeconfigConnection(cfg('{exec: {command: aws}}'), '/k'), /cluster\.kubeconfig: kubeconfig \/k: exec credential plugins/);
  assert.throws(() => kubeconfigConnection('clusters: []\n', '/k'), /cluster\.kubeconfig: .*no current cluster/);
  assert.throws(() => kubeconfigConnection(cfg('{}').replace('cluster: k,', 'cluster: nope,'), '/k'), /cluster "nope" not found/);
  assert.throws(() => kubeconfigConnection(cfg('{}', 'ftp://x'), '/k'), /not an http\(s\) URL/);
  assert.throws(() => kubeconfigConnection('a: [unclosed\n', '/k'), /cluster\.kubeconfig: kubeconfig \/k: not valid YAML/);
});

test('in-cluster: the service account files are read at request time, the token every time; IPv6 hosts bracketed', () => {
  const dir = tmp();
  const c = inClusterConnection({ KUBERNETES_SERVICE_HOST: 'fd00::1', KUBERNETES_SERVICE_PORT: '443' }, dir);
  assert.equal(c.server, 'https://[fd00::1]:443');
  assert.throws(() => c.token?.(), /ENOENT/);
  writeFileSync(join(dir, 'token'), 't1\n');
  writeFileSync(join(dir, 'ca.crt'), 'CA');
  assert.equal(c.token?.(), 't1');
  writeFileSync(join(dir, 'token'), 't2\n');
  assert.equal(c.token?.(), 't2');
  assert.equal(c.ca?.().toString(), 'CA');
});

test('readEvents: events split across chunks, blank lines, an oversized event is refused', async () => {
  const s = new PassThrough();
  const got: WatchEvent[] = [];
  const done = readEvents(s as unknown as IncomingMessage, (e) => got.push(e));
  const a = JSON.stringify({ type: 'ADDED', object: { metadata: { name: 'a' } } });
  const b = JSON.stringify({ type: 'BOOKMARK', object: { metadata: { resourceVersion: '7' } } });
  s.write(a.slice(0, 10));
  s.write(a.slice(10) + '\n\n' + b.slice(0, 5));
  s.end(b.slice(5) + '\n');
  await done;
  assert.deepEqual(got.map((e) => e.type), ['ADDED', 'BOOKMARK']);
  const big = new PassThrough();
  const refused = readEvents(big as unknown as IncomingMessage, () => {});
  big.write(Buffer.alloc(KUBE_MAX_EVENT_BYTES + 1, 0x61));
  await assert.rejects(refused, /larger than/);
});

test('https: CA-verified server, client certificate and bearer token; paginated list; watch; HTTP errors carry the status', async (t) => {
  const dir = tmp();
  const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '1', '-subj', '/CN=test-ca');
  const leaf = (name: string, ext: string) => {
    ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
    writeFileSync(join(dir, `${name}.ext`), ext);
    ssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.crt`, '-days', '1', '-extfile', `${name}.ext`);
  };
  leaf('server', 'subjectAltName=IP:127.0.0.1\n');
  leaf('client', 'extendedKeyUsage=clientAuth\n');
  const f = (n: string) => readFileSync(join(dir, n));
  const seen: string[] = [];
  const server = createHttpsServer({ key: f('server.key'), cert: f('server.crt'), ca: f('ca.crt'), requestCert: true, rejectUnauthorized: true }, (req, res) => {
    seen.push(`${req.headers.authorization} ${req.url}`);
    const u = new URL(req.url!, 'https://x');
    if (u.pathname === '/api/v1/missing') {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ kind: 'Status', code: 404, message: 'the server could not find the requested resource' }));
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    if (u.searchParams.get('watch') === 'true') {
      res.write(JSON.stringify({ type: 'BOOKMARK', object: { metadata: { resourceVersion: '12' } } }) + '\n');
      res.end(JSON.stringify({ type: 'ADDED', object: { metadata: { name: 'c', resourceVersion: '13' } } }) + '\n');
      return;
    }
    const page = u.searchParams.get('continue') ? 2 : 1;
    res.end(JSON.stringify({ kind: 'ServiceList', metadata: { resourceVersion: '11', ...(page === 1 ? { continue: 'next' } : {}) }, items: [{ metadata: { name: page === 1 ? 'a' : 'b' } }] }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => server.close());
  const conn = { server: `https://127.0.0.1:${(server.address() as AddressInfo).port}`, skipTLSVerify: false, ca: () => f('ca.crt'), cert: () => f('client.crt'), key: () => f('client.key'), token: () => 's3cret' };
  const signal = new AbortController().signal;
  const l = await list(conn, '/api/v1/services', signal);
  assert.deepEqual(l.items.map((i) => (i.metadata as { name: string }).name), ['a', 'b']);
  assert.equal(l.resourceVersion, '11');
  assert.match(seen[0], /^Bearer s3cret \/api\/v1\/services\?limit=500$/);
  assert.match(seen[1], /continue=next/);
  const events: WatchEvent[] = [];
  await readEvents(await get(conn, '/api/v1/services', { watch: 'true', resourceVersion: '11', allowWatchBookmarks: 'true' }, signal), (e) => events.push(e));
  assert.deepEqual(events.map((e) => e.type), ['BOOKMARK', 'ADDED']);
  await assert.rejects(get(conn, '/api/v1/missing', {}, signal), (e: unknown) => e instanceof KubeHttpError && e.statusCode === 404 && /could not find/.test(e.message));
  // A server certificate the CA did not sign is refused.
  await assert.rejects(list({ ...conn, ca: () => f('client.crt') }, '/api/v1/services', signal));
});
