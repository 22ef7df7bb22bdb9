import { test } from 'node:test';
import assert from 'node:assert/strict';
import { drainReconnectDelayMs, noteDrained, orderAddresses } from './serverpick.ts';
import { DRAIN_RECONNECT_MAX_MS, DRAINED_AVOID_MS } from './timers.ts';

const a = (address: string) => ({ address, family: 4 });

test('a drained server\'s IP is tried last among the name\'s addresses, until its avoidance ends', () => {
  const avoid = new Map<string, number>();
  const addrs = [a('10.0.0.1'), a('10.0.0.2'), a('10.0.0.3')];
  assert.deepEqual(orderAddresses(addrs, avoid, 0), addrs, 'nothing drained: DNS order');
  noteDrained(avoid, '10.0.0.1', 1_000);
  assert.deepEqual(orderAddresses(addrs, avoid, 2_000).map((x) => x.address), ['10.0.0.2', '10.0.0.3', '10.0.0.1']);
  assert.deepEqual(orderAddresses([a('10.0.0.1')], avoid, 2_000).map((x) => x.address), ['10.0.0.1'], 'the only address is still tried');
  assert.deepEqual(orderAddresses(addrs, avoid, 1_000 + DRAINED_AVOID_MS), addrs, 'avoidance ends');
  noteDrained(avoid, '10.0.0.2', 2_000 + DRAINED_AVOID_MS);
  assert.deepEqual([...avoid.keys()], ['10.0.0.2'], 'expired entries are forgotten');
  noteDrained(avoid, '', 0);
  assert.equal(avoid.size, 1, 'an unknown remote records nothing');
});

test('reconnect delay after DRAIN: uniform in the window, the window clamped', () => {
  assert.equal(drainReconnectDelayMs(2_000, 0), 0);
  assert.equal(drainReconnectDelayMs(2_000, 0.5), 1_000);
  assert.equal(drainReconnectDelayMs(2_000, 0.9999), 1_999);
  assert.equal(drainReconnectDelayMs(60_000, 0.9999), DRAIN_RECONNECT_MAX_MS - 1, 'a long hint is clamped');
  assert.equal(drainReconnectDelayMs(0, 0.7), 0);
  assert.equal(drainReconnectDelayMs(-5, 0.7), 0);
  assert.equal(drainReconnectDelayMs(1_000, 7), 1_000, 'a bad random value stays in the window');
});
