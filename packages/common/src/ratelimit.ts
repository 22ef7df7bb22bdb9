// Token buckets: a pure bucket, a bounded map of buckets per source, and a failure limiter that counts what it saw for
// one aggregate log line per interval (an attacker must not be able to make us log per attempt).
import { isIPv6 } from 'node:net';

export interface BucketState {
  tokens: number;
  /** ms of the last refill. */
  at: number;
}

export interface BucketParams {
  /** Burst size (tokens when full). */
  capacity: number;
  /** Tokens added per second. */
  ratePerSec: number;
}

/** Refills `s` up to `now` (mutates and returns it). Pure apart from that. */
export function refill(s: BucketState, p: BucketParams, now: number): BucketState {
  if (now > s.at) {
    s.tokens = Math.min(p.capacity, s.tokens + ((now - s.at) / 1000) * p.ratePerSec);
    s.at = now;
  }
  return s;
}

/** Takes `n` tokens if there are that many; returns whether it did. */
export function take(s: BucketState, p: BucketParams, now: number, n = 1): boolean {
  refill(s, p, now);
  if (s.tokens < n) return false;
  s.tokens -= n;
  return true;
}

export function fullBucket(p: BucketParams, now: number): BucketState {
  return { tokens: p.capacity, at: now };
}

/**
 * The key a source address is limited under: IPv4 as is, IPv6 by its /64 (one host easily owns a whole /64, so
 * limiting single v6 addresses limits nothing). Strips an IPv4-mapped prefix.
 */
export function sourceKey(address: string): string {
  const a = address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
  if (!isIPv6(a)) return a;
  const [head, tail = ''] = a.split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = a.includes('::') ? [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t] : h;
  return groups.slice(0, 4).map((g) => (parseInt(g, 16) || 0).toString(16)).join(':') + '::/64';
}

export interface FailureLimiterOptions {
  /** Per source: failures allowed in a burst, and refill rate. */
  perSource: BucketParams;
  /** All sources together (an attacker with many addresses). */
  global: BucketParams;
  /** At most this many sources are tracked; the least recently seen is forgotten first. */
  maxSources: number;
}

export interface FailureSummary {
  failures: number;
  /** Attempts refused without being looked at, because their source (or everyone) was over budget. */
  limited: number;
  sources: number;
  reasons: Record<string, number>;
}

/**
 * Limits failed attempts: `allow(source)` before doing the work, `fail(source, reason)` after a failure (successes
 * cost nothing). A source over its budget is refused before any check runs, so a guesser gets no answers at all.
 */
export class FailureLimiter {
  private readonly opts: FailureLimiterOptions;
  private readonly buckets = new Map<string, BucketState>();
  private readonly global: BucketState;
  private summary: FailureSummary = { failures: 0, limited: 0, sources: 0, reasons: {} };
  private readonly seen = new Set<string>();

  constructor(opts: FailureLimiterOptions, now: number) {
    this.opts = opts;
    this.global = fullBucket(opts.global, now);
  }

  private bucket(key: string, now: number): BucketState {
    let b = this.buckets.get(key);
    if (b) {
      this.buckets.delete(key);
    } else {
      b = fullBucket(this.opts.perSource, now);
      if (this.buckets.size >= this.opts.maxSources) this.buckets.delete(this.buckets.keys().next().value!);
    }
    this.buckets.set(key, b);
    return b;
  }

  /** Whether an attempt from `source` may be looked at now (counts a refusal in the summary when not). */
  allow(source: string, now: number): boolean {
    const b = refill(this.bucket(sourceKey(source), now), this.opts.perSource, now);
    refill(this.global, this.opts.global, now);
    const ok = b.tokens >= 1 && this.global.tokens >= 1;
    if (!ok) {
      this.summary.limited++;
      this.note(source);
    }
    return ok;
  }

  /** Records a failed attempt: costs the source and the global budget one token each. */
  fail(source: string, reason: string, now: number): void {
    take(this.bucket(sourceKey(source), now), this.opts.perSource, now);
    take(this.global, this.opts.global, now);
    this.summary.failures++;
    this.summary.reasons[reason] = (this.summary.reasons[reason] ?? 0) + 1;
    this.note(source);
  }

  private note(source: string): void {
    if (this.seen.size < this.opts.maxSources) this.seen.add(sourceKey(source));
    this.summary.sources = this.seen.size;
  }

  /** What happened since the last call (then starts counting afresh); undefined when nothing failed or was limited. */
  takeSummary(): FailureSummary | undefined {
    const s = this.summary;
    this.summary = { failures: 0, limited: 0, sources: 0, reasons: {} };
    this.seen.clear();
    return s.failures || s.limited ? s : undefined;
  }

  get trackedSources(): number {
    return this.buckets.size;
  }
}
