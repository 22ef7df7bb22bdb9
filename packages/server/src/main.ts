// edgemesh-server: authenticates agents, answers STUN, brokers hole punching, relays.
import { helpText, loadServerConfig, parseArgs, parseHostPort, readTokenFile, serverSchema, type ServerConfig } from '@edgemesh/common/config';
import { createLogger, type Logger } from '@edgemesh/common/log';
import { AdminServer, createRegistry } from '@edgemesh/common/admin';
import { Budgets } from '@edgemesh/common/budget';
import { FdPressure } from '@edgemesh/common/fds';
import { exitOnConfigError, handleSignals, readVersion } from '@edgemesh/common/process';
import { RelayServer, type RelayIdentity } from './relay.ts';
import { StunServer, stunKeyFor } from './stun.ts';
import { runDrain } from './drain.ts';
import { FleetStore } from './fleet/store.ts';
import { addFleetRoutes } from './fleet/http.ts';
import { IDENTITY_COMMANDS, IDENTITY_USAGE, runIdentityCli } from './identity/cli.ts';
import { startServerIdentity, type ServerIdentity } from './identity/index.ts';
import { Mesh, type MeshIdentity } from './mesh/mesh.ts';

export class EdgemeshServer {
  readonly cfg: ServerConfig;
  readonly log: Logger;
  readonly registry = createRegistry('edgemesh_server_');
  readonly relay: RelayServer;
  readonly stun: StunServer;
  readonly admin: AdminServer;
  /** Every named limit of the server (edgemesh_server_budget_refusals_total{budget}, logged rate-limited). */
  readonly budgets: Budgets;
  /** Descriptor pressure: relay work is shed before the reserve kept for agents' control connections and admin. */
  readonly fds: FdPressure;
  /** The latest fleet report of every agent (GET /fleet, /ui). */
  readonly fleet: FleetStore;
  private readonly stops: (() => Promise<void>)[] = [];
  private listening = false;
  /** The server mesh (mesh.peers / mesh.dns): undefined when this server runs alone. */
  readonly mesh: Mesh | undefined;
  private draining = false;
  /** CA, enrollment, registry (identity/): the control channel's TLS certificate and every sign-in come from it. */
  readonly identity: ServerIdentity;

  constructor(cfg: ServerConfig, log: Logger, identity: ServerIdentity, opts: { meshResolve?: (name: string) => Promise<string[]>; meshDnsIntervalMs?: number } = {}) {
    this.cfg = cfg;
    this.log = log;
    this.budgets = new Budgets({ registry: this.registry, metricPrefix: 'edgemesh_server_', log });
    this.fds = new FdPressure({ budgets: this.budgets });
    this.identity = identity;
    identity.enroller.useRegistry(this.registry); // made before the server: its metrics join the server's registry here
    const hp = parseHostPort(cfg.listen)!;
    // The STUN integrity key, handed to agents inside TLS once they signed in: the same on every server of the CA.
    const stunKey = stunKeyFor(identity.ca.privateKey);
    const rid = relayIdentity(identity, stunKey);
    this.fleet = new FleetStore({ registry: this.registry, log, connected: () => this.relay.agents });
    this.relay = new RelayServer({
      host: hp.host, port: hp.port, identity: rid, log, registry: this.registry, rateLimitBytesPerSec: cfg.relayRateLimit, stunAltPort: () => this.stun.ports()[1] ?? cfg.stunAltPort,
      onReport: (node, report, bytes) => void this.fleet.put(node, report, bytes),
      budgets: this.budgets, fds: this.fds, limits: {
        streamsPerPair: cfg.limits.relayStreamsPerPair, streamsPerTarget: cfg.limits.relayStreamsPerTarget, streamsTotal: cfg.limits.relayStreams,
        pendingOpensPerOpener: cfg.limits.pendingOpensPerNode, unauthPerSource: cfg.limits.unauthConnectionsPerSource,
        unauthTotal: cfg.limits.unauthConnections, partialFrameBytes: cfg.limits.partialFrameBytes,
      },
    });
    if (cfg.mesh.peers.length || cfg.mesh.dns) {
      this.mesh = new Mesh({
        peers: cfg.mesh.peers, dns: cfg.mesh.dns, listenPort: hp.port, listenHost: hp.host, identity: meshIdentity(identity),
        relay: this.relay.meshPort(), log, registry: this.registry, budgets: this.budgets, resolve: opts.meshResolve, dnsIntervalMs: opts.meshDnsIntervalMs,
      });
      this.relay.setMesh(this.mesh);
    }
    this.stun = new StunServer({ host: hp.host, ports: [hp.port, cfg.stunAltPort], key: stunKey, log, registry: this.registry });
    this.admin = new AdminServer({
      listen: cfg.admin.listen, registry: this.registry, status: () => this.status(), log, maxConnections: cfg.admin.maxConnections, budgets: this.budgets,
      auth: { token: readAdminToken(cfg) },
    });
    this.admin.addCheck('listening', () => this.listening);
    this.admin.addCheck('not-draining', () => !this.draining);
    addFleetRoutes({ admin: this.admin, store: this.fleet, server: () => ({ listen: cfg.listen, agentsConnected: this.relay.agents.size }) });
    // Not a readiness check: relaying works without the Node list; enrollment answers "retry later" until it synced.
    this.stops.push(() => identity.stop());
  }

