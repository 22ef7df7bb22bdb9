// The fleet view: from the latest report of every agent a server knows, the nodes by group, the links between nodes
// and the group x group path matrix, the relay share and the warnings an operator acts on. Pure (the clock is an
// argument). The server's /fleet answers it as JSON (FLEET_SCHEMA, documented in README "Fleet"); `edgemesh fleet`
// and the /ui page render it.
import type { FleetNatType, FleetReport, PeerPath } from './report.ts';

export const FLEET_SCHEMA = 1;
/** Group name shown for nodes without a group label (cannot clash: label values never contain parentheses). */
export const NO_GROUP = '(none)';
/** At most this many warnings in a view (errors first); the rest are counted in warningsOmitted. */
export const MAX_VIEW_WARNINGS = 500;

/** What the server holds for one agent. `report` is null for an agent connected but silent so far. */
export interface FleetEntry {
  node: string;
  report: FleetReport | null;
  /** up: connected to this server now; down: disconnected, kept for the grace period. */
  state: 'up' | 'down';
  /** When the last report arrived (ms since the epoch), or when the agent connected when it has sent none. */
  receivedAt: number;
  /** When the server noticed the disconnection (ms since the epoch); null while up. */
  downSince: number | null;
}

export type LinkPath = 'direct' | 'relay' | 'mixed' | 'connecting';
export type Severity = 'error' | 'warning' | 'info';

export interface FleetNode {
  node: string;
  group: string | null;
  version: string | null;
  nat: FleetNatType | null;
  ready: boolean | null;
  notReady: string[];
  state: 'up' | 'down' | 'no-report';
  /** Seconds since its last report (or since it connected, without one). */
  reportAgeSeconds: number;
  peers: number;
}

export interface FleetLink {
  /** The two nodes, a < b. */
  a: string;
  b: string;
  groups: [string, string];
  /** direct / relay when every side that reported it agrees; mixed when they differ (a path change under way). */
  path: LinkPath;
  rttMs: number | null;
  /** Bytes on the link's open connections, the larger of the two sides' counts. */
  bytes: number;
  /** The nodes whose reports name this link. */
  reportedBy: string[];
}

export interface MatrixCell {
  /** The two groups, a <= b (the matrix is symmetric). */
  a: string;
  b: string;
  /** direct / relay when all its links (other than connecting ones) agree, mixed otherwise. */
  path: LinkPath;
  links: number;
  direct: number;
  relay: number;
  mixed: number;
  connecting: number;
  medianRttMs: number | null;
}

export interface FleetWarning {
  kind: 'no-agents' | 'agent-down' | 'agent-not-ready' | 'no-report' | 'strict-empty' | 'relay-symmetric' | 'relay-nat-unknown'
    | 'relay-unexplained' | 'nat-unknown' | 'report-truncated' | 'version-skew';
  severity: Severity;
  message: string;
  node?: string;
  peer?: string;
  group?: string;
  service?: string;
  /** strict-empty: the nodes that reported it. */
  nodes?: string[];
}

export interface FleetView {
  schema: typeof FLEET_SCHEMA;
  /** False when any warning has severity error (`edgemesh fleet` exits 1). */
  healthy: boolean;
  summary: {
    nodes: number;
    up: number;
    down: number;
    ready: number;
    notReady: number;
    noReport: number;
    groups: number;
    links: Record<LinkPath, number>;
    /** relay / (direct + relay + mixed) links; null without any such link. */
    relayShare: number | null;
    versions: { version: string; nodes: number }[];
    nat: Record<FleetNatType, number>;
  };
  groups: { name: string; nodes: string[] }[];
  nodes: FleetNode[];
  links: FleetLink[];
  matrix: MatrixCell[];
  warnings: FleetWarning[];
  warningsOmitted: number;
}

export function median(xs: readonly number[]): number | null {
  if (!xs.length) return null;
  const s = [...xs].sort((x, y) => x - y);
  const m = s.length >> 1;
  const v = s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  return Math.round(v * 100) / 100;
}

/** Path of something observed several times: agreement wins, disagreement is mixed, connecting only counts alone. */
function combine(paths: readonly (PeerPath | LinkPath)[]): LinkPath {
  const settled = new Set(paths.filter((p) => p !== 'connecting'));
  if (!settled.size) return 'connecting';
  if (settled.size === 1) return [...settled][0] as LinkPath;
  return 'mixed';
}

const groupName = (g: string | null | undefined) => g ?? NO_GROUP;
const SEVERITY_ORDER: Record<Severity, number> = { error: 0, warning: 1, info: 2 };
const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

