// A coalescing runner in the shape of kube-proxy's BoundedFrequencyRunner: run() requests a sync; one sync runs at a
// time; requests made while one runs are served by one more run afterwards; runs start at least minIntervalMs apart
// and at least every maxIntervalMs (a periodic re-assert); a failed run is retried after a jittered backoff. Every
// request gets a generation number, and `completed` says which generation the last successful run covered, so a
// caller can tell "the state of request N is applied".
import { backoff, type Backoff } from './backoff.ts';

/** The timers the runner uses (injected in tests). */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realClock: Clock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref(); // a pending sync never keeps the process alive on its own
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** Why a run happens: requested (run()), the periodic maxInterval tick, or a retry after a failure. */
export type RunReason = 'request' | 'periodic' | 'retry';

export interface RunnerOptions {
  /** The sync. It reads the current desired state when it starts; a throw counts as a failure (retried). */
  run: (reason: RunReason) => Promise<void>;
  /** Run starts are at least this far apart (a burst of requests becomes one run). Default 0. */
  minIntervalMs?: number;
  /** A run happens at least this often even without requests. Default: never. */
  maxIntervalMs?: number;
  /** Backoff after a failed run: from retryMinMs, doubling, up to retryMaxMs; a success resets it. */
  retryMinMs?: number;
  retryMaxMs?: number;
  /** Told about each failure and when the retry comes. */
  onError?: (err: unknown, retryInMs: number) => void;
  clock?: Clock;
  random?: () => number;
}

/** Defaults for the retry backoff when a caller gives none: 1 s, doubling to 30 s (kube-proxy retries after 1 s too). */
export const RUNNER_RETRY_MIN_MS = 1000;
export const RUNNER_RETRY_MAX_MS = 30_000;

export class BoundedRunner {
  private readonly o: RunnerOptions;
  private readonly clock: Clock;
  private readonly minIntervalMs: number;
  private readonly maxIntervalMs: number;
  private readonly backoff: Backoff;
  /** Generation of the latest request. */
  private req = 0;
  /** Generation covered by the last successful run. */
  private done = 0;
  private lastStart: number;
  private readonly created: number;
  private pending: { at: number; reason: RunReason } | undefined;
  private running: Promise<void> | undefined;
  private timer: unknown;
  private timerAt = Infinity;
  private stopped = false;
  private lastFailed = false;
  private waiters: { gen: number; resolve: (ok: boolean) => void; anyOutcome: boolean }[] = [];
  /** Generation covered by the last run, successful or not. */
  private tried = 0;

  constructor(o: RunnerOptions) {
    this.o = o;
    this.clock = o.clock ?? realClock;
    this.minIntervalMs = o.minIntervalMs ?? 0;
    this.maxIntervalMs = o.maxIntervalMs ?? Infinity;
    this.backoff = backoff(o.retryMinMs ?? RUNNER_RETRY_MIN_MS, o.retryMaxMs ?? RUNNER_RETRY_MAX_MS, o.random);
    this.lastStart = -Infinity;
    this.created = this.clock.now();
    this.arm();
  }

  /** Generation of the latest request (0 before any). */
  get requested(): number {
    return this.req;
  }

  /** Generation covered by the last successful run: every request up to it has been served. */
  get completed(): number {
    return this.done;
  }

  /** The last run failed (a retry is scheduled). */
  get failing(): boolean {
    return this.lastFailed;
  }

  /** True while a run is under way or one is scheduled for a request. */
  get busy(): boolean {
    return this.running !== undefined || (this.pending !== undefined && this.pending.reason !== 'periodic');
  }

  /**
   * Requests a run, no sooner than `delayMs` from now (and minIntervalMs after the last start). A run already
   * scheduled earlier serves this request too. Returns the request's generation.
   */
  run(delayMs = 0): number {
    if (this.stopped) return this.req;
    this.req++;
    this.want(this.clock.now() + delayMs, 'request');
    return this.req;
  }

  /** Resolves true once a successful run covered generation `gen`, false when the runner stopped first. */
  whenCompleted(gen: number): Promise<boolean> {
    if (this.done >= gen) return Promise.resolve(true);
    if (this.stopped) return Promise.resolve(false);
    return new Promise((resolve) => this.waiters.push({ gen, resolve, anyOutcome: false }));
  }

