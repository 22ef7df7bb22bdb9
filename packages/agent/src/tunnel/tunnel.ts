// The agent's tunnel: connections to every server, links to peers (relay at once, direct when punched), the
// Dialer the proxy uses for endpoints on other nodes, and the serving side for streams peers open to us.
import type { Registry } from 'prom-client';
import { Counter, Gauge } from 'prom-client';
import type { Logger } from '@edgemesh/common/log';
import { parseHostPort } from '@edgemesh/common/config';
import type { RawKeyPair } from '@edgemesh/common/tunnel/ed25519';
import type { Snapshot } from '../cluster/types.ts';
import { DialError } from '../proxy/dialer.ts';
import type { CreditStream } from './credit.ts';
import { Link, type PathKind } from './link.ts';
import type { StreamHeader } from './mux.ts';
import { serveIncoming } from './serve.ts';
import { ServerConn } from './serverconn.ts';
import { DirectManager } from './direct.ts';

export const DIAL_TIMEOUT_MS = 10_000;
/** A stream opened on the direct link with no answer this long is retried on the relay (the direct path may have
 *  died and heartbeats have not noticed yet). */
export const DIRECT_OPEN_FALLBACK_MS = 3_000;

export interface TunnelOptions {
  node: string;
  servers: string[];
  token: string;
  keyPair: RawKeyPair;
  /** UDP port for the direct path (0 = any); undefined disables the direct path (relay only). */
  listenPort?: number;
  /** Upgrade retry interval override (tests). */
  upgradeRetryMs?: number;
  log: Logger;
  registry: Registry;
  snapshot: () => Snapshot;
}

export interface PeerStatus { node: string; path: 'direct' | 'relay' | 'connecting'; remote: string | null; rttMs: number | null }

/** Hooks the direct-path manager (direct.ts) implements. */
export interface DirectPaths {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** A stream to `node` is wanted: start punching if not yet tried recently. */
  want(node: string): void;
  /** The server passed on a peer's rendezvous message. */
  onRendezvous(conn: ServerConn, m: Record<string, unknown>): void;
  nat(): { type: string; mapped: string | null };
  /** Drops the direct path state for a node. */
  forget(node: string): void;
  /** State of the direct path to a node, for status. */
  state(node: string): 'direct' | 'punching' | 'none';
}

export class Peer {
  readonly node: string;
  readonly relays = new Set<Link>();
  direct: Link | undefined;
  relayPending: Promise<Link> | undefined;
  constructor(node: string) {
    this.node = node;
  }
  best(): Link | undefined {
    if (this.direct && !this.direct.closed) return this.direct;
    for (const l of this.relays) if (!l.closed) return l;
    return undefined;
  }
}

export class Tunnel {
  readonly opts: TunnelOptions;
  readonly log: Logger;
  readonly servers: ServerConn[];
  readonly peers = new Map<string, Peer>();
  direct: DirectPaths | undefined;
  private stopped = false;
  /** Nodes in the last cluster snapshot seen (onSnapshot), to notice the ones that leave. */
  private knownNodes = new Set<string>();
  readonly m: {
    streams: Counter; bytes: Counter; served: Counter; servers: Gauge; peers: Gauge; links: Counter; failovers: Counter;
  };

  constructor(opts: TunnelOptions) {
    this.opts = opts;
    this.log = opts.log;
    if (!opts.servers.length) throw new Error('tunnel.servers: at least one server is required');
    this.servers = opts.servers.map((s) => {
      const hp = parseHostPort(s, false);
      if (!hp) throw new Error(`tunnel.servers: bad address ${s}`);
      return new ServerConn({ host: hp.host, port: hp.port, node: opts.node, token: opts.token, keyPair: opts.keyPair, log: opts.log });
    });
    if (opts.listenPort !== undefined) {
      this.direct = new DirectManager({ tunnel: this, node: opts.node, listenPort: opts.listenPort, keyPair: opts.keyPair, token: opts.token, log: opts.log, registry: opts.registry, upgradeRetryMs: opts.upgradeRetryMs });
    }
    const r = [opts.registry];
    const self = this;
    this.m = {
      streams: new Counter({ name: 'edgemesh_tunnel_streams_opened_total', help: 'Streams opened to peers by path and outcome', labelNames: ['path', 'outcome'], registers: r }),
      bytes: new Counter({ name: 'edgemesh_tunnel_bytes_total', help: 'Bytes on peer links (inside Noise) by path and direction', labelNames: ['path', 'direction'], registers: r }),
      served: new Counter({ name: 'edgemesh_tunnel_streams_served_total', help: 'Streams peers opened to us by outcome', labelNames: ['outcome'], registers: r }),
      servers: new Gauge({ name: 'edgemesh_tunnel_servers_connected', help: 'Servers this agent is connected to', registers: r, collect() { this.set(self.servers.filter((s) => s.connected).length); } }),
      peers: new Gauge({
        name: 'edgemesh_tunnel_peers', help: 'Peers by current path', labelNames: ['path'], registers: r,
        collect() {
          const counts: Record<string, number> = { direct: 0, relay: 0, connecting: 0 };
          for (const p of self.peerStatus()) counts[p.path]++;
          for (const [k, v] of Object.entries(counts)) this.set({ path: k }, v);
        },
      }),
      links: new Counter({ name: 'edgemesh_tunnel_links_total', help: 'Peer links established by path and side', labelNames: ['path', 'side'], registers: r }),
      failovers: new Counter({ name: 'edgemesh_tunnel_failovers_total', help: 'Direct paths given up (peer unanswered) - traffic back on the relay', registers: r }),
    };
  }

