import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { Registry } from 'prom-client';
import { pino } from 'pino';
import type { Logger } from './log.ts';
import { Budgets, REFUSAL_LOG_INTERVAL_MS, RefusalLog } from './budget.ts';

async function metricValue(reg: Registry, name: string, budget: string): Promise<number> {
  const m = await reg.getSingleMetric(name)?.get();
  return m?.values.find((v) => v.labels.budget === budget)?.value ?? 0;
}

/** A pino logger that records what it writes. */
function recordingLogger(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log: Logger = pino({ level: 'info' }, { write: (s: string) => { lines.push(JSON.parse(s) as Record<string, unknown>); } }) as unknown as Logger;
  return { log, lines };
}

test('budget: acquire up to max, refuse beyond (counted in the metric), release gives back exactly once', async () => {
  const reg = new Registry();
  const budgets = new Budgets({ registry: reg, metricPrefix: 't_' });
  const b = budgets.budget({ name: 'streams', max: 2, unit: 'streams' });
  const l1 = b.tryAcquire()!;
  const l2 = b.tryAcquire()!;
  assert.ok(l1 && l2);
  assert.equal(b.used, 2);
  assert.equal(b.tryAcquire(), undefined);
  assert.equal(budgets.refused('streams'), 1);
  assert.equal(await metricValue(reg, 't_budget_refusals_total', 'streams'), 1);
  assert.equal(l1.release(), true);
  assert.equal(l1.release(), false, 'second release is a no-op');
  assert.equal(b.used, 1);
  assert.equal(l1.released, true);
  assert.equal(l1.amount, 0);
  const l3 = b.tryAcquire()!;
  assert.ok(l3);
  l2.release();
  l3.release();
  assert.equal(b.used, 0);
  assert.equal(await metricValue(reg, 't_budget_in_use', 'streams'), 0);
  budgets.close();
});

test('budget: amounts (bytes), resize grows within the limit, refuses beyond, shrinks always', () => {
  const budgets = new Budgets();
  const b = budgets.budget({ name: 'partial_bytes', max: 1000, unit: 'bytes' });
  const l = b.tryAcquire(600)!;
  assert.equal(b.tryAcquire(500), undefined);
  assert.equal(l.resize(900), true);
  assert.equal(b.used, 900);
  assert.equal(l.resize(1100), false, 'grow beyond the limit');
  assert.equal(l.amount, 900, 'unchanged after a refused grow');
  assert.equal(budgets.refused('partial_bytes'), 2);
  assert.equal(l.resize(100), true);
  assert.equal(b.used, 100);
  l.release();
  assert.equal(b.used, 0, 'release gives back the resized amount');
  assert.equal(l.resize(50), false, 'a released lease cannot grow again');
  assert.equal(b.used, 0);
  assert.throws(() => b.tryAcquire(-1), RangeError);
  assert.throws(() => budgets.budget({ name: 'Bad-Name', max: 1, unit: 'x' }));
  assert.throws(() => budgets.budget({ name: 'partial_bytes', max: 1, unit: 'x' }), /exists/);
});

test('budget: run() releases on success and on error', async () => {
  const budgets = new Budgets();
  const b = budgets.budget({ name: 'tasks', max: 1, unit: 'tasks' });
  const ok = await b.run(async () => {
    assert.equal(b.used, 1);
    assert.equal(await b.run(async () => 'inner'), undefined, 'refused while held');
    return 42;
  });
  assert.deepEqual(ok, { value: 42 });
  assert.equal(b.used, 0);
  await assert.rejects(b.run(async () => { throw new Error('boom'); }), /boom/);
  assert.equal(b.used, 0, 'released after an error');
  assert.equal(budgets.refused('tasks'), 1);
});

test('budget: releaseOn (peer gone: close/error) and releaseOnAbort release once; listeners are removed', () => {
  const budgets = new Budgets();
  const b = budgets.budget({ name: 'conns', max: 10, unit: 'connections' });
  const sock = new EventEmitter();
  const l = b.tryAcquire()!.releaseOn(sock, 'close', 'error');
  assert.equal(sock.listenerCount('close'), 1);
  sock.emit('error', new Error('reset'));
  assert.equal(b.used, 0);
  assert.equal(sock.listenerCount('close'), 0, 'detached after release');
  sock.emit('close');
  assert.equal(b.used, 0, 'close after error does not release twice');
  assert.equal(l.released, true);

  // Explicit release first (success path), then the peer goes away: nothing more is given back.
  const sock2 = new EventEmitter();
  const l2 = b.tryAcquire()!.releaseOn(sock2);
  const other = b.tryAcquire()!;
  l2.release();
  sock2.emit('close');
  assert.equal(b.used, 1);
  other.release();

  const ac = new AbortController();
  const l3 = b.tryAcquire()!.releaseOnAbort(ac.signal);
  assert.equal(b.used, 1);
  ac.abort();
  assert.equal(b.used, 0);
  assert.equal(l3.released, true);
  // Already aborted: released at once.
  b.tryAcquire()!.releaseOnAbort(AbortSignal.abort());
  assert.equal(b.used, 0);
  // Released before abort: the abort listener is removed and does nothing.
  const ac2 = new AbortController();
  const l4 = b.tryAcquire()!.releaseOnAbort(ac2.signal);
  const held = b.tryAcquire()!;
  l4.release();
  ac2.abort();
  assert.equal(b.used, 1);
  held.release();
  // releaseOn on a released lease attaches nothing.
  const sock3 = new EventEmitter();
  l4.releaseOn(sock3);
  assert.equal(sock3.listenerCount('close'), 0);
});

