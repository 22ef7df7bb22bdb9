// TCP keepalive for the proxy's connections, turned on only for connections that live: keepalive costs four
// setsockopt calls per socket (SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT), eight per proxied connection,
// which was most of the proxy's socket-option work per connection (haproxy makes two). Its first probe comes after
// TCP_KEEPALIVE_MS of silence, so a connection that closes sooner never needed it: one shared sweep turns it on for
// the connections open at that moment, once each.
import type { Socket } from 'node:net';
import { TCP_KEEPALIVE_MS } from './direct.ts';

/**
 * How often the sweep runs: a connection gets keepalive within this long of opening (a dead peer is then noticed
 * at most this much later than with keepalive set at once: TCP_KEEPALIVE_MS + this, plus the probes).
 */
export const KEEPALIVE_SWEEP_MS = 10_000;

/** A connection waiting for its keepalive: the sockets of both legs as they are now (the client may be re-made). */
export interface KeepAliveLater {
  keepAliveSockets(): readonly (Socket | undefined)[];
}

const waiting = new Set<KeepAliveLater>();
let timer: NodeJS.Timeout | undefined;

/** Keepalive goes on for `c`'s sockets at the next sweep, unless `cancelKeepAlive(c)` ran first (it closed). */
export function keepAliveLater(c: KeepAliveLater): void {
  waiting.add(c);
  if (!timer) {
    timer = setInterval(sweep, KEEPALIVE_SWEEP_MS);
    timer.unref();
  }
}

export function cancelKeepAlive(c: KeepAliveLater): void {
  waiting.delete(c);
}

/** Connections still waiting (tests). */
export function keepAliveWaiting(): number {
  return waiting.size;
}

/** Turns keepalive on for every waiting connection now (the sweep; tests call it directly). */
export function sweepKeepAlive(): void {
  sweep();
}

function sweep(): void {
  for (const c of waiting) {
    for (const s of c.keepAliveSockets()) if (s && !s.destroyed) s.setKeepAlive(true, TCP_KEEPALIVE_MS);
  }
  waiting.clear();
  if (timer) clearInterval(timer);
  timer = undefined;
}
