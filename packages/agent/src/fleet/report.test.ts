import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import type { Endpoint, NodeInfo, Service, Snapshot } from '../cluster/types.ts';
import { silentLogger } from '@edgemesh/common/log';
import { fleetReportSchema, MAX_REPORT_BYTES, MAX_REPORT_PEERS, MAX_REPORT_WARNINGS, parseReport, type FleetReport } from '@edgemesh/common/fleet/report';
import { buildReport, encodeReport, reportFingerprint, strictEmptyServices, type PeerState, type ReportInput } from './report.ts';
import { REPORT_INTERVAL_MS, Reporter, type ReportSink } from './reporter.ts';

const GROUP = 'apps.kubeedge.io/belonging-to';
function node(name: string, group?: string): NodeInfo {
  return { name, group, labels: { 'kubernetes.io/hostname': name, ...(group ? { [GROUP]: group } : {}) }, addresses: [] };
}
function svc(name: string, extra: Partial<Service> = {}): Service {
  return {
    key: `ns/${name}`, namespace: 'ns', name, type: 'ClusterIP', clusterIPs: ['10.0.0.1'], headless: false,
    ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080 }], sessionAffinity: 'None',
    affinityTimeoutSeconds: 10800, internalTrafficPolicy: 'Cluster', labels: {}, annotations: {}, ...extra,
  };
}
function ep(address: string, nodeName: string, ready = true): Endpoint {
  return { address, addresses: [address], addressType: 'IPv4', nodeName, ready, serving: ready, terminating: false, ports: [], slice: 'ns/x' };
}
const STRICT = { 'apps.kubeedge.io/service-topology': 'range-nodegroup' };

function snapshot(services: Service[], endpoints: Record<string, Endpoint[]>, nodes: NodeInfo[]): Snapshot {
  return {
    version: 1, services: new Map(services.map((s) => [s.key, s])), endpoints: new Map(Object.entries(endpoints).map(([k, v]) => [`ns/${k}`, v])),
    nodes: new Map(nodes.map((n) => [n.name, n])), destinationRules: new Map(),
  };
}

// n1, n2 in g1; n3 in g2; n0 without group.
const NODES = [node('n1', 'g1'), node('n2', 'g1'), node('n3', 'g2'), node('n0')];
const SNAP = snapshot([
  svc('strict-here', { annotations: STRICT }),
  svc('strict-far', { annotations: STRICT }),
  svc('strict-notready', { annotations: STRICT }),
  svc('local', { internalTrafficPolicy: 'Local' }),
  svc('prefer-far'),
  svc('headless-strict', { annotations: STRICT, headless: true, clusterIPs: [] }),
  svc('external', { annotations: STRICT, type: 'ExternalName', clusterIPs: [], externalName: 'example.org' }),
  svc('sctp-strict', { annotations: STRICT, ports: [{ name: 's', protocol: 'SCTP', port: 9, targetPort: 9 }] }),
], {
  'strict-here': [ep('10.1.0.2', 'n2')],
  'strict-far': [ep('10.2.0.3', 'n3')],
  'strict-notready': [ep('10.1.0.2', 'n2', false)],
  local: [ep('10.1.0.2', 'n2')],
  'prefer-far': [ep('10.2.0.3', 'n3')],
}, NODES);

function input(over: Partial<ReportInput> = {}): ReportInput {
  return {
    version: '0.1.0', node: 'n1', snapshot: SNAP, routingDefault: 'prefer',
    nat: { type: 'cone', mapped: '203.0.113.1:20006' }, ready: { ok: true, failing: [] },
    peers: [
      { node: 'n3', path: 'relay', rttMs: 12.3456, bytesIn: 100, bytesOut: 50 },
      { node: 'n2', path: 'direct', rttMs: 0.4, bytesIn: 10, bytesOut: 20 },
    ],
    ...over,
  };
}

test('strict-empty Services come from the routing module: strict group/node scopes with nothing usable from this node', () => {
  assert.deepEqual(strictEmptyServices(SNAP, 'n1', 'prefer'), [
    { service: 'ns/local', scope: 'node' },
    { service: 'ns/strict-far', scope: 'group' },
    { service: 'ns/strict-notready', scope: 'group' },
  ]);
  // From n2 the group has its endpoints (and its own node has the Local one); from n3 strict-here is empty.
  assert.deepEqual(strictEmptyServices(SNAP, 'n2', 'prefer'), [{ service: 'ns/strict-far', scope: 'group' }, { service: 'ns/strict-notready', scope: 'group' }]);
  assert.deepEqual(strictEmptyServices(SNAP, 'n3', 'prefer').map((s) => s.service), ['ns/local', 'ns/strict-here', 'ns/strict-notready']);
  // routing.default strict makes a plain Service strict too.
  assert.ok(strictEmptyServices(SNAP, 'n1', 'strict').some((s) => s.service === 'ns/prefer-far'));
  // A node without a group is its own scope.
  assert.ok(strictEmptyServices(SNAP, 'n0', 'prefer').some((s) => s.service === 'ns/strict-here' && s.scope === 'group'));
});