test('budget: `using` releases at the end of the block, also when it throws', () => {
  const budgets = new Budgets();
  const b = budgets.budget({ name: 'scoped', max: 1, unit: 'x' });
  {
    using l = b.tryAcquire()!;
    assert.equal(l.amount, 1);
    assert.equal(b.used, 1);
  }
  assert.equal(b.used, 0);
  assert.throws(() => {
    using _l = b.tryAcquire()!;
    throw new Error('inside');
  }, /inside/);
  assert.equal(b.used, 0);
});

test('keyed budget: per-key and total limits counted under their own names; empty keys are forgotten', async () => {
  const reg = new Registry();
  const budgets = new Budgets({ registry: reg });
  const k = budgets.keyed({ name: 'dns_tcp', perKey: 2, total: 3, unit: 'connections', keyName: 'source' });
  const a1 = k.tryAcquire('a')!;
  const a2 = k.tryAcquire('a')!;
  assert.equal(k.check('a'), 'per-key');
  assert.equal(k.tryAcquire('a'), undefined);
  assert.equal(budgets.refused('dns_tcp_per_source'), 1);
  const b1 = k.tryAcquire('b')!;
  assert.equal(k.check('c'), 'total');
  assert.equal(k.tryAcquire('c'), undefined);
  assert.equal(budgets.refused('dns_tcp'), 1);
  assert.equal(await metricValue(reg, 'edgemesh_budget_refusals_total', 'dns_tcp_per_source'), 1);
  assert.equal(await metricValue(reg, 'edgemesh_budget_refusals_total', 'dns_tcp'), 1);
  assert.equal(k.keys, 2);
  a1.release();
  a1.release();
  assert.equal(k.usedBy('a'), 1);
  a2.release();
  assert.equal(k.keys, 1, 'a key holding nothing is forgotten');
  assert.equal(k.used, 1);
  assert.ok(k.tryAcquire('c'));
  b1.release();
  assert.deepEqual(budgets.state().find((s) => s.name === 'dns_tcp'), { name: 'dns_tcp', unit: 'connections', max: 3, used: 1, refused: 2 });
});

test('keyed budget: resize counts against both the key and the total', () => {
  const budgets = new Budgets();
  const k = budgets.keyed({ name: 'bufs', perKey: 100, total: 150, unit: 'bytes', keyName: 'peer' });
  const a = k.tryAcquire('a', 10)!;
  assert.equal(a.resize(101), false);
  assert.equal(a.resize(100), true);
  const b = k.tryAcquire('b', 40)!;
  assert.equal(b.resize(60), false, 'total');
  assert.equal(k.used, 140);
  a.release();
  b.release();
  assert.equal(k.used, 0);
  assert.equal(k.keys, 0);
});

test('refusal log: one line per budget per interval, carrying the count', () => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
  try {
    const { log, lines } = recordingLogger();
    const r = new RefusalLog(log);
    r.note('a', { max: 1 });
    assert.equal(lines.length, 1, 'the first refusal is logged at once');
    assert.equal(lines[0].refused, 1);
    for (let i = 0; i < 500; i++) r.note('a', { max: 1 });
    r.note('b');
    assert.equal(lines.length, 2, 'another budget has its own line');
    mock.timers.tick(REFUSAL_LOG_INTERVAL_MS - 1);
    assert.equal(lines.length, 2);
    mock.timers.tick(1);
    assert.equal(lines.length, 3, 'the flood is summed into one line at the end of the interval');
    assert.equal(lines[2].budget, 'a');
    assert.equal(lines[2].refused, 500);
    mock.timers.tick(REFUSAL_LOG_INTERVAL_MS * 3);
    assert.equal(lines.length, 3, 'nothing pending, nothing logged');
    r.note('a');
    assert.equal(lines.length, 4, 'after a quiet interval the next refusal is logged at once');
    r.note('a');
    r.close();
    assert.equal(lines.length, 5, 'close flushes what is pending');
    assert.equal(lines[4].refused, 1);
  } finally {
    mock.timers.reset();
  }
});
