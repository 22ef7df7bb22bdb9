// Flat groups (proxy.directCIDRs): endpoints of other nodes whose IPs are routable from here (a site with its own CNI,
// one L2 segment) are dialed directly instead of through the tunnel. The ranges are configuration; whether a node's
// pods really are reachable is learned from the dials themselves (the probe is the traffic): a direct dial to such
// an endpoint that times out or finds no route marks its node "not flat" for NOT_FLAT_HOLD_MS, and the same connect
// attempt goes on over the tunnel at once; after the hold the next dial tries directly again. A refused connection
// proves the route (the pod's host answered with a RST) and is passed on as it is.
import type { Duplex } from 'node:stream';
import type { Logger } from '@edgemesh/common/log';
import { DirectRanges } from './choose.ts';
import { DialError, dialDeadline, type DatagramChannel, type Deadline, type DialTarget, type Dialer } from './dialer.ts';
import { DirectDialer, type RelayTarget } from './direct.ts';
import type { ProxyMetrics } from './metrics.ts';

/**
 * How long a direct dial to another node's endpoint may take before the tunnel is tried. A handshake inside one site
 * takes well under 100 ms; Linux retransmits a lost SYN after 1 s, so one lost SYN costs one tunnel fallback (and a
 * hold), never a failed connection. The rest of the connect attempt's deadline (proxy DIAL_TIMEOUT_MS, 3 s) is left
 * for the tunnel.
 */
export const FLAT_DIAL_TIMEOUT_MS = 1000;
/** A node whose direct dial failed is reached through the tunnel this long; then a dial tries directly again. */
export const NOT_FLAT_HOLD_MS = 60_000;

/** Socket errors that say "no route from here" (as opposed to a refusal by a reachable host). */
const NO_ROUTE = new Set(['EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ENETDOWN', 'ETIMEDOUT']);

/** Why a failed direct dial means the node is not flat from here: `timeout` / `unreachable`, or undefined. Pure. */
export function notFlatReason(err: unknown): 'timeout' | 'unreachable' | undefined {
  if (err instanceof DialError) {
    if (err.code === 'timeout') return 'timeout';
    if (err.sysCode !== undefined && NO_ROUTE.has(err.sysCode)) return err.sysCode === 'ETIMEDOUT' ? 'timeout' : 'unreachable';
    return undefined;
  }
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code !== undefined && NO_ROUTE.has(code)) return code === 'ETIMEDOUT' ? 'timeout' : 'unreachable';
  return undefined;
}

export interface FlatStatus {
  directCIDRs: readonly string[];
  /** Nodes whose pods were found unreachable directly: the tunnel is used until `retryInSeconds` have passed. */
  notFlat: { node: string; reason: string; retryInSeconds: number }[];
}

/** Reachability state per node (the only state of flat routing), with an injectable clock. */
export class FlatPaths {
  readonly ranges: DirectRanges;
  private readonly down = new Map<string, { until: number; reason: string }>();
  private readonly now: () => number;
  private readonly holdMs: number;
  private readonly metrics: ProxyMetrics;
  private readonly log: Logger;

  constructor(o: { cidrs: readonly string[]; metrics: ProxyMetrics; log: Logger; now?: () => number; holdMs?: number }) {
    this.ranges = new DirectRanges(o.cidrs);
    this.metrics = o.metrics;
    this.log = o.log;
    this.now = o.now ?? (() => performance.now());
    this.holdMs = o.holdMs ?? NOT_FLAT_HOLD_MS;
  }

  /** True unless the node failed a direct dial less than the hold ago. */
  nodeFlat(node: string): boolean {
    const d = this.down.get(node);
    if (!d) return true;
    if (this.now() < d.until) return false;
    this.down.delete(node);
    this.metrics.flatNodesDown.set(this.down.size);
    return true;
  }

