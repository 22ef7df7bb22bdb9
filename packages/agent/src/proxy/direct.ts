// DirectDialer: reaches an endpoint with plain net/dgram from this host (same-node endpoints, and the fallback when
// no tunnel is configured). Errors map onto DialError codes.
import { connect, isIPv6, Socket, type Server } from 'node:net';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import type { Duplex } from 'node:stream';
import { DialError, type DatagramChannel, type Deadline, type DialErrorCode, type DialTarget, type Dialer } from './dialer.ts';

/** The DialError code for a socket error. */
export function codeOf(err: NodeJS.ErrnoException): DialErrorCode {
  switch (err.code) {
    case 'ECONNREFUSED': return 'refused';
    case 'ETIMEDOUT': return 'timeout';
    case 'EACCES':
    case 'EPERM': return 'forbidden';
    default: return 'unreachable';
  }
}

/** TCP keepalive probes start after this much idle time, on both legs of a proxied connection (dead peers are noticed). */
export const TCP_KEEPALIVE_MS = 60_000;

/** Read size of the relay buffers (the same as Node's default socket read). */
export const RELAY_READ_BYTES = 65_536;
/** Free relay buffers kept for reuse across connections (x 64 KiB). */
export const RELAY_POOL_MAX = 128;
const pool: Buffer[] = [];

/**
 * Socket options that relay everything read from the new socket straight into `sink`, without Node allocating a
 * fresh buffer per read: reads land in pooled 64 KiB buffers, and a buffer goes back to the pool as soon as its write
 * has reached the kernel (at once when the write completed synchronously — the common case — else from the write
 * callback). Backpressure: reading pauses until `sink` drains. About a quarter less CPU per byte than `pipe` on
 * loopback. The socket still emits 'end', 'error' and 'close'. `sinkOf` is asked on every read: the sink may be
 * replaced by another object for the same connection (adoptRelayed).
 */
export function relayReads(sinkOf: () => RelaySink, self: () => Pick<Socket, 'resume'>, copyUnlessSocket = false): { buffer: () => Buffer; callback: (n: number, buf: Buffer) => boolean; dispose: () => void } {
  // The buffer handed out for the next read; a read that brought no data (EAGAIN, EOF) leaves it here for the next.
  let next: Buffer | undefined;
  return {
    buffer: () => (next ??= pool.pop() ?? Buffer.allocUnsafeSlow(RELAY_READ_BYTES)),
    /** The socket closed: its spare buffer goes back to the pool. */
    dispose: () => {
      if (next && pool.length < RELAY_POOL_MAX) pool.push(next);
      next = undefined;
    },
    callback: (n, buf) => {
      if (buf === next) next = undefined;
      const sink = sinkOf();
      if (sink.destroyed) return false;
      if (copyUnlessSocket && !(sink instanceof Socket)) {
        // Not a kernel socket: the write may keep the buffer past its callback, so it gets a copy of its own (as a
        // read without onread would); the pooled buffer serves the next read.
        next ??= buf;
        if (sink.write(Buffer.from(buf.subarray(0, n)))) return true;
        sink.once('drain', () => self().resume());
        return false;
      }
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        if (pool.length < RELAY_POOL_MAX) pool.push(buf);
      };
      const ok = sink.write(buf.subarray(0, n), release);
      // Fully written to the kernel synchronously: the buffer is free again right away.
      if (sink.writableLength === 0) release();
      if (!ok) {
        sink.once('drain', () => self().resume());
        return false;
      }
      return true;
    },
  };
}

/** Where relayed reads are written: a socket (the kernel has copied a write once it completes), or a stream that gets copies (acceptRelayed). */
export type RelaySink = Pick<Duplex, 'write' | 'writableLength' | 'destroyed' | 'once'>;
/** The socket a dial's reads are relayed into, or a getter for it (the client socket may be re-made, adoptRelayed). */
export type RelayTarget = Socket | (() => Socket);

/** What Node's net.Socket keeps privately and `adoptRelayed` moves: the libuv handle and the server it counts in. */
interface SocketInternals {
  _handle: object | null;
  _server: unknown;
  server: unknown;
}

