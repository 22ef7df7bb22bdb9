// What the soak's samples say (pure): per process the growth from the first third of the quiet samples to the last
// third (medians), the least-squares slope, the peaks, and whether that is flat. Shared by bench/soak/run.ts (prints)
// and bench/readme.ts (the README block).
import type { SoakData, SoakSample } from '../shapes.ts';

/** RSS growth (MiB, first third → last third of the quiet samples) still called flat: allocator and V8 noise. */
export const SOAK_FLAT_MIB = 16;
/** Descriptor growth still called flat (sockets in TIME_WAIT-like teardown, a timer's file). */
export const SOAK_FLAT_FDS = 8;

const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[Math.floor(s.length / 2)] : NaN; };

/** Least-squares slope of y over t (per second). */
export function slope(pts: { t: number; y: number }[]): number {
  if (pts.length < 2) return 0;
  const mt = pts.reduce((a, p) => a + p.t, 0) / pts.length;
  const my = pts.reduce((a, p) => a + p.y, 0) / pts.length;
  let num = 0;
  let den = 0;
  for (const p of pts) {
    num += (p.t - mt) * (p.y - my);
    den += (p.t - mt) ** 2;
  }
  return den ? num / den : 0;
}

export interface SoakRow {
  name: string;
  rssFirst: number;
  rssLast: number;
  rssPeak: number;
  rssSlopePerHour: number;
  fdsFirst: number;
  fdsLast: number;
  fdsPeak: number;
  fdsSlopePerHour: number;
  flat: boolean;
}

const r1 = (n: number) => Math.round(n * 10) / 10;

/**
 * Quiet samples before steady state: the start and one full rotation of the attacks (V8 grows its heap to the working
 * size of the attacks and keeps it; that is warm-up, not a leak). Flatness and slope are judged on the rest.
 */
export function warmupSamples(attacks: number): number {
  return 1 + attacks;
}

export function soakRow(name: string, allQuiet: SoakSample[], samples: SoakSample[], warmup = 0): SoakRow {
  const q = allQuiet.filter((s) => s.fds >= 0).slice(warmup);
  const third = Math.max(1, Math.floor(q.length / 3));
  const first = q.slice(0, third);
  const last = q.slice(-third);
  const rssFirst = median(first.map((s) => s.rssMiB));
  const rssLast = median(last.map((s) => s.rssMiB));
  const fdsFirst = median(first.map((s) => s.fds));
  const fdsLast = median(last.map((s) => s.fds));
  const all = [...samples, ...q].filter((s) => s.fds >= 0);
  return {
    name,
    rssFirst: r1(rssFirst), rssLast: r1(rssLast), rssPeak: r1(Math.max(...all.map((s) => s.rssMiB))),
    rssSlopePerHour: r1(slope(q.map((s) => ({ t: s.t, y: s.rssMiB }))) * 3600),
    fdsFirst, fdsLast, fdsPeak: Math.max(...all.map((s) => s.fds)),
    fdsSlopePerHour: r1(slope(q.map((s) => ({ t: s.t, y: s.fds }))) * 3600),
    flat: q.length >= 3 && rssLast - rssFirst <= SOAK_FLAT_MIB && fdsLast - fdsFirst <= SOAK_FLAT_FDS,
  };
}

export function soakFigures(d: SoakData): { rows: SoakRow[]; flat: boolean; warmup: number } {
  const warmup = warmupSamples(Object.keys(d.attacks).length);
  const rows = Object.entries(d.processes).map(([n, p]) => soakRow(n, p.quiet, p.samples, warmup));
  return { rows, flat: !d.serverDied && rows.every((r) => r.flat), warmup };
}
