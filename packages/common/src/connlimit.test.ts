import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Budgets } from './budget.ts';
import { ConnLimiter, pickEviction, type SlotView } from './connlimit.ts';
import { FdPressure } from './fds.ts';

const slot = (key: string, lastActive: number, extra: Partial<SlotView> = {}): SlotView => ({ key, lastActive, busy: 0, partialSince: undefined, ...extra });

test('pickEviction: oldest idle first, then the longest-dribbling partial message; never busy or too young', () => {
  const now = 10_000;
  const idleOld = slot('a', 1000);
  const idleNew = slot('b', 5000);
  const partialOld = slot('c', 0, { partialSince: 2000 });
  const busy = slot('d', 0, { busy: 1 });
  assert.equal(pickEviction([idleNew, partialOld, idleOld, busy], now, 100), idleOld);
  assert.equal(pickEviction([partialOld, busy, slot('e', 0, { partialSince: 9000 })], now, 100), partialOld);
  assert.equal(pickEviction([busy], now, 100), undefined);
  assert.equal(pickEviction([slot('f', 9950), slot('g', 0, { partialSince: 9990 })], now, 100), undefined, 'too young to evict');
  assert.equal(pickEviction([], now, 0), undefined);
});

function limiter(perSource: number, total: number, now: { t: number }, fds?: FdPressure, budgets = new Budgets()) {
  const lim = new ConnLimiter({ budgets, name: 'conns', perSource, total, minEvictAgeMs: 100, now: () => now.t, fds });
  return { budgets, lim };
}

test('conn limiter: per-source limit evicts that source\'s oldest idle connection, else refuses', () => {
  const now = { t: 0 };
  const { budgets, lim } = limiter(2, 10, now);
  const evicted: string[] = [];
  const a1 = lim.open('a', () => evicted.push('a1'))!;
  now.t = 10;
  const a2 = lim.open('a', () => evicted.push('a2'))!;
  assert.ok(a1 && a2);
  now.t = 20;
  assert.equal(lim.open('a', () => {}), undefined, 'both too young to evict: refused');
  assert.equal(budgets.refused('conns_per_source'), 1);
  now.t = 500;
  a2.begin(); // a2 busy (waiting for an upstream): never evicted
  const a3 = lim.open('a', () => evicted.push('a3'));
  assert.ok(a3);
  assert.deepEqual(evicted, ['a1']);
  assert.equal(budgets.evictedCount('conns'), 1);
  assert.equal(lim.size, 2);
  // The evicted socket's 'close' arrives later: closing twice gives back nothing more.
  a1.close();
  assert.equal(lim.size, 2);
  a2.end(600);
  a2.close();
  a3!.close();
  assert.equal(lim.size, 0);
  assert.ok(lim.open('a', () => {}) && lim.open('a', () => {}), 'all slots back');
});

test('conn limiter: total limit evicts the oldest idle anywhere, then the oldest dribbler; refuses when none may go', () => {
  const now = { t: 0 };
  const { budgets, lim } = limiter(10, 3, now);
  const evicted: string[] = [];
  const s1 = lim.open('x', () => evicted.push('s1'))!;
  const s2 = lim.open('y', () => evicted.push('s2'))!;
  const s3 = lim.open('z', () => evicted.push('s3'))!;
  s1.partial(0);
  s2.partial(50);
  s3.begin();
  now.t = 120;
  assert.ok(lim.open('w', () => evicted.push('s4')), 'evicts the oldest dribbler');
  assert.deepEqual(evicted, ['s1']);
  now.t = 130;
  assert.equal(lim.open('v', () => {}), undefined, 's2 dribbling 80 ms only, s3 busy, s4 new: refused');
  assert.equal(budgets.refused('conns'), 1);
  now.t = 400;
  const s5 = lim.open('v', () => evicted.push('s5'));
  assert.ok(s5);
  assert.deepEqual(evicted, ['s1', 's4'], 'the idle newcomer (idle since 120) goes before the dribbler');
  assert.deepEqual(budgets.state(), [{ name: 'conns', unit: 'connections', max: 3, used: 3, refused: 1 }]);
});

test('conn limiter: descriptor pressure evicts before refusing, and counts fd_reserve refusals', () => {
  const now = { t: 0 };
  const budgets = new Budgets();
  const fds = new FdPressure({ limitsPath: '/nonexistent', budgets });
  const { lim } = limiter(10, 10, now, fds, budgets);
  const evicted: string[] = [];
  const a = lim.open('a', () => evicted.push('a'))!;
  assert.ok(a);
  fds.noteExhausted();
  assert.equal(lim.open('b', () => {}), undefined, 'a too young: refused');
  assert.equal(budgets.refused('fd_reserve'), 1);
  now.t = 1000;
  assert.ok(lim.open('b', () => {}), 'evicts a to make room');
  assert.deepEqual(evicted, ['a']);
});
