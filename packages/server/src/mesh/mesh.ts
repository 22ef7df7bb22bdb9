// The server mesh: links to the other servers of this cluster (mesh.peers, mesh.dns), presence (which peer has which
// agent), forwarded rendezvous and relay streams (forward.ts), revocations pushed across the mesh. I/O lives here;
// the decisions are decide.ts / presence.ts, the codec frames.ts. docs/tunnel-protocol.md "Server mesh".
import { connect, createSecureContext, type SecureContext, type TLSSocket } from 'node:tls';
import { promises as dnsp } from 'node:dns';
import { networkInterfaces } from 'node:os';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { Logger } from '@edgemesh/common/log';
import type { Budgets } from '@edgemesh/common/budget';
import { backoff, type Backoff } from '@edgemesh/common/backoff';
import { parseHostPort } from '@edgemesh/common/config';
import { FrameError, type Frame } from '@edgemesh/common/tunnel/frame';
import { encodeControl, T, type ControlMessage } from '@edgemesh/common/tunnel/protocol';
import type { StreamFrame } from '@edgemesh/common/tunnel/streams';
import type { ClusterCa } from '@edgemesh/common/identity/ca';
import { verifyRevocationList, type RevocationEntry, type SignedRevocationList } from '@edgemesh/common/identity/revocation';
import { fullBucket, take, type BucketState } from '@edgemesh/common/ratelimit';
import { renewAt } from '@edgemesh/common/identity/renewal';
import { checkMeshPeer, issueMeshCert, MESH_TLS_NAME, newServerId } from './cert.ts';
import { keepLink, meshTargets, type LinkDirection } from './decide.ts';
import {
  decodeHello, decodePing, decodePresence, decodeRevocations, encodeHello, encodePing, encodePresence, encodeRevocations, M, MESH_PROTOCOL_VERSION,
} from './frames.ts';
import { MESH_CONTROL_PER_SEC, MeshInbox } from './inbox.ts';
import { MeshLink, MESH_HELLO_TIMEOUT_MS, MESH_IDLE_TIMEOUT_MS, MESH_PING_INTERVAL_MS } from './link.ts';
import { PresenceTable } from './presence.ts';
import { MeshForwarder } from './forward.ts';
import type { AgentEnd, MeshHooks, RelayPort } from './port.ts';
import { encodeFrame } from '@edgemesh/common/tunnel/frame';

/** How often `mesh.dns` is resolved again (a new replica is dialled within this; a headless Service's records follow
 *  pod readiness, so faster would only chase pods that are still starting). */
export const MESH_DNS_INTERVAL_MS = 10_000;
/** Redial backoff of a lost or refused peer: from half a second (a restarting replica is back within seconds) to 30 s
 *  (a peer that is gone for good costs one TLS handshake every 30 s). */
export const MESH_RECONNECT_MIN_MS = 500;
export const MESH_RECONNECT_MAX_MS = 30_000;
/** A dial (TCP + TLS) must complete within this. */
export const MESH_DIAL_TIMEOUT_MS = 10_000;
/** Revocation lists a peer may push (each costs a signature check of up to 1 MiB): 1/s, burst 4. */
export const MESH_REVOCATIONS_PER_SEC = 1;
export const MESH_REVOCATIONS_BURST = 4;
/** Dial failures of one target are logged at most once per this interval (a dead peer would log every backoff). */
export const MESH_DIAL_LOG_INTERVAL_MS = 60_000;
/** Opens not answered by the peer are swept at this interval. */
const SWEEP_MS = 1_000;

export interface MeshIdentity {
  readonly ca: ClusterCa;
  revocationList(): SignedRevocationList;
  onRevocations(fn: (list: SignedRevocationList) => void): () => void;
  /** Revocations learnt from a peer server: recorded like `node revoke` (the registry), then pushed to agents. */
  mergeRevocations(entries: readonly RevocationEntry[]): number;
}

export interface MeshOptions {
  peers: readonly string[];
  dns: string;
  /** The server's own listen port (the port of every server found by DNS) and host (skipped as a peer). */
  listenPort: number;
  listenHost: string;
  identity: MeshIdentity;
  relay: RelayPort;
  log: Logger;
  registry: Registry;
  budgets: Budgets;
  /** Server id (16 hex); random when absent. */
  id?: string;
  /** DNS resolution (tests): every address of a name. */
  resolve?: (name: string) => Promise<string[]>;
  dnsIntervalMs?: number;
}