test('buildReport: version, group, NAT, readiness, peers with their groups, sorted; passes the shared schema', () => {
  const r = buildReport(input({ ready: { ok: false, failing: ['proxy'] } }));
  assert.equal(r.v, 1);
  assert.equal(r.version, '0.1.0');
  assert.equal(r.group, 'g1');
  assert.deepEqual(r.nat, { type: 'cone', mapped: '203.0.113.1:20006' });
  assert.equal(r.ready, false);
  assert.deepEqual(r.notReady, ['proxy']);
  assert.deepEqual(r.peers, [
    { node: 'n2', group: 'g1', path: 'direct', rttMs: 0.4, bytesIn: 10, bytesOut: 20 },
    { node: 'n3', group: 'g2', path: 'relay', rttMs: 12.35, bytesIn: 100, bytesOut: 50 },
  ]);
  assert.deepEqual(r.strictEmpty.map((s) => s.service), ['ns/local', 'ns/strict-far', 'ns/strict-notready']);
  assert.deepEqual(r.omitted, { peers: 0, strictEmpty: 0 });
  assert.ok(fleetReportSchema.safeParse(r).success);
  const wire = encodeReport(r);
  assert.deepEqual(parseReport(JSON.parse(wire.toString()), wire.length), { ok: true, report: r });
});

test('buildReport: an unknown NAT type is reported as unknown, a node outside the snapshot has no group, itself is no peer', () => {
  const r = buildReport(input({ node: 'ghost', nat: { type: 'weird', mapped: null }, peers: [{ node: 'ghost', path: 'direct', rttMs: null, bytesIn: 0, bytesOut: 0 }, { node: 'zz', path: 'connecting', rttMs: null, bytesIn: 0, bytesOut: 0 }] }));
  assert.equal(r.group, null);
  assert.equal(r.nat.type, 'unknown');
  assert.deepEqual(r.peers.map((p) => [p.node, p.group]), [['zz', null]]);
});

test('buildReport: at most MAX_REPORT_PEERS peers (the busiest), MAX_REPORT_WARNINGS strict-empty, and MAX_REPORT_BYTES', () => {
  const peers: PeerState[] = Array.from({ length: 3000 }, (_, i) => ({ node: `peer-${String(i).padStart(4, '0')}-${'x'.repeat(40)}`, path: 'direct', rttMs: 1.5, bytesIn: i, bytesOut: 0 }));
  const services = Array.from({ length: 300 }, (_, i) => svc(`s${i}`, { annotations: STRICT }));
  const snap = snapshot(services, {}, NODES);
  const r = buildReport(input({ peers, snapshot: snap }));
  const size = encodeReport(r).length;
  assert.ok(size <= MAX_REPORT_BYTES, `${size} bytes`);
  assert.ok(r.peers.length > 100 && r.peers.length < MAX_REPORT_PEERS, `${r.peers.length} peers`);
  assert.equal(r.omitted.peers, 3000 - r.peers.length);
  assert.equal(r.strictEmpty.length, MAX_REPORT_WARNINGS);
  assert.equal(r.omitted.strictEmpty, 100);
  // The busiest peers were kept.
  assert.ok(r.peers.every((p) => p.bytesIn >= 3000 - r.peers.length), 'kept the peers with the most bytes');
  assert.ok(parseReport(JSON.parse(encodeReport(r).toString()), size).ok);
  // With room for more bytes, the count limit cuts.
  const many: PeerState[] = Array.from({ length: 1500 }, (_, i) => ({ node: `p${i}`, path: 'relay', rttMs: null, bytesIn: 0, bytesOut: 0 }));
  const r2 = buildReport(input({ peers: many }), 1024 * 1024);
  assert.equal(r2.peers.length, MAX_REPORT_PEERS);
  assert.equal(r2.omitted.peers, 500);
  // A tiny byte budget still gives a valid report (no peers).
  const r3 = buildReport(input(), 300);
  assert.ok(encodeReport(r3).length <= 300 || r3.peers.length === 0);
});

