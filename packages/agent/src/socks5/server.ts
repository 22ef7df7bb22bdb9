// The SOCKS5 listener (socks5.enabled, socks5.listen): RFC 1928 CONNECT, RFC 1929 username/password when
// socks5.usersFile is set. Destinations (destination.ts): `<nodeName>:<port>` -> node access (NodeDialer), a Service
// name or IP -> the proxy's own connect path (Proxier.connectTcp); anything else is refused with its reply code.
//
// Budgets (every network input is hostile):
// - connections: socks5.maxConnections in total, socks5.maxPerSource per source address (ConnLimiter); when full,
//   the oldest connection still in its handshake (older than SOCKS_MIN_EVICT_AGE_MS) is evicted for the newcomer; a
//   connection that is relaying is never evicted;
// - the handshake (greeting, auth, request) must be complete SOCKS_HANDSHAKE_TIMEOUT_MS after accept and within
//   SOCKS_MAX_HANDSHAKE_BYTES; of what comes right behind the request at most SOCKS_MAX_EARLY_BYTES are kept, and
//   nothing more is read before the CONNECT is answered;
// - failed logins: SOCKS_AUTH_FAILURES per source and in total (FailureLimiter); a source over it is answered
//   "failure" without its password being looked at;
// - descriptors: new connections are shed under descriptor pressure (fd_reserve).
// Refusals are counted in edgemesh_budget_refusals_total{budget=socks5_*} and logged rate-limited; per-connection
// events are debug only.
import { createServer, type Server, type Socket } from 'node:net';
import { listenReusePort } from '@edgemesh/common/reuseport';
import type { Duplex } from 'node:stream';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { Budgets } from '@edgemesh/common/budget';
import { parseHostPort } from '@edgemesh/common/config';
import { ConnLimiter, type ConnSlot } from '@edgemesh/common/connlimit';
import type { FdPressure } from '@edgemesh/common/fds';
import type { Logger } from '@edgemesh/common/log';
import { FailureLimiter, sourceKey } from '@edgemesh/common/ratelimit';
import type { NodeDialer } from '../nodeaccess/access.ts';
import type { ConnectFrom } from '../proxy/connect.ts';
import { TCP_KEEPALIVE_MS } from '../proxy/direct.ts';
import { splice } from '../proxy/splice.ts';
import { TCP_IDLE_TIMEOUT_MS } from '../proxy/tcp.ts';
import {
  chooseMethod, CMD_CONNECT, encodeAuthStatus, encodeMethodChoice, encodeReply, MAX_AUTH_BYTES, MAX_GREETING_BYTES, MAX_REQUEST_BYTES,
  METHOD_NONE_ACCEPTABLE, METHOD_USERPASS, parseAuth, parseGreeting, parseRequest, REP, replyName, type ReplyCode, type Request,
} from './codec.ts';
import { replyForError, type Destination } from './destination.ts';
import type { Users } from './users.ts';

/** Greeting, authentication and request must be complete this long after accept (a slow handshake holds a slot). */
export const SOCKS_HANDSHAKE_TIMEOUT_MS = 10_000;
/** Bytes a client may send before its CONNECT is answered: the largest greeting + auth + request. */
export const SOCKS_MAX_HANDSHAKE_BYTES = MAX_GREETING_BYTES + MAX_AUTH_BYTES + MAX_REQUEST_BYTES;
/**
 * Data a client sends right behind its request, before the reply (optimistic data), that is kept for the destination;
 * a read carrying more is refused. Nothing past the read that carried the request is read before the reply.
 */
export const SOCKS_MAX_EARLY_BYTES = 16 * 1024;
/**
 * Time to reach the destination after the request: the proxy's own attempts (3 s each, up to 3 endpoints) or a
 * node-access dial through the tunnel, plus margin.
 */
