// The proxy module: keeps one listener per service port (TCP and UDP) in step with the cluster model and the
// Service-IP table, feeds each its routing/LB state, and hands the interception rules to the interceptor.
import { isIP } from 'node:net';
import type { Registry } from 'prom-client';
import { ConfigError, type AgentConfig } from '@edgemesh/common/config';
import type { Logger } from '@edgemesh/common/log';
import type { DestinationRule, Endpoint, NodeInfo, Service, ServiceIPTable, ServicePort, Snapshot } from '../cluster/types.ts';
import type { InterceptRule } from '../intercept/rules.ts';
import type { Rng } from '../lb/hash.ts';
import { policyFor } from '../lb/policy.ts';
import { TIERS, type RoutingDefault, type Tier } from '../routing/routing.ts';
import type { Dialer } from './dialer.ts';
import type { ListenerContext } from './listener.ts';
import { createProxyMetrics, forgetServiceSeries, type ProxyMetrics } from './metrics.ts';
import { dialServicePort, ServiceConnectError, type ConnectFrom, type ServiceConnection } from './connect.ts';
import { PortState } from './portstate.ts';
import { DIAL_TIMEOUT_MS, TCP_IDLE_TIMEOUT_MS, TcpListener } from './tcp.ts';
import { UDP_SESSION_IDLE_MS, UdpListener } from './udp.ts';

/** Checks what the schema cannot: with iptables interception proxy.bindAddress must be IPv4. Throws ConfigError. */
export function validateProxyConfig(cfg: AgentConfig): void {
  const { bindAddress, intercept } = cfg.proxy;
  if (intercept === 'iptables' && isIP(bindAddress) !== 4) {
    throw new ConfigError('proxy.bindAddress', `iptables interception is IPv4 only: expected an IPv4 address, got ${JSON.stringify(bindAddress)}`);
  }
}

/** Where the proxy reads the cluster model from (the agent's ClusterModel). */
export interface SnapshotSource {
  snapshot(): Snapshot;
  subscribe(fn: (snap: Snapshot, prev: Snapshot) => void): () => void;
}

/** Open proxied TCP connections across all Services before new ones are reset. */
export const TCP_MAX_CONNECTIONS = 20_000;

/** What the proxy needs from the interception layer (IptablesInterceptor, or nothing with `intercept: none`). */
export interface Interceptor {
  setDesired(rules: readonly InterceptRule[]): void;
  /** Applied at least once, last attempt succeeded. */
  healthy(): boolean;
}

export interface ProxierOptions {
  log: Logger;
  registry: Registry;
  model: SnapshotSource;
  serviceIPs: ServiceIPTable;
  dialers: { direct: Dialer; tunnel?: Dialer };
  thisNode: string;
  bindAddress: string;
  routingDefault: RoutingDefault;
  domain?: string;
  interceptor?: Interceptor;
  tcpIdleTimeoutMs?: number;
  udpIdleMs?: number;
  dialTimeoutMs?: number;
  maxConnections?: number;
  rng?: Rng;
  now?: () => number;
}

type Listener = TcpListener | UdpListener;

/** Closes a listener; `all`: its open TCP connections too (UDP sessions always go with their socket). */
const closeListener = (l: Listener, all: boolean): Promise<void> => (l instanceof TcpListener ? l.close(all) : l.close());

export interface ServiceRouteStatus {
  routing: string;
  routingSource: string;
  policy: string;
  tiers: Record<Tier, number>;
  listeners: { port: number; protocol: string; proxyPort: number }[];
}

const portId = (svc: Service, sp: ServicePort) => `${svc.key}:${sp.port}/${sp.protocol}`;
const NO_ENDPOINTS: readonly Endpoint[] = Object.freeze([]);

