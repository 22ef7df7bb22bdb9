import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Registry } from 'prom-client';
import { silentLogger } from '@edgemesh/common/log';
import { MAX_REPORT_BYTES, type FleetReport } from '@edgemesh/common/fleet/report';
import { DOWN_GRACE_MS, FleetStore, REPORT_MIN_INTERVAL_MS, VIEW_CACHE_MS } from './store.ts';

function report(group: string, over: Partial<FleetReport> = {}): FleetReport {
  return { v: 1, version: '0.1.0', group, nat: { type: 'cone', mapped: null }, ready: true, notReady: [], peers: [], strictEmpty: [], omitted: { peers: 0, strictEmpty: 0 }, ...over };
}
const size = (r: unknown) => Buffer.byteLength(JSON.stringify(r));

function setup(limits?: ConstructorParameters<typeof FleetStore>[0]['limits']) {
  let now = 1_000_000;
  const connected = new Map<string, { since: number }>();
  const registry = new Registry();
  const store = new FleetStore({ registry, log: silentLogger, connected: () => connected, now: () => now, limits });
  const put = (node: string, r: unknown) => store.put(node, r, size(r));
  return { store, connected, registry, put, advance: (ms: number) => { now += ms; }, now: () => now };
}

test('keeps the latest valid report per agent; refuses invalid, too large and too frequent ones, counted by outcome', async () => {
  const { store, connected, registry, put, advance } = setup();
  connected.set('n1', { since: 0 });
  assert.equal(put('n1', report('g1')), 'ok');
  assert.equal(put('n1', report('g2')), 'rate_limited');
  advance(REPORT_MIN_INTERVAL_MS);
  assert.equal(put('n1', report('g2')), 'ok');
  assert.equal(put('n1', { ...report('g1'), v: 2 }), 'rate_limited', 'the rate limit applies before parsing');
  advance(REPORT_MIN_INTERVAL_MS);
  assert.equal(put('n1', { ...report('g1'), v: 2 }), 'invalid');
  assert.equal(put('n1', { ...report('g1'), peers: 'lots' }), 'invalid');
  assert.equal(store.put('n1', report('g1'), MAX_REPORT_BYTES + 1), 'too_large');
  assert.equal(put('n1', null), 'invalid');
  assert.equal(store.view().nodes[0].group, 'g2', 'the last good report stays');
  // Unknown keys (a newer agent) are dropped, not refused.
  advance(REPORT_MIN_INTERVAL_MS);
  assert.equal(put('n1', { ...report('g3'), future: { x: 1 } }), 'ok');
  advance(VIEW_CACHE_MS);
  assert.equal(store.view().nodes[0].group, 'g3');
  const text = await registry.metrics();
  assert.match(text, /edgemesh_server_fleet_reports_total\{outcome="ok"\} 3/);
  assert.match(text, /edgemesh_server_fleet_reports_total\{outcome="invalid"\} 3/);
  assert.match(text, /edgemesh_server_fleet_reports_total\{outcome="rate_limited"\} 2/);
  assert.match(text, /edgemesh_server_fleet_reports_total\{outcome="too_large"\} 1/);
  assert.match(text, /edgemesh_server_fleet_agents\{state="ready"\} 1/);
});

test('an agent that disconnects is marked down, then forgotten after the grace period; one that comes back is up', () => {
  const { store, connected, put, advance } = setup();
  connected.set('n1', { since: 0 });
  connected.set('n2', { since: 0 });
  put('n1', report('g1'));
  put('n2', report('g1'));
  connected.delete('n2');
  const e = () => new Map(store.entries().map((x) => [x.node, x]));
  assert.equal(e().get('n2')!.state, 'down');
  advance(DOWN_GRACE_MS);
  assert.equal(e().get('n2')!.state, 'down');
  connected.set('n2', { since: 0 });
  assert.equal(e().get('n2')!.state, 'up', 'back within the grace period');
  connected.delete('n2');
  store.sweep();
  advance(DOWN_GRACE_MS + 1);
  assert.equal(e().has('n2'), false, 'forgotten after the grace period');
  assert.equal(store.size, 1);
});

test('a connected agent without a report is listed (no-report); the view is cached for VIEW_CACHE_MS', () => {
  const { store, connected, put, advance, now } = setup();
  connected.set('old', { since: now() - 4000 });
  const v = store.view();
  assert.deepEqual(v.nodes.map((n) => [n.node, n.state, n.reportAgeSeconds]), [['old', 'no-report', 4]]);
  connected.set('n1', { since: 0 });
  put('n1', report('g1'));
  assert.equal(store.view(), v, 'cached');
  advance(VIEW_CACHE_MS);
  assert.equal(store.view().nodes.length, 2);
});

test('bounded: a new agent beyond the agent or byte limit is refused, unless a down agent can be forgotten (oldest first)', async () => {
  const one = size(report('g1'));
  const { store, connected, registry, put, advance } = setup({ agents: 3, bytes: one * 10 });
  for (const n of ['a', 'b', 'c', 'd']) connected.set(n, { since: 0 });
  assert.equal(put('a', report('g1')), 'ok');
  assert.equal(put('b', report('g1')), 'ok');
  assert.equal(put('c', report('g1')), 'ok');
  assert.equal(put('d', report('g1')), 'over_capacity');
  connected.delete('b');
  store.sweep();
  advance(10);
  connected.delete('a');
  store.sweep();
  assert.equal(put('d', report('g1')), 'ok', 'room made by forgetting a down agent');
  assert.deepEqual(store.entries().map((e) => e.node).sort(), ['a', 'c', 'd'], 'b was down longest');
  // Bytes: a bigger report from a known agent that would exceed the budget is refused while every agent is up.
  connected.set('a', { since: 0 });
  store.sweep();
  advance(REPORT_MIN_INTERVAL_MS);
  const big = report('g1', { peers: Array.from({ length: 40 }, (_, i) => ({ node: `peer-${i}`, group: 'g1', path: 'direct' as const, rttMs: 1, bytesIn: 1, bytesOut: 1 })) });
  assert.ok(size(big) > one * 8);
  assert.equal(put('c', big), 'over_capacity');
  assert.ok(store.bytes <= one * 10);
  assert.match(await registry.metrics(), /edgemesh_server_fleet_reports_total\{outcome="over_capacity"\} 2/);
});