/**
 * The upload direction's counterpart of `relayTo`: Node gives an accepted socket no `onread` option, so the paused,
 * never-read socket's handle moves into a new Socket made with one, whose reads go straight into `sink` through the
 * same pooled buffers (relayReads). The new socket stands in for `accepted` everywhere (it counts in the same server's
 * connections, so server.close() still waits for it); `accepted` is left without a handle and destroyed — remove
 * your own listeners from it first. Returns undefined (use `pipe`) when `accepted` has already read or buffered
 * anything, has a write in flight, has no handle, or Node's internals do not look as expected.
 */
export function adoptRelayed(accepted: Socket, sink: RelaySink): Socket | undefined {
  const raw = accepted as unknown as SocketInternals;
  const handle = raw._handle;
  if (!handle || typeof (handle as { useUserBuffer?: unknown }).useUserBuffer !== 'function') return undefined;
  if (accepted.destroyed || accepted.readableFlowing !== false || accepted.readableLength !== 0 || accepted.bytesRead !== 0 || accepted.writableLength !== 0) return undefined;
  let adopted: Socket | undefined;
  const relay = relayReads(() => sink, () => adopted!);
  raw._handle = null;
  adopted = new Socket({ handle: handle as never, allowHalfOpen: accepted.allowHalfOpen, readable: true, writable: true, pauseOnCreate: true, onread: { buffer: relay.buffer, callback: relay.callback } } as ConstructorParameters<typeof Socket>[0]);
  adopted.once('close', relay.dispose);
  const to = adopted as unknown as SocketInternals;
  to._server = raw._server;
  to.server = raw.server;
  raw._server = null;
  raw.server = null;
  accepted.destroy();
  return adopted;
}

/** What Node's net.Server keeps privately and `acceptRelayed` uses: the listening handle and its connection count. */
interface ServerInternals {
  _handle: { onconnection?: (this: unknown, err: number, clientHandle: unknown) => void } | null;
  _connections: number;
  allowHalfOpen: boolean;
  maxConnections?: number;
  blockList?: unknown;
}

/** A connection accepted by acceptRelayed: its socket, and where its reads go once the upstream is known. */
export interface RelayedAccept {
  readonly socket: Socket;
  /** Sets the upstream the socket's reads are written to; set it before the socket is resumed. */
  setSink(sink: RelaySink): void;
}

/**
 * Accepts `server`'s connections straight into Sockets made with `onread` (relayReads), one Socket per connection:
 * what adoptRelayed does after Node made a Socket of its own, which cost a second Socket and the destroy of the
 * first per connection. Replaces the listening handle's onconnection (Node's private `_handle.onconnection`, set by
 * listen(), so call this after listening): a connection takes the fast way when `fast()` says so, else (and on an
 * accept error, or with maxConnections/blockList set on the server) Node's own onconnection makes the Socket and the
 * server emits 'connection' as usual. A fast socket is paused, has TCP_NODELAY and no keepalive (keepalive.ts),
 * counts in the server's connections (server.close() waits for it) and is handed to `onAccept` — no 'connection'
 * event. Reads into the sink are copied when the sink is not a net.Socket (a tunnel stream may hold on to what it
 * was given). Returns false (nothing changed) when Node's internals do not look as expected.
 */
export function acceptRelayed(server: Server, fast: () => boolean, onAccept: (c: RelayedAccept) => void): boolean {
  const raw = server as unknown as ServerInternals;
  const handle = raw._handle;
  const node = handle?.onconnection;
  if (!handle || typeof node !== 'function' || typeof raw._connections !== 'number') return false;
  handle.onconnection = function (this: unknown, err: number, clientHandle: unknown) {
    const h = clientHandle as { useUserBuffer?: unknown; setNoDelay?: (on: boolean) => void } | undefined;
    if (err || !h || typeof h.useUserBuffer !== 'function' || raw.maxConnections != null || raw.blockList || !fast()) {
      node.call(this, err, clientHandle);
      return;
    }
    let sink: RelaySink | undefined;
    let socket: Socket | undefined;
    const relay = relayReads(() => sink!, () => socket!, true);
    socket = new Socket({ handle: h as never, allowHalfOpen: raw.allowHalfOpen, readable: true, writable: true, pauseOnCreate: true, onread: { buffer: relay.buffer, callback: relay.callback } } as ConstructorParameters<typeof Socket>[0]);
    socket.once('close', relay.dispose);
    h.setNoDelay?.(true);
    raw._connections++;
    const to = socket as unknown as SocketInternals;
    to._server = server;
    to.server = server;
    onAccept({ socket, setSink: (s) => { sink = s; } });
  };
  return true;
}

