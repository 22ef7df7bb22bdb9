// The ingress gateway in the real agent binary (file source, proxy.intercept none) against Istio Gateway /
// VirtualService / Secret manifests: HTTP by Host header and path with keep-alive and x-forwarded-for (curl), TLS
// termination with the Secret's certificate (curl and `openssl s_client -servername`), TLS passthrough by SNI (the
// backend's own certificate reaches the client), TCP routes, smuggling and oversize headers refused (400 / 431, the
// agent lives), /status and metrics, and a VirtualService change followed live.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createTlsServer } from 'node:tls';
import { connect, createServer, type Server } from 'node:net';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { stringify } from 'yaml';
import { AGENT_BIN, poll } from './lib/agentproc.ts';
import { node, service, slice } from './lib/proxyfixtures.ts';

const DEADLINE_MS = 15_000;
let dir: string;
let manifests: string;
let agent: ChildProcess;
let out = '';
let admin = '';
const servers: (Server | HttpServer)[] = [];
const ports: Record<'http' | 'https' | 'tcp', number> = { http: 0, https: 0, tcp: 0 };
/** Upstream connections each backend saw (remote ports), to check keep-alive to the upstream. */
const upstreamConns: Record<string, Set<number>> = { web: new Set(), api: new Set() };

interface Run { code: number; stdout: string; stderr: string }
function run(cmd: string, args: string[], input?: string): Promise<Run> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { timeout: DEADLINE_MS, encoding: 'utf8' }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0, stdout, stderr });
    });
    child.stdin!.end(input ?? '');
  });
}

async function listen<S extends Server | HttpServer>(s: S): Promise<number> {
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  servers.push(s);
  return (s.address() as { port: number }).port;
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const p = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return p;
}

/** An HTTP backend that tells what it got. */
function echoBackend(name: keyof typeof upstreamConns): HttpServer {
  return createHttpServer((req, res) => {
    upstreamConns[name].add(req.socket.remotePort!);
    let body = 0;
    req.on('data', (c: Buffer) => { body += c.length; });
    req.on('end', () => {
      res.setHeader('content-type', 'application/json');
      res.setHeader('x-backend', name);
      res.end(JSON.stringify({ backend: name, method: req.method, url: req.url, host: req.headers.host, xff: req.headers['x-forwarded-for'], proto: req.headers['x-forwarded-proto'], te: req.headers['transfer-encoding'] ?? null, body }));
    });
  });
}

function selfSigned(name: string): { cert: string; key: string } {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-addext', `subjectAltName=DNS:${name}`, '-keyout', join(dir, `${name}.key`), '-out', join(dir, `${name}.crt`)], { stdio: 'ignore' });
  return { cert: readFileSync(join(dir, `${name}.crt`), 'utf8'), key: readFileSync(join(dir, `${name}.key`), 'utf8') };
}

const routes = (apiPrefix: string) => ({
  apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', metadata: { name: 'web', namespace: 'edge' },
  spec: {
    hosts: ['www.example.test', 'web.example.test'], gateways: ['public'],
    http: [
      { match: [{ uri: { prefix: apiPrefix } }], rewrite: { uri: '/' }, route: [{ destination: { host: 'api.demo', port: { number: 80 } } }] },
      { match: [{ uri: { exact: '/login' } }], route: [{ destination: { host: 'web.demo.svc.cluster.local' } }] },
      { route: [{ destination: { host: 'web.demo' } }] },
    ],
  },
});

