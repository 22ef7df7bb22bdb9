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