export function fleetView(entries: readonly FleetEntry[], now: number): FleetView {
  const byNode = new Map(entries.map((e) => [e.node, e]));
  const warnings: FleetWarning[] = [];

  // --- nodes ---
  const nodes: FleetNode[] = entries.map((e) => ({
    node: e.node,
    group: e.report?.group ?? null,
    version: e.report?.version ?? null,
    nat: e.report?.nat.type ?? null,
    ready: e.report ? e.report.ready : null,
    notReady: e.report?.notReady ?? [],
    state: e.state === 'down' ? 'down' : e.report ? 'up' : 'no-report',
    reportAgeSeconds: Math.max(0, Math.round((now - e.receivedAt) / 1000)),
    peers: e.report?.peers.length ?? 0,
  }));
  nodes.sort((x, y) => groupName(x.group).localeCompare(groupName(y.group)) || x.node.localeCompare(y.node));

  // --- links: one per node pair, from both sides' reports (only agents up now: a down agent's links are stale) ---
  const groupOf = (node: string, seenAs: string | null): string => {
    const r = byNode.get(node)?.report;
    return groupName(r ? r.group : seenAs);
  };
  const obs = new Map<string, { a: string; b: string; groups: [string, string]; paths: PeerPath[]; rtts: number[]; bytes: number; by: string[] }>();
  for (const e of entries) {
    if (e.state !== 'up' || !e.report) continue;
    for (const p of e.report.peers) {
      if (p.node === e.node) continue;
      const [a, b] = e.node < p.node ? [e.node, p.node] : [p.node, e.node];
      const key = `${a}\u0000${b}`;
      let o = obs.get(key);
      if (!o) {
        const ga = a === e.node ? groupName(e.report.group) : groupOf(a, p.group);
        const gb = b === e.node ? groupName(e.report.group) : groupOf(b, p.group);
        o = { a, b, groups: [ga, gb], paths: [], rtts: [], bytes: 0, by: [] };
        obs.set(key, o);
      }
      o.paths.push(p.path);
      if (p.rttMs !== null) o.rtts.push(p.rttMs);
      o.bytes = Math.max(o.bytes, p.bytesIn + p.bytesOut);
      o.by.push(e.node);
    }
  }
  const links: FleetLink[] = [...obs.values()]
    .map((o) => ({ a: o.a, b: o.b, groups: o.groups, path: combine(o.paths), rttMs: median(o.rtts), bytes: o.bytes, reportedBy: o.by.sort() }))
    .sort((x, y) => x.a.localeCompare(y.a) || x.b.localeCompare(y.b));

  // --- matrix: group x group ---
  const cells = new Map<string, { a: string; b: string; links: FleetLink[] }>();
  for (const l of links) {
    const [a, b] = l.groups[0] <= l.groups[1] ? l.groups : [l.groups[1], l.groups[0]];
    const key = `${a}\u0000${b}`;
    let c = cells.get(key);
    if (!c) cells.set(key, (c = { a, b, links: [] }));
    c.links.push(l);
  }
  const countPaths = (ls: readonly FleetLink[]): Record<LinkPath, number> => {
    const n: Record<LinkPath, number> = { direct: 0, relay: 0, mixed: 0, connecting: 0 };
    for (const l of ls) n[l.path]++;
    return n;
  };
  const matrix: MatrixCell[] = [...cells.values()].map((c) => {
    const n = countPaths(c.links);
    return { a: c.a, b: c.b, path: combine(c.links.map((l) => l.path)), links: c.links.length, ...n, medianRttMs: median(c.links.flatMap((l) => (l.rttMs === null ? [] : [l.rttMs]))) };
  }).sort((x, y) => x.a.localeCompare(y.a) || x.b.localeCompare(y.b));

  // --- groups ---
  const groupMap = new Map<string, string[]>();
  for (const n of nodes) {
    const g = groupName(n.group);
    groupMap.set(g, [...(groupMap.get(g) ?? []), n.node]);
  }
  const groups = [...groupMap].map(([name, ns]) => ({ name, nodes: ns.sort() })).sort((x, y) => x.name.localeCompare(y.name));

  // --- warnings ---
  if (!entries.length) warnings.push({ kind: 'no-agents', severity: 'error', message: 'no agent is connected to this server' });
  const strictGroups = new Map<string, { service: string; group: string; nodes: string[] }>();
  for (const e of entries) {
    const r = e.report;
    const g = r?.group ?? null;
    const where = g === null ? '' : ` (group ${g})`;
    if (e.state === 'down') {
      const since = Math.max(0, Math.round((now - (e.downSince ?? now)) / 1000));
      warnings.push({ kind: 'agent-down', severity: 'error', node: e.node, ...(g ? { group: g } : {}), message: `agent ${e.node}${where} is disconnected (for ${since} s)` });
      continue;
    }
    if (!r) {
      warnings.push({ kind: 'no-report', severity: 'warning', node: e.node, message: `agent ${e.node} is connected but sends no fleet report (an older version?)` });
      continue;
    }
    if (!r.ready) {
      warnings.push({ kind: 'agent-not-ready', severity: 'error', node: e.node, ...(g ? { group: g } : {}), message: `agent ${e.node}${where} is not ready${r.notReady.length ? `: ${r.notReady.join(', ')}` : ''}` });
    }
    if (r.nat.type === 'unknown') {
      warnings.push({ kind: 'nat-unknown', severity: 'warning', node: e.node, message: `agent ${e.node}${where}: NAT type unknown (no STUN answer: UDP to the server blocked?), its peers can only use the relay` });
    }
    if (r.omitted.peers || r.omitted.strictEmpty) {
      warnings.push({ kind: 'report-truncated', severity: 'warning', node: e.node, message: `agent ${e.node}: report cut to its limits (${r.omitted.peers} peers, ${r.omitted.strictEmpty} strict-empty Services left out)` });
    }
    for (const s of r.strictEmpty) {
      if (s.scope === 'node' || g === null) {
        const why = s.scope === 'group' ? ' (the node has no group, so it is its own scope)' : '';
        warnings.push({ kind: 'strict-empty', severity: 'error', node: e.node, service: s.service, nodes: [e.node], message: `strict Service ${s.service} has no endpoint on node ${e.node}${why}` });
        continue;
      }
      const key = `${s.service}\u0000${g}`;
      const cur = strictGroups.get(key);
      if (cur) cur.nodes.push(e.node);
      else strictGroups.set(key, { service: s.service, group: g, nodes: [e.node] });
    }
  }
  for (const s of strictGroups.values()) {
    warnings.push({ kind: 'strict-empty', severity: 'error', service: s.service, group: s.group, nodes: s.nodes.sort(), message: `strict Service ${s.service} has no endpoint in group ${s.group} (every call from ${plural(s.nodes.length, 'node')} there is reset)` });
  }
  const natOf = (n: string) => byNode.get(n)?.report?.nat.type;
  for (const l of links) {
    if (l.path !== 'relay') continue;
    const na = natOf(l.a);
    const nb = natOf(l.b);
    const pair = { node: l.a, peer: l.b };
    if (na === 'symmetric' && nb === 'symmetric') {
      warnings.push({ kind: 'relay-symmetric', severity: 'info', ...pair, message: `${l.a} <-> ${l.b} use the relay: both are behind symmetric NATs (no hole punching possible)` });
    } else if (na === 'unknown' || nb === 'unknown') {
      const who = na === 'unknown' ? l.a : l.b;
      warnings.push({ kind: 'relay-nat-unknown', severity: 'info', ...pair, message: `${l.a} <-> ${l.b} use the relay: ${who} has no UDP path to the server (NAT type unknown)` });
    } else if (na && nb) {
      // (A side whose report this server lacks has an unknown NAT: nothing to say about the pair.)
      warnings.push({ kind: 'relay-unexplained', severity: 'warning', ...pair, message: `${l.a} <-> ${l.b} use the relay although their NATs are ${na} <-> ${nb}: hole punching failed (a firewall dropping UDP?)` });
    }
  }
  const versions = new Map<string, number>();
  for (const e of entries) if (e.report && e.state === 'up') versions.set(e.report.version, (versions.get(e.report.version) ?? 0) + 1);
  const versionList = [...versions].map(([version, n]) => ({ version, nodes: n })).sort((x, y) => y.nodes - x.nodes || x.version.localeCompare(y.version));
  if (versionList.length > 1) {
    warnings.push({ kind: 'version-skew', severity: 'info', message: `${versionList.length} agent versions in the fleet: ${versionList.map((v) => `${v.version} (${plural(v.nodes, 'node')})`).join(', ')}` });
  }
  const healthy = !warnings.some((w) => w.severity === 'error');
  warnings.sort((x, y) => SEVERITY_ORDER[x.severity] - SEVERITY_ORDER[y.severity] || x.kind.localeCompare(y.kind) || x.message.localeCompare(y.message));

  const linkCounts = countPaths(links);
  const settled = linkCounts.direct + linkCounts.relay + linkCounts.mixed;
  const nat: Record<FleetNatType, number> = { cone: 0, symmetric: 0, open: 0, unknown: 0 };
  for (const e of entries) if (e.report && e.state === 'up') nat[e.report.nat.type]++;
  return {
    schema: FLEET_SCHEMA,
    healthy,
    summary: {
      nodes: nodes.length,
      up: nodes.filter((n) => n.state !== 'down').length,
      down: nodes.filter((n) => n.state === 'down').length,
      ready: nodes.filter((n) => n.state === 'up' && n.ready).length,
      notReady: nodes.filter((n) => n.state === 'up' && n.ready === false).length,
      noReport: nodes.filter((n) => n.state === 'no-report').length,
      groups: groups.length,
      links: linkCounts,
      relayShare: settled ? Math.round((linkCounts.relay / settled) * 1000) / 1000 : null,
      versions: versionList,
      nat,
    },
    groups,
    nodes,
    links,
    matrix,
    warnings: warnings.slice(0, MAX_VIEW_WARNINGS),
    warningsOmitted: Math.max(0, warnings.length - MAX_VIEW_WARNINGS),
  };
}