function writeManifests(apiPrefix = '/api'): void {
  writeFileSync(join(manifests, 'routes.yaml'), [
    routes(apiPrefix),
    { apiVersion: 'networking.istio.io/v1beta1', kind: 'VirtualService', metadata: { name: 'other', namespace: 'edge' }, spec: { hosts: ['other.example.test'], gateways: ['edge/public'], http: [{ route: [{ destination: { host: 'api.demo' } }] }] } },
    { apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', metadata: { name: 'db', namespace: 'edge' }, spec: { hosts: ['db.example.test'], gateways: ['public'], tls: [{ match: [{ sniHosts: ['db.example.test'] }], route: [{ destination: { host: 'db.demo', port: { number: 5433 } } }] }] } },
    { apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', metadata: { name: 'pg', namespace: 'edge' }, spec: { hosts: ['*'], gateways: ['public'], tcp: [{ match: [{ port: ports.tcp }], route: [{ destination: { host: 'pg.demo', port: { number: 5432 } } }] }] } },
  ].map((d) => stringify(d)).join('---\n'));
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'em-gateway-'));
  manifests = join(dir, 'manifests');
  mkdirSync(manifests);
  const www = selfSigned('www.example.test');
  const db = selfSigned('db.example.test');
  const webPort = await listen(echoBackend('web'));
  const apiPort = await listen(echoBackend('api'));
  const dbPort = await listen(createTlsServer({ cert: db.cert, key: db.key }, (s) => { s.on('error', () => {}); s.end(`passthrough to db, sni ${String((s as unknown as { servername?: string }).servername)}\n`); }) as unknown as Server);
  const pgPort = await listen(createServer((s) => { s.on('error', () => {}); s.write('pg> '); s.pipe(s); }));
  ports.http = await freePort();
  ports.https = await freePort();
  ports.tcp = await freePort();
  writeFileSync(join(manifests, 'cluster.yaml'), [
    { ...node('edge-a', { 'edgemesh.io/gateway': 'true' }), status: { addresses: [{ type: 'InternalIP', address: '127.0.0.1' }, { type: 'Hostname', address: 'edge-a' }] } },
    service({ name: 'web', namespace: 'demo', ip: '10.96.0.10', ports: [{ name: 'http', port: 80, targetPort: webPort }] }),
    slice('web', [{ name: 'http', port: webPort }], [{ ip: '127.0.0.1', node: 'edge-a' }], 'demo'),
    service({ name: 'api', namespace: 'demo', ip: '10.96.0.11', ports: [{ name: 'http', port: 80, targetPort: apiPort }] }),
    slice('api', [{ name: 'http', port: apiPort }], [{ ip: '127.0.0.1', node: 'edge-a' }], 'demo'),
    service({ name: 'db', namespace: 'demo', ip: '10.96.0.12', ports: [{ name: 'tls', port: 5433, targetPort: dbPort }] }),
    slice('db', [{ name: 'tls', port: dbPort }], [{ ip: '127.0.0.1', node: 'edge-a' }], 'demo'),
    service({ name: 'pg', namespace: 'demo', ip: '10.96.0.13', ports: [{ name: 'pg', port: 5432, targetPort: pgPort }] }),
    slice('pg', [{ name: 'pg', port: pgPort }], [{ ip: '127.0.0.1', node: 'edge-a' }], 'demo'),
    {
      apiVersion: 'networking.istio.io/v1', kind: 'Gateway', metadata: { name: 'public', namespace: 'edge' },
      spec: {
        selector: { 'edgemesh.io/gateway': 'true' },
        servers: [
          { port: { number: ports.http, name: 'http', protocol: 'HTTP' }, hosts: ['*'] },
          { port: { number: ports.https, name: 'https', protocol: 'HTTPS' }, hosts: ['www.example.test'], tls: { mode: 'SIMPLE', credentialName: 'www-cert' } },
          { port: { number: ports.https, name: 'tls', protocol: 'TLS' }, hosts: ['db.example.test'], tls: { mode: 'PASSTHROUGH' } },
          { port: { number: ports.tcp, name: 'pg', protocol: 'TCP' }, hosts: ['*'] },
        ],
      },
    },
    // Not selecting this node: never served here.
    { apiVersion: 'networking.istio.io/v1', kind: 'Gateway', metadata: { name: 'elsewhere', namespace: 'edge' }, spec: { selector: { istio: 'ingressgateway' }, servers: [{ port: { number: 1, protocol: 'HTTP' }, hosts: ['*'] }] } },
    { apiVersion: 'v1', kind: 'Secret', type: 'kubernetes.io/tls', metadata: { name: 'www-cert', namespace: 'edge' }, data: { 'tls.crt': Buffer.from(www.cert).toString('base64'), 'tls.key': Buffer.from(www.key).toString('base64') } },
  ].map((d) => stringify(d)).join('---\n'));
  writeManifests();
  const cfg = join(dir, 'agent.yaml');
  writeFileSync(cfg, stringify({
    nodeName: 'edge-a', stateDir: join(dir, 'state'), cluster: { source: 'file', manifestsDir: manifests },
    dns: { enabled: false }, tunnel: { enabled: false }, proxy: { intercept: 'none' },
    gateway: { enabled: true }, admin: { listen: '127.0.0.1:0' }, log: { level: 'info' },
  }));
  agent = spawn(process.execPath, [AGENT_BIN, '--config', cfg], { stdio: ['ignore', 'pipe', 'pipe'] });
  agent.stdout!.on('data', (d) => { out += d; });
  agent.stderr!.on('data', (d) => { out += d; });
  admin = `http://${await poll('admin address', async () => /"admin":"([^"]+)"/.exec(out)?.[1])}`;
  await poll('/readyz 200', async () => ((await fetch(`${admin}/readyz`)).status === 200 ? true : undefined));
});