export const SOCKS_CONNECT_TIMEOUT_MS = 10_000;
/** A relayed connection with no traffic either way for this long is closed (the proxy's idle timeout). */
export const SOCKS_IDLE_TIMEOUT_MS = TCP_IDLE_TIMEOUT_MS;
/** A refused client gets this long to read its reply before the socket is destroyed. */
export const SOCKS_REFUSAL_LINGER_MS = 2000;
/** A connection younger than this is never evicted for a newcomer (its handshake is normally one round trip). */
export const SOCKS_MIN_EVICT_AGE_MS = 250;
/** Failed logins: 5 per source in a burst then one per 5 s; 100 in all then 10/s; 4,096 sources remembered. */
export const SOCKS_AUTH_FAILURES = { perSource: { capacity: 5, ratePerSec: 0.2 }, global: { capacity: 100, ratePerSec: 10 }, maxSources: 4096 } as const;
export const SOCKS_LISTEN_BACKLOG = 511;

export const SOCKS_CONNS_BUDGET = 'socks5_conns';
export const SOCKS_DEADLINE_BUDGET = 'socks5_deadline';
export const SOCKS_BYTES_BUDGET = 'socks5_handshake_bytes';
export const SOCKS_AUTH_BUDGET = 'socks5_auth_failures';

export interface Socks5Options {
  listen: string;
  log: Logger;
  registry: Registry;
  budgets: Budgets;
  fds?: FdPressure;
  /** RFC 1929 users; undefined = no authentication. */
  users?: Users;
  maxConnections: number;
  maxPerSource: number;
  /** Where a request goes (destination.ts over the current snapshot). */
  resolve: (req: Request) => Destination;
  /** The proxy's connect path (Proxier.connectTcp). */
  connectService: (serviceKey: string, port: number, from: ConnectFrom) => Promise<{ upstream: Duplex }>;
  nodeDialer: NodeDialer;
  /** socks5.listen is held by the agent this one takes over from: bind alongside it (SO_REUSEPORT). */
  shared?: boolean;
  /** Tests: shorter deadlines. */
  handshakeTimeoutMs?: number;
  connectTimeoutMs?: number;
}

export interface Socks5Status {
  listen: string;
  auth: boolean;
  connections: number;
  relaying: number;
}

interface Metrics {
  handshakes: Counter<'outcome'>;
  requests: Counter<'target' | 'reply'>;
  relaying: Gauge;
  bytes: Counter<'direction'>;
}

function createMetrics(registry: Registry): Metrics {
  const r = [registry];
  return {
    handshakes: new Counter({ name: 'edgemesh_socks5_handshakes_total', help: 'SOCKS5 handshakes by outcome: request (reached a request), malformed, no_acceptable_method, auth_failed, auth_limited, timeout, too_many_bytes, closed', labelNames: ['outcome'], registers: r }),
    requests: new Counter({ name: 'edgemesh_socks5_requests_total', help: 'SOCKS5 requests by target kind (node, service, none) and reply', labelNames: ['target', 'reply'], registers: r }),
    relaying: new Gauge({ name: 'edgemesh_socks5_relaying', help: 'SOCKS5 connections connected to their destination', registers: r }),
    bytes: new Counter({ name: 'edgemesh_socks5_bytes_total', help: 'Bytes through the SOCKS5 listener; in = from clients, out = to clients', labelNames: ['direction'], registers: r }),
  };
}

type Phase = 'greeting' | 'auth' | 'request' | 'connecting' | 'relaying' | 'done';

export class Socks5Server {
  private readonly o: Socks5Options;
  private readonly server: Server;
  private readonly limiter: ConnLimiter;
  private readonly authFailures: FailureLimiter;
  private readonly metrics: Metrics;
  private readonly conns = new Set<Socket>();
  private relaying = 0;
  private bound: { host: string; port: number } | undefined;

