// Joins two byte streams both ways with backpressure and half-close: the proxy's client and its upstream, and the
// tunnel's serving side (a peer's stream and the local endpoint). A FIN travels on as a FIN, so the tail of a reply
// is never lost; a reset or error on one side resets the other.
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';

export interface SpliceOptions {
  /** The upstream's reads already go to the client (DirectDialer's relayTo): only client -> upstream is piped. */
  relayed?: boolean;
  /** The client's reads already go to the upstream (adoptRelayed): only its end is passed on. */
  clientRelayed?: boolean;
  /** Bytes already read from the client (a peeked request head), written to the upstream first. */
  head?: Buffer;
  /** No traffic either way for this long closes both (on whichever side is a socket; 0 = none). */
  idleMs?: number;
  /** Called once when the client side is done. */
  onDone?: () => void;
}

const isSocket = (d: Duplex): d is Socket => typeof (d as Partial<Socket>).setTimeout === 'function' && typeof (d as Partial<Socket>).resetAndDestroy === 'function';

/** Resets a stream: a TCP RST for a socket, a destroy with an error (a tunnel RESET) for anything else. */
export function resetStream(d: Duplex): void {
  if (d.destroyed) return;
  if (isSocket(d)) d.resetAndDestroy();
  else d.destroy(new Error('reset by the other side of the splice'));
}

/**
 * Passes a FIN on to `d`. When `d` has nothing left to read (its peer's FIN came first) or to write, closing it sends
 * the same FIN (nothing unread: no reset) and saves the shutdown(2) and its request: both ways are then done anyway.
 */
function endOrClose(d: Duplex): void {
  if (d.readableEnded && d.writableLength === 0 && isSocket(d)) d.destroy();
  else d.end();
}

export function splice(client: Duplex, upstream: Duplex, o: SpliceOptions = {}): void {
  let finished = false;
  const finish = () => {
    if (finished) return;
    finished = true;
    o.onDone?.();
  };
  // The endpoint reset or failed: pass a reset on to the client, and the other way round.
  upstream.on('error', () => resetStream(client));
  client.on('error', () => resetStream(upstream));
  client.once('close', () => {
    finish();
    // Both directions finished: the upstream closes itself once its last write is flushed. Otherwise (reset, idle
    // timeout, closed by stop() even after the client's FIN) nothing more can reach the client or the endpoint.
    if (!upstream.destroyed && !(upstream.writableEnded && upstream.readableEnded)) upstream.destroy();
  });
  upstream.once('close', () => {
    finish();
    if (client.destroyed) return;
    // Flush what the endpoint sent, then close; if the client still had data to send, there is no one to take it.
    if (!client.writableEnded) client.end();
    if (!client.readableEnded) {
      if (client.writableFinished) client.destroy();
      else client.once('finish', () => client.destroy());
    }
  });
  const idleSide = isSocket(client) ? client : isSocket(upstream) ? upstream : undefined;
  if (o.idleMs && idleSide) {
    idleSide.setTimeout(o.idleMs, () => {
      client.destroy();
      upstream.destroy();
    });
  }
  if (o.head?.length) upstream.write(o.head);
  if (o.clientRelayed) client.once('end', () => { if (!upstream.destroyed) endOrClose(upstream); });
  else client.pipe(upstream);
  if (o.relayed) {
    // Half-close: the endpoint's FIN becomes ours to the client; flowing mode lets 'end' be emitted.
    upstream.once('end', () => { if (!client.destroyed) endOrClose(client); });
    upstream.resume();
  } else {
    upstream.pipe(client);
  }
  client.resume();
}
