// Descriptor pressure: RLIMIT_NOFILE (from /proc/self/limits) and the number of open descriptors (/proc/self/fd,
// sampled on a timer, never per operation), so optional work — served tunnel streams, extra sockets, DNS-over-TCP
// connections — is shed while a reserve stays for the control plane (server connections, admin, DNS UDP). EMFILE or
// ENFILE anywhere is an error for that one operation; noteExhausted() makes shed() true until a sample shows room.
import { readFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import type { Budgets } from './budget.ts';

/** How often the open-descriptor count is sampled (readdir of /proc/self/fd: ~0.2 ms per 1,000 descriptors). */
export const FD_SAMPLE_MS = 1000;
/** Descriptors kept for the control plane: 10 % of the limit, at least FD_RESERVE_MIN, at most FD_RESERVE_MAX. */
export const FD_RESERVE_FRACTION = 0.1;
export const FD_RESERVE_MIN = 64;
export const FD_RESERVE_MAX = 1024;
/** Budget name under which shed operations are counted. */
export const FD_BUDGET_NAME = 'fd_reserve';

export interface NofileLimit {
  soft: number;
  hard: number;
}

/** Parses the "Max open files" line of /proc/<pid>/limits ("unlimited" = Infinity). */
export function parseNofile(limitsText: string): NofileLimit | undefined {
  const m = /^Max open files\s+(\S+)\s+(\S+)\s+files/m.exec(limitsText);
  if (!m) return undefined;
  const num = (s: string) => (s === 'unlimited' ? Infinity : Number(s));
  const soft = num(m[1]);
  const hard = num(m[2]);
  if (!(soft >= 0) || !(hard >= 0)) return undefined;
  return { soft, hard };
}

/** Descriptors reserved for the control plane under a soft limit. */
export function fdReserve(limit: number): number {
  if (!Number.isFinite(limit)) return FD_RESERVE_MAX;
  return Math.min(FD_RESERVE_MAX, Math.max(FD_RESERVE_MIN, Math.floor(limit * FD_RESERVE_FRACTION)));
}

/** Descriptors optional work may still take: limit − open − reserve (negative = over the line). */
export function fdHeadroom(limit: number, open: number, reserve: number): number {
  return limit - open - reserve;
}

export function isFdExhaustion(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return code === 'EMFILE' || code === 'ENFILE';
}

export interface FdPressureOptions {
  intervalMs?: number;
  /** Override the reserve (descriptors). */
  reserve?: number;
  limitsPath?: string;
  fdDir?: string;
  /** Counts shed operations as refusals of budget `fd_reserve`. */
  budgets?: Budgets;
}

export class FdPressure {
  readonly limit: number;
  readonly reserve: number;
  private openNow = 0;
  /** Descriptors noted as taken (+) or given back (−) since the last sample. */
  private delta = 0;
  private exhausted = false;
  private timer: NodeJS.Timeout | undefined;
  private sampling: Promise<void> | undefined;
  private readonly opts: FdPressureOptions;

  constructor(opts: FdPressureOptions = {}) {
    this.opts = opts;
    let limit = Infinity;
    try {
      limit = parseNofile(readFileSync(opts.limitsPath ?? '/proc/self/limits', 'utf8'))?.soft ?? Infinity;
    } catch {
      // Not Linux, or /proc not mounted: no limit known, never shed on the count (EMFILE still sheds).
    }
    this.limit = limit;
    this.reserve = opts.reserve ?? fdReserve(limit);
  }

  /** Open descriptors at the last sample, plus what was noted since. */
  get open(): number {
    return this.openNow + this.delta;
  }

  /** Descriptors optional work may still take before the reserve. */
  headroom(): number {
    if (this.exhausted) return 0;
    return fdHeadroom(this.limit, this.open, this.reserve);
  }

  /** True when optional work must be refused now. */
  shed(): boolean {
    return this.headroom() <= 0;
  }

  /**
   * For optional work about to take `n` descriptors: true (and noted) when there is room, false when it must be shed
   * (counted as a refusal of `fd_reserve`).
   */
  admit(n = 1): boolean {
    if (this.headroom() < n) {
      this.opts.budgets?.refuse(FD_BUDGET_NAME, { limit: this.limit, open: this.open, reserve: this.reserve });
      return false;
    }
    this.delta += n;
    return true;
  }

  /** Descriptors taken (n > 0) or closed (n < 0) since the last sample, by code that tracks them. */
  note(n: number): void {
    this.delta += n;
  }

  /** An EMFILE/ENFILE was seen: shed until a sample shows room again. */
  noteExhausted(): void {
    this.exhausted = true;
  }

  start(): void {
    if (this.timer) return;
    void this.sample();
    this.timer = setInterval(() => { void this.sample(); }, this.opts.intervalMs ?? FD_SAMPLE_MS);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Counts the open descriptors now (one at a time; never rejects). */
  sample(): Promise<void> {
    if (this.sampling) return this.sampling;
    this.sampling = readdir(this.opts.fdDir ?? '/proc/self/fd').then(
      (names) => {
        // readdir's own descriptor is closed again by now but listed: subtract it.
        this.openNow = Math.max(0, names.length - 1);
        this.delta = 0;
        this.exhausted = fdHeadroom(this.limit, this.openNow, 0) <= 0;
      },
      (e: unknown) => {
        if (isFdExhaustion(e)) this.exhausted = true;
      },
    ).finally(() => { this.sampling = undefined; });
    return this.sampling;
  }
}
