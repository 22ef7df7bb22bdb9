// edgemesh-agent: wires config, cluster source, DNS, interception + proxy, tunnel and the admin API.
import { agentSchema, ConfigError, helpText, loadAgentConfig, parseArgs, type AgentConfig } from '@edgemesh/common/config';
import { createLogger, type Logger } from '@edgemesh/common/log';
import { AdminServer, createRegistry } from '@edgemesh/common/admin';
import { Budgets } from '@edgemesh/common/budget';
import { FdPressure } from '@edgemesh/common/fds';
import { exitOnConfigError, handleSignals, readVersion } from '@edgemesh/common/process';
import { ClusterModel } from './cluster/model.ts';
import type { Snapshot } from './cluster/types.ts';
import { startCluster, type ClusterRuntime } from './cluster/setup.ts';
import { labelOwners, ServiceIPs } from './dns/serviceips.ts';
import { startDns, validateDnsConfig, type DnsHandle } from './dns/index.ts';
import type { Dialer } from './proxy/dialer.ts';
import { DirectDialer } from './proxy/direct.ts';
import { Proxier, validateProxyConfig } from './proxy/proxier.ts';
import type { IptablesInterceptor } from './intercept/iptables.ts';
import { acquireLocalAddress, adoptLocalAddresses, isLocalAddress, keepLocalAddresses } from './intercept/localaddr.ts';
import { ListenerPorts } from './proxy/ports.ts';
import { HandoffAborted, HandoffSocket, type Predecessor } from './handoff/socket.ts';
import { Takeover, TUNNEL_READY_GRACE_MS } from './handoff/takeover.ts';
import { ensureStateDir } from '@edgemesh/common/fsutil';
// Loaded only when their feature is on (tunnel.enabled, proxy.intercept iptables): README, "Memory".
import type { Tunnel } from './tunnel/tunnel.ts';
import type { TunnelDialer } from './tunnel/dialer.ts';
import { buildReport } from './fleet/report.ts';
import { Reporter } from './fleet/reporter.ts';
import { tunnelPeers } from './fleet/collect.ts';
import { LocalFirstNodeDialer, type NodeDialer } from './nodeaccess/access.ts';
import { resolveDestination } from './socks5/destination.ts';
import { Socks5Server, type Socks5Status } from './socks5/server.ts';
import { loadUsers, type Users } from './socks5/users.ts';
import { Gateway, type GatewayStatus } from './gateway/server.ts';

export interface AgentStatus {
  node: string;
  group: string | null;
  servers: { address: string; connected: boolean }[];
  nat: { type: string; mapped: string | null };
  peers: { node: string; path: string; transport?: string | null; remote: string | null; rttMs: number | null }[];
  services: {
    name: string; ip: string | null; ports: number[]; endpoints: number; routing: string;
    /** Usable endpoints per routing tier as seen from this node (proxy). */
    tiers?: { node: number; group: number; region: number; cluster: number };
    /** Load-balancing policy (proxy). */
    policy?: string;
    /**
     * Headless Services: what DNS answers per endpoint from this node — its mesh IP (`mesh: true`: on another node,
     * reached through the mesh, every port intercepted on that IP) or its own pod IP.
     */
    endpointIPs?: { name: string; ip: string; podIP: string; node: string | null; ready: boolean; mesh: boolean }[];
    /** proxy.nodePorts: the Service's nodePorts, and the routing of external traffic when it differs (externalTrafficPolicy Local). */
    nodePorts?: number[];
    externalRouting?: string;
  }[];
  /** proxy.directCIDRs (flat pod networks) and the nodes whose pods were found unreachable directly. */
  flat?: { directCIDRs: readonly string[]; notFlat: { node: string; reason: string; retryInSeconds: number }[] };
  /** The SOCKS5 entry point (socks5.enabled). */
  socks5?: Socks5Status & { nodeAccess: 'tunnel' | 'this-node-only' };
  /** The ports this node serves to other nodes (nodeAccess.allowedPorts not empty): who may, streams served now. */
  nodeAccess?: { allowedPorts: readonly number[]; allowedGroups: readonly string[]; allowedNodes: readonly string[]; streams: number };
  /** The ingress gateway (gateway.enabled): addresses, Gateways served, listeners, configuration warnings. */
  gateway?: GatewayStatus;
}

