// Renders the server's /fleet JSON (packages/common/src/fleet/view.ts) as tables for `edgemesh fleet`. Pure.
import type { FleetView } from '@edgemesh/common/fleet/view';
import { table } from './render.ts';

/** Up to this many groups the path matrix is a square table; more are listed one group pair a line. */
export const MATRIX_SQUARE_MAX_GROUPS = 10;
/** Up to this many links are listed one a line (the matrix summarises the rest; --json has them all). */
export const MAX_LISTED_LINKS = 50;

export const ms = (v: number | null | undefined): string => (v === null || v === undefined ? '-' : `${v < 10 ? v.toFixed(1) : Math.round(v)} ms`);

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = -1;
  do {
    v /= 1024;
    i++;
  } while (v >= 1024 && i < units.length - 1);
  return `${v.toFixed(1)} ${units[i]}`;
}

const dash = (v: unknown): string => (v === null || v === undefined || v === '' ? '-' : String(v));
const pct = (v: number | null) => (v === null ? '-' : `${Math.round(v * 100)}%`);

export function renderFleet(v: FleetView & { generatedAt?: string; server?: { listen?: string; agentsConnected?: number } }): string {
  const s = v.summary;
  const out: string[] = [];
  const states = [`${s.ready} ready`, s.notReady ? `${s.notReady} not ready` : '', s.down ? `${s.down} down` : '', s.noReport ? `${s.noReport} without report` : ''].filter(Boolean).join(', ');
  out.push(`fleet: ${s.nodes} nodes (${states}) in ${s.groups} groups; links ${s.links.direct} direct, ${s.links.relay} relay, ${s.links.mixed} mixed, ${s.links.connecting} connecting; relay share ${pct(s.relayShare)}; ${v.healthy ? 'healthy' : 'UNHEALTHY'}`);
  if (s.versions.length) out.push(`versions: ${s.versions.map((x) => `${x.version} (${x.nodes})`).join(', ')}`);
  out.push('');
  out.push('NODES');
  out.push(v.nodes.length
    ? table(['GROUP', 'NODE', 'STATE', 'READY', 'NAT', 'VERSION', 'PEERS', 'REPORT AGE'], v.nodes.map((n) => [
      dash(n.group), n.node, n.state, n.ready === null ? '-' : n.ready ? 'yes' : `no (${n.notReady.join(', ') || '?'})`, dash(n.nat), dash(n.version), String(n.peers), `${n.reportAgeSeconds} s`,
    ]))
    : '(none)');
  out.push('');
  out.push('PATHS BETWEEN GROUPS (path, median RTT)');
  const groups = v.groups.map((g) => g.name);
  const cells = new Map(v.matrix.map((c) => [`${c.a}\u0000${c.b}`, c]));
  const cellText = (a: string, b: string) => {
    const c = cells.get(a <= b ? `${a}\u0000${b}` : `${b}\u0000${a}`);
    return c ? `${c.path} ${ms(c.medianRttMs)}` : '-';
  };
  if (!v.matrix.length) out.push('(no links)');
  else if (groups.length <= MATRIX_SQUARE_MAX_GROUPS) out.push(table(['', ...groups], groups.map((r) => [r, ...groups.map((c) => cellText(r, c))])));
  else {
    out.push(table(['GROUP A', 'GROUP B', 'PATH', 'LINKS', 'DIRECT', 'RELAY', 'MIXED', 'MEDIAN RTT'], v.matrix.map((c) => [
      c.a, c.b, c.path, String(c.links), String(c.direct), String(c.relay), String(c.mixed), ms(c.medianRttMs),
    ])));
  }
  out.push('');
  out.push('LINKS');
  if (!v.links.length) out.push('(none)');
  else {
    // Relayed and changing links first: they are the ones to look at.
    const order: Record<string, number> = { relay: 0, mixed: 1, connecting: 2, direct: 3 };
    const listed = [...v.links].sort((x, y) => order[x.path] - order[y.path] || x.a.localeCompare(y.a) || x.b.localeCompare(y.b)).slice(0, MAX_LISTED_LINKS);
    out.push(table(['A', 'B', 'GROUPS', 'PATH', 'RTT', 'BYTES'], listed.map((l) => [l.a, l.b, `${l.groups[0]}/${l.groups[1]}`, l.path, ms(l.rttMs), bytes(l.bytes)])));
    if (v.links.length > listed.length) out.push(`(${v.links.length - listed.length} more links: edgemesh fleet --json)`);
  }
  out.push('');
  out.push('WARNINGS');
  out.push(v.warnings.length ? table(['SEVERITY', 'MESSAGE'], v.warnings.map((w) => [w.severity, w.message])) : '(none)');
  if (v.warningsOmitted) out.push(`(${v.warningsOmitted} more warnings)`);
  return out.join('\n') + '\n';
}
