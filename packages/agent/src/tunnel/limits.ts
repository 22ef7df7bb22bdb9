// The agent tunnel's budgets against hostile peers (every peer input is hostile, even from a cluster node: a stolen
// box holds a node's credentials). Named limits with units; the ones an operator tunes are `tunnel.limits.*` in the
// agent config (defaults below). Refusals are counted in edgemesh_budget_refusals_total{budget} and logged
// rate-limited (common/budget.ts); descriptor pressure (common/fds.ts) sheds new served streams before the control
// plane's reserve.
import type { EventEmitter } from 'node:events';
import type { Budget, Budgets, KeyedBudget, Lease } from '@edgemesh/common/budget';
import type { FdPressure } from '@edgemesh/common/fds';
import { fullBucket, take, type BucketParams, type BucketState } from '@edgemesh/common/ratelimit';
import { DialError } from '../proxy/dialer.ts';
import { BIRTHDAY_SOCKETS, upgradeAfter, upgradeDelayMs, type UpgradeState } from './punch.ts';
import { PATH_TIMEOUT_MS, REPUNCH_AFTER_FAILOVER_MS, UPGRADE_RETRY_MS } from './timers.ts';

/** Streams peers opened to us that we serve at once (dialing or open), all peers together. Each holds one local
 *  socket: with the UDP ones below, what a flood of OPENs can make us hold. */
export const SERVED_STREAMS = 8192;
/** ... and per peer: a quarter of the total, so one peer (or one stolen node) cannot take every other peer's share. */
export const SERVED_STREAMS_PER_PEER = 2048;
/** UDP sockets held for served UDP streams (one connected socket per flow), all peers together. */
export const SERVED_UDP_SOCKETS = 4096;
/** ... and per peer (UDP flows end only after UDP_IDLE_MS of silence, so they pile up faster than TCP). */
export const SERVED_UDP_SOCKETS_PER_PEER = 1024;
/** Links to one peer at once: a relay link per server (multi-server), the direct one, and spares while a session
 *  moves between them. More means a peer is opening links for their own sake. */
export const LINKS_PER_PEER = 8;
/** Punch attempts under way at once, all peers together (each pings up to 16 candidates on a 6 s schedule). */
export const PUNCH_SESSIONS = 64;
/** Birthday sockets held at once: one round (BIRTHDAY_SOCKETS), so one birthday round at a time. */
export const BIRTHDAY_SOCKET_BUDGET = BIRTHDAY_SOCKETS;
/** A peer's birthday request is followed only if a normal punch with it failed (or was under way) this recently:
 *  birthday mode is the follow-up of a round this agent took part in, never a first contact. */
export const BIRTHDAY_FOLLOWUP_MS = 30_000;
/** os.networkInterfaces() (candidates for punching) is read at start and on this timer, never per rendezvous (it
 *  opens a netlink socket: under descriptor exhaustion it throws). */
export const INTERFACES_REFRESH_MS = 30_000;

export const BUDGET_SERVED_STREAMS = 'tunnel_served_streams';
export const BUDGET_SERVED_UDP = 'tunnel_served_udp_sockets';
export const BUDGET_LINKS = 'tunnel_links';
export const BUDGET_PUNCH = 'tunnel_punch_sessions';
export const BUDGET_BIRTHDAY = 'tunnel_birthday_sockets';
/** Refusals by rule (not by amount): counted under these budget names too. */
export const REFUSAL_BIRTHDAY_UNASKED = 'tunnel_birthday_unasked';
export const REFUSAL_NOT_A_NODE = 'tunnel_not_a_node';
export const REFUSAL_RENDEZVOUS_RATE = 'tunnel_rendezvous_rate';

