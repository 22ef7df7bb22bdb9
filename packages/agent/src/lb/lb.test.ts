import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { DestinationRule, Service } from '../cluster/types.ts';
import { Balancer } from './balancer.ts';
import { seededRng } from './hash.ts';
import { maglevLookup, maglevTable } from './maglev.ts';
import { OutlierDetector } from './outlier.ts';
import { expandHost, policyFor, ruleFor } from './policy.ts';
import { AffinityTable } from './affinity.ts';

const keys = ['10.0.0.1:80', '10.0.0.2:80', '10.0.0.3:80', '10.0.0.4:80', '10.0.0.5:80'];
const clientIPs = (n: number) => Array.from({ length: n }, (_, i) => `192.168.${(i >> 8) & 255}.${i & 255}`);

function counts(b: Balancer, n: number, ctx: (i: number) => { clientIP: string; headerValue?: string }): Map<string, number> {
  const c = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const k = b.pick(keys, ctx(i));
    c.set(k, (c.get(k) ?? 0) + 1);
  }
  return c;
}

/** Chi-square statistic against a uniform distribution over `keys`. */
function chi2(c: Map<string, number>, n: number): number {
  const exp = n / keys.length;
  return keys.reduce((s, k) => s + ((c.get(k) ?? 0) - exp) ** 2 / exp, 0);
}
// 4 degrees of freedom: P(chi2 > 18.47) = 0.001.
const CHI2_4DF_P001 = 18.47;

test('round robin cycles exactly over the candidates', () => {
  const b = new Balancer({ policy: { kind: 'round_robin' } });
  // A cycle, not just equal counts: every window of keys.length consecutive picks holds each candidate once, in the
  // same order each time round.
  const seq = Array.from({ length: 1000 }, () => b.pick(keys, { clientIP: '1.1.1.1' }));
  const cycle = seq.slice(0, keys.length);
  assert.deepEqual([...cycle].sort(), [...keys].sort(), `first round: ${cycle.join(' ')}`);
  seq.forEach((k, i) => assert.equal(k, cycle[i % keys.length], `pick ${i} breaks the cycle`));
  assert.deepEqual([0, 1, 2].map(() => b.pick(['a', 'b'], { clientIP: 'x' })), ['a', 'b', 'a']);
});

test('random is uniform within statistical bounds (seeded)', () => {
  for (const seed of [1, 2, 3]) {
    const b = new Balancer({ policy: { kind: 'random' }, rng: seededRng(seed) });
    const c = counts(b, 20_000, () => ({ clientIP: '1.1.1.1' }));
    assert.ok(chi2(c, 20_000) < CHI2_4DF_P001, `seed ${seed}: ${JSON.stringify([...c])}`);
  }
});

test('least request (P2C) avoids the busiest endpoint and balances when idle', () => {
  const b = new Balancer({ policy: { kind: 'least_request' }, rng: seededRng(7) });
  // Idle: uniform.
  const c = counts(b, 20_000, () => ({ clientIP: '1.1.1.1' }));
  assert.ok(chi2(c, 20_000) < CHI2_4DF_P001, JSON.stringify([...c]));
  // One endpoint holds 100 active requests: P2C only picks it when both choices are it -> never (distinct choices).
  for (let i = 0; i < 100; i++) b.started(keys[0]);
  const c2 = counts(b, 5000, () => ({ clientIP: '1.1.1.1' }));
  assert.equal(c2.get(keys[0]) ?? 0, 0);
  // Requests that stay open spread evenly: the max-min spread of active counts stays small.
  const b3 = new Balancer({ policy: { kind: 'least_request' }, rng: seededRng(9) });
  for (let i = 0; i < 1000; i++) b3.started(b3.pick(keys, { clientIP: 'x' }));
  const act = keys.map((k) => b3.activeCount(k));
  assert.ok(Math.max(...act) - Math.min(...act) <= 6, JSON.stringify(act));
  for (let i = 0; i < 100; i++) b.ended(keys[0]);
  assert.equal(b.activeCount(keys[0]), 0);
});