export class Agent {
  readonly cfg: AgentConfig;
  readonly log: Logger;
  readonly registry = createRegistry('edgemesh_agent_');
  readonly model: ClusterModel;
  readonly admin: AdminServer;
  /** Every named limit of this agent (refusals counted in edgemesh_budget_refusals_total{budget}, logged rate-limited). */
  readonly budgets: Budgets;
  /** Descriptor pressure: optional work (DNS over TCP, served streams) is shed before the control plane's reserve. */
  readonly fds: FdPressure;
  /** The IPs handed out for Services (DNS answers them, the proxy intercepts them); exists even when DNS is off. */
  readonly serviceIPs: ServiceIPs;
  /** The running DNS server when dns.enabled (after start()). */
  dns: DnsHandle | undefined;
  private readonly stops: (() => Promise<void>)[] = [];
  /** stop() has been called: whatever start() brings up from now on is stopped at once. */
  private stopping = false;
  /** The tunnel (tunnel.enabled) and the Dialer the proxy uses for endpoints on other nodes. */
  tunnel: Tunnel | undefined;
  tunnelDialer: TunnelDialer | undefined;
  cluster: ClusterRuntime | undefined;
  /** How the proxy reaches endpoints: `direct` always; the tunnel module sets `tunnel` for other nodes' endpoints. */
  readonly dialers: { direct: Dialer; tunnel?: Dialer } = { direct: new DirectDialer() };
  proxy?: Proxier;
  /**
   * Reaches other nodes' own ports (node access, SOCKS5 `<node>:<port>`) — set by the tunnel wiring; until then only
   * this node's own allowed ports are reachable.
   */
  nodeDialer: NodeDialer | undefined;
  socks5: Socks5Server | undefined;
  gateway: Gateway | undefined;
  /** socks5.usersFile, read when the agent is made (a bad file fails the start, naming the key). */
  private readonly socks5Users: Users | undefined;
  /** Proxy timings a test may shorten before start() (production uses the defaults). */
  readonly proxyTuning: { reassertMs?: number } = {};
  /**
   * Tests that run every node on one host's loopback serve their 127.0.0.1 backends over the tunnel; never set in
   * production (the serving side refuses loopback endpoint addresses: tunnel/authorize.ts).
   */
  readonly tunnelTuning: { allowLoopbackEndpoints?: boolean } = {};
  /** Handoff between agents on one stateDir (handoff/): set once start() claimed the stateDir. */
  takeover: Takeover | undefined;
  private predecessor: Predecessor | undefined;
  private interceptor: IptablesInterceptor | undefined;
  private ports: ListenerPorts | undefined;
  /** Called when this agent handed over to a successor and its drain is over (main() exits 0 then). */
  onHandedOver: () => void = () => {};

  constructor(cfg: AgentConfig, log: Logger) {
    this.cfg = cfg;
    this.log = log;
    this.model = new ClusterModel(cfg.routing.groupLabels);
    this.model.onReject = (kind, key, reason) => log.warn({ kind, key, reason }, 'skipped a malformed object');
    this.model.onListenerError = (err) => log.error({ err }, 'a cluster snapshot subscriber failed');
    if (cfg.dns.enabled) validateDnsConfig(cfg); // bad dns.* keys fail here, naming the key
    validateProxyConfig(cfg); // and bad proxy.* keys here
    this.socks5Users = cfg.socks5.enabled && cfg.socks5.usersFile ? loadUsers(cfg.socks5.usersFile, log) : undefined;
    // Headless endpoints on other nodes get mesh IPs of their own when the tunnel can reach them (README "Headless").
    const meshEndpoints = cfg.tunnel.enabled ? { thisNode: cfg.nodeName, directCIDRs: cfg.proxy.directCIDRs } : undefined;
    this.serviceIPs = new ServiceIPs({ mode: cfg.proxy.ipMode, fakeCIDR: cfg.proxy.fakeCIDR, stateDir: cfg.stateDir, log, meshEndpoints });
    this.budgets = new Budgets({ registry: this.registry, metricPrefix: 'edgemesh_', log });
    this.fds = new FdPressure({ budgets: this.budgets });
    this.admin = new AdminServer({ listen: cfg.admin.listen, registry: this.registry, status: () => this.status(), log, maxConnections: cfg.admin.maxConnections, budgets: this.budgets });
  }

