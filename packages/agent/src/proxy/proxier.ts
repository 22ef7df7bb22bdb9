// The proxy module: keeps one listener per service port (TCP and UDP) in step with the cluster model and the
// Service-IP table, feeds each its routing/LB state, and hands the interception rules to the interceptor.
// Reconciles go through one BoundedRunner (one at a time, changes meanwhile mean one more; a listener that could not
// be opened is retried with backoff). Readiness follows generations: snapshot version + IP-table version ->
// reconciled (every listener bound) -> rules of that reconcile in the kernel. Headless Services' endpoints with a mesh
// IP (the table's endpointIPs) get one listener per endpoint port on the same path (persisted ports, SO_REUSEPORT,
// readiness), each balancing over exactly that one endpoint.
import { isIP } from 'node:net';
import type { Registry } from 'prom-client';
import { ConfigError, type AgentConfig } from '@edgemesh/common/config';
import type { Logger } from '@edgemesh/common/log';
import { BoundedRunner } from '@edgemesh/common/runner';
import type { DestinationRule, Endpoint, EndpointIP, EndpointPort, NodeInfo, Service, ServiceIPTable, ServicePort, Snapshot } from '../cluster/types.ts';
import { labelOwners } from '../dns/serviceips.ts';
import type { InterceptRule } from '../intercept/rules.ts';
import type { Rng } from '../lb/hash.ts';
import { DEFAULT_POLICY, policyFor } from '../lb/policy.ts';
import { TIERS, type RoutingDefault, type Tier } from '../routing/routing.ts';
import type { Dialer } from './dialer.ts';
import type { ListenerContext } from './listener.ts';
import { createProxyMetrics, forgetEndpointSeries, forgetServiceSeries, type ProxyMetrics } from './metrics.ts';
import { FlatDialer, FlatPaths, type FlatStatus } from './flat.ts';
import { dialServicePort, ServiceConnectError, type ConnectFrom, type ServiceConnection } from './connect.ts';
import { PortState } from './portstate.ts';
import { externalDestinations, needsExternalListener } from './external.ts';
import type { ListenerPorts } from './ports.ts';
import type { UdpRelay } from '../handoff/udp.ts';
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

/** A reconcile whose listeners failed to open is retried after this long, doubling up to the max. */
export const RECONCILE_RETRY_MS = 1000;
export const RECONCILE_RETRY_MAX_MS = 30_000;
/** How often a draining proxy looks whether its connections are done. */
export const DRAIN_POLL_MS = 100;

/** What the proxy needs from the interception layer (IptablesInterceptor, or nothing with `intercept: none`). */
export interface Interceptor {
  /** Replaces the desired rules; returns their generation. */
  setDesired(rules: readonly InterceptRule[]): number;
  /** The rules of generation `gen` (or later) are in the kernel. */
  appliedFor(gen: number): boolean;
  /** The kernel holds what was applied (false only while rules were found changed and are not re-asserted yet). */
  healthy(): boolean;
}

/**
 * How far the cluster source is: `synced` (listed / read), `offline` (not synced, serving the last good state from
 * stateDir), `empty` (nothing yet). Rules are handed to the interceptor from `offline` on; readiness needs `synced`.
 */
export type ClusterPhase = 'synced' | 'offline' | 'empty';

export interface ProxierOptions {
  log: Logger;
  registry: Registry;
  model: SnapshotSource;
  serviceIPs: ServiceIPTable;
  dialers: { direct: Dialer; tunnel?: Dialer };
  thisNode: string;
  bindAddress: string;
  /** proxy.directCIDRs: endpoint IPs dialed directly on any node (flat.ts); empty or absent = none. */
  directCIDRs?: readonly string[];
  routingDefault: RoutingDefault;
  domain?: string;
  interceptor?: Interceptor;
  /** Where the cluster source is (default: synced). */
  cluster?: () => ClusterPhase;
  /** True while the model has changes not yet published as a snapshot. */
  modelPending?: () => boolean;
  /** Persisted listener ports (stateDir); without it every listener gets a fresh port. */
  ports?: ListenerPorts;
  /** Persisted ports are held by the agent we take over from: bind them alongside it (SO_REUSEPORT). */
  sharePorts?: boolean;
  /** proxy.nodePorts: intercept nodePorts, externalIPs and load-balancer IPs too (external.ts). */
  nodePorts?: boolean;
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
  listeners: { port: number; protocol: string; proxyPort: number; external?: true }[];
  /** Routing of traffic from outside (proxy.nodePorts) when it has a listener of its own (externalTrafficPolicy Local). */
  externalRouting?: string;
}