test('maglev: balanced, sticky per client IP, minimal disruption when an endpoint leaves', () => {
  const t = maglevTable(keys);
  const share = new Map<number, number>();
  for (const v of t) share.set(v, (share.get(v) ?? 0) + 1);
  for (let i = 0; i < keys.length; i++) {
    const s = share.get(i)! / t.length;
    assert.ok(Math.abs(s - 0.2) < 0.02, `slot share of ${i}: ${s}`);
  }
  const b = new Balancer({ policy: { kind: 'maglev' } });
  const ips = clientIPs(4000);
  const before = ips.map((ip) => b.pick(keys, { clientIP: ip }));
  // Sticky: same IP -> same endpoint (the key is the IP only: a pick carries no client port).
  assert.deepEqual(ips.map((ip) => b.pick(keys, { clientIP: ip })), before);
  const c = new Map<string, number>();
  for (const k of before) c.set(k, (c.get(k) ?? 0) + 1);
  assert.ok(chi2(c, before.length) < 30, JSON.stringify([...c]));
  // Remove the third endpoint: clients on it move; of the others, only a small fraction moves.
  const gone = keys[2];
  const rest = keys.filter((k) => k !== gone);
  const after = ips.map((ip) => b.pick(rest, { clientIP: ip }));
  let moved = 0;
  let stayers = 0;
  for (let i = 0; i < ips.length; i++) {
    if (before[i] === gone) continue;
    stayers++;
    if (after[i] !== before[i]) moved++;
  }
  assert.ok(moved / stayers < 0.05, `moved ${moved}/${stayers}`);
  assert.ok(!after.includes(gone));
});

test('maglev on an HTTP header: same header value -> same endpoint; no header -> client IP', () => {
  const b = new Balancer({ policy: { kind: 'maglev', header: 'x-user' } });
  const users = Array.from({ length: 500 }, (_, i) => `user-${i}`);
  const first = users.map((u, i) => b.pick(keys, { clientIP: `10.9.0.${i % 250}`, headerValue: u }));
  const again = users.map((u, i) => b.pick(keys, { clientIP: `10.8.0.${(i * 7) % 250}`, headerValue: u }));
  assert.deepEqual(again, first);
  assert.ok(new Set(first).size === keys.length);
  // No header: the client IP is the key — for every client, not one that could match by chance (1 in 5).
  const ips = clientIPs(200);
  const noHeader = ips.map((ip) => b.pick(keys, { clientIP: ip }));
  assert.deepEqual(noHeader, ips.map(maglevLookupKey));
  assert.equal(new Set(noHeader).size, keys.length, 'clients without the header still spread over every endpoint');
});
function maglevLookupKey(k: string) {
  return keys[maglevLookup(maglevTable(keys), k)];
}

test('ClientIP affinity sticks until the timeout passes without a connection (injected clock)', () => {
  let now = 0;
  const b = new Balancer({ policy: { kind: 'round_robin' }, affinitySeconds: 10, now: () => now });
  const first = b.pick(keys, { clientIP: 'A' });
  now = 9_000;
  assert.equal(b.pick(keys, { clientIP: 'A' }), first);
  now = 18_000; // 9 s after the last use: still bound (the timeout restarts on use)
  assert.equal(b.pick(keys, { clientIP: 'A' }), first);
  const other = b.pick(keys, { clientIP: 'B' });
  assert.notEqual(other, first);
  now = 28_000; // 10 s after the last use: expired, round robin moves on
  assert.notEqual(b.pick(keys, { clientIP: 'A' }), first);
  // Bound endpoint gone from the candidates: re-pick and re-bind.
  const t = new AffinityTable(5, () => now);
  t.set('C', 'x');
  now += 4999;
  assert.equal(t.get('C'), 'x');
  now += 1;
  assert.equal(t.get('C'), undefined);
  const b2 = new Balancer({ policy: { kind: 'round_robin' }, affinitySeconds: 100, now: () => now });
  const k = b2.pick(keys, { clientIP: 'D' });
  const rest = keys.filter((x) => x !== k);
  const k2 = b2.pick(rest, { clientIP: 'D' });
  assert.ok(rest.includes(k2));
  // Re-bound to k2: it sticks from now on, even once k is a candidate again (plain round robin would move on each time).
  for (let i = 0; i < 2 * keys.length; i++) assert.equal(b2.pick(keys, { clientIP: 'D' }), k2, `pick ${i} after the re-bind`);
});