  snapshot(): Snapshot {
    return this.model.snapshot();
  }

  status(): AgentStatus {
    const snap = this.model.snapshot();
    const me = snap.nodes.get(this.cfg.nodeName);
    const routes = this.proxy?.status();
    return {
      node: this.cfg.nodeName,
      group: me?.group ?? null,
      ...(this.tunnel?.status() ?? { servers: [], nat: { type: 'unknown', mapped: null }, peers: [] }),
      services: [...snap.services.values()].map((s) => ({
        name: s.key,
        ip: this.serviceIPs.ipsFor(s.key)[0] ?? null,
        ports: s.ports.map((p) => p.port),
        endpoints: snap.endpoints.get(s.key)?.length ?? 0,
        routing: routes?.get(s.key)?.routing ?? 'none',
        ...(routes?.get(s.key) ? { tiers: routes.get(s.key)!.tiers, policy: routes.get(s.key)!.policy } : {}),
        ...(s.headless ? { endpointIPs: this.headlessEndpoints(snap, s.key) } : {}),
        ...(this.cfg.proxy.nodePorts && s.ports.some((p) => p.nodePort) ? { nodePorts: s.ports.flatMap((p) => (p.nodePort ? [p.nodePort] : [])) } : {}),
        ...(routes?.get(s.key)?.externalRouting ? { externalRouting: routes.get(s.key)!.externalRouting } : {}),
      })),
      ...(this.proxy?.flatStatus() ? { flat: this.proxy.flatStatus() } : {}),
      ...(this.socks5 ? { socks5: { ...this.socks5.status(), nodeAccess: this.nodeDialer ? 'tunnel' as const : 'this-node-only' as const } } : {}),
      ...(this.gateway ? { gateway: this.gateway.status() } : {}),
      ...(this.cfg.nodeAccess.allowedPorts.length ? { nodeAccess: { ...this.cfg.nodeAccess, streams: this.tunnel?.nodeAccess?.active ?? 0 } } : {}),
    };
  }

