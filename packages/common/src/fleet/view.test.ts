import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { FleetReport, ReportPeer } from './report.ts';
import { fleetView, MAX_VIEW_WARNINGS, median, NO_GROUP, type FleetEntry } from './view.ts';

const NOW = 1_700_000_000_000;

function report(group: string | null, nat: FleetReport['nat']['type'], peers: Partial<ReportPeer>[] = [], over: Partial<FleetReport> = {}): FleetReport {
  return {
    v: 1, version: '0.1.0', group, nat: { type: nat, mapped: null }, ready: true, notReady: [],
    peers: peers.map((p) => ({ node: '?', group: null, path: 'direct', rttMs: null, bytesIn: 0, bytesOut: 0, ...p })),
    strictEmpty: [], omitted: { peers: 0, strictEmpty: 0 }, ...over,
  };
}
const up = (node: string, r: FleetReport | null, ageMs = 2000): FleetEntry => ({ node, report: r, state: 'up', receivedAt: NOW - ageMs, downSince: null });

// The e2e lab's shape: n1 (g1, symmetric NAT), n2 (g1, full cone), n3 (g2, symmetric NAT).
function lab(): FleetEntry[] {
  const strict = [{ service: 'mesh/strict-far', scope: 'group' as const }];
  return [
    up('n1', report('g1', 'symmetric', [
      { node: 'n2', group: 'g1', path: 'direct', rttMs: 0.4, bytesIn: 1000, bytesOut: 500 },
      { node: 'n3', group: 'g2', path: 'relay', rttMs: 3, bytesIn: 10, bytesOut: 10 },
    ], { strictEmpty: strict })),
    up('n2', report('g1', 'cone', [
      { node: 'n1', group: 'g1', path: 'direct', rttMs: 0.6, bytesIn: 400, bytesOut: 900 },
      { node: 'n3', group: 'g2', path: 'direct', rttMs: 1, bytesIn: 5, bytesOut: 5 },
    ], { strictEmpty: strict })),
    up('n3', report('g2', 'symmetric', [
      { node: 'n1', group: 'g1', path: 'relay', rttMs: 5, bytesIn: 10, bytesOut: 10 },
      { node: 'n2', group: 'g1', path: 'direct', rttMs: 1.4, bytesIn: 5, bytesOut: 5 },
    ])),
  ];
}

test('median', () => {
  assert.equal(median([]), null);
  assert.equal(median([3]), 3);
  assert.equal(median([5, 1, 3]), 3);
  assert.equal(median([1, 2, 3, 10]), 2.5);
});

test('the lab: nodes by group, one link per pair, the group matrix, relay share and the warnings', () => {
  const v = fleetView(lab(), NOW);
  assert.equal(v.schema, 1);
  assert.deepEqual(v.groups, [{ name: 'g1', nodes: ['n1', 'n2'] }, { name: 'g2', nodes: ['n3'] }]);
  assert.deepEqual(v.nodes.map((n) => [n.node, n.group, n.nat, n.ready, n.state, n.version, n.peers, n.reportAgeSeconds]), [
    ['n1', 'g1', 'symmetric', true, 'up', '0.1.0', 2, 2], ['n2', 'g1', 'cone', true, 'up', '0.1.0', 2, 2], ['n3', 'g2', 'symmetric', true, 'up', '0.1.0', 2, 2],
  ]);
  assert.deepEqual(v.links, [
    { a: 'n1', b: 'n2', groups: ['g1', 'g1'], path: 'direct', rttMs: 0.5, bytes: 1500, reportedBy: ['n1', 'n2'] },
    { a: 'n1', b: 'n3', groups: ['g1', 'g2'], path: 'relay', rttMs: 4, bytes: 20, reportedBy: ['n1', 'n3'] },
    { a: 'n2', b: 'n3', groups: ['g1', 'g2'], path: 'direct', rttMs: 1.2, bytes: 10, reportedBy: ['n2', 'n3'] },
  ]);
  assert.deepEqual(v.matrix, [
    { a: 'g1', b: 'g1', path: 'direct', links: 1, direct: 1, relay: 0, mixed: 0, connecting: 0, medianRttMs: 0.5 },
    { a: 'g1', b: 'g2', path: 'mixed', links: 2, direct: 1, relay: 1, mixed: 0, connecting: 0, medianRttMs: 2.6 },
  ]);
  assert.equal(v.summary.relayShare, 0.333);
  assert.deepEqual(v.summary.links, { direct: 2, relay: 1, mixed: 0, connecting: 0 });
  assert.deepEqual(v.summary.nat, { cone: 1, symmetric: 2, open: 0, unknown: 0 });
  assert.deepEqual(v.summary.versions, [{ version: '0.1.0', nodes: 3 }]);
  assert.equal(v.healthy, false, 'a strict-empty scope is unhealthy');
  assert.deepEqual(v.warnings.map((w) => [w.severity, w.kind, w.message]), [
    ['error', 'strict-empty', 'strict Service mesh/strict-far has no endpoint in group g1 (every call from 2 nodes there is reset)'],
    ['info', 'relay-symmetric', 'n1 <-> n3 use the relay: both are behind symmetric NATs (no hole punching possible)'],
  ]);
  assert.deepEqual(v.warnings[0].nodes, ['n1', 'n2']);
  assert.equal(v.warnings[0].group, 'g1');
  assert.equal(v.warningsOmitted, 0);
});

test('without the strict-empty Service the lab is healthy (an explained relay is only information)', () => {
  const entries = lab().map((e) => ({ ...e, report: { ...e.report!, strictEmpty: [] } }));
  const v = fleetView(entries, NOW);
  assert.equal(v.healthy, true);
  assert.deepEqual(v.warnings.map((w) => w.kind), ['relay-symmetric']);
});

