// TCP proxy for one service port: accept -> route -> connect (bounded retries, each to a different endpoint) ->
// pipe both ways with backpressure and half-close. A reset, not a hang, when no endpoint is allowed.
import { createServer, Socket, type Server } from 'node:net';
import type { Duplex } from 'node:stream';
import { listenReusePort } from '@edgemesh/common/reuseport';
import { dialDeadline } from './dialer.ts';
import { acceptRelayed, adoptRelayed, DirectDialer, type RelayedAccept } from './direct.ts';
import { cancelKeepAlive, keepAliveLater, type KeepAliveLater } from './keepalive.ts';
import { headComplete, headerFromRequestHead, type PortState } from './portstate.ts';
import { countOpened, dialerFor, recordFailure, targetOf, type ListenerContext } from './listener.ts';
import { splice } from './splice.ts';

export const DIAL_TIMEOUT_MS = 3000;
/** Connect attempts per client connection, each to a different endpoint. */
export const MAX_DIAL_ATTEMPTS = 3;
/** A proxied connection with no traffic either way for this long is closed (Envoy's default idle timeout). */
export const TCP_IDLE_TIMEOUT_MS = 3_600_000;
/** Bytes of the first request read to find a hashed HTTP header, and how long to wait for them. */
export const HEADER_PEEK_MAX_BYTES = 8192;
export const HEADER_PEEK_TIMEOUT_MS = 2000;
/** Pending-accept queue per service-port listener. */
export const LISTEN_BACKLOG = 4096;

export interface TcpContext extends ListenerContext {
  idleTimeoutMs: number;
  dialTimeoutMs: number;
  /** Shared connection budget across all TCP listeners. */
  limit: { active: number; max: number };
}

const EMPTY = Buffer.alloc(0);

function reset(sock: Socket): void {
  if (sock.destroyed) return;
  sock.resetAndDestroy();
}

export class TcpListener {
  readonly state: PortState;
  private readonly server: Server;
  private readonly ctx: TcpContext;
  private readonly conns = new Set<Socket>();
  private connLabels: ConnLabels | undefined;
  port = 0;