test('outlier ejection after N consecutive failures, for base x times, at most half, and return', () => {
  let now = 0;
  const o = new OutlierDetector({ consecutiveFailures: 3, baseEjectionMs: 1000, maxEjectionMs: 2500, now: () => now });
  assert.equal(o.recordFailure('a', 4), 0);
  assert.equal(o.recordFailure('a', 4), 0);
  o.recordSuccess('a'); // streak broken
  assert.equal(o.recordFailure('a', 4), 0);
  assert.equal(o.recordFailure('a', 4), 0);
  assert.equal(o.recordFailure('a', 4), 1000);
  assert.ok(o.isEjected('a'));
  // At most half of 4 endpoints: b can be ejected, c cannot.
  for (let i = 0; i < 3; i++) o.recordFailure('b', 4);
  assert.ok(o.isEjected('b'));
  for (let i = 0; i < 5; i++) assert.equal(o.recordFailure('c', 4), 0);
  assert.ok(!o.isEjected('c'));
  assert.equal(o.ejectedCount(), 2);
  now = 1000; // a and b return
  assert.ok(!o.isEjected('a'));
  assert.equal(o.ejectedCount(), 0);
  // Second ejection of a lasts 2 x base; the third is capped at max.
  for (let i = 0; i < 3; i++) o.recordFailure('a', 4);
  assert.ok(o.isEjected('a'));
  now = 2999;
  assert.ok(o.isEjected('a'));
  now = 3000;
  assert.ok(!o.isEjected('a'));
  let ms = 0;
  for (let i = 0; i < 3; i++) ms = o.recordFailure('a', 4);
  assert.equal(ms, 2500);
  // A single endpoint is never ejected (half of 1 is 0).
  const o1 = new OutlierDetector({ consecutiveFailures: 1, now: () => now });
  assert.equal(o1.recordFailure('x', 1), 0);
  o.retain(new Set(['b']));
  assert.ok(!o.isEjected('a'));
});

function svc(name: string, namespace: string): Service {
  return { key: `${namespace}/${name}`, name, namespace, type: 'ClusterIP', clusterIPs: ['10.0.0.1'], headless: false, ports: [], sessionAffinity: 'None', affinityTimeoutSeconds: 10800, internalTrafficPolicy: 'Cluster', labels: {}, annotations: {} };
}
const dr = (key: string, host: string, p: Partial<DestinationRule>): [string, DestinationRule] => [key, { key, namespace: key.split('/')[0], host, ...p }];

test('DestinationRule matched by host (short, namespaced, FQDN, wildcard), never by name', () => {
  assert.equal(expandHost('web', 'shop', 'cluster.local'), 'web.shop.svc.cluster.local');
  assert.equal(expandHost('web.shop', 'x', 'cluster.local'), 'web.shop.svc.cluster.local');
  assert.equal(expandHost('web.shop.svc', 'x', 'cluster.local'), 'web.shop.svc.cluster.local');
  const rules = new Map([
    dr('shop/web', 'other', { simple: 'RANDOM' }), // named like the Service but for another host
    dr('shop/by-host', 'web', { consistentHash: { httpHeaderName: 'X-User' } }),
    dr('istio-system/wild', '*.shop.svc.cluster.local', { simple: 'LEAST_REQUEST' }),
    dr('x/fqdn', 'api.shop.svc.cluster.local', { simple: 'RANDOM' }),
  ]);
  assert.deepEqual(policyFor(svc('web', 'shop'), rules, 'cluster.local'), { kind: 'maglev', header: 'x-user', rule: 'shop/by-host' });
  assert.deepEqual(policyFor(svc('api', 'shop'), rules, 'cluster.local'), { kind: 'random', rule: 'x/fqdn' });
  assert.deepEqual(policyFor(svc('cart', 'shop'), rules, 'cluster.local'), { kind: 'least_request', rule: 'istio-system/wild' });
  assert.deepEqual(policyFor(svc('web', 'other'), rules, 'cluster.local'), { kind: 'round_robin' });
  // `web` written in namespace a means web.a, not web.shop.
  assert.equal(ruleFor(svc('web', 'a'), new Map([dr('b/r', 'web', { simple: 'RANDOM' })]), 'cluster.local'), undefined);
  assert.deepEqual(policyFor(svc('web', 'a'), new Map([dr('a/r', 'web', { consistentHash: { useSourceIp: true } })]), 'cluster.local'), { kind: 'maglev', rule: 'a/r' });
});