interface Target {
  addr: string;
  /** The peer's server id once a dial reached it. */
  id?: string;
  self?: boolean;
  timer?: NodeJS.Timeout;
  dialing?: TLSSocket;
  backoff: Backoff;
  lastLog: number;
}

async function resolveAll(name: string): Promise<string[]> {
  const out: string[] = [];
  for (const f of [dnsp.resolve4, dnsp.resolve6]) {
    try {
      out.push(...(await f(name)));
    } catch {
      // NXDOMAIN / no records of this family
    }
  }
  return out;
}

function ownAddresses(listenHost: string): Set<string> {
  const own = new Set<string>(['127.0.0.1', '::1']);
  if (listenHost && listenHost !== '0.0.0.0' && listenHost !== '::') own.add(listenHost);
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) own.add(a.address);
  return own;
}

export class Mesh implements MeshHooks {
  readonly id: string;
  private readonly opts: MeshOptions;
  private readonly log: Logger;
  private readonly links = new Map<string, MeshLink>();
  private readonly targets = new Map<string, Target>();
  private dnsTargets: string[] = [];
  readonly presence = new PresenceTable<MeshLink>();
  readonly forwarder: MeshForwarder;
  private cert: { keyPem: string; chainPem: string; notBefore: number; notAfter: number } | undefined;
  private context: SecureContext | undefined;
  private readonly timers: NodeJS.Timeout[] = [];
  private renewTimer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  private stopped = false;
  private readonly revocationBuckets = new WeakMap<MeshLink, BucketState>();
  /** Presence changes not yet sent (sent together on the next tick: a burst of sign-ins is a few frames). */
  private readonly presenceQueue = new Map<string, 'add' | 'del'>();
  private presenceFlush: NodeJS.Immediate | undefined;
  private readonly m: { peers: Gauge; events: Counter; bytes: Counter; presence: Gauge; streams: Gauge; rendezvous: Counter; malformed: Counter };

  constructor(opts: MeshOptions) {
    this.opts = opts;
    this.log = opts.log.child({ module: 'mesh' });
    this.id = opts.id ?? newServerId();
    const r = [opts.registry];
    this.m = {
      peers: new Gauge({ name: 'edgemesh_server_mesh_peers', help: 'Mesh links up (other servers of this cluster)', registers: r }),
      events: new Counter({ name: 'edgemesh_server_mesh_link_events_total', help: 'Mesh link events (up, down, dedupe, self, dial_failed, refused)', labelNames: ['event'], registers: r }),
      bytes: new Counter({ name: 'edgemesh_server_mesh_forwarded_bytes_total', help: 'Relay bytes (ciphertext) forwarded over mesh links, out = to a peer server, in = from one', labelNames: ['dir'], registers: r }),
      presence: new Gauge({ name: 'edgemesh_server_mesh_presence_entries', help: 'Agents the mesh peers announced', registers: r }),
      streams: new Gauge({ name: 'edgemesh_server_mesh_streams', help: 'Relay streams crossing a mesh link', registers: r }),
      rendezvous: new Counter({ name: 'edgemesh_server_mesh_rendezvous_total', help: 'Rendezvous messages over the mesh by outcome', labelNames: ['outcome'], registers: r }),
      malformed: new Counter({ name: 'edgemesh_server_mesh_malformed_frames_total', help: 'Malformed or unexpected mesh frames dropped', labelNames: ['what'], registers: r }),
    };
    this.forwarder = new MeshForwarder(opts.relay, {
      refuse: (b, f) => opts.budgets.refuse(b, f),
      forwarded: (dir, n) => this.m.bytes.inc({ dir }, n),
      rendezvous: (o) => this.m.rendezvous.inc({ outcome: o }),
      streams: (n) => this.m.streams.set(n),
      malformed: (w) => this.m.malformed.inc({ what: w }),
    });
  }

  get enabled(): boolean {
    return this.opts.peers.length > 0 || this.opts.dns !== '';
  }

