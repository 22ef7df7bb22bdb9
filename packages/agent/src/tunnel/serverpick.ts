// Which address of a server name to dial, and when to reconnect after a DRAIN: pure, over plain data.
// A draining server (server/drain.ts) tells its agents to move; the agent reconnects through the same configured
// address (a Service VIP now reaching another replica) at a random moment of the window, and, where the name resolves
// to several addresses, tries the drained server's IP last.
import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from 'node:dns';
import { isIP } from 'node:net';
import type { Logger } from '@edgemesh/common/log';
import { decodeControl, T } from '@edgemesh/common/tunnel/protocol';
import { DRAIN_RECONNECT_MAX_MS, DRAINED_AVOID_MS } from './timers.ts';

export interface ResolvedAddress { address: string; family: number }

/** The addresses to try, in order: those not drained recently first (their DNS order kept), the drained ones last
 *  (when nothing else answers, a drained server is better than none). `avoid` maps an IP to when its avoidance ends. */
export function orderAddresses<A extends ResolvedAddress>(addrs: readonly A[], avoid: ReadonlyMap<string, number>, now: number): A[] {
  const fresh = (a: A) => (avoid.get(a.address) ?? -Infinity) <= now;
  return [...addrs.filter(fresh), ...addrs.filter((a) => !fresh(a))];
}

/** Records that the server at `ip` is draining; forgets expired entries (the map stays as small as the servers). */
export function noteDrained(avoid: Map<string, number>, ip: string, now: number): void {
  for (const [k, until] of avoid) if (until <= now) avoid.delete(k);
  if (ip) avoid.set(ip, now + DRAINED_AVOID_MS);
}

/** How long to wait before reconnecting after DRAIN {withinMs}: uniform in the window (so a fleet spreads over it),
 *  the window clamped to DRAIN_RECONNECT_MAX_MS. `random` is in [0, 1). */
export function drainReconnectDelayMs(withinMs: number, random: number): number {
  const window = Math.max(0, Math.min(withinMs, DRAIN_RECONNECT_MAX_MS));
  return Math.floor(Math.min(Math.max(random, 0), 1) * window);
}

/** One server connection's view of DRAIN (serverconn.ts): whether its server is draining, the timer of the reconnect,
 *  and the IPs that drained (a DNS name's addresses are dialed with those last). */
export class DrainFollower {
  draining = false;
  private timer: NodeJS.Timeout | undefined;
  private redialNow = false;
  private readonly avoid = new Map<string, number>();

  /** A DRAIN frame's body from the server at `remote`: `reconnect` runs at a random moment of its window (a repeated
   *  DRAIN changes nothing). */
  onDrain(body: Buffer, remote: string, log: Logger, reconnect: () => void): void {
    const m = decodeControl(T.DRAIN, body);
    if (!m || this.draining) return;
    this.draining = true;
    noteDrained(this.avoid, remote, Date.now());
    const delay = drainReconnectDelayMs(m.withinMs, Math.random());
    log.info({ remote, inMs: delay }, 'server is draining, reconnecting');
    this.timer = setTimeout(() => {
      this.redialNow = true;
      reconnect();
    }, delay);
    this.timer.unref();
  }

  /** The connection closed (or is being stopped): whether to redial at once (we left because of a DRAIN). */
  closed(): boolean {
    clearTimeout(this.timer);
    this.draining = false;
    const now = this.redialNow;
    this.redialNow = false;
    return now;
  }

  /** tls.connect options for `host`: a name is resolved to all its addresses, drained IPs last. */
  connectOptions(host: string): { lookup?: typeof dnsLookup } {
    return isIP(host) ? {} : { lookup: this.lookup as unknown as typeof dnsLookup };
  }

  private readonly lookup = (host: string, o: LookupOptions, cb: (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void): void => {
    dnsLookup(host, { ...o, all: true }, (err, addrs) => {
      if (err) return cb(err, '');
      const ordered = orderAddresses(addrs, this.avoid, Date.now());
      if (o.all) return cb(null, ordered);
      cb(null, ordered[0].address, ordered[0].family);
    });
  };
}