  constructor(o: Socks5Options) {
    this.o = o;
    this.metrics = createMetrics(o.registry);
    this.limiter = new ConnLimiter({ budgets: o.budgets, name: SOCKS_CONNS_BUDGET, total: o.maxConnections, perSource: o.maxPerSource, minEvictAgeMs: SOCKS_MIN_EVICT_AGE_MS, fds: o.fds });
    this.authFailures = new FailureLimiter({ ...SOCKS_AUTH_FAILURES }, Date.now());
    this.server = createServer({ allowHalfOpen: true, noDelay: true, keepAlive: true, keepAliveInitialDelay: TCP_KEEPALIVE_MS }, (s) => this.accept(s));
    this.server.on('error', (e) => o.log.error({ err: e.message }, 'socks5 listener error'));
    this.server.maxConnections = o.maxConnections + 16; // beyond the slots (eviction happens first): refused at accept
  }

  /**
   * Binds socks5.listen with SO_REUSEPORT (alongside the agent we take over from when `shared`; otherwise a port
   * another program holds is refused); resolves the bound address (port 0 picks one).
   */
  async start(): Promise<{ host: string; port: number }> {
    const hp = parseHostPort(this.o.listen, false);
    if (!hp) throw new Error(`socks5.listen: bad address ${this.o.listen}`);
    await listenReusePort(this.server, hp.host || undefined, hp.port, { shared: this.o.shared ?? false, backlog: SOCKS_LISTEN_BACKLOG });
    const a = this.server.address();
    this.bound = typeof a === 'object' && a ? { host: a.address, port: a.port } : hp;
    this.o.log.info({ socks5: `${this.bound.host.includes(':') ? `[${this.bound.host}]` : this.bound.host}:${this.bound.port}`, auth: !!this.o.users }, 'socks5 listening');
    return this.bound;
  }

  address(): { host: string; port: number } | undefined {
    return this.bound;
  }

  get listening(): boolean {
    return this.server.listening;
  }

  status(): Socks5Status {
    const b = this.bound;
    return { listen: b ? `${b.host.includes(':') ? `[${b.host}]` : b.host}:${b.port}` : this.o.listen, auth: !!this.o.users, connections: this.conns.size, relaying: this.relaying };
  }

  /**
   * A takeover: stops accepting at once (with net.ipv4.tcp_migrate_req the kernel moves connections still queued
   * on this listener to the successor's); handshakes under way and relaying connections carry on (the caller drains).
   */
  stopAccepting(): void {
    if (this.server.listening) this.server.close();
  }

  /** Client connections open now, in their handshake or relaying (a draining agent waits for them). */
  openConnections(): number {
    return this.conns.size;
  }

  /** Stops accepting; with `all` (default) open connections are closed too. */
  async stop(all = true): Promise<void> {
    if (all) for (const c of this.conns) c.destroy();
    await new Promise<void>((r) => (this.server.listening ? this.server.close(() => r()) : r()));
    const summary = this.authFailures.takeSummary();
    if (summary) this.o.log.warn(summary, 'socks5 failed logins');
  }

  private accept(sock: Socket): void {
    sock.on('error', () => {});
    const src = (sock.remoteAddress ?? '?').replace(/^::ffff:/, '');
    const slot = this.limiter.open(sourceKey(src), () => sock.destroy());
    if (!slot) {
      sock.destroy();
      return;
    }
    this.conns.add(sock);
    slot.partial(Date.now());
    sock.once('close', () => {
      slot.close();
      this.conns.delete(sock);
      this.metrics.bytes.inc({ direction: 'in' }, sock.bytesRead);
      this.metrics.bytes.inc({ direction: 'out' }, sock.bytesWritten);
    });
    new Handshake(this, sock, src, slot).begin();
  }

  /** @internal Handshake */
  get opts(): Socks5Options {
    return this.o;
  }

  /** @internal Handshake */
  get m(): Metrics {
    return this.metrics;
  }

  /** @internal Handshake */
  get failures(): FailureLimiter {
    return this.authFailures;
  }

  /** @internal Handshake: a connection reached its destination. */
  relayStarted(sock: Socket): void {
    this.relaying++;
    this.metrics.relaying.inc();
    sock.once('close', () => {
      this.relaying--;
      this.metrics.relaying.dec();
    });
  }
}