  constructor(state: PortState, ctx: TcpContext) {
    this.state = state;
    this.ctx = ctx;
    // Keepalive is turned on by a shared sweep for connections that live (keepalive.ts), not here.
    this.server = createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true }, (s) => this.accept(s, undefined));
  }

  /**
   * Listens on host:port with SO_REUSEPORT (port 0: a fresh one). `shared`: the port is the one a running agent we
   * take over from holds, bound alongside it; otherwise a port another socket holds is refused.
   */
  async listen(host: string, port = 0, shared = false): Promise<number> {
    this.port = await listenReusePort(this.server, host, port, { shared, backlog: LISTEN_BACKLOG });
    // Connections go straight into relaying sockets, unless the policy must read the request head first.
    acceptRelayed(this.server, () => !this.state.hashHeader, (c) => this.accept(c.socket, c));
    this.server.on('error', (e) => this.ctx.log.error({ err: e.message, service: this.state.service.key }, 'tcp listener error'));
    return this.port;
  }

  /** The label sets of this listener's per-connection metrics, made once (not per connection). */
  private labels(service: string): ConnLabels {
    if (this.connLabels?.active.service !== service) {
      this.connLabels = { active: { service, protocol: 'tcp' }, bytesIn: { service, direction: 'in' }, bytesOut: { service, direction: 'out' } };
    }
    return this.connLabels;
  }

  /** Proxied connections open now (a draining agent waits for them). */
  get openConnections(): number {
    return this.conns.size;
  }

  /** Stops accepting; open connections are closed too when `all`. */
  async close(all: boolean): Promise<void> {
    if (all) for (const c of this.conns) c.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  /** `relayed`: accepted by acceptRelayed (its reads go to the upstream once that is set). */
  private accept(client: Socket, relayed: RelayedAccept | undefined): void {
    const svc = this.state.service.key;
    const { metrics, limit } = this.ctx;
    client.on('error', ignore);
    if (limit.active >= limit.max) {
      metrics.refused.inc({ service: svc, protocol: 'tcp', reason: 'limit' });
      return reset(client);
    }
    limit.active++;
    metrics.active.inc(this.labels(svc).active);
    const conn = new Tracked(this.conns, limit, metrics, this.labels(svc), client);
    conn.relayed = relayed;
    const header = relayed ? undefined : this.state.hashHeader;
    const started = header
      ? this.peekHead(client).then((head) => this.connect(conn, head, head.length ? headerFromRequestHead(head, header) : undefined))
      : this.connect(conn, undefined, undefined);
    // A bug in the per-connection path costs this connection (reset), never the process.
    started.catch((e: unknown) => {
      this.ctx.log.error({ err: e, service: svc }, 'proxying a connection failed');
      reset(conn.sock);
    });
  }

  /** Reads the start of the first request (until the end of its headers, a size cap or a timeout). */
  private peekHead(client: Socket): Promise<Buffer> {
    return new Promise((resolve) => {
      const chunks: Buffer[] = [];
      let n = 0;
      const done = () => {
        clearTimeout(t);
        client.removeListener('data', onData);
        client.removeListener('end', done);
        client.pause();
        resolve(Buffer.concat(chunks));
      };
      let tail = EMPTY; // the last bytes read, for a blank line split across reads
      const onData = (b: Buffer) => {
        chunks.push(b);
        n += b.length;
        const ended = headComplete(tail, b);
        tail = Buffer.concat([tail, b.subarray(-3)]).subarray(-3);
        if (n >= HEADER_PEEK_MAX_BYTES || ended) done();
      };
      const t = setTimeout(done, HEADER_PEEK_TIMEOUT_MS);
      client.on('data', onData);
      client.once('end', done);
      client.resume();
    });
  }

  private async connect(conn: Tracked, head: Buffer | undefined, headerValue: string | undefined): Promise<void> {
    const st = this.state;
    const svc = st.service.key;
    const { metrics } = this.ctx;
    const client = conn.sock;
    // The client's address is a getpeername() call: made only when the policy balances on it (affinity, hashing).
    let clientIP: string | undefined;
    let tried: Set<string> | undefined; // endpoints that failed for this connection (made at the first failure)
    let upstream: Duplex | undefined;
    let relayed = false;
    let pick: ReturnType<PortState['pick']>;
    for (let attempt = 0; attempt < MAX_DIAL_ATTEMPTS && !client.destroyed; attempt++) {
      if (st.balancer.usesClientIP) clientIP ??= (client.remoteAddress ?? '').replace(/^::ffff:/, '');
      pick = st.pick(clientIP ?? '', headerValue, tried);
      if (!pick) break;
      const dialer = dialerFor(this.ctx, pick);
      st.balancer.started(pick.key);
      const target = targetOf(st, pick, 'tcp');
      // The one deadline of this attempt: every layer below (the tunnel, the far agent) works within it.
      const deadline = dialDeadline(this.ctx.dialTimeoutMs);
      try {
        if (dialer instanceof DirectDialer) {
          upstream = await dialer.dialTcp(target, deadline, conn.current);
          relayed = true;
        } else {
          upstream = await dialer.dialTcp(target, deadline);
          relayed = false;
        }
        st.outliers.recordSuccess(pick.key);
        break;
      } catch (e) {
        st.balancer.ended(pick.key);
        (tried ??= new Set()).add(pick.key);
        recordFailure(this.ctx, st, pick.key, e);
        pick = undefined;
      } finally {
        deadline.release();
      }
    }
    if (!upstream && client.destroyed) return; // the client gave up while we were dialing
    if (!upstream || !pick) {
      const reason = tried?.size ? 'dial_failed' : st.plan.emptyScope ? 'strict_empty' : 'no_endpoint';
      metrics.refused.inc({ service: svc, protocol: 'tcp', reason });
      this.ctx.log.debug({ service: svc, reason }, 'connection reset');
      return reset(client);
    }
    const key = pick.key;
    countOpened(this.ctx, st, pick, 'tcp');
    if (client.destroyed) {
      st.balancer.ended(key);
      upstream.destroy();
      return;
    }
    conn.upstream = upstream;
    const onDone = () => st.balancer.ended(key);
    if (conn.relayed) {
      // Accepted into a relaying socket: its reads go to the upstream from now on.
      conn.relayed.setSink(upstream);
      splice(client, upstream, { relayed, clientRelayed: true, idleMs: this.ctx.idleTimeoutMs, onDone });
      return;
    }
    // Client -> endpoint through pooled buffers too (as the endpoint's reads already go to the client), when the
    // client socket has not been read yet (no header peek) and the upstream is a socket.
    const adopted = !head && upstream instanceof Socket ? conn.adopt(upstream) : undefined;
    splice(adopted ?? client, upstream, { relayed, clientRelayed: !!adopted, head, idleMs: this.ctx.idleTimeoutMs, onDone });
  }
}

