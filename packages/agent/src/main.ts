// edgemesh-agent: wires config, cluster source, DNS, interception + proxy, tunnel and the admin API.
import { agentSchema, helpText, loadAgentConfig, parseArgs, type AgentConfig } from '@edgemesh/common/config';
import { createLogger, type Logger } from '@edgemesh/common/log';
import { AdminServer, createRegistry } from '@edgemesh/common/admin';
import { exitOnConfigError, handleSignals, readVersion } from '@edgemesh/common/process';
import { ClusterModel } from './cluster/model.ts';
import type { Snapshot } from './cluster/types.ts';
import { readToken } from '@edgemesh/common/config';
import { Tunnel } from './tunnel/tunnel.ts';
import { TunnelDialer } from './tunnel/dialer.ts';
import { loadOrCreateKeyPair } from './tunnel/keys.ts';

export interface AgentStatus {
  node: string;
  group: string | null;
  servers: { address: string; connected: boolean }[];
  nat: { type: string; mapped: string | null };
  peers: { node: string; path: string; remote: string | null; rttMs: number | null }[];
  services: { name: string; ip: string | null; ports: number[]; endpoints: number; routing: string }[];
}

export class Agent {
  readonly cfg: AgentConfig;
  readonly log: Logger;
  readonly registry = createRegistry('edgemesh_agent_');
  readonly model: ClusterModel;
  readonly admin: AdminServer;
  private readonly stops: (() => Promise<void>)[] = [];
  /** The tunnel (tunnel.enabled) and the Dialer the proxy uses for endpoints on other nodes. */
  tunnel: Tunnel | undefined;
  tunnelDialer: TunnelDialer | undefined;

  constructor(cfg: AgentConfig, log: Logger) {
    this.cfg = cfg;
    this.log = log;
    this.model = new ClusterModel(cfg.routing.groupLabels);
    this.model.onReject = (kind, key, reason) => log.warn({ kind, key, reason }, 'skipped a malformed object');
    this.admin = new AdminServer({ listen: cfg.admin.listen, registry: this.registry, status: () => this.status(), log });
  }

  snapshot(): Snapshot {
    return this.model.snapshot();
  }

  status(): AgentStatus {
    const snap = this.model.snapshot();
    const me = snap.nodes.get(this.cfg.nodeName);
    return {
      node: this.cfg.nodeName,
      group: me?.group ?? null,
      ...(this.tunnel?.status() ?? { servers: [], nat: { type: 'unknown', mapped: null }, peers: [] }),
      services: [...snap.services.values()].map((s) => ({
        name: s.key,
        ip: s.clusterIPs[0] ?? null,
        ports: s.ports.map((p) => p.port),
        endpoints: snap.endpoints.get(s.key)?.length ?? 0,
        routing: 'cluster',
      })),
    };
  }

  async start(): Promise<void> {
    await this.admin.start();
    this.stops.push(() => this.admin.close());

    // --- tunnel (packages/agent/src/tunnel) ---
    if (this.cfg.tunnel.enabled) {
      const token = readToken(this.cfg.tunnel.tokenFile);
      const { pair, created, path } = loadOrCreateKeyPair(this.cfg.stateDir);
      if (created) this.log.info({ path }, 'generated the node key');
      this.tunnel = new Tunnel({
        node: this.cfg.nodeName, servers: this.cfg.tunnel.servers, token, keyPair: pair, listenPort: this.cfg.tunnel.listenPort,
        log: this.log.child({ mod: 'tunnel' }), registry: this.registry, snapshot: () => this.model.snapshot(),
      });
      this.tunnelDialer = new TunnelDialer(this.tunnel);
      await this.tunnel.start();
      const t = this.tunnel;
      this.stops.push(() => t.stop());
    }
  }

  async stop(): Promise<void> {
    for (const s of this.stops.reverse()) {
      try {
        await s();
      } catch (e) {
        this.log.warn({ err: e }, 'a component failed to stop cleanly');
      }
    }
  }
}

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
  const agent = new Agent(cfg, log);
  handleSignals(log, () => agent.stop());
  try {
    await agent.start();
  } catch (e) {
    await agent.stop();
    exitOnConfigError(e);
  }
  log.info('agent started');
}
