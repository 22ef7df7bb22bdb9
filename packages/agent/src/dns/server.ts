// UDP + TCP listeners on one address and port (dns.listen). Transport only: every message goes to DnsHandler.
// Only clients are answered (acl.ts): others get REFUSED over UDP (never larger than their query) and have TCP
// connections closed at accept. UDP answers go through response-rate limiting (rrl.ts). TCP: 2-byte length framing,
// pipelined queries, connections per source and in total capped (the oldest idle or dribbling connection is evicted
// for a newcomer), a whole-message deadline, an idle timeout. Malformed input is counted and dropped; no exception
// escapes a socket callback.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, isIP, type Server, type Socket } from 'node:net';
import { Budgets } from '@edgemesh/common/budget';
import { ConnLimiter } from '@edgemesh/common/connlimit';
import type { FdPressure } from '@edgemesh/common/fds';
import type { Logger } from '@edgemesh/common/log';
import { bindReusePort, listenReusePort } from '@edgemesh/common/reuseport';
import { detachUdp, localKey, registerUdp, type UdpRelay } from '../handoff/udp.ts';
import type { ClientAcl } from './acl.ts';
import type { DnsHandler } from './handler.ts';
import { noMetrics, type DnsMetrics } from './metrics.ts';
import type { RateLimiter } from './rrl.ts';
import { answerKey, refusedReply, slipReply } from './wire.ts';

/** A TCP connection with no traffic for this long is closed (RFC 7766 §6.2.3: servers may close idle connections). */
export const TCP_IDLE_MS = 10_000;
/** Draining (a handoff): an idle TCP connection is closed after this long without a question. */
export const DRAIN_TCP_IDLE_MS = 1000;
/** Default dns.tcp.maxConnections / dns.tcp.maxPerSource: TCP is the fallback for truncated answers only. */
export const MAX_TCP_CONNS = 256;
export const MAX_TCP_CONNS_PER_SOURCE = 16;
/** A message (length prefix + query) must be complete this long after its first byte: a client dribbling bytes is dropped. */
export const TCP_MESSAGE_DEADLINE_MS = 2000;
/** A connection younger than this is never evicted for a newcomer (its query is normally in its first segment). */
export const TCP_MIN_EVICT_AGE_MS = 250;
/** Hard accept cap above the slots, so that eviction runs before Node refuses at accept. */
export const TCP_ACCEPT_HEADROOM = 32;
/** Budget names (edgemesh_budget_refusals_total{budget}) and refusal-log names of this listener. */
export const DNS_TCP_BUDGET = 'dns_tcp_conns';
export const DNS_TCP_DEADLINE = 'dns_tcp_deadline';
export const DNS_ACL_LOG = 'dns_refused';
export const DNS_RRL_LOG = 'dns_rrl';
/** RRL accounts in seconds; its clock is read from a variable updated this often (a clock read per packet costs ~0.1 µs here). */
export const RRL_CLOCK_MS = 50;
/** RRL answer key of REFUSED replies: one account per client prefix. */
const REFUSED_KEY = -100;
/** Unanswered queries one TCP connection may have outstanding (pipelining); more closes the connection. */
export const MAX_TCP_PENDING = 100;
/** A TCP client that does not read its replies is dropped once this much is queued for it. */
export const MAX_TCP_QUEUED_BYTES = 1 << 20;
/** Requested UDP receive buffer (the kernel caps it at net.core.rmem_max): absorbs bursts while the loop is busy. */
export const UDP_RCVBUF_BYTES = 4 << 20;
/** With port 0, UDP and TCP must end up on the same ephemeral port; this many tries. */
const BIND_TRIES = 10;

