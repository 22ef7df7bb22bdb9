// The agent's fleet report (schema in packages/common/src/fleet/report.ts): a pure function of the agent's state,
// kept within the report limits so the server never has to refuse it. Strict-empty Services are decided by the same
// routing module the proxy uses (planRoutes), per service port, as the proxy plans them.
import { endpointPort } from '../cluster/model.ts';
import type { Snapshot } from '../cluster/types.ts';
import { planRoutes, type RoutingDefault } from '../routing/routing.ts';
import {
  MAX_REPORT_BYTES, MAX_REPORT_CHECKS, MAX_REPORT_PEERS, MAX_REPORT_WARNINGS, REPORT_VERSION,
  type FleetNatType, type FleetReport, type PeerPath, type ReportPeer, type StrictEmpty,
} from '@edgemesh/common/fleet/report';

export interface PeerState {
  node: string;
  path: PeerPath;
  rttMs: number | null;
  bytesIn: number;
  bytesOut: number;
}

export interface ReportInput {
  /** The product version (root package.json). */
  version: string;
  node: string;
  snapshot: Snapshot;
  routingDefault: RoutingDefault;
  nat: { type: string; mapped: string | null };
  ready: { ok: boolean; failing: readonly string[] };
  peers: readonly PeerState[];
}

const NAT_TYPES: readonly FleetNatType[] = ['cone', 'symmetric', 'open', 'unknown'];
const clampName = (s: string) => s.slice(0, 253);
/**
 * Code-unit order for names (DNS labels: the same order as a locale's for them). Not localeCompare: its first call
 * builds ICU's collator, ~2.5 MiB of RSS an agent would carry from its first report with two peers on.
 */
const byName = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/**
 * The last answer per snapshot (snapshots are immutable): the reporter looks for changes every REPORT_CHECK_MS, and
 * planning every service port of 5,000 Services is tens of milliseconds of CPU each time, for the same answer until
 * the next snapshot.
 */
const strictMemo = new WeakMap<Snapshot, { node: string; routingDefault: RoutingDefault; out: readonly StrictEmpty[] }>();

/** Strict-routed Services with no usable endpoint in this node's scope (every call from here is reset). Frozen, memoised per snapshot. */
export function strictEmptyServices(snap: Snapshot, node: string, routingDefault: RoutingDefault): readonly StrictEmpty[] {
  const m = strictMemo.get(snap);
  if (m && m.node === node && m.routingDefault === routingDefault) return m.out;
  const out = Object.freeze(computeStrictEmpty(snap, node, routingDefault));
  strictMemo.set(snap, { node, routingDefault, out });
  return out;
}

function computeStrictEmpty(snap: Snapshot, node: string, routingDefault: RoutingDefault): StrictEmpty[] {
  const out: StrictEmpty[] = [];
  for (const svc of snap.services.values()) {
    // The proxy serves neither (proxier.ts): no routing applies to them.
    if (svc.headless || svc.type === 'ExternalName') continue;
    const all = snap.endpoints.get(svc.key) ?? [];
    for (const sp of svc.ports) {
      if (sp.protocol !== 'TCP' && sp.protocol !== 'UDP') continue;
      const endpoints = all.filter((e) => e.addressType === 'IPv4' && endpointPort(e, sp) !== undefined);
      const plan = planRoutes({ service: svc, endpoints, nodes: snap.nodes, thisNode: node, routingDefault });
      if (!plan.emptyScope) continue;
      const m = plan.decision.mode;
      out.push({ service: svc.key, scope: m.mode === 'strict' && m.scope.kind === 'node' ? 'node' : 'group' });
      break; // one line per Service, whichever port found it
    }
  }
  return out.sort((a, b) => byName(a.service, b.service));
}

/**
 * Builds the report and keeps it within the limits: at most MAX_REPORT_PEERS peers (the busiest kept),
 * MAX_REPORT_WARNINGS strict-empty Services, and MAX_REPORT_BYTES of JSON (peers dropped, busiest kept, until it fits).
 */
export function buildReport(input: ReportInput, maxBytes = MAX_REPORT_BYTES): FleetReport {
  const snap = input.snapshot;
  const group = snap.nodes.get(input.node)?.group ?? null;
  const natType = (NAT_TYPES as readonly string[]).includes(input.nat.type) ? (input.nat.type as FleetNatType) : 'unknown';
  const peers: ReportPeer[] = input.peers
    .filter((p) => p.node !== input.node)
    .map((p) => ({
      node: clampName(p.node),
      group: snap.nodes.get(p.node)?.group ?? null,
      path: p.path,
      rttMs: p.rttMs === null || !Number.isFinite(p.rttMs) ? null : Math.max(0, Math.round(p.rttMs * 100) / 100),
      bytesIn: Math.max(0, Math.floor(p.bytesIn)),
      bytesOut: Math.max(0, Math.floor(p.bytesOut)),
    }));
  // Busiest first, so the limits cut the least interesting peers; the report lists them by name.
  peers.sort((a, b) => b.bytesIn + b.bytesOut - (a.bytesIn + a.bytesOut) || byName(a.node, b.node));
  const strict = strictEmptyServices(snap, input.node, input.routingDefault);
  let keptPeers = peers.slice(0, MAX_REPORT_PEERS);
  const keptStrict = strict.slice(0, MAX_REPORT_WARNINGS);
  const make = (ps: ReportPeer[]): FleetReport => ({
    v: REPORT_VERSION,
    version: input.version.slice(0, 64),
    group,
    nat: { type: natType, mapped: input.nat.mapped ? input.nat.mapped.slice(0, 64) : null },
    ready: input.ready.ok,
    notReady: input.ready.failing.slice(0, MAX_REPORT_CHECKS).map((c) => c.slice(0, 64)),
    peers: [...ps].sort((a, b) => byName(a.node, b.node)),
    strictEmpty: keptStrict,
    omitted: { peers: peers.length - ps.length, strictEmpty: strict.length - keptStrict.length },
  });
  let report = make(keptPeers);
  let size = encodedSize(report);
  while (size > maxBytes && keptPeers.length) {
    // Cut in proportion to the excess (plus one), so a huge report takes a few rounds, not one per peer.
    const perPeer = size / Math.max(1, keptPeers.length);
    const cut = Math.min(keptPeers.length, Math.ceil((size - maxBytes) / perPeer) + 1);
    keptPeers = keptPeers.slice(0, keptPeers.length - cut);
    report = make(keptPeers);
    size = encodedSize(report);
  }
  return report;
}

export function encodeReport(r: FleetReport): Buffer {
  return Buffer.from(JSON.stringify(r));
}

function encodedSize(r: FleetReport): number {
  return Buffer.byteLength(JSON.stringify(r));
}

/** What must change for a report to be sent before its periodic refresh: everything but RTTs and byte counts. */
export function reportFingerprint(r: FleetReport): string {
  return JSON.stringify({ ...r, peers: r.peers.map((p) => [p.node, p.group, p.path]) });
}