  /** A direct dial to an endpoint of `node` found no route: the tunnel for the hold (counted, logged once per hold). */
  markDown(node: string, reason: 'timeout' | 'unreachable'): void {
    this.metrics.flatFallbacks.inc({ reason });
    const wasDown = !this.nodeFlatPeek(node);
    this.down.set(node, { until: this.now() + this.holdMs, reason });
    this.metrics.flatNodesDown.set(this.down.size);
    if (!wasDown) this.log.warn({ node, reason, holdSeconds: this.holdMs / 1000 }, 'pods of this node are not reachable directly (proxy.directCIDRs): using the tunnel');
  }

  /** Forgets nodes that left the cluster (their entries would otherwise stay until looked up). */
  retain(nodes: ReadonlySet<string>): void {
    for (const n of this.down.keys()) if (!nodes.has(n)) this.down.delete(n);
    this.metrics.flatNodesDown.set(this.down.size);
  }

  status(): FlatStatus {
    const now = this.now();
    const notFlat = [...this.down].filter(([, d]) => d.until > now).map(([node, d]) => ({ node, reason: d.reason, retryInSeconds: Math.ceil((d.until - now) / 1000) }));
    return { directCIDRs: this.ranges.cidrs, notFlat };
  }

  private nodeFlatPeek(node: string): boolean {
    const d = this.down.get(node);
    return !d || this.now() >= d.until;
  }
}

/**
 * The dialer of the `flat` path: a direct dial with FLAT_DIAL_TIMEOUT_MS, then the tunnel when it found no route.
 * A DirectDialer, so the TCP proxy hands it the client socket (`relayTo`) as for same-node endpoints; after a fallback
 * the tunnel stream is piped into that socket, so the caller sees the same contract either way.
 */
export class FlatDialer extends DirectDialer {
  private readonly paths: FlatPaths;
  private readonly tunnel: () => Dialer | undefined;
  private readonly flatTimeoutMs: number;
  /** The plain dialer underneath (a DirectDialer; tests give a double). */
  private readonly base: DirectDialer;

  constructor(paths: FlatPaths, tunnel: () => Dialer | undefined, o: { flatTimeoutMs?: number; base?: DirectDialer } = {}) {
    super();
    this.paths = paths;
    this.tunnel = tunnel;
    this.flatTimeoutMs = o.flatTimeoutMs ?? FLAT_DIAL_TIMEOUT_MS;
    this.base = o.base ?? new DirectDialer();
  }

  override async dialTcp(target: DialTarget, deadline?: Deadline, relayTo?: RelayTarget): Promise<Duplex> {
    const short = this.short(deadline);
    try {
      return await this.base.dialTcp(target, short, relayTo);
    } catch (e) {
      const tunnel = this.fallback(target, e, deadline);
      const stream = await tunnel.dialTcp(target, deadline);
      if (relayTo) stream.pipe(typeof relayTo === 'function' ? relayTo() : relayTo, { end: false });
      return stream;
    } finally {
      short.release?.();
    }
  }

  override async openUdp(target: DialTarget, deadline?: Deadline): Promise<DatagramChannel> {
    let ch: DatagramChannel;
    try {
      ch = await this.base.openUdp(target, deadline);
    } catch (e) {
      return this.fallback(target, e, deadline).openUdp(target, deadline);
    }
    // A connected UDP socket learns of a missing route only from an ICMP error: the session ends, the client's next
    // datagram opens one over the tunnel.
    ch.onClose((err) => {
      const reason = err ? notFlatReason(err) : undefined;
      if (reason && target.nodeName) this.paths.markDown(target.nodeName, reason);
    });
    return ch;
  }

  /** The direct attempt's deadline: flatTimeoutMs, or what is left of the caller's when that is shorter. */
  private short(deadline: Deadline | undefined): Deadline {
    return dialDeadline(Math.min(this.flatTimeoutMs, deadline ? deadline.remaining() : Infinity), deadline?.signal);
  }

  /** The tunnel to retry on, after marking the node; rethrows when the failure says nothing about the route. */
  private fallback(target: DialTarget, err: unknown, deadline: Deadline | undefined): Dialer {
    const reason = notFlatReason(err);
    const tunnel = this.tunnel();
    if (!reason || !tunnel || !target.nodeName || deadline?.signal.aborted) throw err;
    this.paths.markDown(target.nodeName, reason);
    return tunnel;
  }
}
