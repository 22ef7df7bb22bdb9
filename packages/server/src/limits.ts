// The server's budgets against hostile agents and strangers: relay streams (per opener→target pair, per target, in
// total, not-yet-answered per opener), unauthenticated connections (per source and in total, in relay.ts through
// ConnLimiter), and bytes held in partial frames (in total, with a deadline to complete a frame). Accounting only:
// the leases here are taken and given back by relay.ts; every refusal is counted in
// edgemesh_server_budget_refusals_total{budget} and logged rate-limited by Budgets (never per refusal, and never to
// the victim: a refused OPEN costs the target nothing).
import type { Budget, Budgets, KeyedBudget, Lease } from '@edgemesh/common/budget';

/**
 * Relay streams one opener may hold to one target (a relay stream carries one tunnel link; an agent holds one link per
 * peer and per server, a few more while one replaces another). One name opened 4,096 streams to a victim and used up
 * its capacity for every other opener: 16 leaves room for reconnect overlap and nothing for a flood.
 */
export const RELAY_STREAMS_PER_PAIR = 16;
/**
 * Relay streams one target may be the target of, from all openers together: a node relayed to by ~1,000 peers of a
 * large mesh; well under MAX_STREAMS_PER_AGENT (4,096), so the streams a victim opens itself are never crowded out.
 */
export const RELAY_STREAMS_PER_TARGET = 1024;
/** Relay streams through this server in total: ~16 KiB of state each plus what is in flight, ~0.5 GiB at worst. */
export const RELAY_STREAMS_TOTAL = 32_768;
/**
 * Streams one opener may hold that the target has not answered yet (no DATA back): a link's handshake is answered in
 * one round trip, so a legitimate agent has a few at once (one per peer it is dialing); parking opens is refused.
 */
export const RELAY_PENDING_OPENS_PER_OPENER = 64;
/** A relay stream the target has not answered within this time is reset (the dialer gave up long before). */
export const RELAY_OPEN_ANSWER_TIMEOUT_MS = 15_000;
/**
 * Unauthenticated connections (handshake not finished) per source address (IPv6: per /64). A site of many nodes behind
 * one NAT reconnects at once after a server restart: 128 such nodes handshake together; more wait for their backoff.
 */
export const UNAUTH_CONNS_PER_SOURCE = 128;
/** Unauthenticated connections in total: a handshake is a few hundred bytes and one descriptor. */
export const UNAUTH_CONNS_TOTAL = 1024;
/** An unauthenticated connection younger than this is never evicted for a newcomer (its HELLO may be on the way). */
export const UNAUTH_MIN_EVICT_AGE_MS = 1000;
/**
 * Bytes held in partial (incomplete) frames of all connections together. A frame may be 1 MiB (MAX_FRAME_BYTES);
 * agents send ≤ 64 KiB DATA chunks and ≤ 64 KiB REPORTs, which complete in one round trip. 200 connections parking a
 * 1 MiB frame one byte short held 184 MiB: when this is full the connection whose frame has waited longest is dropped.
 */
export const PARTIAL_FRAME_BYTES_TOTAL = 64 * 1024 * 1024;
/** A frame started must be complete within this time (its sender not paused by us), or the connection is dropped. */
export const PARTIAL_FRAME_DEADLINE_MS = 10_000;
/** How often the open-answer and partial-frame deadlines are checked (so they are enforced within this much). */
export const DEADLINE_SWEEP_MS = 1000;

/**
 * Control messages (OPEN, RENDEZVOUS, PING, REPORT, ...) one authenticated agent may have handled per second, and the
 * burst: each costs a MAC check and usually an answer. An agent dialing 1,000 peers at start sends 1,000 OPENs; over
 * the rate its connection is paused (its frames wait, in order) until the bucket refills, so a flood of OPENs costs
 * the server CONTROL_MSGS_PER_SEC per agent and no more (16,000 OPENs/s from 4 names starved every other agent).
 */
export const CONTROL_MSGS_PER_SEC = 200;
export const CONTROL_MSGS_BURST = 400;

/** Budget names (the `budget` label of the refusal counter). */
export const B = {
  streams: 'relay_streams',
  /** per-key refusals of `streams` (opener→target). */
  pair: 'relay_streams_per_pair',
  target: 'relay_streams_in',
  /** per-key refusals of `target`. */
  perTarget: 'relay_streams_in_per_target',
  pending: 'relay_opens_pending',
  perOpener: 'relay_opens_pending_per_opener',
  openDeadline: 'relay_open_deadline',
  unauth: 'tunnel_unauth_conns',
  unauthPerSource: 'tunnel_unauth_conns_per_source',
  frameBytes: 'partial_frame_bytes',
  frameDeadline: 'partial_frame_deadline',
  acceptError: 'tunnel_accept_error',
  /** Counted once per pause of an agent that exceeded CONTROL_MSGS_PER_SEC. */
  controlRate: 'control_msgs_rate',
} as const;

export interface ServerLimits {
  streamsPerPair: number;
  streamsPerTarget: number;
  streamsTotal: number;
  pendingOpensPerOpener: number;
  unauthPerSource: number;
  unauthTotal: number;
  partialFrameBytes: number;
}

