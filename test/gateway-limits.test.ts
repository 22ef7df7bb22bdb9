// The gateway in-process against a fake connect path: upstream connections that are tunnel-like streams (no
// net.Socket) pooled with keep-alive; 503 without endpoints, 504 on a route timeout, httpsRedirect; and the budgets:
// header and ClientHello deadlines, the per-port connection limit evicting idle keep-alive connections, junk on a TLS
// port — every refusal counted, the listener serving throughout.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createHttpServer, request, type Server as HttpServer } from 'node:http';
import { connect, createServer, type Server } from 'node:net';
import { duplexPair, type Duplex } from 'node:stream';
import { Registry } from 'prom-client';
import { Budgets } from '@edgemesh/common/budget';
import { silentLogger } from '@edgemesh/common/log';
import { ClusterModel } from '../packages/agent/src/cluster/model.ts';
import { Gateway } from '../packages/agent/src/gateway/server.ts';
import { ServiceConnectError } from '../packages/agent/src/proxy/connect.ts';
import { MeshAgent } from '../packages/agent/src/gateway/upstream.ts';
import { service } from './lib/proxyfixtures.ts';

const servers: (Server | HttpServer)[] = [];
let backendPort = 0;
/** Upstream streams opened by the fake connect path. */
let opened = 0;
/** The client address each upstream connect was balanced for. */
const clients: string[] = [];
let gateway: Gateway;
let budgets: Budgets;
let registry: Registry;
const ports = { http: 0, tls: 0 };

/** A tunnel-like upstream: a stream pair bridged to the backend (our side has no socket methods). */
function tunnelLike(port: number): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    s.once('error', reject);
    s.once('connect', () => {
      const [ours, theirs] = duplexPair();
      s.pipe(theirs);
      theirs.pipe(s);
      s.on('close', () => theirs.destroy());
      theirs.on('close', () => s.destroy());
      opened++;
      resolve(ours);
    });
  });
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const p = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return p;
}

before(async () => {
  const backend = createHttpServer((req, res) => {
    if (req.url === '/slow') return void setTimeout(() => res.end('late'), 3000);
    res.end(`ok ${req.url} via ${req.socket.remotePort}`);
  });
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', () => r()));
  servers.push(backend);
  backendPort = (backend.address() as { port: number }).port;
  ports.http = await freePort();
  ports.tls = await freePort();
  const model = new ClusterModel([]);
  model.replace('Node', [{ apiVersion: 'v1', kind: 'Node', metadata: { name: 'gw', labels: {} }, status: { addresses: [{ type: 'InternalIP', address: '127.0.0.1' }] } }]);
  model.replace('Service', [service({ name: 'web', namespace: 'demo', ip: '10.96.0.10', ports: [{ port: 80 }] }), service({ name: 'empty', namespace: 'demo', ip: '10.96.0.11', ports: [{ port: 80 }] })]);
  model.replace('Gateway', [{
    apiVersion: 'networking.istio.io/v1', kind: 'Gateway', metadata: { name: 'g', namespace: 'demo' },
    spec: { servers: [
      { port: { number: ports.http, protocol: 'HTTP' }, hosts: ['*'] },
      { port: { number: ports.http, protocol: 'HTTP' }, hosts: ['secure.example.test'], tls: { httpsRedirect: true } },
      { port: { number: ports.tls, protocol: 'TLS' }, hosts: ['*'], tls: { mode: 'PASSTHROUGH' } },
    ] },
  }]);
  model.replace('VirtualService', [
    { apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', metadata: { name: 'web', namespace: 'demo' }, spec: { hosts: ['web.example.test'], gateways: ['g'], http: [
      { match: [{ uri: { prefix: '/slow' } }], timeout: '0.5s', route: [{ destination: { host: 'web' } }] },
      { match: [{ uri: { prefix: '/empty' } }], route: [{ destination: { host: 'empty' } }] },
      { route: [{ destination: { host: 'web' } }] },
    ] } },
    { apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', metadata: { name: 'secure', namespace: 'demo' }, spec: { hosts: ['secure.example.test'], gateways: ['g'], http: [{ route: [{ destination: { host: 'web' } }] }] } },
  ]);
  model.flush();
  registry = new Registry();
  budgets = new Budgets({ registry, log: silentLogger });
  gateway = new Gateway({
    log: silentLogger, registry, budgets, model, thisNode: 'gw', domain: 'cluster.local', addresses: [],
    maxConnections: 8, maxPerSource: 8, headersTimeoutMs: 1000, helloTimeoutMs: 1000,
    connect: async (key, _port, from) => {
      clients.push(from.clientIP);
      if (key === 'demo/empty') throw new ServiceConnectError('no_endpoint', 'no endpoint');
      return { upstream: await tunnelLike(backendPort) };
    },
  });
  await gateway.start();
  assert.ok(gateway.ready());
});

