import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Registry } from 'prom-client';
import { Budgets } from '@edgemesh/common/budget';
import { serverSchema } from '@edgemesh/common/config';
import { B, DEFAULT_LIMITS, oldestPartial, PartialFrameAccount, partialPast, RelayStreamBudgets, unansweredPast, type ServerLimits } from './limits.ts';

const small: ServerLimits = { ...DEFAULT_LIMITS, streamsPerPair: 2, streamsPerTarget: 3, streamsTotal: 4, pendingOpensPerOpener: 2 };

function mk(l: ServerLimits = small) {
  const budgets = new Budgets({ registry: new Registry(), metricPrefix: 'edgemesh_server_' });
  return { budgets, rb: new RelayStreamBudgets(budgets, l) };
}

test('config defaults are the named constants', () => {
  const c = serverSchema.parse({}).limits;
  assert.deepEqual({
    streamsPerPair: c.relayStreamsPerPair, streamsPerTarget: c.relayStreamsPerTarget, streamsTotal: c.relayStreams, pendingOpensPerOpener: c.pendingOpensPerNode,
    unauthPerSource: c.unauthConnectionsPerSource, unauthTotal: c.unauthConnections, partialFrameBytes: c.partialFrameBytes,
  }, DEFAULT_LIMITS);
});

test('relay streams: per pair, then per target, then in total; each refusal counted under its own name, nothing leaked', () => {
  const { budgets, rb } = mk();
  const a1 = rb.admit('a', 'v')!;
  a1.answered();
  const a2 = rb.admit('a', 'v')!;
  a2.answered();
  assert.equal(rb.admit('a', 'v'), undefined, 'third a→v over the pair limit');
  assert.equal(budgets.refused(B.pair), 1);
  const b1 = rb.admit('b', 'v')!;
  assert.equal(rb.admit('c', 'v'), undefined, 'fourth stream to v over the target limit');
  assert.equal(budgets.refused(B.perTarget), 1);
  const x = rb.admit('c', 'w')!;
  assert.equal(rb.admit('d', 'w'), undefined, 'fifth stream over the total');
  assert.equal(budgets.refused(B.streams), 1);
  // A refusal by a later budget gave back what the earlier ones had taken.
  assert.equal(rb.pending.usedBy('c'), 1, 'c holds only its admitted stream');
  assert.equal(rb.pending.usedBy('d'), 0);
  assert.equal(rb.target.usedBy('w'), 1);
  for (const s of [a1, a2, b1, x]) s.release();
  assert.equal(rb.total.used, 0);
  assert.equal(rb.target.used, 0);
  assert.equal(rb.pending.used, 0);
  assert.equal(rb.total.keys + rb.target.keys + rb.pending.keys, 0, 'keys forgotten when nothing is held');
});

test('unanswered opens per opener: answered ones make room; release is once only on every path', () => {
  const { budgets, rb } = mk({ ...small, streamsPerPair: 10, streamsPerTarget: 10, streamsTotal: 10 });
  const s1 = rb.admit('a', 'v')!;
  const s2 = rb.admit('a', 'w')!;
  assert.equal(rb.admit('a', 'x'), undefined);
  assert.equal(budgets.refused(B.perOpener), 1);
  assert.equal(rb.pending.usedBy('b'), 0, 'another opener is not affected');
  s1.answered();
  assert.equal(s1.pending, false);
  s1.answered(); // twice: no double give-back
  assert.equal(rb.pending.usedBy('a'), 1);
  const s3 = rb.admit('a', 'x')!;
  s2.release(); // pending stream gone (peer gone / reset): pending and the streams given back
  s2.release();
  assert.equal(rb.pending.usedBy('a'), 1);
  assert.equal(rb.total.used, 2);
  s3.release();
  s1.release();
  assert.equal(rb.pending.used + rb.total.used + rb.target.used, 0);
});

test('deadlines and eviction choice are pure functions', () => {
  const streams = [{ id: 1, openedAt: 0, pending: true }, { id: 2, openedAt: 0, pending: false }, { id: 3, openedAt: 9000, pending: true }];
  assert.deepEqual(unansweredPast(streams, 10_000, 10_000).map((s) => s.id), [1]);
  const conns = [{ id: 1, pending: 10, partialSince: 5 }, { id: 2, pending: 0, partialSince: undefined }, { id: 3, pending: 10, partialSince: 1 }, { id: 4, pending: 10, partialSince: undefined }];
  assert.deepEqual(partialPast(conns, 11, 10).map((c) => c.id), [3]);
  assert.equal(oldestPartial(conns, conns[0])?.id, 3);
  assert.equal(oldestPartial(conns, conns[2])?.id, 1, 'never the connection that asks');
  assert.equal(oldestPartial([conns[1], conns[3]], conns[0]), undefined, 'a paused sender (no partialSince) is not dropped');
});

test('partial frame bytes: resize with the decoder, make room by dropping others, released on close', () => {
  const budgets = new Budgets();
  const budget = budgets.budget({ name: B.frameBytes, max: 100, unit: 'bytes' });
  const a = new PartialFrameAccount(budget);
  const b = new PartialFrameAccount(budget);
  assert.equal(a.update(60, 0, 1, () => false), true);
  assert.equal(a.partialSince, 1);
  assert.equal(a.update(70, 0, 2, () => false), true, 'still the same frame');
  assert.equal(a.partialSince, 1, 'the deadline runs from its first byte');
  assert.equal(b.update(50, 0, 3, () => false), false, 'does not fit, nobody to drop');
  assert.equal(budgets.refused(B.frameBytes), 1);
  let dropped = 0;
  assert.equal(b.update(50, 0, 3, () => { dropped++; a.release(); return true; }), true, 'fits after dropping a');
  assert.equal(dropped, 1);
  assert.equal(budget.used, 50);
  assert.equal(b.update(20, 1, 4, () => false), true, 'a frame completed, the next one started');
  assert.equal(b.partialSince, 4);
  b.paused();
  assert.equal(b.partialSince, undefined, 'no deadline while we hold its sender');
  b.resumed(9);
  assert.equal(b.partialSince, 9);
  assert.equal(b.update(0, 1, 10, () => false), true);
  assert.equal(b.partialSince, undefined);
  assert.equal(budget.used, 0);
  b.update(30, 0, 11, () => false);
  b.release();
  b.release();
  a.release();
  assert.equal(budget.used, 0, 'close gives everything back, once');
});