test('the fingerprint ignores RTTs and bytes, not paths', () => {
  const a = buildReport(input());
  const b = buildReport(input({ peers: input().peers.map((p) => ({ ...p, rttMs: 99, bytesIn: p.bytesIn + 1000 })) }));
  const c = buildReport(input({ peers: input().peers.map((p) => ({ ...p, path: 'direct' as const })) }));
  assert.equal(reportFingerprint(a), reportFingerprint(b));
  assert.notEqual(reportFingerprint(a), reportFingerprint(c));
});

class FakeSink extends EventEmitter implements ReportSink {
  connected = true;
  sent: FleetReport[] = [];
  sendReport(json: Buffer): boolean {
    if (!this.connected) return false;
    this.sent.push(JSON.parse(json.toString()) as FleetReport);
    return true;
  }
}

test('Reporter: sends at once, again on change, on refresh after REPORT_INTERVAL_MS, and at once to a server that reconnects', async () => {
  let now = 1_000_000;
  let peers = input().peers;
  const a = new FakeSink();
  const b = new FakeSink();
  b.connected = false;
  const rep = new Reporter({ sinks: [a, b], log: silentLogger, now: () => now, build: () => buildReport(input({ peers })) });
  rep.start();
  try {
    assert.equal(a.sent.length, 1);
    assert.equal(b.sent.length, 0);
    rep.tick();
    assert.equal(a.sent.length, 1, 'nothing changed: nothing sent');
    peers = peers.map((p) => ({ ...p, rttMs: 50 }));
    rep.tick();
    assert.equal(a.sent.length, 1, 'an RTT change waits for the refresh');
    now += REPORT_INTERVAL_MS;
    rep.tick();
    assert.equal(a.sent.length, 2);
    assert.equal(a.sent[1].peers[0].rttMs, 50);
    peers = peers.map((p) => ({ ...p, path: 'direct' as const }));
    rep.tick();
    assert.equal(a.sent.length, 3, 'a path change is sent at the next check');
    b.connected = true;
    b.emit('up');
    await new Promise((r) => setImmediate(r));
    assert.equal(b.sent.length, 1);
    assert.equal(a.sent.length, 3, 'the other server is not sent a copy it has');
  } finally {
    rep.stop();
  }
  assert.equal(b.listenerCount('up'), 0);
});

test('Reporter: a build failure is logged (rate-limited) and retried, never thrown', () => {
  const a = new FakeSink();
  let fail = true;
  const warnings: unknown[] = [];
  const log = { ...silentLogger, warn: (...args: unknown[]) => warnings.push(args) } as unknown as typeof silentLogger;
  const rep = new Reporter({ sinks: [a], log, build: () => { if (fail) throw new Error('boom'); return buildReport(input()); } });
  rep.tick();
  rep.tick();
  assert.equal(warnings.length, 1);
  assert.equal(a.sent.length, 0);
  fail = false;
  rep.tick();
  assert.equal(a.sent.length, 1);
});

test('strictEmptyServices is memoised per snapshot, node and routing default; a new snapshot is computed afresh', () => {
  const a = strictEmptyServices(SNAP, 'n1', 'prefer');
  assert.equal(strictEmptyServices(SNAP, 'n1', 'prefer'), a, 'same snapshot, same inputs: the same (frozen) answer');
  assert.ok(Object.isFrozen(a));
  const n2 = strictEmptyServices(SNAP, 'n2', 'prefer');
  assert.deepEqual(n2.map((s) => s.service), ['ns/strict-far', 'ns/strict-notready'], 'another node: computed for it');
  assert.deepEqual(strictEmptyServices(SNAP, 'n1', 'prefer'), a, 'and back');
  // A next snapshot where strict-here's endpoint became ready elsewhere, no longer empty for n1: not the old answer.
  const next: Snapshot = { ...SNAP, version: 2, services: new Map([...SNAP.services].filter(([k]) => k !== 'ns/strict-far')) };
  assert.ok(!strictEmptyServices(next, 'n1', 'prefer').some((s) => s.service === 'ns/strict-far'));
  assert.ok(a.some((s) => s.service === 'ns/strict-far'), 'the first snapshot\'s answer is unchanged');
});

test('report names sort in code-unit order (no locale collation)', () => {
  const peers: PeerState[] = ['n-b', 'n-a', 'n.c', 'n1'].map((n) => ({ node: n, path: 'direct', rttMs: 1, bytesIn: 0, bytesOut: 0 }));
  const r = buildReport({ version: 'v', node: 'self', snapshot: SNAP, routingDefault: 'prefer', nat: { type: 'cone', mapped: null }, ready: { ok: true, failing: [] }, peers });
  assert.deepEqual(r.peers.map((p) => p.node), ['n-a', 'n-b', 'n.c', 'n1']);
});
