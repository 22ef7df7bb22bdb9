import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FailureLimiter, fullBucket, sourceKey, take } from './ratelimit.ts';

test('a token bucket allows its burst, then its rate', () => {
  const p = { capacity: 3, ratePerSec: 0.5 };
  const s = fullBucket(p, 0);
  assert.deepEqual([take(s, p, 0), take(s, p, 0), take(s, p, 0), take(s, p, 0)], [true, true, true, false]);
  assert.equal(take(s, p, 1000), false, 'half a token after 1 s');
  assert.equal(take(s, p, 2000), true, 'one token after 2 s');
  assert.equal(take(s, p, 100_000), true);
  assert.equal(s.tokens <= p.capacity, true, 'never more than the capacity');
  assert.equal(take(s, p, 50_000), true, 'a clock going back adds nothing and breaks nothing');
});

test('sourceKey: v4 as is, v6 by /64, mapped v4 unwrapped', () => {
  assert.equal(sourceKey('203.0.113.7'), '203.0.113.7');
  assert.equal(sourceKey('::ffff:203.0.113.7'), '203.0.113.7');
  assert.equal(sourceKey('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64');
  assert.equal(sourceKey('2001:db8:1:2:bbbb:cccc:dddd:eeee'), '2001:db8:1:2::/64');
  assert.equal(sourceKey('2001:db8::1'), '2001:db8:0:0::/64');
  assert.equal(sourceKey('::1'), '0:0:0:0::/64');
});

test('the failure limiter stops a source after its burst, leaves others alone, and reports in aggregate', () => {
  const lim = new FailureLimiter({ perSource: { capacity: 5, ratePerSec: 0.1 }, global: { capacity: 100, ratePerSec: 10 }, maxSources: 1000 }, 0);
  let looked = 0;
  for (let i = 0; i < 50; i++) {
    if (lim.allow('198.51.100.1', 0)) {
      looked++;
      lim.fail('198.51.100.1', 'token-invalid', 0);
    }
  }
  assert.equal(looked, 5, 'a guesser gets five answers, then none');
  assert.equal(lim.allow('198.51.100.2', 0), true, 'another source is not affected');
  assert.equal(lim.allow('198.51.100.1', 10_000), true, 'one more after 10 s');
  const s = lim.takeSummary()!;
  assert.equal(s.failures, 5);
  assert.equal(s.limited, 45);
  assert.equal(s.sources, 1);
  assert.deepEqual(s.reasons, { 'token-invalid': 5 });
  assert.equal(lim.takeSummary(), undefined, 'nothing new: nothing to log');
});

test('the global budget caps many sources; the source table stays bounded', () => {
  const lim = new FailureLimiter({ perSource: { capacity: 5, ratePerSec: 0.1 }, global: { capacity: 20, ratePerSec: 1 }, maxSources: 100 }, 0);
  let looked = 0;
  for (let i = 0; i < 1000; i++) {
    const src = `10.0.${i >> 8}.${i & 255}`;
    if (lim.allow(src, 0)) {
      looked++;
      lim.fail(src, 'token-invalid', 0);
    }
  }
  assert.equal(looked, 20);
  assert.ok(lim.trackedSources <= 100);
});