  /** The TLS context the listener answers SNI `edgemesh-mesh` with (the mesh certificate). */
  secureContext(): SecureContext | undefined {
    return this.context;
  }

  async start(): Promise<void> {
    await this.renewCert();
    this.unsubscribe = this.opts.identity.onRevocations((list) => {
      for (const l of this.links.values()) l.control(encodeRevocations(list.body, list.signature));
    });
    const every = (ms: number, fn: () => void) => {
      const t = setInterval(fn, ms);
      t.unref();
      this.timers.push(t);
    };
    every(MESH_PING_INTERVAL_MS, () => this.pingAll());
    every(SWEEP_MS, () => this.forwarder.sweep(Date.now()));
    for (const p of this.opts.peers) this.addTarget(p);
    if (this.opts.dns) {
      every(this.opts.dnsIntervalMs ?? MESH_DNS_INTERVAL_MS, () => void this.refreshDns());
      void this.refreshDns();
    }
    this.log.info({ id: this.id, peers: this.opts.peers, dns: this.opts.dns || undefined }, 'server mesh started');
  }

  private async renewCert(): Promise<void> {
    const c = await issueMeshCert(this.opts.identity.ca, this.id, Date.now());
    this.cert = { keyPem: c.keyPem, chainPem: c.chainPem, notBefore: c.notBefore, notAfter: c.notAfter };
    this.context = createSecureContext({ key: c.keyPem, cert: c.chainPem, minVersion: 'TLSv1.3' });
    this.renewTimer = setTimeout(() => {
      this.renewCert().catch((e: unknown) => this.log.error({ err: e }, 'cannot renew the mesh certificate'));
    }, Math.max(1000, renewAt(c) - Date.now()));
    this.renewTimer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    for (const t of this.timers) clearInterval(t);
    clearTimeout(this.renewTimer);
    if (this.presenceFlush) clearImmediate(this.presenceFlush);
    for (const t of this.targets.values()) {
      clearTimeout(t.timer);
      t.dialing?.destroy();
    }
    for (const l of [...this.links.values()]) l.close();
  }

  // ---------- peers to dial ----------

  private async refreshDns(): Promise<void> {
    const addrs = await (this.opts.resolve ?? resolveAll)(this.opts.dns).catch(() => [] as string[]);
    if (this.stopped) return;
    const next = meshTargets([], addrs, ownAddresses(this.opts.listenHost), this.opts.listenPort);
    for (const a of this.dnsTargets) if (!next.includes(a) && !this.opts.peers.includes(a)) this.removeTarget(a);
    for (const a of next) this.addTarget(a);
    this.dnsTargets = next;
  }

  private addTarget(addr: string): void {
    if (this.targets.has(addr)) return;
    const t: Target = { addr, backoff: backoff(MESH_RECONNECT_MIN_MS, MESH_RECONNECT_MAX_MS), lastLog: 0 };
    this.targets.set(addr, t);
    this.dial(t);
  }

  /** No longer a peer to dial (gone from DNS): a live link stays until it fails. */
  private removeTarget(addr: string): void {
    const t = this.targets.get(addr);
    if (!t) return;
    clearTimeout(t.timer);
    t.dialing?.destroy();
    this.targets.delete(addr);
  }

  private schedule(t: Target): void {
    if (this.stopped || t.self || this.targets.get(t.addr) !== t || t.timer || t.dialing) return;
    if (t.id && this.links.has(t.id)) return; // linked (maybe through the peer's dial): redial only when it goes down
    t.timer = setTimeout(() => {
      t.timer = undefined;
      this.dial(t);
    }, t.backoff.next());
    t.timer.unref();
  }

