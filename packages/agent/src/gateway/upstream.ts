// Keep-alive HTTP/1.1 connection pools to mesh Services for the gateway: a node:http Agent per Service port whose
// connections come from the proxy's connect path (Proxier.connectTcp: routing, balancing, the tunnel for other
// nodes' endpoints). Node's http client does the framing; this file only supplies the streams.
//
// A tunnel stream is a Duplex, not a net.Socket: the Agent calls setKeepAlive/ref/unref/setTimeout(0) on pooled
// sockets, which such streams lack, so they get no-op shims (the gateway never sets socket timeouts on upstream
// requests; its own timers bound them). An idle pooled connection is closed after UPSTREAM_FREE_IDLE_MS.
import { Agent, type AgentOptions, type ClientRequest } from 'node:http';
import type { Duplex } from 'node:stream';

/** Concurrent upstream connections per Service port (requests beyond it wait for a free one). */
export const UPSTREAM_MAX_SOCKETS = 256;
/** Idle keep-alive connections kept per Service port. */
export const UPSTREAM_MAX_FREE_SOCKETS = 32;
/**
 * An idle pooled connection is closed after this: below the 5 s keep-alive timeout of Node's http server (a common
 * upstream), so we close before the upstream does and never send a request into a connection it is closing.
 */
export const UPSTREAM_FREE_IDLE_MS = 4000;

/** Opens an upstream stream; `clientIP` is the client of the request that needs the new connection. */
type Connect = (signal: AbortSignal, clientIP: string) => Promise<Duplex>;

/** Request option carrying the client's address to createConnection (the pool key ignores it). */
export const CLIENT_IP_OPTION = 'edgemeshClientIP';

const NOOP_SOCKET_METHODS = ['setKeepAlive', 'setNoDelay', 'ref', 'unref', 'setTimeout'] as const;

/** Gives a non-socket stream the socket methods the http Agent calls on pooled connections, as no-ops. */
export function socketShim(d: Duplex): Duplex {
  const o = d as unknown as Record<string, unknown>;
  for (const m of NOOP_SOCKET_METHODS) {
    if (typeof o[m] !== 'function') o[m] = function noop(this: Duplex) { return this; };
  }
  return d;
}

export class MeshAgent extends Agent {
  private readonly connectFn: Connect;
  private readonly idle = new WeakMap<object, NodeJS.Timeout>();
  private readonly freeIdleMs: number;

  constructor(connect: Connect, o: { freeIdleMs?: number; maxSockets?: number; maxFreeSockets?: number } = {}) {
    const opts: AgentOptions = { keepAlive: true, maxSockets: o.maxSockets ?? UPSTREAM_MAX_SOCKETS, maxFreeSockets: o.maxFreeSockets ?? UPSTREAM_MAX_FREE_SOCKETS, scheduling: 'lifo' };
    super(opts);
    this.connectFn = connect;
    this.freeIdleMs = o.freeIdleMs ?? UPSTREAM_FREE_IDLE_MS;
  }

  // Asynchronous createConnection: the Agent waits for the callback (returning undefined).
  override createConnection(options: unknown, cb?: (err: Error | null, stream: Duplex) => void): Duplex {
    const ac = new AbortController();
    const clientIP = String((options as Record<string, unknown> | undefined)?.[CLIENT_IP_OPTION] ?? '');
    this.connectFn(ac.signal, clientIP).then(
      (d) => cb?.(null, socketShim(d)),
      (e: Error) => cb?.(e, undefined as unknown as Duplex),
    ).catch(() => {}); // cb is the Agent's own; nothing it throws may become an unhandled rejection
    return undefined as unknown as Duplex;
  }

  override keepSocketAlive(socket: Duplex): boolean {
    // Typed void, returns whether to keep the socket at runtime.
    const ok = (Agent.prototype.keepSocketAlive as (s: Duplex) => unknown).call(this, socket) !== false;
    if (ok) {
      const t = setTimeout(() => socket.destroy(), this.freeIdleMs);
      t.unref();
      this.idle.set(socket, t);
    }
    return ok;
  }

  override reuseSocket(socket: Duplex, req: ClientRequest): void {
    clearTimeout(this.idle.get(socket));
    this.idle.delete(socket);
    super.reuseSocket(socket, req);
  }
}