// ---------- rendezvous offers per peer ----------
// What one legitimate peer sends us, from the punch policy (punch.ts, peerdirect.ts, timers.ts):
// - an *attempt* is a normal round and, when it failed with exactly one side symmetric, a birthday round at once
//   (followUpMode): RENDEZVOUS_ROUNDS_PER_ATTEMPT rounds. In each round the requester sends one request through every
//   server it is on (RENDEZVOUS_COPIES copies reach us) and the responder answers the first copy once. Per pair of
//   attempts (one by the peer, one by us, or simultaneous requests of which one side answers) the peer sends us
//   ROUNDS × (COPIES + 1) offers: rendezvousOffersPerAttemptPair.
// - a side starts attempts by its upgrade policy: after losing a direct path at REPUNCH_AFTER_FAILOVER_MS, doubling up
//   to the retry interval (upgradeDelayMs), then every retry interval; a first contact at once. The densest burst is
//   the first contact (or the attempt that came up direct) plus the re-punches while backing off after a loss, each
//   taking no time: rendezvousBurstAttempts, computed with upgradeAfter/upgradeDelayMs themselves.
// - sustained: a new back-off starts only after a direct path was up and silent for PATH_TIMEOUT_MS, re-punched
//   REPUNCH_AFTER_FAILOVER_MS later (a flapping path), and a relayed pair tries once per retry interval; so one
//   attempt pair per min(retry, PATH_TIMEOUT_MS + REPUNCH_AFTER_FAILOVER_MS) at most.
// The bucket is that, times RENDEZVOUS_HEADROOM. With the defaults (4 copies, 60 s retry): burst 160 offers, 2.67/s;
// a 3 s retry (the fault tests): burst 80, 6.67/s. A real pair on one server sends 2 to 4 offers per attempt pair.
// What it bounds: offers past it are dropped before the certificate and signature checks (two Ed25519 verifies),
// before our signed reply and before a punch session starts (a new request replaces the peer's punch under way,
// one per peer at a time, PUNCH_SESSIONS in all), so a flooding peer costs a map lookup per offer past its bucket.
// Counted in edgemesh_budget_refusals_total{budget="tunnel_rendezvous_rate"}. Keyed by the sender the server
// authenticated, and only for cluster Nodes (checked first), so one peer cannot spend another's bucket and the
// buckets are bounded by the cluster (a node that leaves it is dropped with forgetPeer).

/** Copies of one request that can reach us: one per server the sender is on (each forwards it). The chart runs one or
 *  two server replicas; 4 leaves room for a sender on more servers than we are (we count ours if we are on more). */
export const RENDEZVOUS_COPIES = 4;
/** Rounds in one punch attempt: the normal round and the birthday follow-up. */
export const RENDEZVOUS_ROUNDS_PER_ATTEMPT = 2;
/** Headroom over the derived legitimate maximum (a copy delayed into the next window, a round the model missed). */
export const RENDEZVOUS_HEADROOM = 2;

/** Offers the peer sends us for one attempt of its own and one of ours: its requests (every copy) and its replies. */
export function rendezvousOffersPerAttemptPair(copies: number): number {
  return RENDEZVOUS_ROUNDS_PER_ATTEMPT * (copies + 1);
}

/** Attempts one side can make back to back: the first (at once) and the re-punches after a loss while the delay
 *  doubles below the retry interval, plus the first one at the full interval — by the upgrade policy itself. */
export function rendezvousBurstAttempts(retryMs: number = UPGRADE_RETRY_MS): number {
  let s: UpgradeState = upgradeAfter({ lastAttemptMs: 0, lastOutcome: 'never' }, 'lost', 0);
  let n = 1; // the first contact, or the attempt whose direct path was then lost
  for (let d = upgradeDelayMs(s, retryMs); ; d = upgradeDelayMs(s, retryMs)) {
    n++;
    if (d >= retryMs) return n;
    s = upgradeAfter(s, 'failed', s.lastAttemptMs + d);
  }
}

/** The per-peer bucket of rendezvous offers for a retry interval and the number of servers we are on. */
export function rendezvousRate(o: { upgradeRetryMs?: number; servers?: number } = {}): BucketParams {
  const retryMs = o.upgradeRetryMs ?? UPGRADE_RETRY_MS;
  const perPair = rendezvousOffersPerAttemptPair(Math.max(RENDEZVOUS_COPIES, o.servers ?? 1));
  const periodMs = Math.max(1, Math.min(retryMs, PATH_TIMEOUT_MS + REPUNCH_AFTER_FAILOVER_MS));
  return {
    capacity: RENDEZVOUS_HEADROOM * perPair * rendezvousBurstAttempts(retryMs),
    ratePerSec: (RENDEZVOUS_HEADROOM * perPair * 1000) / periodMs,
  };
}

export interface TunnelLimitsConfig {
  servedStreams: number;
  servedStreamsPerPeer: number;
  servedUdpSockets: number;
  servedUdpSocketsPerPeer: number;
  linksPerPeer: number;
  punchSessions: number;
}

export const DEFAULT_TUNNEL_LIMITS: TunnelLimitsConfig = {
  servedStreams: SERVED_STREAMS, servedStreamsPerPeer: SERVED_STREAMS_PER_PEER, servedUdpSockets: SERVED_UDP_SOCKETS,
  servedUdpSocketsPerPeer: SERVED_UDP_SOCKETS_PER_PEER, linksPerPeer: LINKS_PER_PEER, punchSessions: PUNCH_SESSIONS,
};