  private dial(t: Target): void {
    if (this.stopped || t.self || (t.id && this.links.has(t.id)) || !this.cert) return;
    const hp = parseHostPort(t.addr)!;
    let sock: TLSSocket;
    try {
      sock = connect({
        host: hp.host, port: hp.port, servername: MESH_TLS_NAME, key: this.cert.keyPem, cert: this.cert.chainPem,
        minVersion: 'TLSv1.3', rejectUnauthorized: false, timeout: MESH_DIAL_TIMEOUT_MS,
      });
    } catch (e) {
      // e.g. no descriptors left: this dial fails, the next one is scheduled
      this.m.events.inc({ event: 'dial_failed' });
      this.log.debug({ peer: t.addr, err: (e as Error).message }, 'mesh dial failed');
      return this.schedule(t);
    }
    t.dialing = sock;
    let done = false;
    const fail = (why: string) => {
      if (done) return;
      done = true;
      t.dialing = undefined;
      sock.destroy();
      this.m.events.inc({ event: 'dial_failed' });
      const now = Date.now();
      if (now - t.lastLog > MESH_DIAL_LOG_INTERVAL_MS) {
        t.lastLog = now;
        this.log.warn({ peer: t.addr, why }, 'mesh peer unreachable (retrying with backoff; logged once a minute)');
      }
      this.schedule(t);
    };
    sock.on('error', (e: NodeJS.ErrnoException) => fail(e.code ?? e.message));
    sock.on('timeout', () => fail('timeout'));
    sock.once('close', () => fail('closed'));
    sock.once('secureConnect', () => {
      if (done) return;
      const v = checkMeshPeer(sock.getPeerX509Certificate(), this.opts.identity.ca, Date.now());
      if (!v.ok) {
        this.opts.budgets.refuse('mesh_peer_refused', { peer: t.addr, reason: v.reason });
        return fail(`peer certificate refused: ${v.reason}`);
      }
      done = true;
      t.dialing = undefined;
      t.id = v.id;
      sock.setTimeout(0);
      sock.removeAllListeners('timeout');
      sock.removeAllListeners('error');
      sock.removeAllListeners('close');
      sock.on('error', () => {});
      const l = this.adopt(sock, v.id, 'out', t.addr);
      if (l) t.backoff.reset();
      else if (!t.self) this.schedule(t);
    });
  }

  // ---------- links ----------

  /** A connection to our listener that asked for SNI edgemesh-mesh (relay.ts hands it over after TLS). */
  accept(sock: TLSSocket): void {
    sock.on('error', () => {});
    if (this.stopped) return void sock.destroy();
    const v = checkMeshPeer(sock.getPeerX509Certificate(), this.opts.identity.ca, Date.now());
    if (!v.ok) {
      this.opts.budgets.refuse('mesh_peer_refused', { remote: sock.remoteAddress, reason: v.reason });
      this.m.events.inc({ event: 'refused' });
      return void sock.destroy();
    }
    this.adopt(sock, v.id, 'in');
  }