/** One client connection from accept until it relays (or is refused). */
class Handshake {
  private readonly srv: Socks5Server;
  private readonly sock: Socket;
  private readonly src: string;
  private readonly slot: ConnSlot;
  private phase: Phase = 'greeting';
  private buf: Buffer = Buffer.alloc(0);
  private read = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly onData = (c: Buffer) => this.data(c);

  constructor(srv: Socks5Server, sock: Socket, src: string, slot: ConnSlot) {
    this.srv = srv;
    this.sock = sock;
    this.src = src;
    this.slot = slot;
  }

  begin(): void {
    const o = this.srv.opts;
    this.timer = setTimeout(() => {
      if (this.phase === 'greeting' || this.phase === 'auth' || this.phase === 'request') {
        o.budgets.refuse(SOCKS_DEADLINE_BUDGET, { phase: this.phase });
        this.fail('timeout');
      }
    }, o.handshakeTimeoutMs ?? SOCKS_HANDSHAKE_TIMEOUT_MS);
    this.sock.on('data', this.onData);
    this.sock.once('end', () => { if (this.phase !== 'relaying') this.fail('closed'); });
    this.sock.once('close', () => {
      clearTimeout(this.timer);
      if (this.phase === 'greeting' || this.phase === 'auth' || this.phase === 'request') this.srv.m.handshakes.inc({ outcome: 'closed' });
      this.phase = 'done';
    });
  }

  /** Ends the handshake without a reply (malformed, timeout, gone). */
  private fail(outcome: string): void {
    if (this.phase === 'done') return;
    this.srv.m.handshakes.inc({ outcome });
    this.phase = 'done';
    clearTimeout(this.timer);
    this.sock.destroy();
  }

  /** Sends a last message, then closes (the client gets SOCKS_REFUSAL_LINGER_MS to read it). */
  private finish(last: Buffer): void {
    this.phase = 'done';
    clearTimeout(this.timer);
    this.sock.removeListener('data', this.onData);
    this.sock.resume(); // discard whatever else arrives
    this.sock.end(last);
    setTimeout(() => this.sock.destroy(), SOCKS_REFUSAL_LINGER_MS).unref();
  }

  private data(chunk: Buffer): void {
    if (this.phase !== 'greeting' && this.phase !== 'auth' && this.phase !== 'request') return;
    this.read += chunk.length;
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    for (;;) {
      if (this.phase === 'greeting') {
        const p = parseGreeting(this.buf);
        if (p.kind === 'need') break;
        if (p.kind === 'error') return this.malformed(p.reason);
        const method = chooseMethod(p.value.methods, !!this.srv.opts.users);
        this.buf = this.buf.subarray(p.used);
        if (method === METHOD_NONE_ACCEPTABLE) {
          this.srv.m.handshakes.inc({ outcome: 'no_acceptable_method' });
          return this.finish(encodeMethodChoice(METHOD_NONE_ACCEPTABLE));
        }
        this.sock.write(encodeMethodChoice(method));
        this.phase = method === METHOD_USERPASS ? 'auth' : 'request';
      } else if (this.phase === 'auth') {
        const p = parseAuth(this.buf);
        if (p.kind === 'need') break;
        if (p.kind === 'error') return this.malformed(p.reason);
        this.buf = this.buf.subarray(p.used);
        const now = Date.now();
        if (!this.srv.failures.allow(this.src, now)) {
          this.srv.opts.budgets.refuse(SOCKS_AUTH_BUDGET, { source: sourceKey(this.src) });
          this.srv.m.handshakes.inc({ outcome: 'auth_limited' });
          return this.finish(encodeAuthStatus(false));
        }
        if (!this.srv.opts.users!.check(p.value.username, p.value.password)) {
          this.srv.failures.fail(this.src, 'bad_credentials', now);
          this.srv.m.handshakes.inc({ outcome: 'auth_failed' });
          return this.finish(encodeAuthStatus(false));
        }
        this.sock.write(encodeAuthStatus(true));
        this.phase = 'request';
      } else {
        const p = parseRequest(this.buf);
        if (p.kind === 'need') break;
        if (p.kind === 'error') {
          if (p.reply === undefined) return this.malformed(p.reason);
          this.srv.m.handshakes.inc({ outcome: 'malformed' });
          this.srv.m.requests.inc({ target: 'none', reply: replyName(p.reply) });
          return this.finish(encodeReply(p.reply));
        }
        if (this.buf.length - p.used > SOCKS_MAX_EARLY_BYTES) {
          this.srv.opts.budgets.refuse(SOCKS_BYTES_BUDGET, { bytes: this.read });
          this.srv.m.handshakes.inc({ outcome: 'too_many_bytes' });
          this.srv.m.requests.inc({ target: 'none', reply: replyName(REP.GENERAL_FAILURE) });
          return this.finish(encodeReply(REP.GENERAL_FAILURE));
        }
        // Nothing more is read until the destination answers; what came with the request goes to it first.
        this.sock.removeListener('data', this.onData);
        this.sock.pause();
        const rest = Buffer.from(this.buf.subarray(p.used));
        this.buf = Buffer.alloc(0);
        this.srv.m.handshakes.inc({ outcome: 'request' });
        this.phase = 'connecting';
        clearTimeout(this.timer);
        this.slot.partial(undefined);
        this.slot.begin(); // connecting and relaying connections are not evicted
        this.request(p.value, rest).catch((e: unknown) => {
          // A bug in the connect path costs this connection, never the process.
          this.srv.opts.log.error({ err: e }, 'socks5 request failed');
          this.sock.destroy();
        });
        return;
      }
    }
    if (this.read > SOCKS_MAX_HANDSHAKE_BYTES) {
      this.srv.opts.budgets.refuse(SOCKS_BYTES_BUDGET, { bytes: this.read });
      this.fail('too_many_bytes');
    }
  }