export interface DnsServerOptions {
  host: string;
  port: number;
  handler: DnsHandler;
  log: Logger;
  metrics?: DnsMetrics;
  /** The current client list (index.ts keeps it fresh). Default: everyone is a client. */
  acl?: () => ClientAcl;
  /** Response-rate limiting of UDP answers; undefined = off. */
  rrl?: RateLimiter;
  budgets?: Budgets;
  fds?: FdPressure;
  tcp?: { maxConnections: number; maxPerSource: number };
  /** Tests: a shorter whole-message deadline. */
  tcpMessageDeadlineMs?: number;
  /** The address is held by the agent we take over from: bind alongside it (SO_REUSEPORT) instead of refusing. */
  shared?: boolean;
}

const everyone = { isClient: () => true } as unknown as ClientAcl;

export class DnsServer {
  private readonly opts: DnsServerOptions;
  private readonly metrics: DnsMetrics;
  private udp: UdpSocket | undefined;
  private tcp: Server | undefined;
  private readonly conns = new Set<Socket>();
  private boundPort = 0;
  private readonly acl: () => ClientAcl;
  private readonly budgets: Budgets;
  private readonly limiter: ConnLimiter;
  private readonly rrl: RateLimiter | undefined;
  private now = Date.now();
  private clock: NodeJS.Timeout | undefined;
  /** How UDP replies leave: our socket, or (detached in a handoff) the staying agent's socket. */
  private out: (sock: UdpSocket, b: Buffer, port: number, address: string) => void = (sock, b, port, address) => sock.send(b, port, address);
  private unregister: () => void = () => {};
  /** Answers not sent yet (upstream forwards in flight); a draining agent waits for them. */
  pending = 0;
  /** TCP connections with questions outstanding. */
  private readonly busy = new Set<Socket>();
  private draining = false;

  constructor(opts: DnsServerOptions) {
    this.opts = opts;
    this.metrics = opts.metrics ?? noMetrics;
    this.acl = opts.acl ?? (() => everyone);
    this.budgets = opts.budgets ?? new Budgets({ log: opts.log });
    this.rrl = opts.rrl?.enabled ? opts.rrl : undefined;
    this.limiter = new ConnLimiter({
      budgets: this.budgets, name: DNS_TCP_BUDGET, fds: opts.fds, minEvictAgeMs: TCP_MIN_EVICT_AGE_MS,
      total: opts.tcp?.maxConnections ?? MAX_TCP_CONNS, perSource: opts.tcp?.maxPerSource ?? MAX_TCP_CONNS_PER_SOURCE,
    });
  }

  /** TCP connections holding a slot now. */
  get tcpConnections(): number {
    return this.limiter.size;
  }

  /** True while both listeners are bound. */
  get listening(): boolean {
    return this.udp !== undefined && this.tcp?.listening === true;
  }

  get port(): number {
    return this.boundPort;
  }

  async start(): Promise<{ host: string; port: number }> {
    let lastErr: unknown;
    for (let i = 0; i < (this.opts.port === 0 ? BIND_TRIES : 1); i++) {
      const udp = await this.bindUdp(this.opts.port);
      const port = udp.address().port;
      try {
        this.tcp = await this.bindTcp(port);
        this.udp = udp;
        this.boundPort = port;
        this.unregister = registerUdp(this.opts.host, port, (b, p, a) => udp.send(b, p, a));
        this.opts.log.info({ dns: `${this.opts.host}:${port}` }, 'DNS listening (udp+tcp)');
        return { host: this.opts.host, port };
      } catch (e) {
        lastErr = e;
        udp.close();
      }
    }
    throw lastErr;
  }

  private async bindUdp(port: number): Promise<UdpSocket> {
    const sock = createSocket({ type: isIP(this.opts.host) === 6 ? 'udp6' : 'udp4', recvBufferSize: UDP_RCVBUF_BYTES, reusePort: true });
    await bindReusePort(sock, this.opts.host, port, { shared: this.opts.shared ?? false });
    sock.on('error', (e) => this.opts.log.warn({ err: e.message }, 'DNS UDP socket error'));
    sock.on('message', (msg, rinfo) => this.onDatagram(sock, msg, rinfo.port, rinfo.address));
    return sock;
  }