  private adopt(sock: TLSSocket, peerId: string, dir: LinkDirection, target?: string): MeshLink | undefined {
    const existing = this.links.get(peerId);
    const d = keepLink(this.id, peerId, existing && { direction: existing.direction, established: existing.helloSeen }, dir);
    if (d === 'self') {
      const t = target ? this.targets.get(target) : undefined;
      if (t) t.self = true;
      this.m.events.inc({ event: 'self' });
      sock.destroy();
      return undefined;
    }
    if (d === 'existing') {
      this.m.events.inc({ event: 'dedupe' });
      sock.destroy();
      return undefined;
    }
    const link = new MeshLink(sock, this.id, peerId, dir, target);
    sock.setNoDelay(true);
    sock.setKeepAlive(true, 15_000);
    if (existing) {
      this.m.events.inc({ event: 'dedupe' });
      this.down(existing, 'replaced by the link the lower server id dialled (both were starting)');
    }
    this.links.set(peerId, link);
    this.m.peers.set(this.links.size);
    const helloTimer = setTimeout(() => { if (!link.helloSeen) link.close(); }, MESH_HELLO_TIMEOUT_MS);
    helloTimer.unref();
    // Frames are handled in order under the link's control budget (inbox.ts: over it, reading pauses).
    const inbox = new MeshInbox({
      handle: (f) => {
        if (link.closed) return false;
        try {
          this.onFrame(link, f);
        } catch (e) {
          this.m.malformed.inc({ what: 'handler' });
          this.log.warn({ peer: peerId, err: (e as Error).message }, 'mesh frame handling failed, closing the link');
          link.close();
        }
        return !link.closed;
      },
      pause: () => sock.pause(),
      resume: () => sock.resume(),
      refused: () => this.opts.budgets.refuse('mesh_control_rate', { peer: peerId, perSec: MESH_CONTROL_PER_SEC }),
      now: Date.now,
      setTimer: (fn, ms) => setTimeout(fn, ms).unref(),
      clearTimer: (t) => clearTimeout(t as NodeJS.Timeout),
    });
    sock.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = link.push(chunk);
      } catch (e) {
        this.m.malformed.inc({ what: 'frame' });
        this.log.warn({ peer: peerId, err: (e as FrameError).message }, 'bad mesh frame, closing the link');
        return link.close();
      }
      inbox.push(frames);
    });
    sock.on('drain', () => this.forwarder.drained(link));
    sock.once('close', () => {
      clearTimeout(helloTimer);
      inbox.close();
      this.down(link, 'closed');
    });
    // Our side of the start: HELLO, the full presence set, the revocations.
    link.control(encodeHello(Buffer.from(this.id, 'hex')));
    for (const f of encodePresence(M.PRESENCE_ADD, this.opts.relay.agentNodes())) link.control(f);
    link.control(encodeFrame(M.PRESENCE_SYNCED));
    const list = this.opts.identity.revocationList();
    link.control(encodeRevocations(list.body, list.signature));
    link.ping(Date.now());
    this.m.events.inc({ event: 'up' });
    this.log.info({ peer: peerId, dir, target, remote: `${sock.remoteAddress}:${sock.remotePort}` }, 'mesh link up');
    return link;
  }

  private down(link: MeshLink, why: string): void {
    link.close();
    if (this.links.get(link.peerId) !== link) return;
    this.links.delete(link.peerId);
    this.m.peers.set(this.links.size);
    this.forwarder.linkDown(link);
    this.presence.dropLink(link);
    this.m.presence.set(this.presence.size);
    this.m.events.inc({ event: 'down' });
    this.log.info({ peer: link.peerId, why }, 'mesh link down');
    // Dial again whatever reached this peer (if the link was the peer's dial, our own target may reach it).
    for (const t of this.targets.values()) if (!t.id || t.id === link.peerId) this.schedule(t);
  }

  private onFrame(link: MeshLink, f: Frame): void {
    if (!link.helloSeen) {
      const h = f.type === M.HELLO ? decodeHello(f.payload) : undefined;
      if (!h || h.version !== MESH_PROTOCOL_VERSION || h.id.toString('hex') !== link.peerId) {
        this.m.malformed.inc({ what: 'hello' });
        this.log.warn({ peer: link.peerId }, 'mesh peer sent no valid HELLO, closing the link');
        return link.close();
      }
      link.helloSeen = true;
      return;
    }
    switch (f.type) {
      case M.PRESENCE_ADD: case M.PRESENCE_DEL: {
        const names = decodePresence(f.payload);
        if (!names) return void this.m.malformed.inc({ what: 'presence' });
        if (f.type === M.PRESENCE_DEL) this.presence.remove(link, names);
        else {
          const r = this.presence.add(link, names);
          if (r.refused) this.opts.budgets.refuse('mesh_presence', { peer: link.peerId, refused: r.refused, max: this.presence.maxPerLink });
        }
        this.m.presence.set(this.presence.size);
        return;
      }
      case M.PRESENCE_SYNCED:
        link.synced = true;
        return;
      case M.RENDEZVOUS:
        return this.forwarder.rendezvousIn(link, f.payload, (n) => this.presence.has(link, n));
      case M.REVOCATIONS:
        return this.onRevocations(link, f.payload);
      case M.PING: {
        const t = decodePing(f.payload);
        if (t === undefined) return void this.m.malformed.inc({ what: 'ping' });
        return link.control(encodePing(M.PONG, t));
      }
      case M.PONG: {
        const t = decodePing(f.payload);
        if (t !== undefined) link.rttMs = Math.max(0, Math.min(60_000, Date.now() - t));
        return;
      }
      default:
        if (!this.forwarder.linkFrame(link, f, (n) => this.presence.has(link, n))) this.m.malformed.inc({ what: `type-${f.type}` });
    }
  }

  private onRevocations(link: MeshLink, payload: Buffer): void {
    let b = this.revocationBuckets.get(link);
    if (!b) this.revocationBuckets.set(link, b = fullBucket({ capacity: MESH_REVOCATIONS_BURST, ratePerSec: MESH_REVOCATIONS_PER_SEC }, Date.now()));
    if (!take(b, { capacity: MESH_REVOCATIONS_BURST, ratePerSec: MESH_REVOCATIONS_PER_SEC }, Date.now())) {
      return void this.opts.budgets.refuse('mesh_revocations_rate', { peer: link.peerId });
    }
    const s = decodeRevocations(payload);
    if (!s) return void this.m.malformed.inc({ what: 'revocations' });
    const v = verifyRevocationList(s, this.opts.identity.ca, link.revocationsIssuedAt);
    if (!v.ok) {
      if (v.reason !== 'stale') this.opts.budgets.refuse('mesh_revocations_refused', { peer: link.peerId, reason: v.reason });
      return;
    }
    link.revocationsIssuedAt = v.list.issuedAt;
    const added = this.opts.identity.mergeRevocations(v.list.entries);
    if (added) this.log.info({ peer: link.peerId, added }, 'revocations learnt from a mesh peer');
  }

  private pingAll(): void {
    const now = Date.now();
    for (const l of [...this.links.values()]) {
      if (now - l.lastSeen > MESH_IDLE_TIMEOUT_MS) {
        this.down(l, 'silent too long');
        continue;
      }
      l.ping(now);
    }
  }

  // ---------- presence out ----------

  private queuePresence(node: string, op: 'add' | 'del'): void {
    if (!this.links.size) return;
    this.presenceQueue.set(node, op);
    this.presenceFlush ??= setImmediate(() => {
      this.presenceFlush = undefined;
      const add: string[] = [];
      const del: string[] = [];
      for (const [n, o] of this.presenceQueue) (o === 'add' ? add : del).push(n);
      this.presenceQueue.clear();
      const frames = [...encodePresence(M.PRESENCE_DEL, del), ...encodePresence(M.PRESENCE_ADD, add)];
      for (const l of this.links.values()) for (const f of frames) l.control(f);
    });
  }

  // ---------- MeshHooks (called by relay.ts) ----------

  private linkFor(node: string): MeshLink | undefined {
    const l = this.presence.lookup(node);
    return l && !l.closed ? l : undefined;
  }

  has(node: string): boolean {
    return this.linkFor(node) !== undefined;
  }

  open(a: AgentEnd, req: number, to: string): boolean {
    const l = this.linkFor(to);
    if (!l) return false;
    this.forwarder.open(a, req, to, l);
    return true;
  }

  streamFrame(a: AgentEnd, f: Frame, sf: StreamFrame): boolean {
    return this.forwarder.agentFrame(a, f, sf);
  }

  rendezvous(a: AgentEnd, m: ControlMessage<typeof T.RENDEZVOUS>): boolean {
    const to = m.to;
    const l = to !== undefined ? this.linkFor(to) : undefined;
    if (!l || to === undefined) return false;
    const { sid, reply, mode, cand, nat, streamId, ts, cert, sig } = m;
    this.forwarder.rendezvousOut(a, to, encodeControl(T.RENDEZVOUS, { sid, reply, mode, cand, nat, streamId, ts, cert, sig }), l);
    return true;
  }

  agentUp(node: string): void {
    this.queuePresence(node, 'add');
  }

  agentDown(a: AgentEnd, gone: boolean): void {
    this.forwarder.agentDown(a);
    if (gone) this.queuePresence(a.node, 'del');
  }

  holds(a: AgentEnd): boolean {
    return this.forwarder.holds(a);
  }

  status(): unknown {
    return {
      id: this.id,
      peers: [...this.links.values()].map((l) => ({ id: l.peerId, dir: l.direction, target: l.target, remote: `${l.sock.remoteAddress}:${l.sock.remotePort}`, since: new Date(l.since).toISOString(), rttMs: l.rttMs, agents: this.presence.sizeOf(l), synced: l.synced, bytesOut: l.bytesOut, bytesIn: l.bytesIn })),
      targets: [...this.targets.values()].map((t) => ({ addr: t.addr, id: t.id, self: t.self || undefined })),
      presence: this.presence.size,
      ...this.forwarder.status(),
    };
  }
}
