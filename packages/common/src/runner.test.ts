import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BoundedRunner, type Clock, type RunReason } from './runner.ts';

/** A clock whose time moves only when the test says; timers fire in order as it passes them. */
class ManualClock implements Clock {
  t = 0;
  private timers = new Map<number, { at: number; fn: () => void }>();
  private seq = 0;
  now(): number { return this.t; }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + ms, fn });
    return id;
  }
  clearTimeout(h: unknown): void { this.timers.delete(h as number); }
  /** Moves time forward by `ms`, firing due timers in order and letting promise callbacks run between them. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      await flush();
      const next = [...this.timers.entries()].filter(([, v]) => v.at <= end).sort((a, b) => a[1].at - b[1].at || a[0] - b[0])[0];
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = Math.max(this.t, next[1].at);
      next[1].fn();
    }
    this.t = end;
    await flush();
  }
}

const flush = async () => { for (let i = 0; i < 20; i++) await Promise.resolve(); };

/** A sync whose runs the test finishes by hand. */
function harness(opts: { minIntervalMs?: number; maxIntervalMs?: number; retryMinMs?: number; retryMaxMs?: number } = {}) {
  const clock = new ManualClock();
  const runs: { at: number; reason: RunReason; finish: (err?: Error) => void }[] = [];
  const errors: number[] = [];
  const r = new BoundedRunner({
    ...opts, clock, random: () => 1, // no jitter: backoff is exactly min, 2*min, ...
    run: (reason) => new Promise<void>((res, rej) => { runs.push({ at: clock.t, reason, finish: (e) => (e ? rej(e) : res()) }); }),
    onError: (_e, ms) => errors.push(ms),
  });
  return { clock, runs, errors, r };
}

test('run() starts a sync at once; requests during it coalesce into exactly one more run afterwards', async () => {
  const { clock, runs, r } = harness();
  const g1 = r.run();
  await clock.advance(0);
  assert.equal(runs.length, 1);
  const g2 = r.run();
  const g3 = r.run();
  const g4 = r.run();
  await clock.advance(10);
  assert.equal(runs.length, 1, 'one sync at a time');
  runs[0].finish();
  await clock.advance(0);
  assert.equal(r.completed, g1, 'the first run covered only what was asked before it started');
  assert.equal(runs.length, 2, 'one run for the three requests made meanwhile');
  runs[1].finish();
  await clock.advance(0);
  assert.equal(r.completed, g4);
  assert.ok(g2 < g3 && g3 < g4);
  await clock.advance(1000);
  assert.equal(runs.length, 2, 'nothing more without requests');
  assert.equal(r.busy, false);
});

test('minInterval spaces run starts; the first request after a quiet period runs at once', async () => {
  const { clock, runs, r } = harness({ minIntervalMs: 100 });
  r.run();
  await clock.advance(0);
  runs[0].finish();
  await clock.advance(10);
  r.run();
  await clock.advance(50);
  assert.equal(runs.length, 1, 'held back until 100 ms after the last start');
  await clock.advance(40);
  assert.equal(runs.length, 2);
  assert.equal(runs[1].at, 100);
  runs[1].finish();
  await clock.advance(500);
  r.run();
  await clock.advance(0);
  assert.equal(runs.length, 3, 'quiet for longer than minInterval: at once');
  assert.equal(runs[2].at, 600);
});

test('run(delay) waits that long; an earlier scheduled run serves later requests', async () => {
  const { clock, runs, r } = harness();
  r.run(150);
  await clock.advance(100);
  const g = r.run(150); // would be at 250, but the run at 150 starts after it and sees its state
  await clock.advance(50);
  assert.equal(runs.length, 1);
  assert.equal(runs[0].at, 150);
  runs[0].finish();
  await clock.advance(500);
  assert.equal(runs.length, 1);
  assert.ok(r.completed >= g);
});