const ignore = () => {};

/** Label sets of one listener's per-connection metrics (the same objects every time). */
interface ConnLabels {
  readonly active: { service: string; protocol: 'tcp' };
  readonly bytesIn: { service: string; direction: 'in' };
  readonly bytesOut: { service: string; direction: 'out' };
}

/**
 * One proxied connection's share of the listener's bookkeeping (budget, open set, metrics), released once when its
 * client socket closes — also after `adopt` moved the connection into another Socket object.
 */
class Tracked implements KeepAliveLater {
  sock: Socket;
  /** Set when the listener accepted the connection into a relaying socket (acceptRelayed). */
  relayed: RelayedAccept | undefined;
  /** The endpoint's side, once dialed. */
  upstream: Duplex | undefined;
  private readonly conns: Set<Socket>;
  private readonly limit: { active: number };
  private readonly metrics: TcpContext['metrics'];
  private readonly labels: ConnLabels;
  private released = false;
  private readonly onClose = () => this.release();
  /** The client socket now (relayed reads of a direct upstream go wherever the connection lives). */
  readonly current = (): Socket => this.sock;

  constructor(conns: Set<Socket>, limit: { active: number }, metrics: TcpContext['metrics'], labels: ConnLabels, sock: Socket) {
    this.conns = conns;
    this.limit = limit;
    this.metrics = metrics;
    this.labels = labels;
    this.sock = sock;
    conns.add(sock);
    sock.once('close', this.onClose);
    keepAliveLater(this);
  }

  keepAliveSockets(): readonly (Socket | undefined)[] {
    return [this.sock, this.upstream instanceof Socket ? this.upstream : undefined];
  }

  /** Re-makes the client socket with its reads relayed into `upstream` (adoptRelayed); undefined when it cannot. */
  adopt(upstream: Socket): Socket | undefined {
    const old = this.sock;
    old.removeListener('close', this.onClose);
    const s = adoptRelayed(old, upstream);
    if (!s) {
      old.once('close', this.onClose);
      return undefined;
    }
    s.on('error', ignore);
    this.conns.delete(old);
    this.conns.add(s);
    this.sock = s;
    s.once('close', this.onClose);
    return s;
  }

  private release(): void {
    if (this.released) return;
    this.released = true;
    cancelKeepAlive(this);
    const { sock, labels } = this;
    this.limit.active--;
    this.conns.delete(sock);
    this.metrics.active.dec(labels.active);
    this.metrics.bytes.inc(labels.bytesIn, sock.bytesRead);
    this.metrics.bytes.inc(labels.bytesOut, sock.bytesWritten);
  }
}
