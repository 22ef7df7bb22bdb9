// Budgets: named limits with units, and leases that give back exactly what they took, exactly once, on every path
// (success, error, abort, peer gone). Every refusal is counted in one prom-client counter labelled by budget name
// and logged rate-limited (one line per budget per REFUSAL_LOG_INTERVAL_MS with the count), because an attacker
// decides how often a refusal happens.
//
//   const budgets = new Budgets({ registry, metricPrefix: 'edgemesh_', log });
//   const streams = budgets.budget({ name: 'served_streams', max: 4096, unit: 'streams' });
//   const lease = streams.tryAcquire();          // undefined = refused (already counted and logged)
//   if (!lease) return refuse();
//   lease.releaseOn(socket, 'close');            // peer gone / error / our destroy: all end in 'close'
//   lease.releaseOnAbort(signal);                // abort
//   ... lease.release();                         // success path; a second release is a no-op
//
// A KeyedBudget adds a per-key limit under a total (connections per source address and in total).
import type { EventEmitter } from 'node:events';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { Logger } from './log.ts';

/** At most one log line per budget per this interval, carrying how many refusals it covers. */
export const REFUSAL_LOG_INTERVAL_MS = 10_000;

export interface LimitSpec {
  /** snake_case; the `budget` label of the refusal counter. */
  readonly name: string;
  /** Largest total amount in use at once. */
  readonly max: number;
  /** What one unit is (connections, streams, sockets, bytes): shown in logs and /status. */
  readonly unit: string;
}

export interface KeyedLimitSpec {
  readonly name: string;
  /** Largest amount one key may hold. */
  readonly perKey: number;
  /** Largest amount all keys together may hold (Infinity = no total). */
  readonly total: number;
  readonly unit: string;
  /** What a key is (source, peer, pair): the per-key refusals are counted as `<name>_per_<keyName>`. */
  readonly keyName: string;
}

export interface BudgetState {
  name: string;
  unit: string;
  max: number;
  used: number;
  refused: number;
}

/**
 * What a lease holds. release() gives it back once (later calls return false). releaseOn/releaseOnAbort tie the
 * release to the end of the thing it pays for; the listeners are removed when the lease is released.
 */
export class Lease {
  private amountHeld: number;
  private done = false;
  private readonly giveBack: (amount: number) => void;
  private readonly grow: (extra: number) => boolean;
  private readonly detach: (() => void)[] = [];

  constructor(amount: number, giveBack: (amount: number) => void, grow: (extra: number) => boolean) {
    this.amountHeld = amount;
    this.giveBack = giveBack;
    this.grow = grow;
  }

  get amount(): number {
    return this.amountHeld;
  }

  get released(): boolean {
    return this.done;
  }

  /** Gives the amount back. True the first time, false (and nothing happens) after. */
  release(): boolean {
    if (this.done) return false;
    this.done = true;
    const n = this.amountHeld;
    this.amountHeld = 0;
    for (const d of this.detach.splice(0)) d();
    this.giveBack(n);
    return true;
  }

  /**
   * Changes the held amount (a buffer that grows or shrinks). Growing takes from the budget and fails (false, counted
   * as a refusal, amount unchanged) when there is no room; shrinking always succeeds. False on a released lease.
   */
  resize(amount: number): boolean {
    if (this.done || !(amount >= 0)) return false;
    const delta = amount - this.amountHeld;
    if (delta > 0 && !this.grow(delta)) return false;
    if (delta < 0) this.giveBack(-delta);
    this.amountHeld = amount;
    return true;
  }

  /** Releases when `emitter` emits any of `events` (default 'close'). */
  releaseOn(emitter: EventEmitter, ...events: string[]): this {
    if (this.done) return this;
    const evs = events.length ? events : ['close'];
    const fn = () => { this.release(); };
    for (const e of evs) emitter.once(e, fn);
    this.detach.push(() => { for (const e of evs) emitter.off(e, fn); });
    return this;
  }

  /** Releases when `signal` aborts (at once when it already has). */
  releaseOnAbort(signal: AbortSignal): this {
    if (this.done) return this;
    if (signal.aborted) {
      this.release();
      return this;
    }
    const fn = () => { this.release(); };
    signal.addEventListener('abort', fn, { once: true });
    this.detach.push(() => signal.removeEventListener('abort', fn));
    return this;
  }

  [Symbol.dispose](): void {
    this.release();
  }
}

/** A plain limit: used ≤ max. */
export class Budget {
  readonly name: string;
  readonly unit: string;
  readonly max: number;
  private usedNow = 0;
  private readonly owner: Budgets;