  /** A headless Service's endpoints as DNS answers them from this node (one per DNS label). */
  private headlessEndpoints(snap: Snapshot, key: string): NonNullable<AgentStatus['services'][number]['endpointIPs']> {
    return [...labelOwners(snap.endpoints.get(key) ?? [])].map(([name, ep]) => {
      const m = this.serviceIPs.endpointIP(key, name);
      const mesh = m !== undefined && m.address === ep.address;
      return { name, ip: mesh ? m.ip : ep.address, podIP: ep.address, node: ep.nodeName ?? null, ready: ep.ready, mesh };
    }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /**
   * Registers how to stop a component start() just brought up. When stop() already ran (a signal while starting),
   * the component is stopped at once and start() ends there.
   */
  private async own(stop: () => Promise<void>): Promise<void> {
    if (!this.stopping) {
      this.stops.push(stop);
      return;
    }
    await stop().catch((e: unknown) => this.log.warn({ err: e }, 'a component failed to stop cleanly'));
    throw new StartAborted();
  }

  async start(): Promise<void> {
    try {
      await this.startAll();
    } catch (e) {
      if (!(e instanceof StartAborted) && !(e instanceof HandoffAborted)) throw e;
      this.log.info('stopped while starting');
    }
  }

  private async startAll(): Promise<void> {
    // stateDir: 0700 once at start; every file in it is written 0600 (common/fsutil).
    ensureStateDir(this.cfg.stateDir);
    // --- handoff (handoff/): this agent runs for stateDir, or takes over from the agent running there now (then
    // everything binds alongside it, and nothing it owns — rules, addresses, the port table — is touched until then).
    const claim = await HandoffSocket.open(this.cfg.stateDir, this.log.child({ mod: 'handoff' }), await readVersion(), () => this.stopping);
    const socket = claim.socket;
    await this.own(() => socket.close());
    this.predecessor = claim.predecessor;
    const shared = claim.predecessor !== undefined;
    if (claim.predecessor) {
      this.log.info('an agent runs on this stateDir: taking over from it');
      keepLocalAddresses(true);
      adoptLocalAddresses(claim.predecessor.welcome.addresses, this.log);
    }

    this.fds.start();
    await this.own(async () => { this.fds.stop(); this.budgets.close(); });

    // Ready never before every component is up: the checks below are added one by one as their components start.
    let started = false;
    this.admin.addCheck('started', () => started);
    await this.admin.start({ shared });
    await this.own(() => this.admin.close());

    // --- Service IP table (dns/serviceips.ts): follows every snapshot, shared by DNS and the proxy.
    this.serviceIPs.update(this.model.snapshot());
    const unsubscribeIPs = this.model.subscribe((snap) => this.serviceIPs.update(snap));
    await this.own(async () => { unsubscribeIPs(); });

    // --- cluster source (cluster/): last good state, then the configured source; ready once it synced.
    this.admin.addCheck('cluster', () => this.cluster?.synced() ?? false);
    this.cluster = await startCluster({ cfg: this.cfg, model: this.model, log: this.log, registry: this.registry });
    const cluster = this.cluster;
    let clusterStopped: Promise<void> | undefined;
    const stopCluster = () => (clusterStopped ??= cluster.stop());
    await this.own(stopCluster);

    // --- DNS (dns/) ---
    if (this.cfg.dns.enabled) {
      this.dns = await startDns({ cfg: this.cfg, log: this.log.child({ mod: 'dns' }), registry: this.registry, snapshot: () => this.model.snapshot(), ips: this.serviceIPs, budgets: this.budgets, fds: this.fds, shared });
      const dns = this.dns;
      await this.own(() => dns.stop());
      this.admin.addCheck('dns', () => dns.server.listening);
    }

    // --- tunnel (packages/agent/src/tunnel) ---
    if (this.cfg.tunnel.enabled) {
      const [{ Tunnel }, { TunnelDialer }, { TunnelNodeDialer }, { loadOrCreateKeyPair }, { startAgentIdentity }] = await Promise.all([import('./tunnel/tunnel.ts'), import('./tunnel/dialer.ts'), import('./tunnel/nodedialer.ts'), import('./tunnel/keys.ts'), import('./identity/start.ts')]);
      const { pair, created, path } = loadOrCreateKeyPair(this.cfg.stateDir);
      if (created) this.log.info({ path }, 'generated the node key');
      const identity = startAgentIdentity(this.cfg, pair, this.log.child({ mod: 'identity' }));
      // The agent being taken over holds tunnel.listenPort (its direct links live on it until it exits): a successor
      // punches from a port of its own.
      this.tunnel = new Tunnel({
        node: this.cfg.nodeName, servers: this.cfg.tunnel.servers, identity, keyPair: pair, listenPort: shared ? 0 : this.cfg.tunnel.listenPort,
        log: this.log.child({ mod: 'tunnel' }), registry: this.registry, snapshot: () => this.model.snapshot(),
        nodeAccess: { config: this.cfg.nodeAccess, budgets: this.budgets, fds: this.fds },
        budgets: this.budgets, fds: this.fds, limits: this.cfg.tunnel.limits, routingDefault: this.cfg.routing.default,
        allowLoopbackEndpoints: this.tunnelTuning.allowLoopbackEndpoints ?? false,
      });
      this.tunnelDialer = new TunnelDialer(this.tunnel);
      this.nodeDialer = new TunnelNodeDialer(this.tunnel); // SOCKS5 `<other node>:<port>` (nodeaccess/)
      this.dialers.tunnel = this.tunnelDialer;
      await this.tunnel.start();
      const t = this.tunnel;
      // Peers of nodes that leave the cluster are forgotten (links closed, path state dropped).
      const unsubscribeTunnel = this.model.subscribe((snap) => t.onSnapshot(snap));
      await this.own(async () => { unsubscribeTunnel(); await t.stop(); });
      // A successor is ready only once connected to a server (then it stays so), or when none answers for a while.
      let connected = !shared;
      const since = performance.now();
      if (shared) this.admin.addCheck('tunnel', () => (connected ||= t.status().servers.some((x) => x.connected) || performance.now() - since > TUNNEL_READY_GRACE_MS));
    }

    // --- proxy (intercept/, proxy/, lb/, routing/) ---
    await this.startProxy(shared);

    // --- entry points into the mesh: SOCKS5 (socks5/, nodeaccess/) and the ingress gateway (gateway/) ---
    if (this.cfg.socks5.enabled) await this.startSocks5(shared);
    if (this.cfg.gateway.enabled) await this.startGateway(shared);

    // --- fleet report to the servers (fleet/): version, group, NAT, readiness, peers, strict-empty Services ---
    if (this.tunnel) await this.startReporter(this.tunnel);

    // --- handoff, once everything runs: take over from the running agent, or be ready to be taken over.
    const takeover = new Takeover({
      log: this.log.child({ mod: 'handoff' }), admin: this.admin, socket, drainMs: this.cfg.shutdownDrainSeconds * 1000,
      interceptor: this.interceptor, ports: this.ports, proxy: this.proxy, dns: this.dns, tunnel: this.tunnel, stopCluster,
      entries: [this.socks5, this.gateway].filter((e) => e !== undefined),
    });
    takeover.onDrained = () => this.onHandedOver();
    this.takeover = takeover;
    this.admin.addCheck('handover', () => takeover.serving());
    started = true;
    if (this.predecessor) {
      const pred = this.predecessor;
      void takeover.takeOver(pred, () => this.stopping).catch((e: unknown) => this.log.error({ err: e }, 'the takeover failed'));
    } else {
      takeover.acceptSuccessors();
    }
  }

  private async startReporter(t: Tunnel): Promise<void> {
    const version = await readVersion();
    const reporter = new Reporter({
      sinks: t.servers, log: this.log,
      build: () => buildReport({
        version, node: this.cfg.nodeName, snapshot: this.model.snapshot(), routingDefault: this.cfg.routing.default,
        nat: t.status().nat, ready: this.admin.ready(), peers: tunnelPeers(t),
      }),
    });
    await this.own(async () => reporter.stop());
    reporter.start();
  }

  // --- proxy: interception rules + TCP/UDP listeners + load balancing + group routing (issue #4) ---
  private async startProxy(shared: boolean): Promise<void> {
    const pc = this.cfg.proxy;
    let bindAddress = pc.bindAddress;
    if (pc.intercept === 'iptables') {
      if (bindAddress.startsWith('127.')) {
        this.log.warn({ bindAddress }, 'proxy.bindAddress is a loopback address: pods\' traffic (PREROUTING) is only DNATed to it with net.ipv4.conf.all.route_localnet=1');
      }
      const lease = await acquireLocalAddress(bindAddress, this.log);
      await this.own(() => lease.release());
    } else if (!isLocalAddress(bindAddress)) {
      // No rules send traffic to bindAddress, so no interface is created for it: listen on loopback instead.
      this.log.warn({ bindAddress }, 'proxy.bindAddress is not a local address and proxy.intercept is none: listening on 127.0.0.1');
      bindAddress = '127.0.0.1';
    }
    let interceptor: IptablesInterceptor | undefined;
    if (pc.intercept === 'iptables') {
      const { IptablesInterceptor } = await import('./intercept/iptables.ts');
      interceptor = new IptablesInterceptor({ log: this.log, registry: this.registry, reassertMs: this.proxyTuning.reassertMs });
      // Taking over: the running agent's rules stay in force (no cleanup), ours are only compared with them.
      await interceptor.start(shared ? 'follow' : 'own');
      this.interceptor = interceptor;
    }
    let proxy: Proxier | undefined;
    // On the way out the rules go first, then the listeners stop accepting and drain (then the address, registered
    // above). Handed over: the rules and the address are the successor's now; only our sockets close.
    const drainMs = this.cfg.shutdownDrainSeconds * 1000;
    await this.own(async () => {
      if (this.takeover?.handedOver) return void (await proxy?.stop());
      try {
        await interceptor?.stop();
      } finally {
        await proxy?.drainAndStop(drainMs);
      }
    });
    const ports = new ListenerPorts({ stateDir: this.cfg.stateDir, log: this.log, writable: !shared });
    this.ports = ports;
    const cluster = this.cluster;
    proxy = new Proxier({
      log: this.log, registry: this.registry, model: this.model, serviceIPs: this.serviceIPs,
      dialers: this.dialers, thisNode: this.cfg.nodeName, bindAddress, routingDefault: this.cfg.routing.default, directCIDRs: pc.directCIDRs, nodePorts: pc.nodePorts,
      domain: this.cfg.dns.domain, interceptor, ports, sharePorts: shared, modelPending: () => this.model.pending,
      cluster: () => (cluster?.synced() ? 'synced' : cluster?.offlineLoaded ? 'offline' : 'empty'),
    });
    this.proxy = proxy;
    const p = proxy;
    await proxy.start();
    this.admin.addCheck('proxy', () => p.ready());
  }

  // --- SOCKS5 into the mesh: node access (nodeaccess/) and Services through the proxy's connect path ---
  private async startSocks5(shared: boolean): Promise<void> {
    const proxy = this.proxy!;
    const cfg = this.cfg;
    const users = this.socks5Users;
    const nodeDialer = new LocalFirstNodeDialer({ self: cfg.nodeName, config: cfg.nodeAccess, nodes: () => this.model.snapshot().nodes, remote: () => this.nodeDialer });
    const socks5 = new Socks5Server({
      listen: cfg.socks5.listen, log: this.log.child({ mod: 'socks5' }), registry: this.registry, budgets: this.budgets, fds: this.fds, users,
      maxConnections: cfg.socks5.maxConnections, maxPerSource: cfg.socks5.maxPerSource,
      resolve: (req) => resolveDestination(req, { snapshot: this.model.snapshot(), serviceForIP: (ip) => this.serviceIPs.serviceFor(ip), domain: cfg.dns.domain }),
      connectService: (key, port, from) => proxy.connectTcp(key, port, from),
      nodeDialer, shared,
    });
    await socks5.start();
    this.socks5 = socks5;
    await this.own(() => socks5.stop());
    this.admin.addCheck('socks5', () => socks5.listening);
  }

  // --- Ingress gateway: Istio Gateway + VirtualService on this node's addresses, into mesh Services ---
  private async startGateway(shared: boolean): Promise<void> {
    const proxy = this.proxy!;
    const gc = this.cfg.gateway;
    const gateway = new Gateway({
      log: this.log.child({ mod: 'gateway' }), registry: this.registry, budgets: this.budgets, fds: this.fds, model: this.model,
      thisNode: this.cfg.nodeName, domain: this.cfg.dns.domain, addresses: gc.addresses, maxConnections: gc.maxConnections, maxPerSource: gc.maxPerSource,
      connect: (key, port, from) => proxy.connectTcp(key, port, from), shared,
    });
    this.gateway = gateway;
    await this.own(() => gateway.stop());
    await gateway.start();
    this.admin.addCheck('gateway', () => gateway.ready());
  }

  /**
   * Stops what start() brought up, last first; safe to call while start() is still under way, and twice. While a
   * successor takes over, first waits for it (then only drains: its rules and addresses stay).
   */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.takeover?.beforeStop();
    for (let s = this.stops.pop(); s; s = this.stops.pop()) {
      try {
        await s();
      } catch (e) {
        this.log.warn({ err: e }, 'a component failed to stop cleanly');
      }
    }
  }
}

/** start() ended early because stop() was called meanwhile. */
class StartAborted extends Error {}

export async function main(argv: string[]): Promise<void> {
  let cfg: AgentConfig;
  try {
    const args = parseArgs(argv, agentSchema);
    if (args.help) {
      process.stdout.write(helpText('edgemesh-agent', agentSchema) + '\n');
      return;
    }
    if (args.version) {
      process.stdout.write(`edgemesh-agent ${await readVersion()}\n`);
      return;
    }
    cfg = loadAgentConfig({ file: args.config, overrides: args.overrides, env: process.env });
  } catch (e) {
    exitOnConfigError(e);
  }
  const log = createLogger(cfg.log.level, 'edgemesh-agent', { node: cfg.nodeName });
  let agent: Agent;
  try {
    agent = new Agent(cfg, log);
  } catch (e) {
    exitOnConfigError(e);
  }
  const shutdown = handleSignals(log, () => agent.stop(), cfg.shutdownDrainSeconds * 1000);
  agent.onHandedOver = () => shutdown(0, 'handed over to the agent that took over');
  try {
    await agent.start();
  } catch (e) {
    // A config problem found while starting (e.g. an unreadable kubeconfig) still exits 2 naming the key.
    if (e instanceof ConfigError) await agent.stop();
    exitOnConfigError(e);
  }
  log.info('agent started');
}
