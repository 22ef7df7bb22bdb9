// Connection slots for a listener that hostile clients can reach (DNS over TCP, admin HTTP): connections per source
// and in total are budgets; when one is full, the oldest idle connection (or one whose message has been dribbling in
// longest) is evicted for the newcomer, so slow or parked connections cannot lock real clients out. Which
// connection to evict is a pure function (pickEviction) over plain slot data.
import type { Budgets, KeyedBudget, Lease } from './budget.ts';
import type { FdPressure } from './fds.ts';

/** What eviction looks at. Times are ms (Date.now()). */
export interface SlotView {
  readonly key: string;
  /** Last time the connection finished something (opened, answered); idle since then when not busy. */
  readonly lastActive: number;
  /** Requests being worked on (an upstream query, a handler): a busy connection is never evicted. */
  readonly busy: number;
  /** Set while a message has started but not completed: since when. */
  readonly partialSince: number | undefined;
}

/**
 * The connection to evict for a newcomer, or undefined: among connections that are not busy and have been idle (or
 * dribbling a partial message) for at least `minAgeMs`, the idle one idle longest, else the one whose partial message
 * started earliest. The age floor protects a connection that was just accepted and whose first bytes are still on
 * their way (a burst of accepts must not evict a real client before it could speak).
 */
export function pickEviction<S extends SlotView>(slots: Iterable<S>, now: number, minAgeMs: number): S | undefined {
  let idle: S | undefined;
  let partial: S | undefined;
  for (const s of slots) {
    if (s.busy > 0) continue;
    if (s.partialSince === undefined) {
      if (now - s.lastActive >= minAgeMs && (!idle || s.lastActive < idle.lastActive)) idle = s;
    } else if (now - s.partialSince >= minAgeMs && (!partial || s.partialSince < partial.partialSince!)) {
      partial = s;
    }
  }
  return idle ?? partial;
}

export class ConnSlot implements SlotView {
  readonly key: string;
  readonly openedAt: number;
  lastActive: number;
  busy = 0;
  partialSince: number | undefined;
  private readonly lease: Lease;
  private readonly owner: ConnLimiter;
  /** Called when the limiter evicts this connection: destroy the socket. */
  readonly evict: () => void;
  private closed = false;

  constructor(key: string, now: number, lease: Lease, owner: ConnLimiter, evict: () => void) {
    this.key = key;
    this.openedAt = now;
    this.lastActive = now;
    this.lease = lease;
    this.owner = owner;
    this.evict = evict;
  }

  /** A request started (not evictable while any is in flight). */
  begin(): void {
    this.busy++;
  }

  /** A request finished. */
  end(now = Date.now()): void {
    if (this.busy > 0) this.busy--;
    this.lastActive = now;
  }

  /** A message started arriving (now) or completed (undefined). */
  partial(since: number | undefined): void {
    this.partialSince = since;
  }

  /** Gives the slot back; call on the socket's 'close' (idempotent). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.owner.forget(this);
    this.lease.release();
  }
}

export interface ConnLimiterOptions {
  budgets: Budgets;
  /** Budget name (the total); per-source refusals are `<name>_per_source`. */
  name: string;
  perSource: number;
  total: number;
  /** A connection younger than this (idle or partial) is never evicted. */
  minEvictAgeMs: number;
  /** Shed new connections when descriptors run short (counted as `fd_reserve` refusals). */
  fds?: FdPressure;
  now?: () => number;
}

export class ConnLimiter {
  private readonly opts: ConnLimiterOptions;
  private readonly budget: KeyedBudget;
  private readonly slots = new Set<ConnSlot>();
  private readonly now: () => number;

  constructor(opts: ConnLimiterOptions) {
    this.opts = opts;
    this.budget = opts.budgets.keyed({ name: opts.name, perKey: opts.perSource, total: opts.total, unit: 'connections', keyName: 'source' });
    this.now = opts.now ?? Date.now;
  }

  get size(): number {
    return this.slots.size;
  }

  get total(): number {
    return this.opts.total;
  }

  all(): IterableIterator<ConnSlot> {
    return this.slots.values();
  }

  /**
   * A slot for a new connection from `key`, evicting an old idle or dribbling connection when a limit is full; undefined
   * when there is no room (the caller destroys the socket; the refusal is counted). `evict` destroys this connection
   * when a later newcomer needs its slot.
   */
  open(key: string, evict: () => void): ConnSlot | undefined {
    const now = this.now();
    if (this.opts.fds && this.opts.fds.shed()) {
      // Over the descriptor line: make room by evicting before refusing (evicting frees a descriptor).
      if (!this.evictOne(this.slots, now)) {
        this.opts.fds.admit(1); // counts the refusal
        return undefined;
      }
    }
    const c = this.budget.check(key);
    if (c === 'per-key') this.evictOne(this.slotsOf(key), now);
    else if (c === 'total') this.evictOne(this.slots, now);
    const lease = this.budget.tryAcquire(key);
    if (!lease) return undefined;
    const slot = new ConnSlot(key, now, lease, this, evict);
    this.slots.add(slot);
    return slot;
  }

  /** @internal ConnSlot.close */
  forget(s: ConnSlot): void {
    this.slots.delete(s);
  }

  private *slotsOf(key: string): Iterable<ConnSlot> {
    for (const s of this.slots) if (s.key === key) yield s;
  }

  private evictOne(from: Iterable<ConnSlot>, now: number): boolean {
    const victim = pickEviction(from, now, this.opts.minEvictAgeMs);
    if (!victim) return false;
    victim.close(); // the slot is free now, before the socket's 'close' arrives
    this.opts.budgets.evicted(this.opts.name);
    try {
      victim.evict();
    } catch {
      // destroying a socket does not throw; a broken evict callback must not take the newcomer down with it
    }
    return true;
  }
}
