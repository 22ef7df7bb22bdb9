import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Server } from 'node:http';
import { AdminServer, createRegistry } from './admin.ts';
import { silentLogger } from './log.ts';

test('admin: a server error after listening (EMFILE on accept) is logged, not an uncaught exception; it keeps serving', async () => {
  const admin = new AdminServer({ listen: '127.0.0.1:0', registry: createRegistry('t_'), status: () => ({ ok: true }), log: silentLogger });
  const { host, port } = await admin.start();
  try {
    const srv = (admin as unknown as { server: Server }).server;
    const emfile = Object.assign(new Error('accept EMFILE'), { code: 'EMFILE' });
    assert.doesNotThrow(() => { srv.emit('error', emfile); srv.emit('error', emfile); });
    const res = await fetch(`http://${host}:${port}/healthz`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), 'ok\n');
  } finally {
    await admin.close();
  }
});

test('admin: a readiness check that throws counts as failing (/readyz 503 naming it), not an uncaught exception', async () => {
  const admin = new AdminServer({ listen: '127.0.0.1:0', registry: createRegistry('t2_'), status: () => ({}), log: silentLogger });
  admin.addCheck('fine', () => true);
  admin.addCheck('broken', () => { throw new Error('module bug'); });
  const { host, port } = await admin.start();
  try {
    assert.deepEqual(admin.ready(), { ok: false, failing: ['broken'] });
    const res = await fetch(`http://${host}:${port}/readyz`);
    assert.equal(res.status, 503);
    assert.equal(await res.text(), 'not ready: broken\n');
  } finally {
    await admin.close();
  }
});

import { connect, type Socket } from 'node:net';
import { ADMIN_CONNS_BUDGET, ADMIN_DEADLINE, ADMIN_MIN_EVICT_AGE_MS } from './admin.ts';
import { Budgets } from './budget.ts';

/** A raw TCP connection (optionally from another loopback address) and when the server closed it. */
async function raw(port: number, localAddress = '127.0.0.1'): Promise<{ sock: Socket; closed: Promise<number>; data: () => string }> {
  const sock = connect({ port, host: '127.0.0.1', localAddress });
  let got = '';
  sock.on('data', (d) => { got += d.toString(); });
  sock.on('error', () => {});
  const t0 = Date.now();
  const closed = new Promise<number>((r) => sock.once('close', () => r(Date.now() - t0)));
  await new Promise<void>((r, j) => { sock.once('connect', r); sock.once('error', j); });
  return { sock, closed, data: () => got };
}