after(async () => {
  await gateway?.stop();
  for (const s of servers) s.close();
});

function get(path: string, host: string, agent?: import('node:http').Agent): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const r = request({ host: '127.0.0.1', port: ports.http, path, headers: { host }, agent: agent ?? false }, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode!, body, headers: res.headers }));
    });
    r.on('error', reject);
    r.end();
  });
}

test('tunnel-like upstreams (no net.Socket) are pooled with keep-alive; 503 without endpoints; 504 on the route timeout; httpsRedirect', async () => {
  opened = 0;
  const first = await get('/a', 'web.example.test');
  const second = await get('/b', 'web.example.test');
  assert.equal(first.status, 200);
  assert.match(first.body, /^ok \/a via \d+$/);
  assert.equal(first.body.split(' via ')[1], second.body.split(' via ')[1], 'the same upstream connection');
  assert.equal(opened, 1);
  assert.deepEqual(clients, ['127.0.0.1'], 'balanced for the client whose request opened the connection');
  assert.equal((await get('/empty', 'web.example.test')).status, 503);
  const slow = await get('/slow', 'web.example.test');
  assert.equal(slow.status, 504);
  const redirect = await get('/login?x=1', 'secure.example.test');
  assert.equal(redirect.status, 301);
  assert.equal(redirect.headers.location, 'https://secure.example.test/login?x=1');
});

test('MeshAgent: an idle pooled stream is closed after its idle time', async () => {
  let closed = 0;
  const agent = new MeshAgent(async () => {
    const d = await tunnelLike(backendPort);
    d.on('close', () => closed++);
    return d;
  }, { freeIdleMs: 100 });
  const r = await new Promise<number>((resolve, reject) => {
    const q = request({ host: 'x', port: 80, path: '/', agent }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode!)); });
    q.on('error', reject);
    q.end();
  });
  assert.equal(r, 200);
  const end = Date.now() + 5000;
  while (closed === 0 && Date.now() < end) await new Promise((res) => setTimeout(res, 20));
  assert.equal(closed, 1);
  agent.destroy();
});

test('deadlines: silent HTTP and TLS connections are closed and counted; junk on the TLS port is refused', async () => {
  const before = budgets.refused('gateway_deadline');
  const silent = (port: number, bytes?: Buffer) => new Promise<void>((resolve) => {
    const s = connect(port, '127.0.0.1', () => { if (bytes) s.write(bytes); });
    s.on('error', () => {});
    s.on('close', () => resolve());
  });
  await Promise.all([silent(ports.http), silent(ports.tls), silent(ports.http, Buffer.from('GET / HTTP/1.1\r\nHost: web.example.test\r\n'))]);
  assert.equal(budgets.refused('gateway_deadline'), before + 3);
  await silent(ports.tls, Buffer.from('GET / HTTP/1.1\r\n\r\n'));
  const m = await registry.getSingleMetricAsString('edgemesh_gateway_connections_total');
  assert.match(m, /kind="tls",outcome="bad_hello"} 1/);
  assert.match(m, /kind="tls",outcome="hello_timeout"} 1/);
  assert.equal((await get('/still', 'web.example.test')).status, 200);
});

test('connection budget per port: idle keep-alive connections are evicted for newcomers; requests keep being served', async () => {
  const idle: import('node:net').Socket[] = [];
  // Eight keep-alive connections that each made one request and then sit idle (the budget is 8 per port).
  for (let i = 0; i < 8; i++) {
    const s = connect(ports.http, '127.0.0.1');
    s.on('error', () => {});
    await new Promise<void>((resolve) => {
      s.once('data', () => resolve());
      s.write('GET /k HTTP/1.1\r\nHost: web.example.test\r\n\r\n');
    });
    idle.push(s);
  }
  await new Promise((r) => setTimeout(r, 300)); // older than the eviction age floor
  const evictedBefore = budgets.evictedCount('gateway_conns_p' + ports.http);
  for (let i = 0; i < 4; i++) assert.equal((await get('/new', 'web.example.test')).status, 200);
  assert.ok(budgets.evictedCount('gateway_conns_p' + ports.http) >= evictedBefore + 1, 'idle keep-alive connections made room');
  for (const s of idle) s.destroy();
});