  constructor(spec: LimitSpec, owner: Budgets) {
    checkSpec(spec.name, spec.max);
    this.name = spec.name;
    this.unit = spec.unit;
    this.max = spec.max;
    this.owner = owner;
  }

  get used(): number {
    return this.usedNow;
  }

  get free(): number {
    return this.max - this.usedNow;
  }

  /** A lease for `amount`, or undefined when it does not fit (the refusal is counted and logged). */
  tryAcquire(amount = 1): Lease | undefined {
    if (!this.take(amount)) return undefined;
    return new Lease(amount, (n) => { this.usedNow -= n; }, (extra) => this.take(extra));
  }

  /** Runs `fn` holding `amount`; the lease is released when fn settles (success or error). Undefined when refused. */
  async run<T>(fn: (lease: Lease) => Promise<T>, amount = 1): Promise<{ value: T } | undefined> {
    const lease = this.tryAcquire(amount);
    if (!lease) return undefined;
    try {
      return { value: await fn(lease) };
    } finally {
      lease.release();
    }
  }

  private take(amount: number): boolean {
    if (!(amount >= 0)) throw new RangeError(`budget ${this.name}: bad amount ${amount}`);
    if (this.usedNow + amount > this.max) {
      this.owner.refuse(this.name, { max: this.max, used: this.usedNow, unit: this.unit });
      return false;
    }
    this.usedNow += amount;
    return true;
  }
}

/** A per-key limit under a total. Keys with nothing held are forgotten (no growth with the number of keys seen). */
export class KeyedBudget {
  readonly name: string;
  readonly unit: string;
  readonly perKey: number;
  readonly total: number;
  readonly perKeyName: string;
  private readonly held = new Map<string, number>();
  private usedNow = 0;
  private readonly owner: Budgets;

  constructor(spec: KeyedLimitSpec, owner: Budgets) {
    checkSpec(spec.name, spec.perKey);
    checkSpec(spec.name, spec.total);
    this.name = spec.name;
    this.unit = spec.unit;
    this.perKey = spec.perKey;
    this.total = spec.total;
    this.perKeyName = `${spec.name}_per_${spec.keyName}`;
    this.owner = owner;
  }

  get used(): number {
    return this.usedNow;
  }

  /** Keys holding something right now. */
  get keys(): number {
    return this.held.size;
  }

  usedBy(key: string): number {
    return this.held.get(key) ?? 0;
  }

  /** Would `amount` more for `key` fit? ('total' / 'per-key' say which limit stops it; nothing is counted.) */
  check(key: string, amount = 1): 'ok' | 'total' | 'per-key' {
    if (this.usedBy(key) + amount > this.perKey) return 'per-key';
    if (this.usedNow + amount > this.total) return 'total';
    return 'ok';
  }

  tryAcquire(key: string, amount = 1): Lease | undefined {
    if (!this.take(key, amount)) return undefined;
    return new Lease(amount, (n) => this.giveBack(key, n), (extra) => this.take(key, extra));
  }

  private take(key: string, amount: number): boolean {
    if (!(amount >= 0)) throw new RangeError(`budget ${this.name}: bad amount ${amount}`);
    const c = this.check(key, amount);
    if (c === 'per-key') {
      this.owner.refuse(this.perKeyName, { max: this.perKey, used: this.usedBy(key), unit: this.unit });
      return false;
    }
    if (c === 'total') {
      this.owner.refuse(this.name, { max: this.total, used: this.usedNow, unit: this.unit });
      return false;
    }
    this.held.set(key, this.usedBy(key) + amount);
    this.usedNow += amount;
    return true;
  }

  private giveBack(key: string, n: number): void {
    const left = this.usedBy(key) - n;
    if (left > 0) this.held.set(key, left);
    else this.held.delete(key);
    this.usedNow -= n;
  }
}

function checkSpec(name: string, max: number): void {
  if (!/^[a-z][a-z0-9_]*$/.test(name)) throw new Error(`budget name ${JSON.stringify(name)}: expected snake_case`);
  if (!(max >= 0)) throw new RangeError(`budget ${name}: bad limit ${max}`);
}

/**
 * Rate-limited refusal log: the first refusal of a budget is logged at once; later ones within the interval are
 * counted and logged in one line when it ends (a timer, unref'd), so a flood costs one line per interval per budget.
 */
export class RefusalLog {
  private readonly log: Logger | undefined;
  private readonly intervalMs: number;
  private readonly state = new Map<string, { lastAt: number; pending: number; fields: Record<string, unknown>; timer?: NodeJS.Timeout }>();

  constructor(log: Logger | undefined, intervalMs = REFUSAL_LOG_INTERVAL_MS) {
    this.log = log;
    this.intervalMs = intervalMs;
  }