/** `p`, or a failure naming `what` after a generous `ms` (so a regression fails instead of hanging). */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, j) => { t = setTimeout(() => j(new Error(`timed out: ${what}`)), ms); })]);
  } finally {
    clearTimeout(t);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

test('admin: slow headers (slowloris) are dropped at the header deadline with 408; a silent connection too; both counted', async () => {
  const budgets = new Budgets();
  const admin = new AdminServer({ listen: '127.0.0.1:0', registry: createRegistry('t3_'), status: () => ({}), log: silentLogger, budgets, headersTimeoutMs: 800 });
  const { port } = await admin.start();
  try {
    const slow = await raw(port);
    slow.sock.write('GET /healthz HTTP/1.1\r\n');
    const drip = setInterval(() => { if (!slow.sock.destroyed) slow.sock.write('X-a: b\r\n'); }, 100);
    const silent = await raw(port);
    const [slowMs, silentMs] = await within(Promise.all([slow.closed, silent.closed]), 15_000, 'both dropped');
    clearInterval(drip);
    assert.ok(slowMs >= 700, `slow headers dropped at the deadline, not before (${slowMs} ms)`);
    assert.ok(silentMs >= 700, `silent connection dropped at the deadline, not before (${silentMs} ms)`);
    assert.match(slow.data(), /^HTTP\/1\.1 408/);
    assert.equal(budgets.refused(ADMIN_DEADLINE), 2);
    assert.equal(admin.connections, 0);
    const res = await fetch(`http://127.0.0.1:${port}/healthz`);
    assert.equal(res.status, 200);
  } finally {
    await admin.close();
  }
});

test('admin: added routes answer GET/HEAD on their exact path; a throwing route is a 500; 404 names the routes', async () => {
  const admin = new AdminServer({ listen: '127.0.0.1:0', registry: createRegistry('t3_'), status: () => ({}), log: silentLogger });
  admin.addRoute('/fleet', (_req, res) => { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"ok":true}'); });
  admin.addRoute('/ui', () => { throw new Error('page bug'); });
  admin.addRoute('/ui/app.js', (_req, res) => res.end('x'));
  const { host, port } = await admin.start();
  try {
    assert.deepEqual(admin.address(), { host, port });
    const base = `http://${host}:${port}`;
    assert.deepEqual(await (await fetch(`${base}/fleet?x=1`)).json(), { ok: true });
    assert.equal((await fetch(`${base}/fleet`, { method: 'HEAD' })).status, 200);
    assert.equal((await fetch(`${base}/fleet`, { method: 'POST' })).status, 405);
    const broken = await fetch(`${base}/ui`);
    assert.equal(broken.status, 500);
    assert.match(await broken.text(), /\/ui failed: page bug/);
    const missing = await fetch(`${base}/fleet/x`);
    assert.equal(missing.status, 404);
    assert.equal(await missing.text(), 'not found: try /healthz /readyz /metrics /status /fleet /ui\n');
  } finally {
    await admin.close();
  }
});

test('admin: when the connection slots are full, the oldest idle connection is evicted for a real request', async () => {
  const budgets = new Budgets();
  const admin = new AdminServer({ listen: '127.0.0.1:0', registry: createRegistry('t4_'), status: () => ({}), log: silentLogger, budgets, maxConnections: 4 });
  const { port } = await admin.start();
  const conns: Awaited<ReturnType<typeof raw>>[] = [];
  try {
    // Two sources, two each: the total (4) is full; each source is at its share (2).
    for (const src of ['127.0.0.2', '127.0.0.2', '127.0.0.3', '127.0.0.3']) conns.push(await raw(port, src));
    await until(() => admin.connections === 4, '4 slots taken');
    // Too young to evict: a fifth connection from a third source is refused at once.
    const early = await raw(port, '127.0.0.4');
    await within(early.closed, 10_000, 'early refused');
    assert.equal(budgets.refused(ADMIN_CONNS_BUDGET), 1);
    await sleep(ADMIN_MIN_EVICT_AGE_MS + 50);
    const res = await fetch(`http://127.0.0.1:${port}/healthz`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), 'ok\n');
    await within(conns[0].closed, 10_000, 'eviction'); // the oldest idle one made room
    assert.equal(budgets.evictedCount(ADMIN_CONNS_BUDGET), 1);
    // A source at its share evicts its own oldest connection, not someone else's.
    await sleep(ADMIN_MIN_EVICT_AGE_MS + 50);
    const again = await raw(port, '127.0.0.3');
    await within(conns[2].closed, 10_000, 'own eviction');
    assert.equal(again.sock.destroyed, false);
    conns.push(again);
    assert.equal(budgets.evictedCount(ADMIN_CONNS_BUDGET), 2);
  } finally {
    for (const c of conns) c.sock.destroy();
    await admin.close();
  }
});

test('admin: a connection busy in a request is not evicted; slots come back when connections close', async () => {
  const budgets = new Budgets();
  let release: () => void = () => {};
  const gate = new Promise<void>((r) => { release = r; });
  const registry = createRegistry('t5_');
  // A metric whose collection waits: /metrics stays in flight until the gate opens.
  const { Gauge } = await import('prom-client');
  new Gauge({ name: 't5_slow', help: 'slow', registers: [registry], async collect() { await gate; this.set(1); } });
  const admin = new AdminServer({ listen: '127.0.0.1:0', registry, status: () => ({}), log: silentLogger, budgets, maxConnections: 2 });
  const { port } = await admin.start();
  try {
    const busy = await raw(port, '127.0.0.2');
    busy.sock.write('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n');
    const idle = await raw(port, '127.0.0.3');
    await sleep(ADMIN_MIN_EVICT_AGE_MS + 50);
    const res = await fetch(`http://127.0.0.1:${port}/healthz`);
    assert.equal(res.status, 200);
    await within(idle.closed, 10_000, 'idle evicted');
    assert.equal(busy.sock.destroyed, false, 'the in-flight request keeps its connection');
    release();
    await until(() => busy.data().includes('t5_slow 1'), 'the slow /metrics answer');
    busy.sock.destroy();
    await until(() => admin.connections <= 1, 'slots given back');
  } finally {
    release();
    await admin.close();
  }
});