after(async () => {
  if (agent && agent.exitCode === null) {
    agent.kill('SIGTERM');
    const [code] = await once(agent, 'exit');
    assert.equal(code, 0, out);
  }
  for (const s of servers) s.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const curl = (...args: string[]) => run('curl', ['-sS', '--max-time', '10', ...args]);
const json = (r: Run) => {
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as { backend: string; url: string; host: string; xff: string; proto: string; body: number; te: string | null };
};

test('/status lists the bound listeners of the Gateway that selects this node, on the Node\'s address', async () => {
  const st = (await (await fetch(`${admin}/status`)).json()) as { gateway: { addresses: string[]; gateways: string[]; listeners: { address: string; port: number; kind: string; bound: boolean }[]; warnings: string[] } };
  assert.deepEqual(st.gateway.addresses, ['127.0.0.1']);
  assert.deepEqual(st.gateway.gateways, ['edge/public']);
  assert.deepEqual(st.gateway.listeners.map((l) => [l.address, l.port, l.kind, l.bound]).sort(), [['127.0.0.1', ports.http, 'http', true], ['127.0.0.1', ports.https, 'tls', true], ['127.0.0.1', ports.tcp, 'tcp', true]].sort());
  assert.deepEqual(st.gateway.warnings, []);
});

test('HTTP: Host header and path pick the route; prefix rewrite; x-forwarded-for and -proto; unknown host 404', async () => {
  const base = `http://127.0.0.1:${ports.http}`;
  const api = json(await curl('-H', 'Host: www.example.test', `${base}/api/users?id=7`));
  assert.deepEqual([api.backend, api.url, api.host, api.xff, api.proto], ['api', '/users?id=7', 'www.example.test', '127.0.0.1', 'http']);
  assert.equal(json(await curl('-H', 'Host: WEB.example.test:8080', `${base}/login`)).backend, 'web');
  assert.equal(json(await curl('-H', 'Host: www.example.test', `${base}/login/other`)).url, '/login/other');
  assert.equal(json(await curl('-H', 'Host: other.example.test', `${base}/x`)).backend, 'api');
  const chained = json(await curl('-H', 'Host: www.example.test', '-H', 'X-Forwarded-For: 203.0.113.9', `${base}/`));
  assert.equal(chained.xff, '203.0.113.9, 127.0.0.1', 'appended to what the client sent');
  const post = json(await curl('-H', 'Host: www.example.test', '--data-binary', 'x'.repeat(100_000), `${base}/upload`));
  assert.equal(post.body, 100_000);
  const chunked = json(await curl('-H', 'Host: www.example.test', '-H', 'Transfer-Encoding: chunked', '--data-binary', 'hello', `${base}/chunked`));
  assert.equal(chunked.body, 5);
  const nohost = await curl('-o', '/dev/null', '-w', '%{http_code}', '-H', 'Host: nobody.example.test', `${base}/`);
  assert.equal(nohost.stdout, '404');
});

test('HTTP keep-alive: one client connection for several requests, and the upstream connection is reused', async () => {
  upstreamConns.web.clear();
  const base = `http://127.0.0.1:${ports.http}`;
  const r = await curl('-v', '-H', 'Host: www.example.test', `${base}/a`, `${base}/b`, `${base}/c`);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /Re-using existing connection/);
  assert.equal(r.stdout.split('"backend":"web"').length - 1, 3);
  assert.equal(upstreamConns.web.size, 1, `upstream connections: ${[...upstreamConns.web].join(', ')}`);
});

test('HTTPS termination with the Secret\'s certificate: curl and openssl s_client -servername', async () => {
  const url = `https://www.example.test:${ports.https}/secure`;
  const r = json(await curl('--cacert', join(dir, 'www.example.test.crt'), '--resolve', `www.example.test:${ports.https}:127.0.0.1`, url));
  assert.deepEqual([r.backend, r.url, r.proto, r.xff], ['web', '/secure', 'https', '127.0.0.1']);
  const s = await run('openssl', ['s_client', '-connect', `127.0.0.1:${ports.https}`, '-servername', 'www.example.test', '-CAfile', join(dir, 'www.example.test.crt'), '-verify_return_error', '-quiet'],
    'GET /via-openssl HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n');
  assert.equal(s.code, 0, s.stderr);
  assert.match(s.stdout, /^HTTP\/1\.1 200 OK/);
  assert.match(s.stdout, /"url":"\/via-openssl"/);
  assert.match(s.stderr, /CN\s*=\s*www\.example\.test/);
});

test('TLS passthrough by SNI: the backend\'s own certificate and TLS session; an unknown SNI is closed', async () => {
  const s = await run('openssl', ['s_client', '-connect', `127.0.0.1:${ports.https}`, '-servername', 'db.example.test', '-CAfile', join(dir, 'db.example.test.crt'), '-verify_return_error', '-quiet'], '');
  // The backend (a Node TLS server that ends right after writing) closes without close_notify; s_client says so.
  assert.ok(s.code === 0 || /unexpected eof while reading/.test(s.stderr), s.stderr);
  assert.match(s.stderr, /verify return:1/);
  assert.equal(s.stdout, 'passthrough to db, sni db.example.test\n');
  assert.match(s.stderr, /CN\s*=\s*db\.example\.test/, 'not the gateway\'s certificate: TLS went through untouched');
  const unknown = await run('openssl', ['s_client', '-connect', `127.0.0.1:${ports.https}`, '-servername', 'nope.example.test', '-quiet'], '');
  assert.notEqual(unknown.code, 0);
  const m = await (await fetch(`${admin}/metrics`)).text();
  assert.match(m, new RegExp(`edgemesh_gateway_connections_total\\{port="${ports.https}",kind="tls",outcome="no_route"\\} 1`));
  assert.match(m, new RegExp(`edgemesh_gateway_connections_total\\{port="${ports.https}",kind="tls",outcome="routed"\\} 1`));
});

test('TCP route: bytes both ways', async () => {
  const got = await new Promise<string>((resolve, reject) => {
    let t = '';
    const s = connect(ports.tcp, '127.0.0.1', () => s.write('select 1;\n'));
    s.on('data', (c) => { t += c; if (t.includes('select 1;\n')) s.end(); });
    s.on('close', () => resolve(t));
    s.on('error', reject);
  });
  assert.equal(got, 'pg> select 1;\n');
});

/** Raw bytes to the HTTP port; what came back until the agent closed the connection. */
function raw(bytes: string | Buffer): Promise<string> {
  return new Promise((resolve) => {
    let t = '';
    const s = connect(ports.http, '127.0.0.1', () => s.write(bytes));
    s.on('data', (c) => { t += c; });
    s.on('error', () => {});
    s.on('close', () => resolve(t));
    setTimeout(() => s.destroy(), 5000);
  });
}

test('request smuggling and oversize headers: 400 and 431, connection closed, the agent lives', async () => {
  const smuggle = await raw('POST / HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: www.example.test\r\n\r\n');
  assert.match(smuggle, /^HTTP\/1\.1 400 Bad Request\r\n/);
  assert.ok(!smuggle.includes('"backend"'), 'nothing reached a backend');
  const dup = await raw('POST / HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab');
  assert.match(dup, /^HTTP\/1\.1 400 Bad Request\r\n/);
  const big = await raw(`GET / HTTP/1.1\r\nHost: www.example.test\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
  assert.match(big, /^HTTP\/1\.1 431 Request Header Fields Too Large\r\n/);
  const garbage = await raw(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 13, 10, 13, 10]));
  assert.match(garbage, /^HTTP\/1\.1 400 Bad Request\r\n/);
  const nohost = await raw('GET / HTTP/1.1\r\n\r\n');
  assert.match(nohost, /^HTTP\/1\.1 400 Bad Request\r\n/);
  const ok = json(await curl('-H', 'Host: www.example.test', `http://127.0.0.1:${ports.http}/after`));
  assert.equal(ok.url, '/after');
  const m = await (await fetch(`${admin}/metrics`)).text();
  assert.match(m, new RegExp(`edgemesh_gateway_rejected_total\\{port="${ports.http}",reason="bad_request"\\} [4-9]`));
  assert.match(m, new RegExp(`edgemesh_gateway_rejected_total\\{port="${ports.http}",reason="header_too_large"\\} 1`));
});

test('a VirtualService change in the manifests directory is followed', async () => {
  writeManifests('/v2');
  const r = await poll('the /v2 prefix routes to api', async () => {
    const x = json(await curl('-H', 'Host: www.example.test', `http://127.0.0.1:${ports.http}/v2/items`));
    return x.backend === 'api' ? x : undefined;
  });
  assert.equal(r.url, '/items');
  assert.equal(json(await curl('-H', 'Host: www.example.test', `http://127.0.0.1:${ports.http}/api/items`)).backend, 'web', 'the old prefix is gone');
});
