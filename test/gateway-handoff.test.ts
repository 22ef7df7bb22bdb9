// The ingress gateway across a takeover, in-process: a successor's Gateway binds the same port alongside the running
// one (SO_REUSEPORT); the running one stops accepting; a request in flight on it completes and says `connection:
// close`; keep-alive clients that were on it move to the successor on their next connection; a client loop of new
// and keep-alive requests sees no failure; the old gateway ends with no open connection.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Agent, createServer as createHttpServer, request } from 'node:http';
import { connect, createServer } from 'node:net';
import { Registry } from 'prom-client';
import { Budgets } from '@edgemesh/common/budget';
import { silentLogger } from '@edgemesh/common/log';
import { ClusterModel } from '../packages/agent/src/cluster/model.ts';
import { Gateway } from '../packages/agent/src/gateway/server.ts';
import { service } from './lib/proxyfixtures.ts';

/** How long the backend takes for /slow: the request is in flight when the old gateway stops accepting. */
const SLOW_MS = 800;
const LOOP_MS = 1500;

const cleanups: (() => unknown)[] = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const p = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return p;
}

function model(port: number): ClusterModel {
  const m = new ClusterModel([]);
  m.replace('Node', [{ apiVersion: 'v1', kind: 'Node', metadata: { name: 'gw', labels: {} }, status: { addresses: [{ type: 'InternalIP', address: '127.0.0.1' }] } }]);
  m.replace('Service', [service({ name: 'web', namespace: 'demo', ip: '10.96.0.10', ports: [{ port: 80 }] })]);
  m.replace('Gateway', [{ apiVersion: 'networking.istio.io/v1', kind: 'Gateway', metadata: { name: 'g', namespace: 'demo' }, spec: { servers: [{ port: { number: port, protocol: 'HTTP' }, hosts: ['*'] }] } }]);
  m.replace('VirtualService', [{ apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', metadata: { name: 'web', namespace: 'demo' }, spec: { hosts: ['*'], gateways: ['g'], http: [{ route: [{ destination: { host: 'web' } }] }] } }]);
  m.flush();
  return m;
}

function gateway(port: number, backend: number, shared: boolean): Gateway {
  const registry = new Registry();
  return new Gateway({
    log: silentLogger, registry, budgets: new Budgets({ registry, log: silentLogger }), model: model(port), thisNode: 'gw', domain: 'cluster.local',
    addresses: [], maxConnections: 64, maxPerSource: 64, shared,
    connect: () => new Promise((resolve, reject) => {
      const s = connect(backend, '127.0.0.1');
      s.once('error', reject);
      s.once('connect', () => resolve({ upstream: s }));
    }),
  });
}

function get(port: number, path: string, agent: Agent | false): Promise<{ status: number; body: string; connection?: string }> {
  return new Promise((resolve, reject) => {
    const r = request({ host: '127.0.0.1', port, path, headers: { host: 'web.example.test' }, agent }, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode!, body, connection: res.headers.connection }));
    });
    r.setTimeout(5000, () => r.destroy(new Error('timeout')));
    r.on('error', reject);
    r.end();
  });
}

test('a successor gateway binds alongside; the old one stops accepting, finishes what is in flight with connection: close and drains to zero', async () => {
  const backend = createHttpServer((req, res) => {
    if (req.url === '/slow') return void setTimeout(() => res.end('slow done'), SLOW_MS);
    res.end(`ok ${req.url}`);
  });
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', () => r()));
  cleanups.push(() => backend.close());
  const bport = (backend.address() as { port: number }).port;
  const port = await freePort();
  const old = gateway(port, bport, false);
  await old.start();
  cleanups.push(() => old.stop());
  assert.ok(old.ready());

  // A fresh (not shared) second gateway on the same port is refused, as without SO_REUSEPORT.
  const stranger = gateway(port, bport, false);
  await stranger.start();
  assert.equal(stranger.ready(), false, 'a held port is refused to a non-successor');
  assert.match(String(stranger.status().listeners[0].error), /EADDRINUSE/);
  await stranger.stop();

  // A keep-alive request in flight on the old gateway (the only listener yet) while the successor comes.
  const slowAgent = new Agent({ keepAlive: true });
  cleanups.push(() => slowAgent.destroy());
  const slow = get(port, '/slow', slowAgent);
  await new Promise((r) => setTimeout(r, 100));
  const next = gateway(port, bport, true);
  await next.start();
  cleanups.push(() => next.stop());
  assert.ok(next.ready(), 'the successor binds alongside');

  // Client loops: new connections and a keep-alive agent, until the loop time is over.
  const keep = new Agent({ keepAlive: true, maxSockets: 2 });
  cleanups.push(() => keep.destroy());
  const failures: string[] = [];
  let done = 0;
  const end = performance.now() + LOOP_MS;
  const loop = async (agent: Agent | false) => {
    while (performance.now() < end) {
      try {
        const r = await get(port, '/x', agent);
        if (r.status !== 200 || r.body !== 'ok /x') failures.push(`${r.status} ${r.body}`);
        done++;
      } catch (e) {
        failures.push((e as Error).message);
      }
    }
  };
  const loops = [loop(false), loop(false), loop(keep), loop(keep)];
  await new Promise((r) => setTimeout(r, 200));
  const before = old.openConnections();
  old.stopAccepting();
  assert.equal(old.status().listeners[0].bound, false, 'the old gateway stopped accepting');
  await Promise.all(loops);
  const s = await slow;
  assert.equal(s.body, 'slow done', 'the request in flight when the old gateway stopped accepting completed');
  assert.equal(s.connection, 'close', 'and its keep-alive connection was told to close (the client reconnects to the successor)');
  assert.deepEqual(failures, [], `no failed request (${done} done)`);
  assert.ok(done > 20, `the loops ran (${done})`);
  // Everything the old gateway still held ends: in flight finished, keep-alive ones closed after their response.
  const deadline = performance.now() + 15_000;
  while (old.openConnections() > 0 && performance.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.equal(old.openConnections(), 0, `drained (had ${before} open when it stopped accepting)`);
  const after = await get(port, '/x', keep);
  assert.equal(after.body, 'ok /x', 'the successor serves');
});
