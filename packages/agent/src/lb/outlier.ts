// Passive outlier detection: an endpoint that fails N connects in a row is ejected for base x (times ejected),
// capped, and never more than half of a Service's endpoints at once. Clock injected; no timers.

export const OUTLIER_CONSECUTIVE_FAILURES = 3;
export const OUTLIER_BASE_EJECTION_MS = 30_000;
export const OUTLIER_MAX_EJECTION_MS = 300_000;
/** At most this fraction of a Service's endpoints is ejected at any time. */
export const OUTLIER_MAX_EJECTED_FRACTION = 0.5;

export interface OutlierOptions {
  consecutiveFailures?: number;
  baseEjectionMs?: number;
  maxEjectionMs?: number;
  now?: () => number;
}

interface State { failures: number; timesEjected: number; until: number }

export class OutlierDetector {
  private readonly state = new Map<string, State>();
  private readonly n: number;
  private readonly base: number;
  private readonly max: number;
  private readonly now: () => number;

  constructor(opts: OutlierOptions = {}) {
    this.n = opts.consecutiveFailures ?? OUTLIER_CONSECUTIVE_FAILURES;
    this.base = opts.baseEjectionMs ?? OUTLIER_BASE_EJECTION_MS;
    this.max = opts.maxEjectionMs ?? OUTLIER_MAX_EJECTION_MS;
    this.now = opts.now ?? Date.now;
  }

  isEjected(key: string): boolean {
    const s = this.state.get(key);
    return !!s && s.until > this.now();
  }

  ejectedCount(): number {
    const now = this.now();
    let c = 0;
    for (const s of this.state.values()) if (s.until > now) c++;
    return c;
  }

  /**
   * Records a failed connect to `key`; `total` is the number of endpoints the Service has. Returns the ejection
   * duration in ms when this failure ejected the endpoint, else 0.
   */
  recordFailure(key: string, total: number): number {
    const now = this.now();
    let s = this.state.get(key);
    if (!s) this.state.set(key, (s = { failures: 0, timesEjected: 0, until: 0 }));
    if (s.until > now) return 0;
    s.failures++;
    if (s.failures < this.n) return 0;
    if (this.ejectedCount() + 1 > Math.floor(total * OUTLIER_MAX_EJECTED_FRACTION)) return 0;
    s.timesEjected++;
    const ms = Math.min(this.max, this.base * s.timesEjected);
    s.until = now + ms;
    s.failures = 0;
    return ms;
  }

  /** Records a successful connect: clears the failure streak; a long healthy spell decays the ejection multiplier. */
  recordSuccess(key: string): void {
    const s = this.state.get(key);
    if (!s) return;
    s.failures = 0;
    const now = this.now();
    if (s.timesEjected > 0 && s.until <= now && now - s.until >= this.base) {
      s.timesEjected--;
      s.until = now; // restart the decay window (until == now is not ejected)
      if (s.timesEjected === 0) this.state.delete(key);
    } else if (s.timesEjected === 0) {
      this.state.delete(key);
    }
  }

  /** Forgets endpoints that no longer exist. */
  retain(keys: ReadonlySet<string>): void {
    for (const k of this.state.keys()) if (!keys.has(k)) this.state.delete(k);
  }
}
