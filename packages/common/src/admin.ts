// Admin HTTP server: /healthz (event loop alive), /readyz (all readiness checks pass), /metrics (prom-client),
// /status (JSON from a provider), and routes a component adds (the server's /fleet and /ui). Shared by agent and server.
//
// Hostile clients: every connection takes a slot (ConnLimiter: per source and in total, admin.maxConnections); when
// full, the oldest idle or slow-header connection is evicted for the newcomer, so thousands of slowloris connections
// cannot lock the kubelet's probe out. Request headers must be complete within ADMIN_HEADERS_TIMEOUT_MS (checked
// every ADMIN_TIMEOUT_CHECK_MS), a silent connection is dropped after ADMIN_SOCKET_IDLE_MS, the whole request within
// ADMIN_REQUEST_TIMEOUT_MS, an idle keep-alive connection after ADMIN_KEEPALIVE_MS. Refusals, evictions and deadline
// drops are counted in the budget metrics.
//
// Exposure (the server's admin port is opened on the pod address for probes and Prometheus): with `auth`, /status
// and every added route (the server's /fleet, /ui) are open only on a loopback listener; on any other they need
// `Authorization: Bearer <admin token>` (401 without or with a wrong one, 403 when no token is configured), counted
// as admin_unauthorized / admin_forbidden. /healthz, /readyz and /metrics stay open (they hold no addresses).
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Registry, collectDefaultMetrics } from 'prom-client';
import type { Logger } from './log.ts';
import { parseHostPort } from './config.ts';
import { Budgets } from './budget.ts';
import { ConnLimiter, type ConnSlot } from './connlimit.ts';
import { listenReusePort } from './reuseport.ts';

/** The event loop is called stuck when a timer tick is this late. */
export const HEALTH_LOOP_STALL_MS = 5000;
const HEALTH_TICK_MS = 1000;
/** Request headers must be complete this long after the connection (or the previous request) started (slowloris). */
export const ADMIN_HEADERS_TIMEOUT_MS = 5000;
/** The whole request (headers and any body) must arrive within this. */
export const ADMIN_REQUEST_TIMEOUT_MS = 10_000;
/** An idle keep-alive connection is closed after this (the kubelet and Prometheus reconnect at will). */
export const ADMIN_KEEPALIVE_MS = 5000;
/** A connection with no traffic at all (not one byte sent, or a reader that stopped) is dropped after this. */
export const ADMIN_SOCKET_IDLE_MS = 5000;
/** How often Node checks the header and request deadlines (its default, 30 s, would let slow headers live 35 s). */
export const ADMIN_TIMEOUT_CHECK_MS = 500;
/** Default admin.maxConnections: the kubelet, a scraper and an operator need a handful. */
export const ADMIN_MAX_CONNECTIONS = 64;
/** A connection younger than this is never evicted: its request is normally complete within one round trip. */
export const ADMIN_MIN_EVICT_AGE_MS = 250;
/** Hard cap above the slots (Node refuses at accept beyond it): room for the eviction to run first. */
export const ADMIN_ACCEPT_HEADROOM = 16;

export type ReadyCheck = () => boolean;
/** Answers one GET/HEAD request on an added route (a throw answers 500). */
export type RouteHandler = (req: IncomingMessage, res: ServerResponse) => void;

export interface AdminOptions {
  listen: string;
  registry: Registry;
  status: () => unknown;
  log: Logger;
  /** Connections in total (one source may hold half). Default ADMIN_MAX_CONNECTIONS. */
  maxConnections?: number;
  /** The process's budgets (refusals counted there); default: private ones without metrics. */
  budgets?: Budgets;
  /** Tests: shorter deadlines. */
  headersTimeoutMs?: number;
  /** Guards /status and the added routes (adminAccess); undefined = open to whoever reaches the listener. */
  auth?: { token: string | undefined };
}

/** Refusals of the guarded routes (the `budget` label). */
export const ADMIN_UNAUTHORIZED = 'admin_unauthorized';
export const ADMIN_FORBIDDEN = 'admin_forbidden';

/** Whether a listen host reaches only this machine (127.0.0.0/8, ::1, localhost). */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || /^::ffff:127\./.test(h);
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/**
 * Who may read a guarded route: anyone on a loopback listener; elsewhere only a request carrying the admin token as
 * a bearer credential ('unauthorized' otherwise), and nobody when no token is configured ('forbidden'). The token is
 * compared as SHA-256 digests with timingSafeEqual: constant time whatever its length or where it differs.
 */
