// The ingress gateway (gateway.enabled): listens on this node's addresses for the ports of the Istio Gateways that
// select this node (plan.ts) and routes into mesh Services anywhere in the cluster through the proxy's connect path.
//
// - http listeners: node:http parses every request (no hand-written HTTP framing); host + path routing, keep-alive
//   both ways (upstream.ts pools per Service port), x-forwarded-for / x-forwarded-proto. Requests node:http refuses
//   (both Content-Length and Transfer-Encoding, bad framing: 400; headers over GATEWAY_MAX_HEADER_BYTES: 431) get a
//   clear answer and the connection is closed; the process is never at stake.
// - tls listeners: the ClientHello is read (bounded bytes, deadline) for its SNI, which picks the server: PASSTHROUGH
//   splices the untouched stream to the Service the `tls` route names; SIMPLE terminates TLS with the Gateway's
//   kubernetes.io/tls Secret, then HTTP routing (HTTPS) or the `tcp` routes (TLS).
// - tcp listeners: the first `tcp` route (by weight among its destinations), spliced.
//
// Budgets, per listener port: connections in total and per source (gateway.maxConnections / maxPerSource,
// ConnLimiter: the oldest idle keep-alive connection or stalled handshake is evicted for a newcomer; a connection
// with a request in flight or relaying is not); header, body, hello and TLS handshake deadlines; hello bytes;
// descriptor pressure. Refusals: edgemesh_budget_refusals_total{budget=gateway_*}, edgemesh_gateway_rejected_total.
import { isIP, createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { createServer as createHttpServer, request as httpRequest, STATUS_CODES, type IncomingMessage, type RequestOptions, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createSecureContext, TLSSocket, type SecureContext } from 'node:tls';
import type { Duplex } from 'node:stream';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { Budgets } from '@edgemesh/common/budget';
import { ConnLimiter, type ConnSlot } from '@edgemesh/common/connlimit';
import type { FdPressure } from '@edgemesh/common/fds';
import type { Logger } from '@edgemesh/common/log';
import { listenReusePort } from '@edgemesh/common/reuseport';
import { sourceKey } from '@edgemesh/common/ratelimit';
import type { Snapshot } from '../cluster/types.ts';
import { isLocalAddress } from '../intercept/localaddr.ts';
import { ServiceConnectError, type ConnectFrom } from '../proxy/connect.ts';
import { splice } from '../proxy/splice.ts';
import { TCP_IDLE_TIMEOUT_MS } from '../proxy/tcp.ts';
import { clientAddress, clientResponseHeaders, upstreamRequestHeaders } from './headers.ts';
import { pickWeighted, requestHost, rewritePath, selectByHost, selectHttpRoute, selectVirtualHost } from './match.ts';
import { planGateway, type Destination, type GatewayPlan, type L4RoutePlan, type ListenerKind, type ListenerPlan, type TlsServerPlan, type VirtualHost } from './plan.ts';
import { HELLO_MAX_READ_BYTES, parseClientHello } from './sni.ts';
import { CLIENT_IP_OPTION, MeshAgent } from './upstream.ts';

/** Request headers must be complete this long after the connection opened or the previous response ended. */
export const GATEWAY_HEADERS_TIMEOUT_MS = 10_000;
/** A request body must have arrived this long after its headers (a dribbled upload holds an upstream connection). */
export const GATEWAY_REQUEST_TIMEOUT_MS = 300_000;
/** The upstream must answer (status line and headers) within this, unless the route sets `timeout`. */
export const GATEWAY_RESPONSE_TIMEOUT_MS = 60_000;
/** A client connection with no traffic at all for this long is closed (HTTP; relayed TCP/TLS use the proxy's 1 h). */
export const GATEWAY_IDLE_TIMEOUT_MS = 300_000;
/** Largest request head node:http accepts (its default); more is answered 431. */
export const GATEWAY_MAX_HEADER_BYTES = 16_384;
/** The ClientHello must be complete this long after accept. */
export const GATEWAY_HELLO_TIMEOUT_MS = 5000;
/** A terminated TLS handshake must complete within this. */
export const GATEWAY_TLS_HANDSHAKE_TIMEOUT_MS = 10_000;
/** Reaching the Service for a TCP/TLS connection (the proxy tries up to 3 endpoints, 3 s each). */
export const GATEWAY_CONNECT_TIMEOUT_MS = 10_000;
/** A connection younger than this is never evicted for a newcomer. */
export const GATEWAY_MIN_EVICT_AGE_MS = 250;
/** A listener that could not bind (port in use, address not yet on the host) is tried again this often. */
export const GATEWAY_BIND_RETRY_MS = 10_000;
export const GATEWAY_LISTEN_BACKLOG = 1024;
export const GATEWAY_DEADLINE_BUDGET = 'gateway_deadline';
export const GATEWAY_HELLO_BUDGET = 'gateway_hello_bytes';

export interface SnapshotSource {
  snapshot(): Snapshot;
  subscribe(fn: (snap: Snapshot, prev: Snapshot) => void): () => void;
}

export interface GatewayOptions {
  log: Logger;
  registry: Registry;
  budgets: Budgets;
  fds?: FdPressure;
  model: SnapshotSource;
  thisNode: string;
  domain: string;
  /** gateway.addresses; empty = this node's Node status.addresses that are local. */
  addresses: readonly string[];
  maxConnections: number;
  maxPerSource: number;
  /** The proxy's connect path (Proxier.connectTcp). */
  connect: (serviceKey: string, port: number, from: ConnectFrom) => Promise<{ upstream: Duplex }>;
  random?: () => number;
  /** The ports are held by the agent this one takes over from: bind alongside it (SO_REUSEPORT). */
  shared?: boolean;
  /** Tests: shorter deadlines. */
  headersTimeoutMs?: number;
  helloTimeoutMs?: number;
}

export interface GatewayListenerStatus {
  address: string;
  port: number;
  kind: ListenerKind;
  bound: boolean;
  error?: string;
  connections: number;
  servers: ListenerPlan['servers'];
}

export interface GatewayStatus {
  addresses: string[];
  gateways: readonly string[];
  listeners: GatewayListenerStatus[];
  warnings: readonly string[];
}

interface Metrics {
  connections: Counter<'port' | 'kind' | 'outcome'>;
  requests: Counter<'port' | 'code'>;
  rejected: Counter<'port' | 'reason'>;
  active: Gauge<'port'>;
}

function createMetrics(registry: Registry, listeners: () => Iterable<PortListener>): Metrics {
  const r = [registry];
  new Gauge({
    name: 'edgemesh_gateway_listeners', help: 'Gateway listeners bound, by kind (http, tls, tcp)', labelNames: ['kind'], registers: r,
    collect() {
      this.reset();
      for (const l of listeners()) if (l.bound) this.inc({ kind: l.plan.kind });
    },
  });
  return {
    connections: new Counter({ name: 'edgemesh_gateway_connections_total', help: 'Gateway TCP/TLS connections by port, kind and outcome: routed, no_route, upstream_failed, bad_hello, hello_timeout, no_certificate, tls_failed', labelNames: ['port', 'kind', 'outcome'], registers: r }),
    requests: new Counter({ name: 'edgemesh_gateway_requests_total', help: 'Gateway HTTP requests answered, by port and status class (1xx-5xx; reset = the upstream broke off mid-response)', labelNames: ['port', 'code'], registers: r }),
    rejected: new Counter({ name: 'edgemesh_gateway_rejected_total', help: 'Gateway HTTP requests refused before routing: bad_request, header_too_large, timeout, no_route, no_upstream', labelNames: ['port', 'reason'], registers: r }),
    active: new Gauge({ name: 'edgemesh_gateway_active', help: 'Open gateway client connections by port', labelNames: ['port'], registers: r }),
  };
}

const codeClass = (status: number) => `${Math.floor(status / 100)}xx`;

/** Per HTTP client connection: its slot, the virtual hosts it may use, and the header deadline. */
interface HttpConn {
  slot: ConnSlot;
  proto: 'http' | 'https';
  vhosts: () => readonly VirtualHost[];
  inflight: number;
  headerTimer: NodeJS.Timeout | undefined;
}

export class Gateway {
  readonly o: GatewayOptions;
  readonly metrics: Metrics;
  private readonly listeners = new Map<string, PortListener>();
  private readonly limiters = new Map<number, ConnLimiter>();
  private readonly agents = new Map<string, MeshAgent>();
  private readonly contexts = new Map<string, { fingerprint: string; ctx?: SecureContext }>();
  private plan: GatewayPlan = { listeners: [], gateways: [], warnings: [], secrets: [] };
  private addressesNow: string[] = [];
  private unsubscribe: (() => void) | undefined;
  private running: Promise<void> | undefined;
  private dirty = false;
  private stopped = false;
  /** A takeover: no more accepting; HTTP responses from now on close their connection (clients reconnect to the successor). */
  draining = false;
  private retry: NodeJS.Timeout | undefined;
  private loggedWarnings = new Set<string>();
  private reconciled = false;
  readonly random: () => number;

  constructor(o: GatewayOptions) {
    this.o = o;
    this.random = o.random ?? Math.random;
    this.metrics = createMetrics(o.registry, () => this.listeners.values());
  }

  async start(): Promise<void> {
    this.unsubscribe = this.o.model.subscribe(() => this.kick());
    this.kick();
    await this.settle();
  }

  /** Resolves when no reconcile is pending. */
  async settle(): Promise<void> {
    while (this.running) await this.running;
  }

  /** The first plan has been applied and every planned listener is bound. */
  ready(): boolean {
    return this.reconciled && [...this.listeners.values()].every((l) => l.bound);
  }

  status(): GatewayStatus {
    return {
      addresses: this.addressesNow,
      gateways: this.plan.gateways,
      listeners: [...this.listeners.values()].map((l) => ({ address: l.address, port: l.plan.port, kind: l.plan.kind, bound: l.bound, ...(l.error ? { error: l.error } : {}), connections: l.connections, servers: l.plan.servers })),
      warnings: this.plan.warnings,
    };
  }

  /**
   * A takeover: stops accepting on every port at once (with net.ipv4.tcp_migrate_req the kernel moves connections
   * still queued to the successor's listeners) and follows no more changes. Open connections carry on; HTTP ones get
   * `connection: close` on their next response, idle keep-alive ones end at their header deadline (the caller drains).
   */
  stopAccepting(): void {
    this.stopped = true;
    this.draining = true;
    this.unsubscribe?.();
    clearTimeout(this.retry);
    for (const l of this.listeners.values()) l.stopAccepting();
  }

  /** Client connections open now on every port (a draining agent waits for them). */
  openConnections(): number {
    let n = 0;
    for (const l of this.listeners.values()) n += l.connections;
    return n;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    clearTimeout(this.retry);
    await this.settle();
    await Promise.all([...this.listeners.values()].map((l) => l.close(true)));
    this.listeners.clear();
    for (const a of this.agents.values()) a.destroy();
    this.agents.clear();
  }

  private kick(): void {
    if (this.stopped) return;
    this.dirty = true;
    if (this.running) return;
    this.running = (async () => {
      while (this.dirty && !this.stopped) {
        this.dirty = false;
        try {
          await this.reconcile(this.o.model.snapshot());
        } catch (e) {
          this.o.log.error({ err: (e as Error).message }, 'gateway reconcile failed');
        }
      }
      this.running = undefined;
    })();
  }

  /** The addresses to listen on: gateway.addresses, else this node's Node addresses that are on this host. */
  private addresses(snap: Snapshot): string[] {
    if (this.o.addresses.length) return [...this.o.addresses];
    const me = snap.nodes.get(this.o.thisNode);
    return [...new Set((me?.addresses ?? []).filter((a) => isIP(a) !== 0 && isLocalAddress(a)))].sort();
  }

  private async reconcile(snap: Snapshot): Promise<void> {
    const plan = planGateway({
      gateways: snap.gateways?.values() ?? [], virtualServices: snap.virtualServices?.values() ?? [],
      nodeLabels: snap.nodes.get(this.o.thisNode)?.labels, domain: this.o.domain, secretKeys: new Set(snap.tlsSecrets?.keys() ?? []),
    });
    this.plan = plan;
    const fresh = plan.warnings.filter((w) => !this.loggedWarnings.has(w));
    for (const w of fresh.slice(0, 20)) this.o.log.warn({ warning: w }, 'gateway configuration');
    if (fresh.length > 20) this.o.log.warn({ more: fresh.length - 20 }, 'gateway configuration: more warnings in /status');
    this.loggedWarnings = new Set(plan.warnings);
    const addresses = plan.listeners.length ? this.addresses(snap) : [];
    if (plan.listeners.length && !addresses.length && this.addressesNow.length === 0) {
      this.o.log.warn({ node: this.o.thisNode }, 'gateway: this node has no local address in its Node status and gateway.addresses is empty: not listening');
    }
    this.addressesNow = addresses;
    const want = new Map<string, { address: string; plan: ListenerPlan }>();
    for (const a of addresses) for (const l of plan.listeners) want.set(`${a}|${l.port}`, { address: a, plan: l });
    const closing: Promise<void>[] = [];
    for (const [key, l] of this.listeners) {
      const w = want.get(key);
      if (w && w.plan.kind === l.plan.kind) continue;
      this.listeners.delete(key);
      // Open connections of a removed port run to their end; it just stops accepting.
      closing.push(l.close(false));
    }
    await Promise.all(closing);
    const opening: Promise<void>[] = [];
    for (const [key, w] of want) {
      let l = this.listeners.get(key);
      if (l) {
        l.plan = w.plan;
        if (!l.bound) opening.push(l.listen());
        continue;
      }
      l = new PortListener(this, w.address, w.plan);
      this.listeners.set(key, l);
      opening.push(l.listen());
    }
    await Promise.all(opening);
    // Pools to Services that left the cluster go.
    for (const [key, a] of this.agents) {
      if (!snap.services.has(key.slice(0, key.lastIndexOf(':')))) {
        a.destroy();
        this.agents.delete(key);
      }
    }
    this.reconciled = true;
    clearTimeout(this.retry);
    if ([...this.listeners.values()].some((l) => !l.bound) && !this.stopped) {
      this.retry = setTimeout(() => this.kick(), GATEWAY_BIND_RETRY_MS);
      this.retry.unref();
    }
  }

  /** The connection slots of a port (one budget per listener port, shared by its addresses). */
  limiter(port: number): ConnLimiter {
    let l = this.limiters.get(port);
    if (!l) {
      l = new ConnLimiter({ budgets: this.o.budgets, name: `gateway_conns_p${port}`, total: this.o.maxConnections, perSource: this.o.maxPerSource, minEvictAgeMs: GATEWAY_MIN_EVICT_AGE_MS, fds: this.o.fds });
      this.limiters.set(port, l);
    }
    return l;
  }

  /** The Service port a destination means: its own, or the Service's only TCP port. */
  servicePort(d: Destination): number | undefined {
    if (d.port !== undefined) return d.port;
    const tcp = this.o.model.snapshot().services.get(d.serviceKey)?.ports.filter((p) => p.protocol === 'TCP') ?? [];
    return tcp.length === 1 ? tcp[0].port : undefined;
  }

  upstreamAgent(serviceKey: string, port: number): MeshAgent {
    const key = `${serviceKey}:${port}`;
    let a = this.agents.get(key);
    if (!a) {
      // A pooled connection was balanced for the client whose request opened it; later requests reuse it.
      a = new MeshAgent((signal, clientIP) => this.o.connect(serviceKey, port, { clientIP, signal }).then((c) => c.upstream));
      this.agents.set(key, a);
    }
    return a;
  }

  /** A TLS context for a Secret of the snapshot (cached per content), or undefined when absent or unusable. */
  secureContext(secretKey: string): SecureContext | undefined {
    const s = this.o.model.snapshot().tlsSecrets?.get(secretKey);
    if (!s) return undefined;
    const c = this.contexts.get(secretKey);
    if (c && c.fingerprint === s.fingerprint) return c.ctx;
    let ctx: SecureContext | undefined;
    try {
      ctx = createSecureContext({ cert: s.cert.reveal(), key: s.privateKey.reveal(), minVersion: 'TLSv1.2' });
    } catch (e) {
      // OpenSSL's reason (e.g. "PEM routines::no start line"), never the material.
      this.o.log.warn({ secret: secretKey, reason: (e as { code?: string }).code ?? (e as Error).message.split('\n')[0] }, 'gateway: the TLS Secret has no usable certificate and key');
    }
    this.contexts.set(secretKey, { fingerprint: s.fingerprint, ctx });
    return ctx;
  }
}

/** One bound address:port. */
class PortListener {
  readonly gw: Gateway;
  readonly address: string;
  plan: ListenerPlan;
  bound = false;
  error: string | undefined;
  private server: NetServer | undefined;
  private http: HttpServer | undefined;
  private readonly conns = new Set<Socket>();
  private readonly httpConns = new WeakMap<object, HttpConn>();
  private binding: Promise<void> | undefined;

  constructor(gw: Gateway, address: string, plan: ListenerPlan) {
    this.gw = gw;
    this.address = address;
    this.plan = plan;
  }

  get connections(): number {
    return this.conns.size;
  }

  private get portLabel(): string {
    return String(this.plan.port);
  }

  listen(): Promise<void> {
    this.binding ??= this.bind().finally(() => { this.binding = undefined; });
    return this.binding;
  }

  private async bind(): Promise<void> {
    const server = createNetServer({ allowHalfOpen: true, noDelay: true, keepAlive: true, pauseOnConnect: false }, (s) => this.accept(s));
    server.maxConnections = this.gw.o.maxConnections + 16;
    try {
      // SO_REUSEPORT, so that a successor agent binds the same address and port alongside this one.
      await listenReusePort(server, this.address, this.plan.port, { shared: this.gw.o.shared ?? false, backlog: GATEWAY_LISTEN_BACKLOG });
    } catch (e) {
      const reason = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      if (reason !== this.error) this.gw.o.log.error({ address: this.address, port: this.plan.port, reason }, 'gateway: cannot listen; retrying');
      this.error = reason;
      server.close();
      return;
    }
    if (this.gw.draining) {
      // Bound by a reconcile that was under way when the agent handed over: not ours to serve any more.
      server.close();
      return;
    }
    server.on('error', (e) => this.gw.o.log.error({ err: e.message, port: this.plan.port }, 'gateway listener error'));
    this.server = server;
    this.bound = true;
    this.error = undefined;
    this.gw.o.log.info({ gateway: `${this.address.includes(':') ? `[${this.address}]` : this.address}:${this.plan.port}`, kind: this.plan.kind }, 'gateway listening');
  }

  /** Stops accepting now (also a bind still under way is closed when it finishes); open connections carry on. */
  stopAccepting(): void {
    const close = () => {
      this.bound = false;
      const s = this.server;
      this.server = undefined;
      s?.close();
    };
    if (this.binding) void this.binding.then(close);
    else close();
  }

  async close(all: boolean): Promise<void> {
    await this.binding;
    this.bound = false;
    if (all) for (const c of this.conns) c.destroy();
    const s = this.server;
    this.server = undefined;
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }

  private accept(sock: Socket): void {
    sock.on('error', () => {});
    const src = clientAddress(sock.remoteAddress);
    const slot = this.gw.limiter(this.plan.port).open(sourceKey(src), () => sock.destroy());
    if (!slot) {
      sock.destroy();
      return;
    }
    this.conns.add(sock);
    const port = this.portLabel;
    this.gw.metrics.active.inc({ port });
    sock.once('close', () => {
      slot.close();
      this.conns.delete(sock);
      this.gw.metrics.active.dec({ port });
    });
    const kind = this.plan.kind;
    if (kind === 'http') this.attachHttp(sock, slot, 'http', () => (this.plan.kind === 'http' ? this.plan.vhosts : []));
    else if (kind === 'tcp') {
      slot.begin();
      this.routeL4(sock, this.plan.routes[0], undefined, 'tcp');
    } else this.peekHello(sock, slot);
  }

  // --- TLS: the ClientHello decides -------------------------------------------------------------------------------

  private peekHello(sock: Socket, slot: ConnSlot): void {
    const o = this.gw.o;
    slot.partial(Date.now());
    const chunks: Buffer[] = [];
    let n = 0;
    const done = () => {
      clearTimeout(timer);
      sock.removeListener('data', onData);
    };
    const timer = setTimeout(() => {
      done();
      o.budgets.refuse(GATEWAY_DEADLINE_BUDGET, { port: this.plan.port, phase: 'hello' });
      this.outcome('hello_timeout');
      sock.destroy();
    }, o.helloTimeoutMs ?? GATEWAY_HELLO_TIMEOUT_MS);
    const onData = (c: Buffer) => {
      chunks.push(c);
      n += c.length;
      const buf = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
      const p = parseClientHello(buf.length > HELLO_MAX_READ_BYTES ? buf.subarray(0, HELLO_MAX_READ_BYTES) : buf);
      if (p.kind === 'need') {
        if (n >= HELLO_MAX_READ_BYTES) {
          done();
          o.budgets.refuse(GATEWAY_HELLO_BUDGET, { port: this.plan.port });
          this.outcome('bad_hello');
          sock.destroy();
        }
        return;
      }
      done();
      sock.pause();
      if (p.kind === 'error') {
        o.log.debug({ port: this.plan.port, reason: p.reason }, 'gateway: not a TLS ClientHello');
        this.outcome('bad_hello');
        sock.destroy();
        return;
      }
      this.dispatchTls(sock, slot, buf, p.hello.serverName ?? '');
    };
    sock.on('data', onData);
  }

  private tlsServer(sni: string): TlsServerPlan | undefined {
    return this.plan.kind === 'tls' ? selectByHost(this.plan.tls, sni) : undefined;
  }

  private dispatchTls(sock: Socket, slot: ConnSlot, hello: Buffer, sni: string): void {
    const server = this.tlsServer(sni);
    if (!server) {
      this.outcome('no_route');
      sock.destroy();
      return;
    }
    if (server.mode === 'passthrough') {
      const route = selectByHost(server.routes.map((r) => ({ hosts: r.sniHosts.length ? r.sniHosts : ['*'], r })), sni)?.r;
      slot.partial(undefined);
      slot.begin();
      this.routeL4(sock, route, hello, 'tls');
      return;
    }
    const ctx = this.gw.secureContext(server.secret!);
    if (!ctx) {
      this.outcome('no_certificate');
      sock.destroy();
      return;
    }
    // The ClientHello goes back in front of the stream; TLSSocket reads it from there.
    sock.unshift(hello);
    const tls = new TLSSocket(sock, { isServer: true, secureContext: ctx, ALPNProtocols: server.inner === 'http' ? ['http/1.1'] : undefined });
    const timer = setTimeout(() => {
      this.gw.o.budgets.refuse(GATEWAY_DEADLINE_BUDGET, { port: this.plan.port, phase: 'tls' });
      this.outcome('tls_failed');
      sock.destroy();
    }, GATEWAY_TLS_HANDSHAKE_TIMEOUT_MS);
    let secure = false;
    tls.on('error', (e) => {
      clearTimeout(timer);
      if (!secure) {
        this.gw.o.log.debug({ port: this.plan.port, reason: (e as NodeJS.ErrnoException).code ?? e.message }, 'gateway: TLS handshake failed');
        this.outcome('tls_failed');
      }
      tls.destroy();
      sock.destroy();
    });
    tls.once('close', () => sock.destroy());
    tls.once('secure', () => {
      secure = true;
      clearTimeout(timer);
      if (server.inner === 'http') {
        const key = server.secret;
        // Later requests on this connection follow plan changes, for the server they came in on.
        this.attachHttp(tls, slot, 'https', () => this.plan.tls.find((t) => t.secret === key && t.hosts.join() === server.hosts.join())?.vhosts ?? server.vhosts);
      } else {
        slot.partial(undefined);
        slot.begin();
        this.routeL4(tls, server.routes[0], undefined, 'tls');
      }
    });
  }

  // --- TCP (and TLS passthrough, and terminated TLS with tcp routes): splice to a Service ------------------------

  private outcome(outcome: string): void {
    this.gw.metrics.connections.inc({ port: this.portLabel, kind: this.plan.kind, outcome });
  }

  private routeL4(client: Socket, route: L4RoutePlan | undefined, head: Buffer | undefined, kind: 'tcp' | 'tls'): void {
    const dest = route ? pickWeighted(route.destinations, this.gw.random()) : undefined;
    const port = dest ? this.gw.servicePort(dest) : undefined;
    if (!dest || port === undefined) {
      this.gw.metrics.connections.inc({ port: this.portLabel, kind, outcome: 'no_route' });
      client.destroy();
      return;
    }
    const gone = new AbortController();
    const onClose = () => gone.abort();
    client.once('close', onClose);
    const signal = AbortSignal.any([gone.signal, AbortSignal.timeout(GATEWAY_CONNECT_TIMEOUT_MS)]);
    this.gw.o.connect(dest.serviceKey, port, { clientIP: clientAddress(client.remoteAddress), signal }).then(({ upstream }) => {
      client.removeListener('close', onClose);
      if (client.destroyed) {
        upstream.destroy();
        return;
      }
      this.gw.metrics.connections.inc({ port: this.portLabel, kind, outcome: 'routed' });
      splice(client, upstream, { head, idleMs: TCP_IDLE_TIMEOUT_MS });
    }, (e: unknown) => {
      client.removeListener('close', onClose);
      this.gw.o.log.debug({ port: this.plan.port, service: dest.serviceKey, reason: (e as Error).message }, 'gateway: upstream connect failed');
      this.gw.metrics.connections.inc({ port: this.portLabel, kind, outcome: 'upstream_failed' });
      if (typeof client.resetAndDestroy === 'function' && !(client instanceof TLSSocket)) client.resetAndDestroy();
      else client.destroy();
    }).catch((e: unknown) => {
      // A bug on this connection's path costs the connection, never the process.
      this.gw.o.log.error({ err: e }, 'gateway: relaying a connection failed');
      client.destroy();
    });
  }

  // --- HTTP -------------------------------------------------------------------------------------------------------

  private httpServer(): HttpServer {
    if (this.http) return this.http;
    // Connections are handed over by emit('connection'): node:http parses; its own header/request timers only run
    // for servers that listen, so the deadlines are ours (attachHttp).
    const h = createHttpServer({ maxHeaderSize: GATEWAY_MAX_HEADER_BYTES, keepAlive: true, requireHostHeader: false }, (req, res) => this.onRequest(req, res));
    h.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.onClientError(err, socket));
    h.timeout = GATEWAY_IDLE_TIMEOUT_MS;
    this.http = h;
    return h;
  }

  private attachHttp(sock: Socket, slot: ConnSlot, proto: 'http' | 'https', vhosts: () => readonly VirtualHost[]): void {
    const c: HttpConn = { slot, proto, vhosts, inflight: 0, headerTimer: undefined };
    this.httpConns.set(sock, c);
    this.armHeaderDeadline(sock, c, true);
    this.httpServer().emit('connection', sock);
  }

  /**
   * The next request's headers must be complete within the deadline. A connection that sent nothing since (an idle
   * keep-alive connection) is just closed; one that sent part of a request head is a refusal (slowloris).
   */
  private armHeaderDeadline(sock: Socket, c: HttpConn, first: boolean): void {
    clearTimeout(c.headerTimer);
    // A new connection counts as dribbling (evictable once old enough); after a response it is simply idle.
    if (first) c.slot.partial(Date.now());
    const readAt = sock.bytesRead;
    c.headerTimer = setTimeout(() => {
      if (c.inflight) return;
      if (sock.bytesRead !== readAt || first) this.gw.o.budgets.refuse(GATEWAY_DEADLINE_BUDGET, { port: this.plan.port, phase: 'headers' });
      sock.destroy();
    }, this.gw.o.headersTimeoutMs ?? GATEWAY_HEADERS_TIMEOUT_MS);
    c.headerTimer.unref();
  }

  private onClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    const code = err.code ?? '';
    const status = code === 'HPE_HEADER_OVERFLOW' ? 431 : code === 'HPE_HEADER_TIMEOUT' || code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    const reason = status === 431 ? 'header_too_large' : status === 408 ? 'timeout' : 'bad_request';
    if (code !== 'ECONNRESET') this.gw.metrics.rejected.inc({ port: this.portLabel, reason });
    this.gw.o.log.debug({ port: this.plan.port, code }, 'gateway: request refused by the HTTP parser');
    const s = socket as Socket;
    if (s.writable && !(s as unknown as { _httpMessage?: unknown })._httpMessage) {
      // node:http's documented way to answer a request it could not parse (no response object exists for it).
      s.end(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
      setTimeout(() => s.destroy(), 1000).unref();
    } else {
      s.destroy();
    }
  }

  /** Draining (a takeover): this response says `connection: close` and ends its connection; the client reconnects. */
  private closeIfDraining(res: ServerResponse): void {
    if (this.gw.draining) res.shouldKeepAlive = false;
  }

  private send(res: ServerResponse, status: number, body: string, reason?: string, extra: Record<string, string> = {}): void {
    if (reason) this.gw.metrics.rejected.inc({ port: this.portLabel, reason });
    this.gw.metrics.requests.inc({ port: this.portLabel, code: codeClass(status) });
    this.closeIfDraining(res);
    res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': String(Buffer.byteLength(body)), ...extra });
    res.end(body);
  }

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    const sock = req.socket;
    const c = this.httpConns.get(sock);
    if (!c) {
      res.destroy();
      return;
    }
    clearTimeout(c.headerTimer);
    c.inflight++;
    c.slot.partial(undefined);
    c.slot.begin();
    const bodyTimer = setTimeout(() => {
      this.gw.o.budgets.refuse(GATEWAY_DEADLINE_BUDGET, { port: this.plan.port, phase: 'body' });
      sock.destroy();
    }, GATEWAY_REQUEST_TIMEOUT_MS);
    bodyTimer.unref();
    req.once('end', () => clearTimeout(bodyTimer));
    req.once('close', () => clearTimeout(bodyTimer));
    res.once('close', () => {
      c.inflight--;
      c.slot.end();
      if (!c.inflight && !sock.destroyed) this.armHeaderDeadline(sock, c, false);
    });
    try {
      this.route(req, res, c);
    } catch (e) {
      // A bug on the request path costs this request, never the process.
      this.gw.o.log.error({ err: e }, 'gateway: request handling failed');
      if (!res.headersSent) this.send(res, 500, 'internal error\n');
      else res.destroy();
    }
  }

  private route(req: IncomingMessage, res: ServerResponse, c: HttpConn): void {
    const host = requestHost(req.headers.host);
    let target = req.url ?? '/';
    if (!target.startsWith('/')) {
      // absolute-form (a proxy request) keeps only its path; '*' (OPTIONS *) has no route.
      try {
        const u = new URL(target);
        target = `${u.pathname}${u.search}`;
      } catch {
        return this.send(res, 400, 'bad request target\n', 'bad_request', { connection: 'close' });
      }
    }
    // RFC 9112 3.2: an HTTP/1.1 request without Host is a 400 (checked here rather than by node:http, to count it).
    if (!host && req.httpVersion !== '1.0') return this.send(res, 400, 'missing Host header\n', 'bad_request', { connection: 'close' });
    const vh = selectVirtualHost(c.vhosts(), host ?? '');
    if (!vh) return this.send(res, 404, 'no route for this host\n', 'no_route');
    if (vh.httpsRedirect && c.proto === 'http') {
      return this.send(res, 301, '', undefined, { location: `https://${req.headers.host}${target}` });
    }
    const path = target.split('?')[0];
    const sel = selectHttpRoute(vh.routes, { path, headers: req.headers, port: this.plan.port });
    if (!sel) return this.send(res, 404, 'no route for this path\n', 'no_route');
    const dest = pickWeighted(sel.route.destinations, this.gw.random());
    const port = dest ? this.gw.servicePort(dest) : undefined;
    if (!dest || port === undefined) return this.send(res, 503, 'no upstream for this route\n', 'no_upstream');
    const clientIP = clientAddress(req.socket.remoteAddress);
    const up = httpRequest({
      agent: this.gw.upstreamAgent(dest.serviceKey, port),
      host: 'upstream', port, method: req.method, path: rewritePath(target, sel.route.rewriteUri, sel.match),
      headers: upstreamRequestHeaders(req.rawHeaders, clientIP, c.proto), setHost: false,
      [CLIENT_IP_OPTION]: clientIP,
    } as RequestOptions);
    const timeoutMs = sel.route.timeoutMs ?? GATEWAY_RESPONSE_TIMEOUT_MS;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      up.destroy();
    }, timeoutMs);
    up.on('response', (ur) => {
      clearTimeout(timer);
      const status = ur.statusCode ?? 502;
      this.gw.metrics.requests.inc({ port: this.portLabel, code: codeClass(status) });
      this.closeIfDraining(res);
      res.writeHead(status, ur.statusMessage, clientResponseHeaders(ur.rawHeaders));
      ur.on('error', () => res.destroy());
      ur.on('aborted', () => {
        this.gw.metrics.requests.inc({ port: this.portLabel, code: 'reset' });
        res.destroy();
      });
      ur.pipe(res);
    });
    up.on('error', (e) => {
      clearTimeout(timer);
      if (res.headersSent) {
        res.destroy();
        return;
      }
      if (timedOut) return this.send(res, 504, 'upstream timed out\n');
      const noEndpoint = e instanceof ServiceConnectError;
      this.gw.o.log.debug({ service: dest.serviceKey, reason: e.message }, 'gateway: upstream request failed');
      this.send(res, noEndpoint ? 503 : 502, noEndpoint ? 'no healthy upstream\n' : 'upstream connection failed\n');
    });
    res.on('error', () => {});
    res.once('close', () => {
      clearTimeout(timer);
      if (!res.writableFinished) up.destroy();
    });
    req.pipe(up);
  }
}
