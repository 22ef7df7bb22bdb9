// The agent's tunnel: connections to every server, the UDP socket, one PeerPaths per peer, the serving side for
// streams peers open to us, and what the proxy's Dialer (dialer.ts) and /status use. Per-peer state lives in
// PeerPaths only; this file routes server events and packets to them.
import type { Registry } from 'prom-client';
import { Budgets } from '@edgemesh/common/budget';
import type { FdPressure } from '@edgemesh/common/fds';
import type { Logger } from '@edgemesh/common/log';
import { parseHostPort } from '@edgemesh/common/config';
import type { RawKeyPair } from '@edgemesh/common/tunnel/ed25519';
import type { Rendezvous } from '@edgemesh/common/tunnel/protocol';
import type { Snapshot } from '../cluster/types.ts';
import { DialError, type Deadline, type DialTarget } from '../proxy/dialer.ts';
import { DirectDialer } from '../proxy/direct.ts';
import type { RoutingDefault } from '../routing/routing.ts';
import { makeRealClock, type Clock } from './clock.ts';
import { REFUSAL_NOT_A_NODE, rendezvousRate, TunnelBudgets, type TunnelLimitsConfig } from './limits.ts';
import type { Link } from './link.ts';
import { createTunnelMetrics, type TunnelMetrics } from './metrics.ts';
import { NodeAccessServer, type NodeAccessServeOptions } from './nodeaccess-serve.ts';
import type { PeerEnv, PeerStatus, RendezvousOut } from './peerenv.ts';
import { PeerPaths } from './peerpaths.ts';
import { serveStream } from './serve.ts';
import { ServerConn } from './serverconn.ts';
import type { AgentIdentity } from '../identity/agentidentity.ts';
import { TunnelSocket } from './socket.ts';
import { dialTcpLink, TcpLinkListener, TcpLinkTls } from './tcplink.ts';
import type { TunnelStream } from './stream.ts';
import { STUN_FRESH_MS } from './timers.ts';
import { RENDEZVOUS_CONTEXT, rendezvousMessage, screenOffer } from './rendezvous.ts';
import type { ControlInput, T } from '@edgemesh/common/tunnel/protocol';

export interface TunnelOptions {
  node: string;
  servers: string[];
  /** Trust, node certificate, enrollment credentials, revocations (identity/agentidentity.ts). */
  identity: AgentIdentity;
  keyPair: RawKeyPair;
  /** UDP port for the direct path (0 = any); undefined disables the direct path (relay only). */
  listenPort?: number;
  /** Upgrade retry interval override (tests). */
  upgradeRetryMs?: number;
  log: Logger;
  registry: Registry;
  snapshot: () => Snapshot;
  clock?: Clock;
  /** Node-access streams peers open to us (nodeAccess.*); undefined = every one refused as forbidden. */
  nodeAccess?: Pick<NodeAccessServeOptions, 'config' | 'budgets' | 'fds'>;
  /** The process's budgets (refusals counted and logged there); default: the tunnel's own on `registry`. */
  budgets?: Budgets;
  /** Descriptor pressure: new served streams are shed before the control plane's reserve. */
  fds?: FdPressure;
  /** tunnel.limits (limits.ts defaults). */
  limits?: TunnelLimitsConfig;
  /** routing.default: the serving side applies the Service's strict scope with it (authorize.ts). */
  routingDefault?: RoutingDefault;
  /** Serve loopback endpoint addresses: only for tests that run every node on one host's loopback. */
  allowLoopbackEndpoints?: boolean;
}

export type { PeerStatus };

export class Tunnel {
  readonly opts: TunnelOptions;
  readonly log: Logger;
  readonly servers: ServerConn[];
  readonly peers = new Map<string, PeerPaths>();
  /** The UDP socket (STUN, pings, UDX streams); undefined when the direct path is disabled. */
  readonly udp: TunnelSocket | undefined;
  /** The TCP transport (tcplink.ts): with the direct path, on the UDP socket's port number. */
  private readonly tcpTls: TcpLinkTls | undefined;
  private tcpListener: TcpLinkListener | undefined;
  readonly m: TunnelMetrics;
  /** The serving side of node access (opts.nodeAccess). */
  readonly nodeAccess: NodeAccessServer | undefined;
  readonly budgets: TunnelBudgets;
  private readonly clock: Clock;
  private readonly env: Omit<PeerEnv, 'log'>;
  private stopped = false;
  private natTimer: NodeJS.Timeout | undefined;
  /** Nodes in the last cluster snapshot seen (onSnapshot), to notice the ones that leave. */
  private knownNodes = new Set<string>();

