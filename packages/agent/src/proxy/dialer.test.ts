import assert from 'node:assert/strict';
import { test } from 'node:test';
import { dialDeadline } from './dialer.ts';

const until = async (cond: () => boolean, what: string) => {
  const end = performance.now() + 10_000;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
};

test('dial deadline: expires and aborts its signal, read before or after it passed; remaining() counts down to 0', async () => {
  const early = dialDeadline(30);
  const seen = early.signal; // read first, aborted later by the queue's timer
  assert.equal(seen.aborted, false);
  assert.ok(early.remaining() > 0 && early.remaining() <= 30);
  const late = dialDeadline(30); // never read until it has passed
  await until(() => seen.aborted, 'the first deadline to fire');
  assert.equal((seen.reason as DOMException).name, 'TimeoutError');
  await until(() => late.remaining() === 0, 'the second deadline to pass');
  assert.equal(late.signal.aborted, true);
  assert.equal(dialDeadline(0).signal.aborted, true);
});

test('dial deadline: a released deadline never fires, and does not hold back the ones after it', async () => {
  const a = dialDeadline(20);
  const sa = a.signal;
  let fired = 0;
  sa.addEventListener('abort', () => fired++);
  a.release();
  const b = dialDeadline(20);
  const sb = b.signal;
  await until(() => sb.aborted, 'the unreleased deadline behind a released one');
  assert.equal(fired, 0);
  assert.equal(sa.aborted, false);
});

test('dial deadline: ends when the caller gives up; a release unhooks it from the caller', async () => {
  const caller = new AbortController();
  const d = dialDeadline(60_000, caller.signal);
  const s = d.signal;
  caller.abort(new Error('client went away'));
  assert.equal(s.aborted, true);
  assert.equal(d.remaining(), 0);
  const caller2 = new AbortController();
  const d2 = dialDeadline(60_000, caller2.signal);
  const s2 = d2.signal;
  d2.release();
  caller2.abort();
  assert.equal(s2.aborted, false);
  // Already given up before the signal is read.
  const gone = new AbortController();
  gone.abort();
  assert.equal(dialDeadline(60_000, gone.signal).signal.aborted, true);
});

test('dial deadline: onAbort fires once when it passes, never after release or unhook; with a caller it follows the caller', async () => {
  let fired = 0;
  const d = dialDeadline(20);
  d.onAbort(() => fired++);
  let unhooked = 0;
  const u = dialDeadline(20);
  u.onAbort(() => unhooked++)();
  let released = 0;
  const r = dialDeadline(20);
  r.onAbort(() => released++);
  r.release();
  await until(() => fired === 1, 'the deadline to fire its hook');
  await until(() => u.remaining() === 0 && r.remaining() === 0, 'the other deadlines to pass');
  await new Promise((res) => setTimeout(res, 30));
  assert.equal(fired, 1);
  assert.equal(unhooked, 0);
  assert.equal(released, 0);
  // A second hook on one deadline goes through its signal.
  let a = 0;
  let b = 0;
  const two = dialDeadline(10);
  two.onAbort(() => a++);
  two.onAbort(() => b++);
  await until(() => a === 1 && b === 1, 'both hooks');
  // With a caller: its abort fires the hook.
  const caller = new AbortController();
  const c = dialDeadline(60_000, caller.signal);
  let byCaller = 0;
  c.onAbort(() => byCaller++);
  caller.abort();
  assert.equal(byCaller, 1);
  c.release();
});