export function adminAccess(o: { loopback: boolean; token: string | undefined; authorization: string | undefined }): 'ok' | 'unauthorized' | 'forbidden' {
  if (o.loopback) return 'ok';
  if (!o.token) return 'forbidden';
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(o.authorization ?? '');
  return m && timingSafeEqual(digest(m[1]), digest(o.token)) ? 'ok' : 'unauthorized';
}

/** Budget names of the admin listener. */
export const ADMIN_CONNS_BUDGET = 'admin_conns';
export const ADMIN_DEADLINE = 'admin_deadline';

const slotOf = new WeakMap<Socket, ConnSlot>();

export function createRegistry(prefix: string): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix });
  return registry;
}

export class AdminServer {
  readonly checks = new Map<string, ReadyCheck>();
  private readonly routes = new Map<string, RouteHandler>();
  private server: Server | undefined;
  private lastTick = Date.now();
  private tick: NodeJS.Timeout | undefined;
  private readonly opts: AdminOptions;
  readonly budgets: Budgets;
  private readonly limiter: ConnLimiter;

  constructor(opts: AdminOptions) {
    this.opts = opts;
    this.budgets = opts.budgets ?? new Budgets({ log: opts.log });
    const total = opts.maxConnections ?? ADMIN_MAX_CONNECTIONS;
    this.limiter = new ConnLimiter({ budgets: this.budgets, name: ADMIN_CONNS_BUDGET, total, perSource: Math.max(1, Math.ceil(total / 2)), minEvictAgeMs: ADMIN_MIN_EVICT_AGE_MS });
  }

  /** Connections holding a slot now. */
  get connections(): number {
    return this.limiter.size;
  }

  /** Registers a named readiness check; /readyz is 200 only when every check returns true. */
  addCheck(name: string, check: ReadyCheck): void {
    this.checks.set(name, check);
  }

  /** The bound address once started (port 0 in the config picks one). */
  address(): { host: string; port: number } | undefined {
    const a = this.server?.address();
    return typeof a === 'object' && a ? { host: a.address, port: a.port } : undefined;
  }

  /** Serves `path` (exact match, GET and HEAD) with `handler`. */
  addRoute(path: string, handler: RouteHandler): void {
    this.routes.set(path, handler);
  }

  /** A check that throws counts as failing (a module's bug must not crash the process from an HTTP request). */
  ready(): { ok: boolean; failing: string[] } {
    const passes = (c: ReadyCheck) => {
      try {
        return c();
      } catch {
        return false;
      }
    };
    const failing = [...this.checks].filter(([, c]) => !passes(c)).map(([n]) => n);
    return { ok: failing.length === 0, failing };
  }

