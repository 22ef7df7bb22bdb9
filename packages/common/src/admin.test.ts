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