/** Same keys mapping to the very same (immutable) values. */
function sameEntries<K, V>(a: ReadonlyMap<K, V> | undefined, b: ReadonlyMap<K, V>): boolean {
  if (a === b) return true;
  if (!a || a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}

function sameList<T>(a: readonly T[], b: readonly T[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export class Proxier {
  private readonly o: ProxierOptions;
  private readonly metrics: ProxyMetrics;
  private readonly listeners = new Map<string, Listener>();
  private readonly limit: { active: number; max: number };
  private unsubs: (() => void)[] = [];
  private dirty = false;
  private running: Promise<void> | undefined;
  private reconciled = false;
  private stopped = false;
  private prevNodes: ReadonlyMap<string, NodeInfo> | undefined;
  private prevRules: ReadonlyMap<string, DestinationRule> | undefined;
  private appliedRulesKey: string | undefined;
  /** What connectTcp's dials run in (the listeners' context). */
  private readonly ctx: ListenerContext;

  constructor(o: ProxierOptions) {
    this.o = o;
    this.metrics = createProxyMetrics(o.registry);
    this.limit = { active: 0, max: o.maxConnections ?? TCP_MAX_CONNECTIONS };
    this.ctx = { log: o.log, metrics: this.metrics, dialers: o.dialers, thisNode: o.thisNode, srcGroup: () => this.myGroup(o.model.snapshot()) };
  }

  async start(): Promise<void> {
    this.unsubs.push(this.o.model.subscribe(() => this.kick()));
    this.unsubs.push(this.o.serviceIPs.onChange(() => this.kick()));
    this.kick();
    await this.running;
  }

  /**
   * Listeners have been opened for the Services (first reconcile done) and the interception rules are applied and
   * healthy. Later reconciles do not flip readiness while they run.
   */
  ready(): boolean {
    return this.reconciled && (this.o.interceptor?.healthy() ?? true);
  }

  /** Resolves when no reconcile is pending (tests). */
  async settle(): Promise<void> {
    while (this.running) await this.running;
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
          this.o.log.error({ err: (e as Error).message }, 'proxy reconcile failed');
        }
      }
      this.running = undefined;
    })();
  }

  private myGroup(snap: Snapshot): string {
    return snap.nodes.get(this.o.thisNode)?.group ?? 'none';
  }

  private async reconcile(snap: Snapshot): Promise<void> {
    const o = this.o;
    const want = new Map<string, { svc: Service; sp: ServicePort }>();
    for (const [key] of o.serviceIPs.entries()) {
      const svc = snap.services.get(key);
      if (!svc || svc.headless || svc.type === 'ExternalName') continue;
      for (const sp of svc.ports) if (sp.protocol === 'TCP' || sp.protocol === 'UDP') want.set(portId(svc, sp), { svc, sp });
    }
    const wantServices = new Set([...want.values()].map((w) => w.svc.key));
    const goneServices = new Set<string>();
    for (const [id, l] of this.listeners) {
      if (want.has(id)) continue;
      this.listeners.delete(id);
      this.metrics.listeners.dec({ protocol: l instanceof TcpListener ? 'tcp' : 'udp' });
      if (!wantServices.has(l.state.service.key)) goneServices.add(l.state.service.key);
      // Open TCP connections of a removed service port run to their end; the listener just stops accepting.
      void closeListener(l, false);
    }
    for (const key of goneServices) void forgetServiceSeries(this.metrics, key).catch(() => {});
    const strictEmpty = new Set<string>();
    const srcGroup = () => this.myGroup(o.model.snapshot());
    const opened: Promise<unknown>[] = [];
    // Only service ports whose Service, endpoints, nodes or DestinationRules changed are recomputed.
    const contextSame = sameEntries(this.prevNodes, snap.nodes) && sameEntries(this.prevRules, snap.destinationRules);
    this.prevNodes = snap.nodes;
    this.prevRules = snap.destinationRules;
    for (const [id, { svc, sp }] of want) {
      const endpoints = snap.endpoints.get(svc.key) ?? NO_ENDPOINTS;
      let l = this.listeners.get(id);
      if (l && contextSame && l.state.service === svc && l.state.port === sp && sameList(l.state.sourceEndpoints, endpoints)) {
        if (l.state.plan.emptyScope) strictEmpty.add(svc.key);
        continue;
      }
      const update = {
        service: svc, port: sp, endpoints, nodes: snap.nodes, thisNode: o.thisNode,
        routingDefault: o.routingDefault, policy: policyFor(svc, snap.destinationRules, o.domain ?? 'cluster.local'),
      };
      if (l) {
        l.state.update(update);
        if (l instanceof UdpListener) l.prune();
      } else {
        const state = new PortState(update, { rng: o.rng, now: o.now });
        l = sp.protocol === 'TCP'
          ? new TcpListener(state, { log: o.log, metrics: this.metrics, dialers: o.dialers, thisNode: o.thisNode, srcGroup, idleTimeoutMs: o.tcpIdleTimeoutMs ?? TCP_IDLE_TIMEOUT_MS, dialTimeoutMs: o.dialTimeoutMs ?? DIAL_TIMEOUT_MS, limit: this.limit })
          : new UdpListener(state, { log: o.log, metrics: this.metrics, dialers: o.dialers, thisNode: o.thisNode, srcGroup, idleMs: o.udpIdleMs ?? UDP_SESSION_IDLE_MS });
        const lis = l;
        opened.push(lis.listen(o.bindAddress).then(
          () => {
            this.listeners.set(id, lis);
            this.metrics.listeners.inc({ protocol: sp.protocol === 'TCP' ? 'tcp' : 'udp' });
          },
          (e: Error) => {
            o.log.error({ err: e.message, service: svc.key, port: sp.port }, 'cannot open a service-port listener');
            // Its socket (and the UDP purge timer) would otherwise outlive it; the next reconcile tries a new one.
            void closeListener(lis, true).catch(() => {});
          },
        ));
      }
      if (l.state.plan.emptyScope) strictEmpty.add(svc.key);
    }
    await Promise.all(opened);
    this.metrics.strictEmpty.set(strictEmpty.size);
    const rules = this.rules();
    const key = rules.map((r) => `${r.ip} ${r.protocol} ${r.port} ${r.toPort} ${r.comment}`).sort().join('\n');
    if (key !== this.appliedRulesKey) {
      this.appliedRulesKey = key;
      o.interceptor?.setDesired(rules);
    }
    this.reconciled = true;
  }

  /** The interception rules for the current listeners: every IPv4 Service IP x service port -> its listener. */
  rules(): InterceptRule[] {
    const out: InterceptRule[] = [];
    for (const l of this.listeners.values()) {
      const { service: svc, port: sp } = l.state;
      for (const ip of this.o.serviceIPs.ipsFor(svc.key)) {
        if (ip.includes(':')) continue; // IPv6 Service IPs are not intercepted (no ip6tables support yet)
        out.push({ ip, protocol: sp.protocol === 'UDP' ? 'udp' : 'tcp', port: sp.port, comment: `${svc.key}:${sp.port}`, toIP: this.o.bindAddress, toPort: l.port });
      }
    }
    return out;
  }

  /** The local listener port for a service port (tests, intercept: none users). */
  listenerPort(serviceKey: string, port: number, protocol: 'TCP' | 'UDP' = 'TCP'): number | undefined {
    return this.listeners.get(`${serviceKey}:${port}/${protocol}`)?.port;
  }

  /**
   * Connects to a Service's TCP port as if a pod's connection to its IP had been intercepted (routing, balancing,
   * dialer choice, metrics, the shared connection limit): the SOCKS5 and gateway entry points call this. Throws
   * ServiceConnectError.
   */
  async connectTcp(serviceKey: string, port: number, from: ConnectFrom): Promise<ServiceConnection> {
    const l = this.listeners.get(`${serviceKey}:${port}/TCP`);
    if (!(l instanceof TcpListener)) {
      const svc = this.o.model.snapshot().services.get(serviceKey);
      if (!svc) throw new ServiceConnectError('no_service', `no Service ${serviceKey}`);
      if (!svc.ports.some((p) => p.port === port && p.protocol === 'TCP')) throw new ServiceConnectError('no_port', `Service ${serviceKey} has no TCP port ${port}`);
      throw new ServiceConnectError('not_proxied', `Service ${serviceKey} is not proxied by the mesh (headless, ExternalName or no listener yet)`);
    }
    const { limit, metrics } = this;
    if (limit.active >= limit.max) {
      metrics.refused.inc({ service: serviceKey, protocol: 'tcp', reason: 'limit' });
      throw new ServiceConnectError('limit', `${limit.max} proxied connections open`);
    }
    limit.active++;
    let held = true;
    const release = () => {
      if (!held) return;
      held = false;
      limit.active--;
      metrics.active.dec({ service: serviceKey, protocol: 'tcp' });
    };
    metrics.active.inc({ service: serviceKey, protocol: 'tcp' });
    try {
      const c = await dialServicePort(l.state, this.ctx, this.o.dialTimeoutMs ?? DIAL_TIMEOUT_MS, from);
      c.upstream.once('close', release);
      return c;
    } catch (e) {
      release();
      throw e;
    }
  }

  /** Per Service: routing mode, LB policy, endpoint counts per tier, listeners. */
  status(): Map<string, ServiceRouteStatus> {
    const out = new Map<string, ServiceRouteStatus>();
    for (const l of this.listeners.values()) {
      const st = l.state;
      let s = out.get(st.service.key);
      if (!s) {
        const pol = st.balancer.policy;
        s = {
          routing: st.plan.decision.label,
          routingSource: st.plan.decision.source,
          policy: pol.kind === 'maglev' && pol.header ? `maglev(header ${pol.header})` : pol.kind,
          tiers: Object.fromEntries(TIERS.map((t) => [t, st.plan.counts[t]])) as Record<Tier, number>,
          listeners: [],
        };
        out.set(st.service.key, s);
      } else {
        // Ports can resolve to different endpoint sets: report the largest count per tier.
        for (const t of TIERS) s.tiers[t] = Math.max(s.tiers[t], st.plan.counts[t]);
      }
      s.listeners.push({ port: st.port.port, protocol: st.port.protocol, proxyPort: l.port });
    }
    return out;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const u of this.unsubs) u();
    this.unsubs = [];
    await this.settle();
    await Promise.all([...this.listeners.values()].map((l) => closeListener(l, true)));
    this.listeners.clear();
  }
}
