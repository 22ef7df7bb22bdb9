// UDP proxy for one service port: one socket, a session per client address (ip:port) held in an LRU with an idle
// timeout; each session has its own channel to the endpoint, so datagrams stay whole and replies go back to the
// right client from the service port.
import { createSocket, type Socket as UdpSocket, type RemoteInfo } from 'node:dgram';
import { LRUCache } from 'lru-cache';
import { bindReusePort } from '@edgemesh/common/reuseport';
import { detachUdp, localKey, registerUdp, type UdpRelay } from '../handoff/udp.ts';
import { dialDeadline, type DatagramChannel } from './dialer.ts';
import { countOpened, dialerFor, recordFailure, targetOf, type ListenerContext } from './listener.ts';
import type { PortState } from './portstate.ts';

/** A session with no datagram either way for this long is closed (EdgeMesh uses 250 ms, far too short for DNS/QUIC). */
export const UDP_SESSION_IDLE_MS = 60_000;
export const UDP_MAX_SESSIONS_PER_PORT = 10_000;
/** Datagrams held per session while its channel opens; more are dropped. */
export const UDP_PENDING_MAX = 64;
export const UDP_PURGE_INTERVAL_MS = 5_000;
export const UDP_OPEN_TIMEOUT_MS = 3_000;

export interface UdpContext extends ListenerContext {
  idleMs: number;
}

interface Session {
  channel?: DatagramChannel;
  pending: Buffer[];
  key: string;
  closed: boolean;
}

export class UdpListener {
  readonly state: PortState;
  private readonly sock: UdpSocket;
  private readonly ctx: UdpContext;
  private readonly sessions: LRUCache<string, Session>;
  private readonly purge: NodeJS.Timeout;
  /** Per-datagram counters, label sets resolved once. */
  private readonly bytesIn: { inc(n: number): void };
  private readonly bytesOut: { inc(n: number): void };
  port = 0;
  private host = '';
  /** How replies leave: our socket, or (detached during a handoff) the staying agent's socket on the same port. */
  private out: (d: Buffer, port: number, address: string, cb: (e: Error | null) => void) => void;
  private unregister: () => void = () => {};
  /** performance.now() of the last datagram either way (a draining agent waits until its sessions are quiet). */
  lastActivity = 0;

  constructor(state: PortState, ctx: UdpContext) {
    this.state = state;
    this.ctx = ctx;
    this.sock = createSocket({ type: 'udp4', reusePort: true });
    this.out = (d, port, address, cb) => this.sock.send(d, port, address, cb);
    this.bytesIn = ctx.metrics.bytes.labels({ service: state.service.key, direction: 'in' });
    this.bytesOut = ctx.metrics.bytes.labels({ service: state.service.key, direction: 'out' });
    this.sessions = new LRUCache<string, Session>({
      max: UDP_MAX_SESSIONS_PER_PORT,
      ttl: ctx.idleMs,
      updateAgeOnGet: true,
      dispose: (s) => this.endSession(s),
    });
    this.purge = setInterval(() => this.sessions.purgeStale(), Math.min(UDP_PURGE_INTERVAL_MS, ctx.idleMs));
    this.purge.unref();
    this.sock.on('message', (m, r) => this.onMessage(m, r));
    this.sock.on('error', (e) => ctx.log.warn({ err: e.message, service: state.service.key }, 'udp listener error'));
  }

  /** Binds host:port with SO_REUSEPORT (port 0: a fresh port no other socket holds); `shared` as TcpListener.listen. */
  async listen(host: string, port = 0, shared = false): Promise<number> {
    this.port = await bindReusePort(this.sock, host, port, { shared });
    this.host = host;
    this.unregister = registerUdp(host, this.port, (d, p, a) => this.sock.send(d, p, a));
    return this.port;
  }

  /**
   * A handoff: new datagrams go to the successor's socket on this port from now on; what is queued here is still
   * handled, and replies (to those, and from sessions already open) are sent through `relay`.
   */
  async detach(relay: UdpRelay): Promise<void> {
    const local = localKey(this.host, this.port);
    if (!relay.has(local)) return; // the successor does not serve this port: keep serving it until the end
    this.unregister();
    this.out = (d, port, address, cb) => {
      relay.send(local, d, port, address);
      cb(null);
    };
    await detachUdp(this.sock, this.host, this.port);
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /** Closes sessions whose endpoint is no longer usable; their next datagram opens a session to a live one. */
  prune(): void {
    const live = this.state.liveKeys();
    for (const [id, s] of this.sessions.entries()) if (!live.has(s.key)) this.sessions.delete(id);
  }

  async close(): Promise<void> {
    this.unregister();
    clearInterval(this.purge);
    this.sessions.clear();
    await new Promise<void>((r) => this.sock.close(() => r()));
  }

  private onMessage(msg: Buffer, from: RemoteInfo): void {
    this.lastActivity = performance.now();
    const id = `${from.address}:${from.port}`;
    const s = this.sessions.get(id);
    if (s) {
      if (s.channel) this.forward(s.channel, msg);
      else if (s.pending.length < UDP_PENDING_MAX) s.pending.push(msg);
      else this.ctx.metrics.udpDropped.inc({ service: this.state.service.key, reason: 'pending_full' });
      return;
    }
    this.open(id, from, msg);
  }

  private open(id: string, from: RemoteInfo, first: Buffer): void {
    const st = this.state;
    const svc = st.service.key;
    const { metrics } = this.ctx;
    const pick = st.pick(from.address, undefined);
    if (!pick) {
      metrics.udpDropped.inc({ service: svc, reason: 'no_endpoint' });
      metrics.refused.inc({ service: svc, protocol: 'udp', reason: st.plan.emptyScope ? 'strict_empty' : 'no_endpoint' });
      return;
    }
    const session: Session = { pending: [first], key: pick.key, closed: false };
    this.sessions.set(id, session);
    st.balancer.started(pick.key);
    metrics.active.inc({ service: svc, protocol: 'udp' });
    metrics.udpSessions.inc();
    countOpened(this.ctx, st, pick, 'udp');
    dialerFor(this.ctx, pick).openUdp(targetOf(st, pick, 'udp'), dialDeadline(UDP_OPEN_TIMEOUT_MS)).then(
      (ch) => {
        if (session.closed) return ch.close();
        session.channel = ch;
        ch.onMessage((d) => {
          this.sessions.get(id); // a reply keeps the session alive
          this.bytesOut.inc(d.length);
          this.lastActivity = performance.now();
          this.out(d, from.port, from.address, (e) => { if (e) metrics.udpDropped.inc({ service: svc, reason: 'send_error' }); });
        });
        ch.onClose((err) => {
          if (err) recordFailure(this.ctx, st, pick.key, err);
          if (this.sessions.peek(id) === session) this.sessions.delete(id);
        });
        for (const d of session.pending) this.forward(ch, d);
        session.pending = [];
        st.outliers.recordSuccess(pick.key);
      },
      (e: unknown) => {
        recordFailure(this.ctx, st, pick.key, e);
        if (this.sessions.peek(id) === session) this.sessions.delete(id);
      },
    );
  }

  private forward(ch: DatagramChannel, d: Buffer): void {
    this.bytesIn.inc(d.length);
    ch.send(d);
  }

  private endSession(s: Session): void {
    if (s.closed) return;
    s.closed = true;
    this.state.balancer.ended(s.key);
    this.ctx.metrics.active.dec({ service: this.state.service.key, protocol: 'udp' });
    this.ctx.metrics.udpSessions.dec();
    s.channel?.close();
  }
}