  constructor(opts: TunnelOptions) {
    this.opts = opts;
    this.log = opts.log;
    this.clock = opts.clock ?? makeRealClock((e) => this.log.error({ err: e }, 'tunnel timer failed'));
    if (!opts.servers.length) throw new Error('tunnel.servers: at least one server is required');
    this.servers = opts.servers.map((s) => {
      const hp = parseHostPort(s, false);
      if (!hp) throw new Error(`tunnel.servers: bad address ${s}`);
      return new ServerConn({ host: hp.host, port: hp.port, identity: opts.identity, log: opts.log });
    });
    this.m = createTunnelMetrics(opts.registry);
    this.m.serversConnected = () => this.servers.filter((s) => s.connected).length;
    this.m.peerPaths = () => this.peerStatus().map((p) => p.path);
    if (opts.listenPort !== undefined) {
      this.udp = new TunnelSocket({
        listenPort: opts.listenPort, keyPair: opts.keyPair, log: opts.log, metrics: this.m, fds: opts.fds,
        stunServers: () => this.servers.flatMap((s) => (s.connected && s.stunKey ? [{ host: s.host, port: s.port, altPort: s.stunAltPort, key: s.stunKey }] : [])),
      });
    }
    if (this.udp) this.tcpTls = new TcpLinkTls({ node: opts.node, keyPair: opts.keyPair, identity: opts.identity });
    const na = opts.nodeAccess;
    this.nodeAccess = na && new NodeAccessServer({ ...na, self: opts.node, nodes: () => opts.snapshot().nodes, registry: opts.registry, log: opts.log.child({ mod: 'nodeaccess' }) });
    this.budgets = new TunnelBudgets(opts.budgets ?? new Budgets({ registry: opts.registry, log: opts.log }), opts.limits, opts.fds,
      rendezvousRate({ upgradeRetryMs: opts.upgradeRetryMs, servers: opts.servers.length }));
    const direct = new DirectDialer();
    const served = (o: string) => this.m.served.inc({ outcome: o });
    const serve = {
      snapshot: opts.snapshot, dialer: direct, log: this.log, onOutcome: served, budgets: this.budgets, refused: this.m.serveRefused,
      policy: { self: opts.node, routingDefault: opts.routingDefault ?? 'prefer', allowLoopback: opts.allowLoopbackEndpoints ?? false },
    };
    this.env = {
      self: opts.node, keyPair: opts.keyPair, clock: this.clock, metrics: this.m, direct: this.udp, upgradeRetryMs: opts.upgradeRetryMs, budgets: this.budgets,
      identity: opts.identity,
      tcp: this.tcpTls && { dial: (node, targets) => dialTcpLink(targets, node, this.tcpTls!, opts.identity), subnets: () => this.udp?.lanSubnets() ?? [] },
      openRelay: (node) => this.openRelay(node),
      rendezvous: (msg: RendezvousOut) => {
        const signed = this.sign(msg);
        return this.servers.filter((s) => s.connected && s.rendezvous(signed)).length > 0;
      },
      serveNode: (peer, h, accept, reject, rttMs) => this.nodeAccess ? this.nodeAccess.serve(peer, h, rttMs, accept, reject) : reject('forbidden', 'node access is not served by this agent'),
      serve: (peer, h, accept, reject, rttMs) => serveStream(serve, peer, h, rttMs, accept, reject),
    };
  }

  private readonly revocationListener = () => this.onRevocations();

