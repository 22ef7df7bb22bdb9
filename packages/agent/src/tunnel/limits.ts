// The agent tunnel's budgets against hostile peers (every peer input is hostile, even from a cluster node: a stolen
// box holds a node's credentials). Named limits with units; the ones an operator tunes are `tunnel.limits.*` in the
// agent config (defaults below). Refusals are counted in edgemesh_budget_refusals_total{budget} and logged
// rate-limited (common/budget.ts); descriptor pressure (common/fds.ts) sheds new served streams before the control
// plane's reserve.
import type { EventEmitter } from 'node:events';
import type { Budget, Budgets, KeyedBudget, Lease } from '@edgemesh/common/budget';
import type { FdPressure } from '@edgemesh/common/fds';
import { DialError } from '../proxy/dialer.ts';
import { BIRTHDAY_SOCKETS } from './punch.ts';

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

  constructor(budgets: Budgets, limits: TunnelLimitsConfig = DEFAULT_TUNNEL_LIMITS, fds?: FdPressure) {
    this.budgets = budgets;
    this.fds = fds;
    this.served = budgets.keyed({ name: BUDGET_SERVED_STREAMS, perKey: limits.servedStreamsPerPeer, total: limits.servedStreams, unit: 'streams', keyName: 'peer' });
    this.servedUdp = budgets.keyed({ name: BUDGET_SERVED_UDP, perKey: limits.servedUdpSocketsPerPeer, total: limits.servedUdpSockets, unit: 'sockets', keyName: 'peer' });
    this.links = budgets.keyed({ name: BUDGET_LINKS, perKey: limits.linksPerPeer, total: Infinity, unit: 'links', keyName: 'peer' });
    this.punch = budgets.budget({ name: BUDGET_PUNCH, max: limits.punchSessions, unit: 'sessions' });
    this.birthday = budgets.budget({ name: BUDGET_BIRTHDAY, max: BIRTHDAY_SOCKET_BUDGET, unit: 'sockets' });
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