  note(name: string, fields: Record<string, unknown> = {}): void {
    const now = Date.now();
    let s = this.state.get(name);
    if (!s) {
      s = { lastAt: -Infinity, pending: 0, fields };
      this.state.set(name, s);
    }
    s.pending++;
    s.fields = fields;
    if (s.timer) return;
    const wait = s.lastAt + this.intervalMs - now;
    if (wait <= 0) {
      this.flush(name);
      return;
    }
    s.timer = setTimeout(() => this.flush(name), wait);
    s.timer.unref();
  }

  private flush(name: string): void {
    const s = this.state.get(name);
    if (!s) return;
    if (s.timer) clearTimeout(s.timer);
    s.timer = undefined;
    if (s.pending === 0) return;
    this.log?.warn({ budget: name, refused: s.pending, ...s.fields }, `budget ${name} refused ${s.pending} time(s)`);
    s.pending = 0;
    s.lastAt = Date.now();
  }

  /** Logs what is pending now and stops the timers (shutdown). */
  close(): void {
    for (const name of this.state.keys()) this.flush(name);
  }
}

export interface BudgetsOptions {
  registry?: Registry;
  /** Metric name prefix: `<prefix>budget_refusals_total`, `<prefix>budget_in_use`. Default `edgemesh_`. */
  metricPrefix?: string;
  log?: Logger;
  logIntervalMs?: number;
}

/** The budgets of one process: one refusal counter, one in-use gauge, one rate-limited log. */
export class Budgets {
  private readonly all = new Map<string, Budget | KeyedBudget>();
  private readonly refusedCounts = new Map<string, number>();
  private readonly evictedCounts = new Map<string, number>();
  private readonly counter: Counter<'budget'> | undefined;
  private readonly evictions: Counter<'budget'> | undefined;
  readonly refusals: RefusalLog;

  constructor(opts: BudgetsOptions = {}) {
    const prefix = opts.metricPrefix ?? 'edgemesh_';
    this.refusals = new RefusalLog(opts.log, opts.logIntervalMs);
    if (opts.registry) {
      this.counter = new Counter({ name: `${prefix}budget_refusals_total`, help: 'Requests refused because a budget (named limit) was used up, by budget', labelNames: ['budget'], registers: [opts.registry] });
      this.evictions = new Counter({ name: `${prefix}budget_evictions_total`, help: 'Holders evicted to make room in a full budget (oldest idle connection for a newcomer), by budget', labelNames: ['budget'], registers: [opts.registry] });
      const all = this.all;
      new Gauge({
        name: `${prefix}budget_in_use`, help: 'Amount of each budget in use (its unit is in the budget name or /status)', labelNames: ['budget'], registers: [opts.registry],
        collect() {
          for (const b of all.values()) this.set({ budget: b.name }, b.used);
        },
      });
    }
  }

  budget(spec: LimitSpec): Budget {
    const b = new Budget(spec, this);
    this.register(b.name, b);
    return b;
  }

  keyed(spec: KeyedLimitSpec): KeyedBudget {
    const b = new KeyedBudget(spec, this);
    this.register(b.name, b);
    return b;
  }

  get(name: string): Budget | KeyedBudget | undefined {
    return this.all.get(name);
  }

  /** Counts and logs (rate-limited) one refusal of `name`: budgets call it; so does anything that refuses by a rule. */
  refuse(name: string, fields: Record<string, unknown> = {}): void {
    this.refusedCounts.set(name, (this.refusedCounts.get(name) ?? 0) + 1);
    this.counter?.inc({ budget: name });
    this.refusals.note(name, fields);
  }

  /** Counts one eviction (a holder pushed out to make room) in `name`. */
  evicted(name: string): void {
    this.evictedCounts.set(name, (this.evictedCounts.get(name) ?? 0) + 1);
    this.evictions?.inc({ budget: name });
  }

  evictedCount(name: string): number {
    return this.evictedCounts.get(name) ?? 0;
  }

  refused(name: string): number {
    return this.refusedCounts.get(name) ?? 0;
  }

  /** Every budget with its limit, use and refusals (for /status and tests). */
  state(): BudgetState[] {
    return [...this.all.values()].map((b) => ({
      name: b.name, unit: b.unit, max: b instanceof Budget ? b.max : b.total, used: b.used,
      refused: this.refused(b.name) + (b instanceof KeyedBudget ? this.refused(b.perKeyName) : 0),
    }));
  }

  close(): void {
    this.refusals.close();
  }

  private register(name: string, b: Budget | KeyedBudget): void {
    if (this.all.has(name)) throw new Error(`budget ${name} exists already`);
    this.all.set(name, b);
  }
}