  /** Resolves once a run covering generation `gen` finished: true when it succeeded, false when it failed (or stopped). */
  whenAttempted(gen: number): Promise<boolean> {
    if (this.done >= gen) return Promise.resolve(true);
    if (this.tried >= gen || this.stopped) return Promise.resolve(false);
    return new Promise((resolve) => this.waiters.push({ gen, resolve, anyOutcome: true }));
  }

  /** Requests a run and waits for it (false when the runner stopped first). */
  runNow(): Promise<boolean> {
    return this.whenCompleted(this.run());
  }

  /** Resolves when nothing is running and no request waits (periodic ticks do not count). */
  async settle(): Promise<void> {
    while (this.busy && !this.stopped) {
      if (this.running) await this.running;
      else await new Promise<void>((r) => this.clock.setTimeout(r, Math.max(0, (this.pending?.at ?? 0) - this.clock.now())));
    }
  }

  /** No more runs; waits for the one under way. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.pending = undefined;
    this.disarm();
    for (const w of this.waiters.splice(0)) w.resolve(false);
    await this.running;
  }

  private want(at: number, reason: RunReason): void {
    const earliest = Math.max(at, this.lastStart + this.minIntervalMs);
    // A request outranks a periodic tick or a retry scheduled for later: the earliest time and the strongest reason win.
    if (!this.pending) this.pending = { at: earliest, reason };
    else {
      if (earliest < this.pending.at) this.pending.at = earliest;
      if (reason === 'request') this.pending.reason = 'request';
    }
    this.arm();
  }

  private disarm(): void {
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAt = Infinity;
  }

  /** Sets the one timer for the next start: the pending run, else the periodic tick. */
  private arm(): void {
    if (this.stopped || this.running) return;
    const periodicAt = Number.isFinite(this.maxIntervalMs) ? this.periodicBase() + this.maxIntervalMs : Infinity;
    const at = Math.min(this.pending?.at ?? Infinity, periodicAt);
    if (at === this.timerAt) return;
    this.disarm();
    if (at === Infinity) return;
    this.timerAt = at;
    this.timer = this.clock.setTimeout(() => this.fire(), Math.max(0, at - this.clock.now()));
  }

  private fire(): void {
    this.timer = undefined;
    this.timerAt = Infinity;
    if (this.stopped || this.running) return;
    const now = this.clock.now();
    // Timers may fire a little before the other clock says (setTimeout vs performance.now): 1 ms of slack.
    const pendingDue = this.pending !== undefined && this.pending.at <= now + 1;
    const periodicDue = now + 1 >= this.periodicBase() + this.maxIntervalMs;
    if (!pendingDue && !periodicDue) return this.arm();
    // A periodic run serves whatever was pending too: it starts from the current desired state like any other.
    const reason = pendingDue ? this.pending!.reason : 'periodic';
    this.pending = undefined;
    const gen = this.req;
    this.lastStart = now;
    this.running = this.exec(gen, reason);
  }

  private periodicBase(): number {
    return this.lastStart === -Infinity ? this.created : this.lastStart;
  }

  private async exec(gen: number, reason: RunReason): Promise<void> {
    try {
      await this.o.run(reason);
      this.lastFailed = false;
      this.backoff.reset();
      if (gen > this.done) this.done = gen;
      if (gen > this.tried) this.tried = gen;
      const ready = this.waiters.filter((w) => w.gen <= this.done);
      this.waiters = this.waiters.filter((w) => w.gen > this.done);
      for (const w of ready) w.resolve(true);
    } catch (e) {
      this.lastFailed = true;
      if (gen > this.tried) this.tried = gen;
      const told = this.waiters.filter((w) => w.anyOutcome && w.gen <= gen);
      this.waiters = this.waiters.filter((w) => !(w.anyOutcome && w.gen <= gen));
      for (const w of told) w.resolve(false);
      const wait = this.backoff.next();
      try {
        this.o.onError?.(e, wait);
      } catch {
        // a logging hook must not break the loop
      }
      if (!this.stopped) this.want(this.clock.now() + wait, 'retry');
    } finally {
      this.running = undefined;
      this.arm();
    }
  }
}