/** The tunnel's budgets, made once per Tunnel from the process's Budgets. */
export class TunnelBudgets {
  readonly budgets: Budgets;
  readonly fds: FdPressure | undefined;
  readonly served: KeyedBudget;
  readonly servedUdp: KeyedBudget;
  readonly links: KeyedBudget;
  readonly punch: Budget;
  readonly birthday: Budget;
  /** Rendezvous offers per peer (rendezvousRate). */
  readonly rendezvousRate: BucketParams;
  private readonly rendezvous = new Map<string, BucketState>();

  constructor(budgets: Budgets, limits: TunnelLimitsConfig = DEFAULT_TUNNEL_LIMITS, fds?: FdPressure, rendezvous: BucketParams = rendezvousRate()) {
    this.budgets = budgets;
    this.fds = fds;
    this.served = budgets.keyed({ name: BUDGET_SERVED_STREAMS, perKey: limits.servedStreamsPerPeer, total: limits.servedStreams, unit: 'streams', keyName: 'peer' });
    this.servedUdp = budgets.keyed({ name: BUDGET_SERVED_UDP, perKey: limits.servedUdpSocketsPerPeer, total: limits.servedUdpSockets, unit: 'sockets', keyName: 'peer' });
    this.links = budgets.keyed({ name: BUDGET_LINKS, perKey: limits.linksPerPeer, total: Infinity, unit: 'links', keyName: 'peer' });
    this.punch = budgets.budget({ name: BUDGET_PUNCH, max: limits.punchSessions, unit: 'sessions' });
    this.birthday = budgets.budget({ name: BUDGET_BIRTHDAY, max: BIRTHDAY_SOCKET_BUDGET, unit: 'sockets' });
    this.rendezvousRate = rendezvous;
  }

  /** Whether a rendezvous offer from `peer` at `now` (ms) is within its rate; a refusal is counted (and logged,
   *  rate-limited) as tunnel_rendezvous_rate. Call it before any check that costs more than this. */
  admitRendezvous(peer: string, now: number): boolean {
    let b = this.rendezvous.get(peer);
    if (!b) this.rendezvous.set(peer, (b = fullBucket(this.rendezvousRate, now)));
    if (take(b, this.rendezvousRate, now)) return true;
    this.budgets.refuse(REFUSAL_RENDEZVOUS_RATE, { peer, perSec: Math.round(this.rendezvousRate.ratePerSec * 100) / 100 });
    return false;
  }

  /** A node left the cluster: its bucket goes (only the cluster, never a peer, removes a node). */
  forgetPeer(peer: string): void {
    this.rendezvous.delete(peer);
  }

  /** Peers with a rendezvous bucket (tests). */
  get rendezvousPeers(): number {
    return this.rendezvous.size;
  }

  /** A link to `peer` over `stream`, held until the stream closes; throws (and destroys the stream) when refused. */
  linkLease(peer: string, stream: EventEmitter & { destroy(): void }): Lease {
    const lease = this.links.tryAcquire(peer);
    if (!lease) {
      stream.destroy();
      throw new DialError('refused', `too many links to ${peer}`);
    }
    return lease.releaseOn(stream, 'close');
  }

  /**
   * What one served stream from `peer` holds: a stream (and for UDP a socket) of its budgets, and a descriptor the
   * fd pressure admits. Undefined when any says no (counted and logged there); the reason says which.
   */
  admitServed(peer: string, udp: boolean): { lease: ServedLease } | { refused: 'streams' | 'udp-sockets' | 'descriptors' } {
    const s = this.served.tryAcquire(peer);
    if (!s) return { refused: 'streams' };
    let u: Lease | undefined;
    if (udp) {
      u = this.servedUdp.tryAcquire(peer);
      if (!u) {
        s.release();
        return { refused: 'udp-sockets' };
      }
    }
    if (this.fds && !this.fds.admit(1)) {
      s.release();
      u?.release();
      return { refused: 'descriptors' };
    }
    return { lease: new ServedLease(s, u, this.fds) };
  }
}

/** What one served stream holds (its stream lease, its UDP socket lease, its descriptor), given back exactly once. */
export class ServedLease {
  private readonly stream: Lease;
  private readonly udp: Lease | undefined;
  private readonly fds: FdPressure | undefined;

  constructor(stream: Lease, udp: Lease | undefined, fds: FdPressure | undefined) {
    this.stream = stream;
    this.udp = udp;
    this.fds = fds;
  }

  get released(): boolean {
    return this.stream.released;
  }

  /** True the first time. */
  release(): boolean {
    if (!this.stream.release()) return false;
    this.udp?.release();
    this.fds?.note(-1);
    return true;
  }

  /** Releases on the first of `events` (default 'close'): error, peer gone and our destroy all end in 'close'. */
  releaseOn(emitter: EventEmitter, ...events: string[]): this {
    for (const ev of events.length ? events : ['close']) emitter.once(ev, () => this.release());
    return this;
  }
}