  status(): unknown {
    return { listen: this.cfg.listen, stunPorts: this.stun.ports(), ...(this.relay.status() as object), mesh: this.mesh?.status(), identity: { caHash: this.identity.ca.hash, clusterSynced: this.identity.cluster.synced(), ...this.identity.enroller.status() } };
  }

  /** Starts everything; returns the bound TCP address (port 0 in the config picks one, for tests). */
  async start(): Promise<{ host: string; port: number }> {
    this.fds.start();
    this.stops.push(async () => { this.fds.stop(); this.budgets.close(); });
    await this.admin.start();
    this.stops.push(() => this.admin.close());
    this.fleet.start();
    this.stops.push(async () => this.fleet.stop());
    if (this.mesh) await this.mesh.start(); // its certificate first: the listener answers mesh peers with it
    const bound = await this.relay.start();
    this.stops.push(() => this.relay.stop());
    if (this.mesh) this.stops.push(() => this.mesh!.stop());
    // STUN on the same port number as TCP (UDP), plus the alternate port.
    await this.stun.start(bound.port);
    this.stops.push(() => this.stun.stop());
    this.listening = true;
    this.log.info({ listen: `${bound.host}:${bound.port}`, stun: this.stun.ports() }, 'server listening');
    return bound;
  }

  /** SIGTERM: readiness false, then agents told to move (DRAIN), then stop once they left or the bound passed. */
  async drainAndStop(): Promise<{ left: number; ms: number }> {
    const r = await runDrain({
      setUnready: () => { this.draining = true; },
      drain: (withinMs) => this.relay.drainAgents(withinMs),
      agents: () => this.relay.agents.size,
    }, { unreadyMs: this.cfg.shutdownUnreadySeconds * 1000, drainMs: this.cfg.shutdownDrainSeconds * 1000 });
    this.log.info({ agentsLeft: r.left, ms: r.ms }, 'drained');
    await this.stop();
    return r;
  }

  async stop(): Promise<void> {
    this.listening = false;
    for (const s of this.stops.reverse()) {
      try {
        await s();
      } catch (e) {
        this.log.warn({ err: e }, 'a component failed to stop cleanly');
      }
    }
  }
}

/** admin.tokenFile's token (≥ 128 bits; a ConfigError naming the key otherwise), undefined when not set. */
export function readAdminToken(cfg: ServerConfig): string | undefined {
  return cfg.admin.tokenFile ? readTokenFile(cfg.admin.tokenFile, 'admin.tokenFile') : undefined;
}

/** What the relay (control channel) uses of the server's identity. */
export function relayIdentity(identity: ServerIdentity, stunKey: Buffer): RelayIdentity {
  return {
    serverCert: () => identity.serverCert(),
    onServerCert: (fn) => identity.onServerCert(fn),
    enroll: (req, source, binding) => identity.enroller.enroll(req, source, binding),
    revocationList: () => identity.enroller.revocationList(),
    onRevocations: (fn) => identity.enroller.onRevocations(fn),
    isRevoked: (cert) => identity.enroller.registry.revocations().isRevoked(cert),
    stunKey,
  };
}

/** What the mesh uses of the server's identity: the CA, the revocations (shared across the mesh both ways). */
export function meshIdentity(identity: ServerIdentity): MeshIdentity {
  return {
    ca: identity.ca,
    revocationList: () => identity.enroller.revocationList(),
    onRevocations: (fn) => identity.enroller.onRevocations(fn),
    mergeRevocations: (entries) => {
      const reg = identity.enroller.registry;
      const have = reg.revocations();
      let added = 0;
      for (const e of entries) {
        if (have.entryFor(Buffer.from(e.key, 'base64'))) continue;
        reg.revoke(e.name, e.key, e.revokedAt);
        added++;
      }
      if (added) identity.enroller.checkRevocations(); // drops connected holders, pushes the list to agents and peers
      return added;
    },
  };
}

export async function main(argv: string[]): Promise<void> {
  if (IDENTITY_COMMANDS.includes(argv[0])) {
    process.exitCode = runIdentityCli(argv, { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s), env: process.env, now: Date.now });
    return;
  }
  let cfg: ServerConfig;
  let identity: ServerIdentity;
  const log0: { log?: Logger } = {};
  try {
    const args = parseArgs(argv, serverSchema);
    if (args.help) { process.stdout.write(helpText('edgemesh-server', serverSchema) + '\n' + IDENTITY_USAGE); return; }
    if (args.version) { process.stdout.write(`edgemesh-server ${await readVersion()}\n`); return; }
    cfg = loadServerConfig({ file: args.config, overrides: args.overrides, env: process.env });
    readAdminToken(cfg); // a bad admin.tokenFile fails here (exit 2), before anything starts
    log0.log = createLogger(cfg.log.level, 'edgemesh-server');
    identity = await startServerIdentity(cfg, log0.log);
  } catch (e) {
    exitOnConfigError(e);
  }
  const log = log0.log!;
  const server = new EdgemeshServer(cfg, log, identity);
  handleSignals(log, async () => { await server.drainAndStop(); }, (cfg.shutdownUnreadySeconds + cfg.shutdownDrainSeconds) * 1000);
  try {
    await server.start();
  } catch (e) {
    log.fatal({ err: e }, 'server failed to start');
    await server.stop();
    process.exit(1);
  }
}