  async start(): Promise<void> {
    this.opts.identity.on('revocations', this.revocationListener);
    this.knownNodes = new Set(this.opts.snapshot().nodes.keys());
    for (const s of this.servers) {
      // Only Nodes of the cluster (this node's own snapshot) get links, punch attempts or per-peer state: a name the
      // cluster does not know is refused before anything is made for it. `from` is only the server's word: the link
      // HELLO must carry a certificate naming it, for the key Noise proved.
      s.on('incoming', (from: string, stream: TunnelStream, server: string) => {
        if (this.stopped || !this.isPeerNode(from, 'incoming')) return void stream.destroy();
        this.peer(from).onIncomingRelay(stream, server);
      });
      s.on('rendezvous', (m: Rendezvous) => this.onRendezvous(m, s));
      s.on('up', () => void this.udp?.freshNat(true));
      s.start();
    }
    if (this.udp) {
      this.udp.start();
      this.natTimer = setInterval(() => void this.udp?.freshNat(), STUN_FRESH_MS);
      this.natTimer.unref();
      await this.startTcp();
    }
  }

  /** The TCP link listener on the UDP socket's port number (the LAN candidates name it); without it we still dial. */
  private async startTcp(): Promise<void> {
    if (!this.tcpTls || !this.udp) return;
    const l = new TcpLinkListener({
      port: this.udp.port, host: '0.0.0.0', tls: this.tcpTls, identity: this.opts.identity, budgets: this.budgets.budgets, log: this.log,
      // Only the cluster's Nodes (our snapshot) get a link; a refusal is counted by the listener's budgets.
      isPeerNode: (n) => n !== this.opts.node && this.opts.snapshot().nodes.has(n),
      onPeer: (p) => {
        if (this.stopped) return void p.socket.destroy();
        const t = this.peer(p.node).t;
        if (t) t.onIncoming(p); else p.socket.destroy();
      },
      onRefused: () => this.m.peersRefused.inc({ reason: 'certificate' }),
    });
    if (await l.listen()) this.tcpListener = l;
  }

  /** Our signature over an offer (the server forwards it; the peer checks it against our certificate). */
  private sign(msg: RendezvousOut): ControlInput<typeof T.RENDEZVOUS> {
    const ts = Date.now();
    const o = { sid: msg.sid as string, reply: msg.reply, mode: (msg.mode ?? 'normal') as 'normal' | 'birthday', cand: (msg.cand ?? []) as Rendezvous['cand'], nat: String(msg.nat ?? 'unknown'), streamId: Number(msg.streamId) };
    const sig = this.opts.identity.sign(RENDEZVOUS_CONTEXT, rendezvousMessage(this.opts.node, String(msg.to), o, ts));
    return { ...msg, ts, cert: this.opts.identity.ourCert(), sig };
  }

  /** A peer's offer through server `s`: only with a valid certificate of the sender and its signature (rendezvous.ts). */
  private onRendezvous(m: Rendezvous, s: ServerConn): void {
    if (this.stopped || !m.from || !this.isPeerNode(m.from, 'rendezvous')) return;
    const r = screenOffer(m, this.opts.node, Date.now(), (peer, now) => this.budgets.admitRendezvous(peer, now), (raw, name) => this.opts.identity.verifyPeer(raw, name, undefined));
    if (!r.ok) {
      if (r.reason === 'rate') return; // counted as tunnel_rendezvous_rate
      this.m.peersRefused.inc({ reason: 'rendezvous' });
      this.log.debug({ peer: m.from, why: r.reason }, 'rendezvous refused');
      return;
    }
    this.peer(m.from).onRendezvous({ ...m, cand: r.cand }, (msg) => s.rendezvous(this.sign(msg)), r.key);
  }

  /** A newer revocation list: links to a node whose key it revokes are dropped (its certificate is refused from now). */
  private onRevocations(): void {
    for (const [node, p] of this.peers) {
      const key = p.provedKey;
      if (key && this.opts.identity.revocations.isRevoked({ publicKey: key })) {
        this.log.warn({ peer: node }, 'peer revoked, dropping its links');
        this.forget(node);
      }
    }
  }

  async stop(): Promise<void> {
    this.opts.identity.off('revocations', this.revocationListener);
    this.stopped = true;
    clearInterval(this.natTimer);
    for (const s of this.servers) s.stop();
    for (const p of this.peers.values()) p.close();
    this.peers.clear();
    await Promise.all([this.udp?.stop(), this.tcpListener?.close()]);
  }