const portId = (svc: Service, sp: ServicePort) => `${svc.key}:${sp.port}/${sp.protocol}`;
/** Listener id of one port of a headless endpoint's mesh IP: `ns/svc/<label>:<port>/<protocol>`. */
const meshPortId = (meshKey: string, p: EndpointPort) => `${meshKey}:${p.port}/${p.protocol}`;

export interface MeshEndpointStatus {
  service: string;
  name: string;
  ip: string;
  address: string;
  node: string;
  routing: string;
  listeners: { port: number; protocol: string; proxyPort: number }[];
}

interface Wanted {
  svc: Service;
  sp: ServicePort;
  endpoints: readonly Endpoint[];
  /** A headless endpoint's mesh IP: the listener serves exactly that endpoint. */
  mesh?: EndpointIP;
  /** The listener for external traffic of a service port (externalTrafficPolicy Local). */
  external?: boolean;
}
/** Suffix of the id of a service port's listener for external traffic (externalTrafficPolicy Local). */
const EXTERNAL_ID = '/external';
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
  private readonly runner: BoundedRunner;
  private stopped = false;
  private prevNodes: ReadonlyMap<string, NodeInfo> | undefined;
  private prevRules: ReadonlyMap<string, DestinationRule> | undefined;
  private appliedRulesKey: string | undefined;
  /** What connectTcp's dials run in (the listeners' context). */
  private readonly ctx: ListenerContext;
  /** What the last finished reconcile covered: snapshot and IP-table versions, all listeners bound, rules generation. */
  private reconciled: { snap: number; ips: number; complete: boolean; rulesGen: number } | undefined;
  private rulesGen = 0;
  /** Became ready once: from then on only a wrong kernel state takes readiness away. */
  private wasReady = false;
  /** proxy.directCIDRs state (flat.ts), when ranges are configured. */
  private readonly flat: { paths: FlatPaths; dialer: FlatDialer } | undefined;
  /** Listener id -> the mesh IP it serves (per-endpoint listeners only). */
  private readonly meshOf = new Map<string, EndpointIP>();
  /** Synthetic service ports of mesh listeners, reused while unchanged (so an unchanged listener is skipped). */
  private readonly meshPorts = new Map<string, ServicePort>();

  constructor(o: ProxierOptions) {
    this.o = o;
    this.metrics = createProxyMetrics(o.registry);
    this.limit = { active: 0, max: o.maxConnections ?? TCP_MAX_CONNECTIONS };
    if (o.directCIDRs?.length) {
      const paths = new FlatPaths({ cidrs: o.directCIDRs, metrics: this.metrics, log: o.log });
      this.flat = { paths, dialer: new FlatDialer(paths, () => o.dialers.tunnel) };
    }
    this.ctx = { log: o.log, metrics: this.metrics, dialers: o.dialers, thisNode: o.thisNode, srcGroup: () => this.myGroup(o.model.snapshot()), flat: this.flat };
    this.runner = new BoundedRunner({
      retryMinMs: RECONCILE_RETRY_MS,
      retryMaxMs: RECONCILE_RETRY_MAX_MS,
      run: () => this.reconcile(this.o.model.snapshot()),
      onError: (e, ms) => this.o.log.error({ err: (e as Error).message, retryInMs: ms }, 'proxy reconcile failed; retrying'),
    });
  }

  async start(): Promise<void> {
    this.unsubs.push(this.o.model.subscribe(() => this.kick()));
    this.unsubs.push(this.o.serviceIPs.onChange(() => this.kick()));
    // The first reconcile has run (a listener that could not open is retried in the background).
    await this.runner.whenAttempted(this.runner.run());
  }

  /**
   * Ready when, for the snapshot and IP table the agent holds now, every listener is bound and the interception
   * rules pointing at them are in the kernel, after the cluster source synced. Once ready, later reconciles do not
   * take it away: only a kernel found holding other rules than ours (flushed, not yet re-asserted) does.
   */
  ready(): boolean {
    const intercept = this.o.interceptor;
    if (this.wasReady) return intercept?.healthy() ?? true;
    const r = this.reconciled;
    const phase = this.o.cluster?.() ?? 'synced';
    const now = phase === 'synced' && !(this.o.modelPending?.() ?? false) && r !== undefined && r.complete
      && r.snap === this.o.model.snapshot().version && r.ips === this.ipsVersion()
      && (!intercept || (intercept.appliedFor(r.rulesGen) && intercept.healthy()));
    if (now) this.wasReady = true;
    return now;
  }

  /** Why not ready (for logs and /readyz callers), or undefined when ready. */
  notReadyReason(): string | undefined {
    if (this.ready()) return undefined;
    const r = this.reconciled;
    const phase = this.o.cluster?.() ?? 'synced';
    if (phase !== 'synced') return `cluster ${phase}`;
    if (!r || r.snap !== this.o.model.snapshot().version || r.ips !== this.ipsVersion()) return 'reconciling';
    if (!r.complete) return 'listeners not all bound';
    return 'rules not applied';
  }

  /** Resolves when no reconcile is pending (tests). */
  async settle(): Promise<void> {
    await this.runner.settle();
  }

  /** Requests a reconcile (also used to re-read the listener port table while following another agent). */
  kick(): void {
    if (!this.stopped) this.runner.run();
  }

  private ipsVersion(): number {
    return (this.o.serviceIPs as { version?: number }).version ?? 0;
  }

  private myGroup(snap: Snapshot): string {
    return snap.nodes.get(this.o.thisNode)?.group ?? 'none';
  }

  private async reconcile(snap: Snapshot): Promise<void> {
    const o = this.o;
    if (this.stopped) return;
    const ipsVersion = this.ipsVersion();
    const want = new Map<string, Wanted>();
    for (const [key] of o.serviceIPs.entries()) {
      const svc = snap.services.get(key);
      if (!svc || svc.headless || svc.type === 'ExternalName') continue;
      const endpoints = snap.endpoints.get(svc.key) ?? NO_ENDPOINTS;
      for (const sp of svc.ports) {
        if (sp.protocol !== 'TCP' && sp.protocol !== 'UDP') continue;
        want.set(portId(svc, sp), { svc, sp, endpoints });
        // externalTrafficPolicy Local: traffic from outside gets a listener of its own, routed strictly to this node.
        if (o.nodePorts && needsExternalListener(svc) && externalDestinations(svc, sp).length) want.set(portId(svc, sp) + EXTERNAL_ID, { svc, sp, endpoints, external: true });
      }
    }
    this.wantMesh(snap, want);
    const wantServices = new Set([...want.values()].map((w) => w.svc.key));
    const wantMesh = new Set([...want.values()].flatMap((w) => (w.mesh ? [`${w.svc.key}/${w.mesh.label}`] : [])));
    const goneServices = new Set<string>();
    const goneMesh = new Map<string, { service: string; label: string }>();
    for (const [id, l] of this.listeners) {
      if (want.has(id)) continue;
      this.listeners.delete(id);
      this.metrics.listeners.dec({ protocol: l instanceof TcpListener ? 'tcp' : 'udp' });
      if (!wantServices.has(l.state.service.key)) goneServices.add(l.state.service.key);
      const mesh = this.meshOf.get(id);
      if (mesh && !wantMesh.has(`${mesh.serviceKey}/${mesh.label}`)) goneMesh.set(`${mesh.serviceKey}/${mesh.label}`, { service: mesh.serviceKey, label: mesh.label });
      this.meshOf.delete(id);
      this.meshPorts.delete(id);
      o.ports?.delete(id);
      // Open TCP connections of a removed service port run to their end; the listener just stops accepting.
      void closeListener(l, false);
    }
    for (const key of goneServices) void forgetServiceSeries(this.metrics, key).catch(() => {});
    for (const g of goneMesh.values()) if (!goneServices.has(g.service)) void forgetEndpointSeries(this.metrics, g.service, g.label).catch(() => {});
    const strictEmpty = new Set<string>();
    const srcGroup = () => this.myGroup(o.model.snapshot());
    const opened: Promise<unknown>[] = [];
    let failed = 0;
    // Only service ports whose Service, endpoints, nodes or DestinationRules changed are recomputed.
    const contextSame = sameEntries(this.prevNodes, snap.nodes) && sameEntries(this.prevRules, snap.destinationRules);
    if (!contextSame) this.flat?.paths.retain(new Set(snap.nodes.keys()));
    this.prevNodes = snap.nodes;
    this.prevRules = snap.destinationRules;
    for (const [id, { svc, sp, endpoints, mesh, external = false }] of want) {
      if (mesh) this.meshOf.set(id, mesh);
      let l = this.listeners.get(id);
      if (l && contextSame && l.state.service === svc && l.state.port === sp && sameList(l.state.sourceEndpoints, endpoints)) {
        if (l.state.plan.emptyScope) strictEmpty.add(svc.key);
        continue;
      }
      const update = {
        service: svc, port: sp, endpoints, nodes: snap.nodes, thisNode: o.thisNode,
        // One endpoint: nothing to balance (and no HTTP header to wait for before connecting).
        routingDefault: o.routingDefault, policy: mesh ? DEFAULT_POLICY : policyFor(svc, snap.destinationRules, o.domain ?? 'cluster.local'), external,
      };
      if (l) {
        l.state.update(update);
        if (l instanceof UdpListener) l.prune();
      } else {
        const state = new PortState(update, { rng: o.rng, now: o.now });
        l = sp.protocol === 'TCP'
          ? new TcpListener(state, { log: o.log, metrics: this.metrics, dialers: o.dialers, thisNode: o.thisNode, srcGroup, flat: this.flat, meshEndpoint: mesh?.label, idleTimeoutMs: o.tcpIdleTimeoutMs ?? TCP_IDLE_TIMEOUT_MS, dialTimeoutMs: o.dialTimeoutMs ?? DIAL_TIMEOUT_MS, limit: this.limit })
          : new UdpListener(state, { log: o.log, metrics: this.metrics, dialers: o.dialers, thisNode: o.thisNode, srcGroup, flat: this.flat, meshEndpoint: mesh?.label, idleMs: o.udpIdleMs ?? UDP_SESSION_IDLE_MS });
        const lis = l;
        opened.push(this.open(id, lis).then(
          () => {
            this.listeners.set(id, lis);
            this.metrics.listeners.inc({ protocol: sp.protocol === 'TCP' ? 'tcp' : 'udp' });
          },
          (e: Error) => {
            failed++;
            o.log.error({ err: e.message, service: svc.key, port: sp.port, ...(mesh ? { endpoint: mesh.label } : {}) }, 'cannot open a service-port listener');
            // Its socket (and the UDP purge timer) would otherwise outlive it; the retry tries a new one.
            void closeListener(lis, true).catch(() => {});
          },
        ));
      }
      if (l.state.plan.emptyScope) strictEmpty.add(svc.key);
    }
    await Promise.all(opened);
    for (const id of this.meshOf.keys()) if (!want.has(id)) this.meshOf.delete(id); // never opened, now unwanted
    o.ports?.flush();
    this.metrics.strictEmpty.set(strictEmpty.size);
    // Before the cluster source has anything (no sync, no last good state) the rules would be empty: leave the
    // kernel as it is (a predecessor's rules, or nothing) until there is a real snapshot.
    if ((o.cluster?.() ?? 'synced') !== 'empty') {
      const rules = this.rules();
      const key = rules.map((r) => `${r.ip} ${r.protocol} ${r.port} ${r.toPort} ${r.comment}`).sort().join('\n');
      if (key !== this.appliedRulesKey && o.interceptor) {
        this.appliedRulesKey = key;
        this.rulesGen = o.interceptor.setDesired(rules);
      }
    }
    this.reconciled = { snap: snap.version, ips: ipsVersion, complete: failed === 0, rulesGen: this.rulesGen };
    if (failed) throw new Error(`${failed} service-port listener(s) could not be opened`);
  }

  /**
   * The per-endpoint listeners: every TCP/UDP port of every headless endpoint that has a mesh IP. The endpoint is the
   * one the table allocated for (labelOwners, the same rule); a table that follows another snapshot than ours for a
   * moment is caught up by the next reconcile (a table change requests one).
   */
  private wantMesh(snap: Snapshot, want: Map<string, Wanted>): void {
    for (const [key, m] of this.o.serviceIPs.endpointIPs()) {
      const svc = snap.services.get(m.serviceKey);
      if (!svc?.headless) continue;
      const ep = labelOwners(snap.endpoints.get(svc.key) ?? NO_ENDPOINTS).get(m.label);
      if (!ep || ep.address !== m.address) continue;
      const endpoints = [ep];
      for (const p of ep.ports) {
        if (p.protocol !== 'TCP' && p.protocol !== 'UDP') continue;
        const id = meshPortId(key, p);
        let sp = this.meshPorts.get(id);
        if (!sp || sp.name !== p.name) {
          sp = Object.freeze({ name: p.name, protocol: p.protocol, port: p.port, targetPort: p.port });
          this.meshPorts.set(id, sp);
        }
        want.set(id, { svc, sp, endpoints, mesh: m });
      }
    }
  }

  /**
   * Opens a listener on its persisted port when there is one (alongside the agent we take over from when
   * `sharePorts`), else on a fresh port; a persisted port something else holds now is given up for a fresh one.
   */
  private async open(id: string, l: Listener): Promise<void> {
    const o = this.o;
    const persisted = o.ports?.get(id);
    if (persisted !== undefined) {
      try {
        await l.listen(o.bindAddress, persisted, o.sharePorts ?? false);
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw e;
        o.log.warn({ id, port: persisted }, 'the persisted listener port is taken by another program; using a new port');
      }
    }
    const port = await l.listen(o.bindAddress, 0);
    o.ports?.set(id, port);
  }

  /**
   * The interception rules for the current listeners: every IPv4 Service IP x service port -> its listener; every
   * mesh IP x endpoint port -> its per-endpoint listener; with proxy.nodePorts also the service port's external
   * destinations (nodePort, externalIPs, load-balancer IPs) -> its external listener (externalTrafficPolicy Local) or
   * else its own listener.
   */
  rules(): InterceptRule[] {
    const out: InterceptRule[] = [];
    for (const [id, l] of this.listeners) {
      const { service: svc, port: sp } = l.state;
      const protocol = sp.protocol === 'UDP' ? 'udp' : 'tcp';
      const mesh = this.meshOf.get(id);
      if (mesh) {
        out.push({ ip: mesh.ip, protocol, port: sp.port, comment: `${svc.key}/${mesh.label}:${sp.port}`, toIP: this.o.bindAddress, toPort: l.port });
        continue;
      }
      const external = id.endsWith(EXTERNAL_ID);
      if (!external) {
        for (const ip of this.o.serviceIPs.ipsFor(svc.key)) {
          if (ip.includes(':')) continue; // IPv6 Service IPs are not intercepted (no ip6tables support yet)
          out.push({ ip, protocol, port: sp.port, comment: `${svc.key}:${sp.port}`, toIP: this.o.bindAddress, toPort: l.port });
        }
      }
      if (!this.o.nodePorts || external !== needsExternalListener(svc)) continue;
      for (const d of externalDestinations(svc, sp)) {
        out.push({ ip: d.ip, protocol, port: d.port, comment: `${svc.key}:${sp.port} ${d.kind}`, toIP: this.o.bindAddress, toPort: l.port });
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

  /** The local listener port for one port of a headless endpoint's mesh IP (tests, intercept: none users). */
  meshListenerPort(serviceKey: string, label: string, port: number, protocol: 'TCP' | 'UDP' = 'TCP'): number | undefined {
    return this.listeners.get(`${serviceKey}/${label}:${port}/${protocol}`)?.port;
  }

  /** Per headless endpoint with a mesh IP: its IP, the endpoint, its routing as seen from here, its listeners. */
  meshStatus(): MeshEndpointStatus[] {
    const out = new Map<string, MeshEndpointStatus>();
    for (const [id, l] of this.listeners) {
      const m = this.meshOf.get(id);
      if (!m) continue;
      const key = `${m.serviceKey}/${m.label}`;
      let e = out.get(key);
      if (!e) {
        e = { service: m.serviceKey, name: m.label, ip: m.ip, address: m.address, node: m.nodeName, routing: l.state.plan.emptyScope ? 'out-of-scope' : l.state.plan.decision.label, listeners: [] };
        out.set(key, e);
      }
      e.listeners.push({ port: l.state.port.port, protocol: l.state.port.protocol, proxyPort: l.port });
    }
    return [...out.values()];
  }

  /** proxy.directCIDRs and the nodes found not flat (undefined when no ranges are configured). */
  flatStatus(): FlatStatus | undefined {
    return this.flat?.paths.status();
  }

  /** Per Service: routing mode, LB policy, endpoint counts per tier, listeners. */
  status(): Map<string, ServiceRouteStatus> {
    const out = new Map<string, ServiceRouteStatus>();
    const externals: Listener[] = [];
    for (const [id, l] of this.listeners) {
      if (this.meshOf.has(id)) continue; // per-endpoint listeners: meshStatus()
      if (id.endsWith(EXTERNAL_ID)) {
        externals.push(l);
        continue;
      }
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
    for (const l of externals) {
      const s = out.get(l.state.service.key);
      if (!s) continue;
      s.externalRouting = l.state.plan.decision.label;
      s.listeners.push({ port: l.state.port.port, protocol: l.state.port.protocol, proxyPort: l.port, external: true });
    }
    return out;
  }

  /** Stops following the model (no more reconciles, no more rule changes); listeners stay as they are. */
  async freeze(): Promise<void> {
    this.stopped = true;
    for (const u of this.unsubs) u();
    this.unsubs = [];
    await this.runner.stop();
  }

  /**
   * Stops accepting: TCP listeners close (with net.ipv4.tcp_migrate_req the kernel moves their accept queues to the
   * successor's listeners on the same ports), UDP sockets the successor also serves are detached from their reuse
   * groups (replies they still owe go through `relay`). Open connections carry on: the caller drains.
   */
  async stopAccepting(relay: UdpRelay): Promise<void> {
    await this.freeze();
    const waits: Promise<void>[] = [];
    for (const l of this.listeners.values()) {
      // close() resolves only when its connections are done: not awaited here (the caller drains).
      if (l instanceof TcpListener) void l.close(false);
      else waits.push(l.detach(relay));
    }
    await Promise.all(waits);
  }

  /**
   * A plain stop: stop accepting (the rules are gone already), let open TCP connections finish for up to `drainMs`,
   * then close everything.
   */
  async drainAndStop(drainMs: number): Promise<void> {
    await this.freeze();
    for (const l of this.listeners.values()) if (l instanceof TcpListener) void l.close(false);
    const end = performance.now() + drainMs;
    while (this.openConnections() > 0 && performance.now() < end) await new Promise((r) => setTimeout(r, DRAIN_POLL_MS));
    await this.stop();
  }

  /** Proxied TCP connections open now. */
  openConnections(): number {
    let n = 0;
    for (const l of this.listeners.values()) if (l instanceof TcpListener) n += l.openConnections;
    return n;
  }

  /** performance.now() of the latest UDP datagram through any service port (0: none). */
  lastUdpActivity(): number {
    let t = 0;
    for (const l of this.listeners.values()) if (l instanceof UdpListener && l.lastActivity > t) t = l.lastActivity;
    return t;
  }

  async stop(): Promise<void> {
    await this.freeze();
    await Promise.all([...this.listeners.values()].map((l) => closeListener(l, true)));
    this.listeners.clear();
  }
}