  private malformed(reason: string): void {
    this.srv.opts.log.debug({ source: this.src, reason }, 'malformed socks5 handshake');
    this.fail('malformed');
  }

  private refuse(target: 'node' | 'service' | 'none', rep: ReplyCode, reason: string): void {
    this.srv.m.requests.inc({ target, reply: replyName(rep) });
    this.srv.opts.log.debug({ source: this.src, reply: replyName(rep), reason }, 'socks5 request refused');
    this.finish(encodeReply(rep));
  }

  private async request(req: Request, rest: Buffer): Promise<void> {
    const o = this.srv.opts;
    if (req.command !== CMD_CONNECT) return this.refuse('none', REP.COMMAND_NOT_SUPPORTED, `command ${req.command}`);
    const dest = o.resolve(req);
    if (dest.kind === 'refused') return this.refuse('none', dest.reply, dest.reason);
    const gone = new AbortController();
    const onClose = () => gone.abort();
    this.sock.once('close', onClose);
    const signal = AbortSignal.any([gone.signal, AbortSignal.timeout(o.connectTimeoutMs ?? SOCKS_CONNECT_TIMEOUT_MS)]);
    let upstream: Duplex;
    try {
      upstream = dest.kind === 'node'
        ? await o.nodeDialer.dialNode(dest.node, dest.port, signal)
        : (await o.connectService(dest.serviceKey, dest.port, { clientIP: this.src, signal })).upstream;
    } catch (e) {
      this.sock.removeListener('close', onClose);
      if (this.sock.destroyed) return;
      return this.refuse(dest.kind, replyForError(e), (e as Error).message);
    }
    this.sock.removeListener('close', onClose);
    if (this.sock.destroyed) {
      upstream.destroy();
      return;
    }
    upstream.on('error', () => {});
    this.srv.m.requests.inc({ target: dest.kind, reply: replyName(REP.SUCCEEDED) });
    this.phase = 'relaying';
    this.srv.relayStarted(this.sock);
    this.sock.write(encodeReply(REP.SUCCEEDED));
    splice(this.sock, upstream, { head: rest, idleMs: SOCKS_IDLE_TIMEOUT_MS });
  }
}