test('maxInterval runs periodically without requests, counted from the last start', async () => {
  const { clock, runs, r } = harness({ maxIntervalMs: 1000 });
  await clock.advance(999);
  assert.equal(runs.length, 0);
  await clock.advance(1);
  assert.equal(runs.length, 1);
  assert.equal(runs[0].reason, 'periodic');
  runs[0].finish();
  await clock.advance(500);
  r.run();
  await clock.advance(0);
  assert.equal(runs[1].reason, 'request');
  runs[1].finish();
  await clock.advance(999);
  assert.equal(runs.length, 2, 'the request moved the next periodic run');
  await clock.advance(1);
  assert.equal(runs.length, 3);
  assert.equal(runs[2].at, 2500);
});

test('a failed run is retried with a doubling backoff that a success resets; completed stays behind until then', async () => {
  const { clock, runs, errors, r } = harness({ retryMinMs: 100, retryMaxMs: 350 });
  const g = r.run();
  await clock.advance(0);
  runs[0].finish(new Error('boom'));
  await clock.advance(0);
  assert.equal(r.failing, true);
  assert.equal(r.completed, 0);
  assert.deepEqual(errors, [100]);
  await clock.advance(100);
  assert.equal(runs.length, 2);
  assert.equal(runs[1].reason, 'retry');
  runs[1].finish(new Error('boom'));
  await clock.advance(200);
  assert.equal(runs.length, 3);
  runs[2].finish(new Error('boom'));
  await clock.advance(0);
  assert.deepEqual(errors, [100, 200, 350], 'capped at retryMaxMs');
  await clock.advance(350);
  runs[3].finish();
  await clock.advance(0);
  assert.equal(r.failing, false);
  assert.equal(r.completed, g);
  r.run();
  await clock.advance(0);
  runs[4].finish(new Error('again'));
  await clock.advance(0);
  assert.deepEqual(errors, [100, 200, 350, 100], 'reset by the success');
});

test('whenAttempted resolves after a failed run too (false), whenCompleted only after a success', async () => {
  const { clock, runs, r } = harness({ retryMinMs: 100 });
  const g = r.run();
  const seen: string[] = [];
  void r.whenAttempted(g).then((ok) => seen.push(`attempted ${ok}`));
  void r.whenCompleted(g).then((ok) => seen.push(`completed ${ok}`));
  await clock.advance(0);
  runs[0].finish(new Error('boom'));
  await clock.advance(0);
  assert.deepEqual(seen, ['attempted false']);
  await clock.advance(100);
  runs[1].finish();
  await clock.advance(0);
  assert.deepEqual(seen, ['attempted false', 'completed true']);
  assert.equal(await r.whenAttempted(g), true);
});

test('a request during a backoff runs at once instead of waiting for the retry', async () => {
  const { clock, runs, r } = harness({ retryMinMs: 10_000 });
  r.run();
  await clock.advance(0);
  runs[0].finish(new Error('boom'));
  await clock.advance(50);
  r.run();
  await clock.advance(0);
  assert.equal(runs.length, 2);
  assert.equal(runs[1].reason, 'request');
});

test('whenCompleted resolves for the generation asked, and false once stopped; stop waits for the run under way', async () => {
  const { clock, runs, r } = harness();
  const g1 = r.run();
  const seen: string[] = [];
  void r.whenCompleted(g1).then((ok) => seen.push(`g1 ${ok}`));
  await clock.advance(0);
  const g2 = r.run();
  void r.whenCompleted(g2).then((ok) => seen.push(`g2 ${ok}`));
  runs[0].finish();
  await clock.advance(0);
  assert.deepEqual(seen, ['g1 true']);
  let stopped = false;
  const stopping = r.stop().then(() => { stopped = true; });
  await clock.advance(0);
  assert.deepEqual(seen, ['g1 true', 'g2 false']);
  assert.equal(stopped, false, 'the second run is still under way');
  runs[1].finish();
  await stopping;
  r.run();
  await clock.advance(10_000);
  assert.equal(runs.length, 2, 'no runs after stop');
});
