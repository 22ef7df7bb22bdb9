import { test } from 'node:test';
import assert from 'node:assert/strict';
import { drainStep, MIN_RECONNECT_WINDOW_MS, RECONNECTS_PER_SEC, reconnectWindowMs, runDrain, type DrainState } from './drain.ts';

const cfg = { unreadyMs: 5_000, drainMs: 30_000 };

test('drain phases: serving until asked, unready for unreadyMs, draining until the agents left or the bound passed', () => {
  let s: DrainState = { phase: 'serving', since: 0 };
  let r = drainStep(s, { now: 100, stop: false, agents: 3 }, cfg);
  assert.deepEqual(r, { state: s, actions: [] }, 'nothing happens before the signal');
  r = drainStep(s, { now: 100, stop: true, agents: 3 }, cfg);
  assert.deepEqual(r.actions, ['unready']);
  s = r.state;
  assert.deepEqual(drainStep(s, { now: 5_099, stop: true, agents: 3 }, cfg).actions, [], 'readiness is false first, for unreadyMs');
  r = drainStep(s, { now: 5_100, stop: true, agents: 3 }, cfg);
  assert.deepEqual(r.actions, ['drain']);
  s = r.state;
  assert.equal(s.phase, 'draining');
  assert.deepEqual(drainStep(s, { now: 20_000, stop: true, agents: 1 }, cfg).actions, [], 'an agent still on it: wait');
  assert.deepEqual(drainStep(s, { now: 20_000, stop: true, agents: 0 }, cfg).actions, ['close'], 'all moved: close at once');
  assert.deepEqual(drainStep(s, { now: 35_100, stop: true, agents: 7 }, cfg), { state: { phase: 'done', since: 35_100 }, actions: ['close'] }, 'the bound passed: close with agents left');
});

test('a server with no agents drains at once; zero delays go straight through', () => {
  assert.deepEqual(drainStep({ phase: 'serving', since: 0 }, { now: 1, stop: true, agents: 0 }, cfg).actions, ['unready', 'drain', 'close']);
  const r = drainStep({ phase: 'serving', since: 0 }, { now: 1, stop: true, agents: 4 }, { unreadyMs: 0, drainMs: 0 });
  assert.deepEqual(r.actions, ['unready', 'drain', 'close']);
  assert.equal(drainStep({ phase: 'done', since: 0 }, { now: 1e9, stop: true, agents: 4 }, cfg).actions.length, 0, 'done stays done');
});

test('reconnect window: spread at RECONNECTS_PER_SEC, at least the minimum, at most half the drain bound', () => {
  assert.equal(reconnectWindowMs(0, 30_000), MIN_RECONNECT_WINDOW_MS);
  assert.equal(reconnectWindowMs(10, 30_000), MIN_RECONNECT_WINDOW_MS);
  assert.equal(reconnectWindowMs(5 * RECONNECTS_PER_SEC, 30_000), 5_000);
  assert.equal(reconnectWindowMs(20_000, 30_000), 15_000, 'capped at half the bound');
  assert.equal(reconnectWindowMs(20_000, 1_000), 500);
  assert.equal(reconnectWindowMs(20_000, 0), 0);
});

test('runDrain drives a target through unready, drain and done (fake clock)', async () => {
  let now = 0;
  let agents = 2;
  const seen: string[] = [];
  const done = runDrain({
    setUnready: () => seen.push('unready'),
    drain: (w) => { seen.push(`drain ${w}`); agents = 0; },
    agents: () => agents,
  }, { unreadyMs: 0, drainMs: 10_000 }, () => now);
  now = 50;
  const r = await done;
  assert.deepEqual(seen, ['unready', 'drain 1000']);
  assert.equal(r.left, 0);
});