  /**
   * A handoff: stop taking new queries (TCP listener closed, UDP socket detached from its reuse group so new
   * datagrams reach the successor); queued and in-flight questions are still answered, through `relay`.
   */
  async stopAccepting(relay: UdpRelay | undefined): Promise<void> {
    const tcp = this.tcp;
    this.tcp = undefined;
    if (tcp) tcp.close();
    // Each open TCP connection is closed after its next answer, or when it stays idle for DRAIN_TCP_IDLE_MS (a client
    // that just connected still gets to ask; one keeping an idle connection reconnects, to the successor).
    this.draining = true;
    for (const c of this.conns) if (!this.busy.has(c)) c.setTimeout(DRAIN_TCP_IDLE_MS);
    const udp = this.udp;
    const local = localKey(this.opts.host, this.boundPort);
    if (!udp || !relay?.has(local)) return; // nobody else answers here: keep answering until the end
    this.unregister();
    this.out = (_sock, b, port, address) => relay.send(local, b, port, address);
    await detachUdp(udp, this.opts.host, this.boundPort);
  }

  private onDatagram(sock: UdpSocket, msg: Buffer, port: number, address: string): void {
    if (!this.acl().isClient(address)) {
      this.refuse(sock, msg, port, address);
      return;
    }
    let r: Buffer | null | Promise<Buffer | null>;
    try {
      r = this.opts.handler.handle(msg, false);
    } catch (e) {
      this.metrics.malformed('udp');
      this.opts.log.debug({ err: (e as Error).message }, 'DNS handler failed on a datagram');
      return;
    }
    if (r === null) return;
    if (r instanceof Promise) {
      this.pending++;
      r.then((b) => { if (b && this.udp) this.sendUdp(sock, b, port, address); }, (e: Error) => this.opts.log.debug({ err: e.message }, 'DNS async answer failed'))
        .finally(() => { this.pending--; });
    } else {
      this.sendUdp(sock, r, port, address);
    }
  }

  /** The RRL clock (ms), started with the first answer, stopped by close(). */
  private rrlNow(): number {
    if (!this.clock && this.udp) {
      this.now = Date.now();
      this.clock = setInterval(() => { this.now = Date.now(); }, RRL_CLOCK_MS);
      this.clock.unref();
    }
    return this.now;
  }

  /** Sends a UDP answer through response-rate limiting: sent, dropped, or slipped (truncated, so TCP is tried). */
  private sendUdp(sock: UdpSocket, b: Buffer, port: number, address: string): void {
    const rrl = this.rrl;
    if (rrl) {
      const act = rrl.decide(address, answerKey(b), this.rrlNow());
      if (act !== 'send') {
        this.metrics.rateLimited(act === 'slip' ? 'slipped' : 'dropped');
        this.budgets.refusals.note(DNS_RRL_LOG, { prefix: address, ratePerSecond: rrl.params.rate });
        if (act === 'drop') return;
        b = slipReply(b);
      }
    }
    this.out(sock, b, port, address);
  }

  /** Not a client: REFUSED (no larger than the query; rate-limited per prefix like any answer), counted, logged rate-limited. */
  private refuse(sock: UdpSocket, msg: Buffer, port: number, address: string): void {
    this.metrics.refused('udp');
    this.budgets.refusals.note(DNS_ACL_LOG, { source: address, transport: 'udp' });
    const r = refusedReply(msg);
    if (!r) return;
    if (this.rrl && this.rrl.decide(address, REFUSED_KEY, this.rrlNow()) === 'drop') return;
    this.out(sock, r, port, address);
  }

  private async bindTcp(port: number): Promise<Server> {
    const srv = createServer({ noDelay: true }, (c) => this.onConn(c));
    this.limitTcp(srv);
    await listenReusePort(srv, this.opts.host, port, { shared: this.opts.shared ?? false });
    srv.on('error', (e) => this.onTcpError(e));
    return srv;
  }