  /** `shared`: listen alongside a running agent on the same address (SO_REUSEPORT; a takeover) instead of refusing. */
  async start(o: { shared?: boolean } = {}): Promise<{ host: string; port: number }> {
    const hp = parseHostPort(this.opts.listen);
    if (!hp) throw new Error(`admin.listen: bad address ${this.opts.listen}`);
    const loopback = isLoopbackHost(hp.host);
    const auth = this.opts.auth;
    if (auth && !loopback && !auth.token) {
      this.opts.log.warn({ admin: this.opts.listen }, 'admin listener is not loopback and admin.tokenFile is not set: /status, /fleet and /ui are refused (403); /healthz, /readyz and /metrics stay open');
    }
    /** A guarded route may be answered (else the refusal was sent and counted). */
    const allowed = (req: IncomingMessage, res: ServerResponse, send: (code: number, body: string) => void): boolean => {
      if (!auth) return true;
      const a = adminAccess({ loopback, token: auth.token, authorization: req.headers.authorization });
      if (a === 'ok') return true;
      if (a === 'forbidden') {
        this.budgets.refuse(ADMIN_FORBIDDEN, {});
        send(403, 'forbidden: this admin listener is not loopback and no admin.tokenFile is configured\n');
      } else {
        this.budgets.refuse(ADMIN_UNAUTHORIZED, {});
        res.setHeader('www-authenticate', 'Bearer realm="edgemesh-admin"');
        send(401, 'unauthorized: Authorization: Bearer <admin token> required\n');
      }
      return false;
    };
    this.tick = setInterval(() => { this.lastTick = Date.now(); }, HEALTH_TICK_MS);
    this.tick.unref();
    const headersTimeout = this.opts.headersTimeoutMs ?? ADMIN_HEADERS_TIMEOUT_MS;
    this.server = createServer({
      headersTimeout,
      requestTimeout: Math.max(ADMIN_REQUEST_TIMEOUT_MS, headersTimeout),
      keepAliveTimeout: ADMIN_KEEPALIVE_MS,
      connectionsCheckingInterval: Math.min(ADMIN_TIMEOUT_CHECK_MS, headersTimeout),
    }, (req, res) => {
      const slot = slotOf.get(req.socket);
      if (slot) {
        slot.begin();
        res.once('close', () => slot.end());
      }
      const url = (req.url ?? '/').split('?')[0];
      const send = (code: number, body: string, type = 'text/plain; charset=utf-8') => {
        res.writeHead(code, { 'content-type': type, 'cache-control': 'no-store' });
        res.end(body);
      };
      if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'method not allowed\n');
      if (url === '/healthz') {
        const stalled = Date.now() - this.lastTick > HEALTH_LOOP_STALL_MS;
        return stalled ? send(503, 'event loop stalled\n') : send(200, 'ok\n');
      }
      if (url === '/readyz') {
        const r = this.ready();
        return r.ok ? send(200, 'ready\n') : send(503, `not ready: ${r.failing.join(', ')}\n`);
      }
      if (url === '/metrics') {
        this.opts.registry.metrics().then(
          (m) => send(200, m, this.opts.registry.contentType),
          (e: Error) => send(500, `metrics failed: ${e.message}\n`),
        );
        return;
      }
      if (url === '/status') {
        if (!allowed(req, res, send)) return;
        try {
          return send(200, JSON.stringify(this.opts.status(), null, 2) + '\n', 'application/json');
        } catch (e) {
          return send(500, `status failed: ${(e as Error).message}\n`);
        }
      }
      const route = this.routes.get(url);
      if (route) {
        if (!allowed(req, res, send)) return;
        try {
          return route(req, res);
        } catch (e) {
          if (!res.headersSent) return send(500, `${url} failed: ${(e as Error).message}\n`);
          return void res.destroy();
        }
      }
      send(404, `not found: try /healthz /readyz /metrics /status${[...this.routes.keys()].filter((r) => !r.includes('/', 1)).map((r) => ` ${r}`).join('')}\n`);
    });
    const srv = this.server;
    srv.timeout = this.opts.headersTimeoutMs ?? ADMIN_SOCKET_IDLE_MS;
    srv.maxConnections = this.limiter.total + ADMIN_ACCEPT_HEADROOM;
    srv.on('drop', () => this.budgets.refuse(ADMIN_CONNS_BUDGET, { max: srv.maxConnections, unit: 'connections' }));
    srv.on('connection', (sock: Socket) => this.onConnection(sock));
    srv.on('timeout', (sock: Socket) => {
      this.budgets.refuse(ADMIN_DEADLINE, { deadlineMs: srv.timeout, what: 'no traffic' });
      sock.destroy();
    });
    srv.on('clientError', (err: NodeJS.ErrnoException, sock: Socket) => {
      if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') this.budgets.refuse(ADMIN_DEADLINE, { deadlineMs: headersTimeout, what: 'request headers' });
      // As Node does without a listener: a short answer when the socket still takes one (written at once), then gone.
      if (sock.writable && err.code !== 'ECONNRESET') {
        sock.write(err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n' : 'HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
      }
      sock.destroy();
    });
    // SO_REUSEPORT, so that an agent taking over can bind the same admin address; a fresh start still refuses a
    // port another program holds.
    await listenReusePort(srv, hp.host || undefined, hp.port, { shared: o.shared ?? false });
    // After listening, errors (EMFILE on accept) must not become uncaught exceptions that kill the process.
    // Accept errors can come per connection attempt: logged rate-limited.
    srv.on('error', (e) => this.budgets.refusals.note('admin_accept_error', { err: e.message }));
    const addr = this.server.address();
    const bound = typeof addr === 'object' && addr ? { host: addr.address, port: addr.port } : { host: hp.host, port: hp.port };
    this.opts.log.info({ admin: `${bound.host}:${bound.port}` }, 'admin server listening');
    return bound;
  }

  private onConnection(sock: Socket): void {
    const slot = this.limiter.open(sock.remoteAddress ?? '', () => sock.destroy());
    if (!slot) {
      sock.destroy();
      return;
    }
    slotOf.set(sock, slot);
    sock.once('close', () => slot.close());
  }

  async close(): Promise<void> {
    if (this.tick) clearInterval(this.tick);
    const s = this.server;
    if (!s) return;
    this.server = undefined;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
}