export class DirectDialer implements Dialer {
  /**
   * Connects to the endpoint. With `relayTo`, everything the endpoint sends is written to that socket directly
   * (see relayReads) — the caller must then not read the returned stream itself, only watch its events.
   */
  dialTcp(target: DialTarget, deadline?: Deadline, relayTo?: RelayTarget): Promise<Duplex> {
    return new Promise((resolve, reject) => {
      if (deadline && (deadline.remaining() <= 0 || (!deadline.onAbort && deadline.signal.aborted))) {
        return reject(new DialError('timeout', `dial ${target.ip}:${target.port}: aborted`));
      }
      let sock: Socket;
      if (relayTo) {
        // The TCP listener's dial: it turns keepalive on itself once the connection has lived a while (keepalive.ts).
        const relay = relayReads(typeof relayTo === 'function' ? relayTo : () => relayTo, () => sock);
        sock = connect({ host: target.ip, port: target.port, allowHalfOpen: true, noDelay: true, onread: { buffer: relay.buffer, callback: relay.callback } });
        sock.once('close', relay.dispose);
      } else {
        sock = connect({ host: target.ip, port: target.port, allowHalfOpen: true, noDelay: true, keepAlive: true, keepAliveInitialDelay: TCP_KEEPALIVE_MS });
      }
      const onAbort = () => {
        sock.destroy();
        reject(new DialError('timeout', `dial ${target.ip}:${target.port}: timed out`));
      };
      let unhook: (() => void) | undefined;
      if (deadline?.onAbort) unhook = deadline.onAbort(onAbort);
      else if (deadline) {
        const signal = deadline.signal;
        signal.addEventListener('abort', onAbort, { once: true });
        unhook = () => signal.removeEventListener('abort', onAbort);
      }
      const onError = (e: NodeJS.ErrnoException) => {
        unhook?.();
        reject(new DialError(codeOf(e), `dial ${target.ip}:${target.port}: ${e.code ?? e.message}`, e.code));
      };
      sock.once('error', onError);
      sock.once('connect', () => {
        unhook?.();
        sock.removeListener('error', onError);
        resolve(sock);
      });
    });
  }

  openUdp(target: DialTarget, deadline?: Deadline): Promise<DatagramChannel> {
    const signal = deadline?.signal;
    return new Promise((resolve, reject) => {
      const sock: UdpSocket = createSocket(isIPv6(target.ip) ? 'udp6' : 'udp4');
      const fail = (e: NodeJS.ErrnoException) => {
        sock.close();
        reject(new DialError(codeOf(e), `udp ${target.ip}:${target.port}: ${e.code ?? e.message}`, e.code));
      };
      if (signal?.aborted) return fail(Object.assign(new Error('aborted'), { code: 'ETIMEDOUT' }));
      sock.once('error', fail);
      sock.connect(target.port, target.ip, () => {
        sock.removeListener('error', fail);
        resolve(new UdpChannel(sock));
      });
    });
  }
}

class UdpChannel implements DatagramChannel {
  private readonly sock: UdpSocket;
  private closed = false;
  private closeFns: ((err?: Error) => void)[] = [];

  constructor(sock: UdpSocket) {
    this.sock = sock;
    // An ICMP port unreachable surfaces as ECONNREFUSED on a connected socket: the endpoint is gone.
    sock.on('error', (e) => this.finish(e));
  }

  send(datagram: Buffer): void {
    if (this.closed) return;
    this.sock.send(datagram, (e) => { if (e) this.finish(e); });
  }

  onMessage(fn: (datagram: Buffer) => void): void {
    this.sock.on('message', (m) => fn(m));
  }

  onClose(fn: (err?: Error) => void): void {
    this.closeFns.push(fn);
  }

  close(): void {
    this.finish();
  }

  private finish(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    try { this.sock.close(); } catch { /* already closed */ }
    for (const f of this.closeFns) f(err);
  }
}