  /** Whether `node` may be a peer: another Node of the cluster in our snapshot (refusals counted, logged rate-limited). */
  private isPeerNode(node: string, what: string): boolean {
    if (node !== this.opts.node && this.opts.snapshot().nodes.has(node)) return true;
    this.budgets.budgets.refuse(REFUSAL_NOT_A_NODE, { peer: node, what });
    return false;
  }

  private peer(node: string): PeerPaths {
    let p = this.peers.get(node);
    if (!p) {
      p = new PeerPaths(node, { ...this.env, log: this.log });
      this.peers.set(node, p);
    }
    return p;
  }

  /** A relay stream to `node` through the first connected server that has it. */
  private async openRelay(node: string): Promise<{ stream: TunnelStream; server: string }> {
    const errors: string[] = [];
    // A draining server (it sent DRAIN) is asked last: it is about to go.
    for (const s of [...this.servers.filter((x) => !x.draining), ...this.servers.filter((x) => x.draining)]) {
      if (!s.connected) {
        errors.push(`${s.address}: not connected`);
        continue;
      }
      try {
        return await s.openRelay(node);
      } catch (e) {
        errors.push((e as Error).message);
      }
    }
    throw new DialError('unreachable', `no path to node ${node}: ${errors.join('; ') || 'no servers'}`);
  }

  /** Opens a stream to an endpoint on `node`; resolves once the remote agent answered OK, within `deadline`. */
  async open(node: string, target: DialTarget, deadline: Deadline): Promise<TunnelStream> {
    if (node === this.opts.node) throw new DialError('no-route', 'the tunnel does not dial this node');
    if (this.stopped) throw new DialError('unreachable', 'the tunnel is stopped');
    return this.peer(node).open(target, deadline);
  }

  /** Opens a node-access stream to `port` on `node`'s own loopback; resolves once that agent admitted us and dialed. */
  async openNode(node: string, port: number, deadline: Deadline): Promise<TunnelStream> {
    if (node === this.opts.node) throw new DialError('no-route', 'the tunnel does not dial this node');
    if (this.stopped) throw new DialError('unreachable', 'the tunnel is stopped');
    return this.peer(node).openStream({ nodePort: port, timeoutMs: 0 }, `port ${port}`, deadline);
  }

  /** Brings up a link to `node` without a stream (a successor warming its predecessor's links before it is ready). */
  link(node: string): Promise<void> {
    if (node === this.opts.node) return Promise.reject(new DialError('no-route', 'the tunnel does not link to this node'));
    if (this.stopped) return Promise.reject(new DialError('unreachable', 'the tunnel is stopped'));
    return this.peer(node).connect();
  }

  /** Drops every link to `node` and all path state (a node left the cluster; benchmarks start fresh with it). */
  forget(node: string): void {
    const p = this.peers.get(node);
    this.peers.delete(node);
    p?.close();
  }

  /** Follows the cluster: a node that left the snapshot has its links and path state dropped (forget). */
  onSnapshot(snap: Snapshot): void {
    for (const node of departedNodes(this.knownNodes, snap.nodes)) {
      if (this.peers.has(node)) this.log.info({ peer: node }, 'node left the cluster, dropping its links');
      this.forget(node);
      this.budgets.forgetPeer(node);
    }
    this.knownNodes = new Set(snap.nodes.keys());
  }

  /** The direct link to `node` when one is up. */
  directLink(node: string): Link | undefined {
    return this.peers.get(node)?.directLink();
  }

  peerStatus(): PeerStatus[] {
    const out: PeerStatus[] = [];
    for (const p of this.peers.values()) {
      const s = p.status();
      if (s) out.push(s);
    }
    return out;
  }

  status(): { servers: { address: string; connected: boolean }[]; nat: { type: string; mapped: string | null }; peers: PeerStatus[] } {
    return {
      servers: this.servers.map((s) => ({ address: s.address, connected: s.connected })),
      nat: this.udp?.status() ?? { type: 'unknown', mapped: null },
      peers: this.peerStatus(),
    };
  }
}

/** Nodes in `prev` that `next` no longer has. Only a departure counts: a snapshot that never listed a node (a
 *  source without Node objects) forgets nothing. */
export function departedNodes(prev: Iterable<string>, next: ReadonlyMap<string, unknown>): string[] {
  const out: string[] = [];
  for (const n of prev) if (!next.has(n)) out.push(n);
  return out;
}