  /** Accept errors (EMFILE under descriptor exhaustion) can come per connection attempt: counted, logged rate-limited. */
  private onTcpError(e: NodeJS.ErrnoException): void {
    if (e.code === 'EMFILE' || e.code === 'ENFILE') this.opts.fds?.noteExhausted();
    this.budgets.refusals.note('dns_tcp_accept_error', { err: e.message });
  }

  private limitTcp(srv: Server): void {
    srv.maxConnections = this.limiter.total + TCP_ACCEPT_HEADROOM;
    srv.on('drop', () => this.budgets.refuse(DNS_TCP_BUDGET, { max: srv.maxConnections, unit: 'connections' }));
  }

  private onConn(c: Socket): void {
    const src = c.remoteAddress ?? '';
    if (!this.acl().isClient(src)) {
      this.metrics.refused('tcp');
      this.budgets.refusals.note(DNS_ACL_LOG, { source: src, transport: 'tcp' });
      c.destroy();
      return;
    }
    const slot = this.limiter.open(src, () => c.destroy());
    if (!slot) {
      c.destroy();
      return;
    }
    this.conns.add(c);
    let deadline: NodeJS.Timeout | undefined;
    const deadlineMs = this.opts.tcpMessageDeadlineMs ?? TCP_MESSAGE_DEADLINE_MS;
    c.setTimeout(TCP_IDLE_MS, () => (this.draining ? c.end() : c.destroy()));
    c.on('close', () => {
      this.conns.delete(c);
      this.busy.delete(c);
      slot.close();
      if (deadline) clearTimeout(deadline);
    });
    c.on('error', () => c.destroy());
    let buf: Buffer = Buffer.alloc(0);
    let pending = 0;
    const reply = (b: Buffer | null) => {
      pending--;
      slot.end();
      if (pending === 0) this.busy.delete(c);
      if (!b || c.destroyed) return;
      if (c.writableLength > MAX_TCP_QUEUED_BYTES) {
        c.destroy();
        return;
      }
      const len = Buffer.allocUnsafe(2);
      len.writeUInt16BE(b.length);
      c.write(Buffer.concat([len, b]));
      // Draining: a connection with nothing outstanding is closed once its last answer is written.
      if (this.draining && pending === 0) c.end();
    };
    c.on('data', (d: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      let completed = false;
      while (buf.length >= 2) {
        const n = buf.readUInt16BE(0);
        if (buf.length < 2 + n) break;
        const msg = buf.subarray(2, 2 + n);
        buf = buf.subarray(2 + n);
        completed = true;
        this.busy.add(c);
        if (++pending > MAX_TCP_PENDING) {
          c.destroy();
          return;
        }
        slot.begin();
        let r: Buffer | null | Promise<Buffer | null>;
        try {
          r = this.opts.handler.handle(Buffer.from(msg), true);
        } catch {
          r = null;
          this.metrics.malformed('tcp');
        }
        if (r instanceof Promise) r.then(reply, () => reply(null));
        else reply(r);
      }
      if (c.destroyed) return;
      // Whole-message deadline: from the first byte of a message that is not complete yet.
      if (buf.length === 0) {
        if (deadline) {
          clearTimeout(deadline);
          deadline = undefined;
          slot.partial(undefined);
        }
      } else if (!deadline || completed) {
        if (deadline) clearTimeout(deadline);
        slot.partial(Date.now());
        deadline = setTimeout(() => {
          this.budgets.refuse(DNS_TCP_DEADLINE, { deadlineMs, unit: 'ms' });
          c.destroy();
        }, deadlineMs);
      }
    });
  }

  async close(): Promise<void> {
    this.unregister();
    const udp = this.udp;
    const tcp = this.tcp;
    this.udp = undefined;
    this.tcp = undefined;
    if (this.clock) clearInterval(this.clock);
    this.clock = undefined;
    for (const c of this.conns) c.destroy();
    if (udp) await new Promise<void>((r) => udp.close(() => r()));
    if (tcp) await new Promise<void>((r) => tcp.close(() => r()));
  }
}