  async start(): Promise<void> {
    this.knownNodes = new Set(this.opts.snapshot().nodes.keys());
    for (const s of this.servers) {
      s.on('incoming', (from: string, key: Buffer, raw: CreditStream) => void this.onIncomingRelay(from, key, raw));
      s.on('rendezvous', (m: Record<string, unknown>) => this.direct?.onRendezvous(s, m));
      s.start();
    }
    if (this.direct) await this.direct.start();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const s of this.servers) s.stop();
    for (const p of this.peers.values()) {
      p.direct?.close();
      for (const l of p.relays) l.close();
    }
    if (this.direct) await this.direct.stop();
  }

  peer(node: string): Peer {
    let p = this.peers.get(node);
    if (!p) {
      p = new Peer(node);
      this.peers.set(node, p);
    }
    return p;
  }

  /** Makes a link serve streams the peer opens (installed before the first frame is read). */
  readonly initLink = (link: Link): void => {
    link.on('bytes', (dir: string, n: number) => this.m.bytes.inc({ path: link.kind, direction: dir }, n));
    link.mux.onIncoming = (h, accept, reject) => serveIncoming(this.opts.snapshot, this.log, h, accept, reject, (o) => this.m.served.inc({ outcome: o }));
  };

  private watch(link: Link, side: 'out' | 'in'): void {
    this.m.links.inc({ path: link.kind, side });
  }

  private async onIncomingRelay(from: string, key: Buffer, raw: CreditStream): Promise<void> {
    try {
      const link = await Link.establish(raw, false, this.opts.keyPair, key, 'relay', from, null, this.initLink);
      if (this.stopped) return link.close();
      this.addRelay(from, link, 'in');
    } catch (e) {
      this.log.warn({ peer: from, err: (e as Error).message }, 'incoming relay link failed');
    }
  }

  private addRelay(node: string, link: Link, side: 'in' | 'out'): void {
    const p = this.peer(node);
    p.relays.add(link);
    this.watch(link, side);
    link.on('close', () => p.relays.delete(link));
    this.log.debug({ peer: node, side }, 'relay link up');
  }

  /** Installs a punched direct link (called by the direct-path manager). */
  addDirect(node: string, link: Link, side: 'in' | 'out'): void {
    const p = this.peer(node);
    const old = p.direct;
    p.direct = link;
    this.watch(link, side);
    link.on('close', () => {
      if (p.direct === link) p.direct = undefined;
    });
    if (old && old !== link) old.close();
  }

  /** Drops every link to `node` and all path state (a node left the cluster; benchmarks start fresh with it). */
  forget(node: string): void {
    const p = this.peers.get(node);
    this.direct?.forget(node);
    if (!p) return;
    this.peers.delete(node);
    p.direct?.close();
    for (const l of p.relays) l.close();
  }

  /** Follows the cluster: a node that left the snapshot has its links and path state dropped (forget). */
  onSnapshot(snap: Snapshot): void {
    for (const node of departedNodes(this.knownNodes, snap.nodes)) {
      if (this.peers.has(node)) this.log.info({ peer: node }, 'node left the cluster, dropping its links');
      this.forget(node);
    }
    this.knownNodes = new Set(snap.nodes.keys());
  }

  /** The direct path to `node` stopped answering: drop it, new streams go to the relay. */
  failDirect(node: string, why: string): void {
    const p = this.peers.get(node);
    if (!p?.direct) return;
    this.m.failovers.inc();
    this.log.info({ peer: node, why }, 'direct path lost, falling back to relay');
    p.direct.close(new Error(why));
    p.direct = undefined;
    // Have the relay ready for the next stream (Tailscale keeps its DERP path the same way).
    if (!this.stopped) this.link(node).catch((e: Error) => this.log.debug({ peer: node, err: e.message }, 'no relay link after failover'));
  }

  directLink(node: string): Link | undefined {
    const d = this.peers.get(node)?.direct;
    return d && !d.closed ? d : undefined;
  }

  /** A link to the peer: the direct one when up, else a relay link (established through the first server that has the peer). */
  async link(node: string): Promise<Link> {
    const best = this.peer(node).best();
    return best ?? this.relayLink(node);
  }

  /** A relay link to the peer, reusing one that is up. */
  async relayLink(node: string): Promise<Link> {
    const p = this.peer(node);
    for (const l of p.relays) if (!l.closed) return l;
    if (!p.relayPending) {
      p.relayPending = this.openRelayLink(p).finally(() => { p.relayPending = undefined; });
    }
    return p.relayPending;
  }

  private async openRelayLink(p: Peer): Promise<Link> {
    const errors: string[] = [];
    for (const s of this.servers) {
      if (!s.connected) {
        errors.push(`${s.address}: not connected`);
        continue;
      }
      let link: Link;
      try {
        const { key, stream } = await s.openRelay(p.node);
        link = await Link.establish(stream, true, this.opts.keyPair, key, 'relay', p.node, null, this.initLink);
      } catch (e) {
        errors.push((e as Error).message);
        continue;
      }
      // Forgotten (the node left the cluster) or stopped while the link was being made: do not bring it back.
      if (this.stopped || this.peers.get(p.node) !== p) {
        link.close();
        throw new DialError('unreachable', `node ${p.node} was forgotten while its link was being set up`);
      }
      this.addRelay(p.node, link, 'out');
      return link;
    }
    throw new DialError('unreachable', `no path to node ${p.node}: ${errors.join('; ') || 'no servers'}`);
  }

  /** Opens a stream to an endpoint on `node`; resolves once the remote agent answered OK. */
  async open(node: string, h: StreamHeader, signal?: AbortSignal): Promise<CreditStream> {
    if (node === this.opts.node) throw new DialError('no-route', 'the tunnel does not dial this node');
    this.direct?.want(node);
    const deadline = AbortSignal.timeout(DIAL_TIMEOUT_MS);
    const sig = signal ? AbortSignal.any([signal, deadline]) : deadline;
    let path: PathKind = 'relay';
    const attempt = async (link: Link, limit: AbortSignal): Promise<CreditStream> => {
      const pending = link.mux.open(h);
      try {
        return await raceAbort(pending, limit);
      } catch (e) {
        pending.then((s) => s.destroy(), () => {});
        throw e;
      }
    };
    try {
      const link = await raceAbort(this.link(node), sig);
      path = link.kind;
      let s: CreditStream;
      if (link.kind === 'direct') {
        const fallback = AbortSignal.timeout(DIRECT_OPEN_FALLBACK_MS);
        try {
          s = await attempt(link, AbortSignal.any([sig, fallback]));
        } catch (e) {
          if (!fallback.aborted || sig.aborted) throw e;
          this.log.debug({ peer: node }, 'no answer on the direct path, opening the stream on the relay');
          path = 'relay';
          s = await attempt(await raceAbort(this.relayLink(node), sig), sig);
        }
      } else {
        s = await attempt(link, sig);
      }
      s.path = path;
      this.m.streams.inc({ path, outcome: 'ok' });
      return s;
    } catch (e) {
      const err = e instanceof DialError ? e : sig.aborted ? new DialError('timeout', `dial ${node} ${h.ip}:${h.port}: ${signal?.aborted ? 'aborted' : 'timed out'}`) : new DialError('unreachable', (e as Error).message);
      this.m.streams.inc({ path, outcome: err.code });
      throw err;
    }
  }

  peerStatus(): PeerStatus[] {
    const out: PeerStatus[] = [];
    for (const p of this.peers.values()) {
      const d = this.directLink(p.node);
      if (d) {
        out.push({ node: p.node, path: 'direct', remote: d.remote, rttMs: d.rttMs });
        continue;
      }
      const r = p.best();
      if (r) out.push({ node: p.node, path: 'relay', remote: null, rttMs: r.rttMs });
      else if (p.relayPending || this.direct?.state(p.node) === 'punching') out.push({ node: p.node, path: 'connecting', remote: null, rttMs: null });
    }
    return out;
  }

  status(): { servers: { address: string; connected: boolean }[]; nat: { type: string; mapped: string | null }; peers: PeerStatus[] } {
    return {
      servers: this.servers.map((s) => ({ address: s.address, connected: s.connected })),
      nat: this.direct?.nat() ?? { type: 'unknown', mapped: null },
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

function raceAbort<T>(p: Promise<T>, sig: AbortSignal): Promise<T> {
  if (sig.aborted) return Promise.reject(new DialError('timeout', 'aborted'));
  return new Promise<T>((resolve, reject) => {
    const on = () => reject(new DialError('timeout', 'dial timed out or was aborted'));
    sig.addEventListener('abort', on, { once: true });
    p.then((v) => { sig.removeEventListener('abort', on); resolve(v); }, (e) => { sig.removeEventListener('abort', on); reject(e); });
  });
}