test('link path: sides that disagree are mixed, connecting counts only alone, a one-sided report still makes a link', () => {
  const v = fleetView([
    up('a', report('g1', 'cone', [{ node: 'b', path: 'direct' }, { node: 'c', path: 'connecting' }, { node: 'x', group: 'gx', path: 'relay', rttMs: 7 }])),
    up('b', report('g1', 'cone', [{ node: 'a', path: 'relay' }])),
    up('c', report('g2', 'cone', [{ node: 'a', path: 'relay' }])),
  ], NOW);
  const path = (a: string, b: string) => v.links.find((l) => l.a === a && l.b === b)?.path;
  assert.equal(path('a', 'b'), 'mixed');
  assert.equal(path('a', 'c'), 'relay');
  // x sends no report here: its group comes from a's view of it.
  assert.deepEqual(v.links.find((l) => l.b === 'x'), { a: 'a', b: 'x', groups: ['g1', 'gx'], path: 'relay', rttMs: 7, bytes: 0, reportedBy: ['a'] });
  assert.deepEqual(v.matrix.map((c) => [c.a, c.b, c.path]), [['g1', 'g1', 'mixed'], ['g1', 'g2', 'relay'], ['g1', 'gx', 'relay']]);
  const only = fleetView([up('a', report('g1', 'cone', [{ node: 'b', path: 'connecting' }]))], NOW);
  assert.equal(only.links[0].path, 'connecting');
  assert.equal(only.matrix[0].path, 'connecting');
  assert.equal(only.summary.relayShare, null);
  // relay between cone NATs is not explained by the NAT types; a side without UDP is.
  assert.deepEqual(v.warnings.filter((w) => w.kind.startsWith('relay')).map((w) => [w.kind, w.severity, w.node, w.peer]), [
    ['relay-unexplained', 'warning', 'a', 'c'],
  ]);
});

test('agent states: down and not ready are errors; no report, unknown NAT, a cut report are warnings; versions are info', () => {
  const entries: FleetEntry[] = [
    { node: 'gone', report: report('g1', 'cone'), state: 'down', receivedAt: NOW - 90_000, downSince: NOW - 60_000 },
    up('silent', null, 5000),
    up('sick', report('g1', 'unknown', [{ node: 'ok', path: 'relay' }], { ready: false, notReady: ['cluster', 'proxy'], omitted: { peers: 3, strictEmpty: 0 } })),
    up('ok', report(null, 'cone', [{ node: 'sick', path: 'relay' }], { version: '0.2.0' })),
  ];
  const v = fleetView(entries, NOW);
  assert.equal(v.healthy, false);
  assert.deepEqual(v.warnings.map((w) => [w.severity, w.kind, w.node ?? '']), [
    ['error', 'agent-down', 'gone'],
    ['error', 'agent-not-ready', 'sick'],
    ['warning', 'nat-unknown', 'sick'],
    ['warning', 'no-report', 'silent'],
    ['warning', 'report-truncated', 'sick'],
    ['info', 'relay-nat-unknown', 'ok'],
    ['info', 'version-skew', ''],
  ]);
  assert.match(v.warnings[0].message, /agent gone \(group g1\) is disconnected \(for 60 s\)/);
  assert.match(v.warnings[1].message, /not ready: cluster, proxy/);
  assert.match(v.warnings[6].message, /2 agent versions in the fleet: 0\.1\.0 \(1 node\), 0\.2\.0 \(1 node\)/);
  const byNode = new Map(v.nodes.map((n) => [n.node, n]));
  assert.equal(byNode.get('gone')!.state, 'down');
  assert.equal(byNode.get('silent')!.state, 'no-report');
  assert.equal(byNode.get('silent')!.reportAgeSeconds, 5);
  assert.equal(byNode.get('ok')!.group, null);
  assert.deepEqual(v.groups.map((g) => g.name), [NO_GROUP, 'g1']);
  assert.deepEqual([v.summary.up, v.summary.down, v.summary.ready, v.summary.notReady, v.summary.noReport], [3, 1, 1, 1, 1]);
  // A down agent's last links are not shown (they are stale); the live side's are.
  assert.ok(!v.links.some((l) => l.reportedBy.includes('gone')));
  // No report and no other problem: a warning, still healthy.
  assert.equal(fleetView([up('silent', null), up('ok', report('g1', 'cone'))], NOW).healthy, true);
});

test('strict-empty on a node scope, and a strict group Service on a node without a group, name the node', () => {
  const v = fleetView([
    up('a', report('g1', 'cone', [], { strictEmpty: [{ service: 'ns/local', scope: 'node' }] })),
    up('b', report(null, 'cone', [], { strictEmpty: [{ service: 'ns/strict', scope: 'group' }] })),
  ], NOW);
  assert.deepEqual(v.warnings.map((w) => w.message), [
    'strict Service ns/local has no endpoint on node a',
    'strict Service ns/strict has no endpoint on node b (the node has no group, so it is its own scope)',
  ]);
});

test('an empty fleet is unhealthy; warnings are capped with errors first', () => {
  const empty = fleetView([], NOW);
  assert.equal(empty.healthy, false);
  assert.equal(empty.warnings[0].kind, 'no-agents');
  const entries = Array.from({ length: MAX_VIEW_WARNINGS + 50 }, (_, i) => up(`n${i}`, null));
  entries.push(up('bad', report('g', 'cone', [], { ready: false })));
  const v = fleetView(entries, NOW);
  assert.equal(v.warnings.length, MAX_VIEW_WARNINGS);
  assert.equal(v.warningsOmitted, 51);
  assert.equal(v.warnings[0].kind, 'agent-not-ready');
  assert.equal(v.healthy, false);
});