export const DEFAULT_LIMITS: ServerLimits = {
  streamsPerPair: RELAY_STREAMS_PER_PAIR, streamsPerTarget: RELAY_STREAMS_PER_TARGET, streamsTotal: RELAY_STREAMS_TOTAL,
  pendingOpensPerOpener: RELAY_PENDING_OPENS_PER_OPENER, unauthPerSource: UNAUTH_CONNS_PER_SOURCE, unauthTotal: UNAUTH_CONNS_TOTAL,
  partialFrameBytes: PARTIAL_FRAME_BYTES_TOTAL,
};

/** What one relay stream holds: released together, once, when the stream is forgotten (any path). */
export class StreamLeases {
  private readonly leases: Lease[];
  private pendingLease: Lease | undefined;
  constructor(leases: Lease[], pending: Lease) {
    this.leases = leases;
    this.pendingLease = pending;
  }

  /** The target answered (its first DATA): the open no longer counts as pending. */
  answered(): void {
    this.pendingLease?.release();
    this.pendingLease = undefined;
  }

  get pending(): boolean {
    return this.pendingLease !== undefined;
  }

  release(): void {
    this.answered();
    for (const l of this.leases) l.release();
  }
}

/** The relay-stream budgets. `admit` takes all four leases or none (the one that refused is counted). */
export class RelayStreamBudgets {
  readonly total: KeyedBudget;
  readonly target: KeyedBudget;
  readonly pending: KeyedBudget;

  constructor(budgets: Budgets, limits: ServerLimits) {
    // The pair key is the per-key limit under the total: relay_streams (total), relay_streams_per_pair.
    this.total = budgets.keyed({ name: B.streams, perKey: limits.streamsPerPair, total: limits.streamsTotal, unit: 'streams', keyName: 'pair' });
    this.target = budgets.keyed({ name: B.target, perKey: limits.streamsPerTarget, total: Infinity, unit: 'streams', keyName: 'target' });
    this.pending = budgets.keyed({ name: B.pending, perKey: limits.pendingOpensPerOpener, total: Infinity, unit: 'streams', keyName: 'opener' });
  }

  /** Leases for a stream `opener` → `target`, or undefined when a limit is full (counted there). */
  admit(opener: string, target: string): StreamLeases | undefined {
    const pending = this.pending.tryAcquire(opener);
    if (!pending) return undefined;
    const pair = this.total.tryAcquire(`${opener}>${target}`);
    if (!pair) {
      pending.release();
      return undefined;
    }
    const tgt = this.target.tryAcquire(target);
    if (!tgt) {
      pending.release();
      pair.release();
      return undefined;
    }
    return new StreamLeases([pair, tgt], pending);
  }
}

/** Which streams are past the open-answer deadline (pure: over plain data). */
export function unansweredPast<S extends { openedAt: number; pending: boolean }>(streams: Iterable<S>, now: number, timeoutMs: number): S[] {
  const out: S[] = [];
  for (const s of streams) if (s.pending && now - s.openedAt >= timeoutMs) out.push(s);
  return out;
}

/** What partial-frame accounting looks at for one connection. */
export interface PartialView {
  /** Bytes held for the incomplete frame (0 = none). */
  readonly pending: number;
  /** Since when the current incomplete frame has been waiting (undefined = none, or its sender is paused by us). */
  readonly partialSince: number | undefined;
}

/** Connections whose frame has been incomplete for `deadlineMs` or more (pure). */
export function partialPast<C extends PartialView>(conns: Iterable<C>, now: number, deadlineMs: number): C[] {
  const out: C[] = [];
  for (const c of conns) if (c.pending > 0 && c.partialSince !== undefined && now - c.partialSince >= deadlineMs) out.push(c);
  return out;
}

/** The connection to drop when the partial-frame budget is full: the one waiting longest, never `except` (pure). */
export function oldestPartial<C extends PartialView>(conns: Iterable<C>, except: C): C | undefined {
  let best: C | undefined;
  for (const c of conns) {
    if (c === except || c.pending === 0 || c.partialSince === undefined) continue;
    if (!best || c.partialSince < best.partialSince!) best = c;
  }
  return best;
}

/**
 * Partial-frame bytes of one connection against the shared budget: `update(pending, framesCompleted, now)` after each
 * decode, `release()` when the connection closes. `update` returns false when the bytes do not fit even after
 * `makeRoom` dropped others (the caller drops this connection).
 */
export class PartialFrameAccount implements PartialView {
  private readonly lease: Lease;
  partialSince: number | undefined;
  private held = 0;

  constructor(budget: Budget) {
    this.lease = budget.tryAcquire(0)!; // 0 always fits
  }

  get pending(): number {
    return this.held;
  }

  update(pending: number, framesCompleted: number, now: number, makeRoom: () => boolean): boolean {
    if (pending === 0) this.partialSince = undefined;
    else if (framesCompleted > 0 || this.partialSince === undefined) this.partialSince = now;
    // Bounded: each makeRoom drops one other connection (and gives back its bytes), or says there is none.
    for (let i = 0; i < 64; i++) {
      if (this.lease.resize(pending)) {
        this.held = pending;
        return true;
      }
      if (!makeRoom()) break;
    }
    return false;
  }

  /** Our sender was paused (by the rate limit or a full peer): the deadline does not run while it cannot send. */
  paused(): void {
    this.partialSince = undefined;
  }

  resumed(now: number): void {
    if (this.held > 0) this.partialSince = now;
  }

  release(): void {
    this.held = 0;
    this.partialSince = undefined;
    this.lease.release();
  }
}
