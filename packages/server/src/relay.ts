// The relay/rendezvous server core: TLS 1.3 listener (certificate issued by the cluster CA), enrollment / sign-in
// inside TLS (identity/enroller.ts), node registry keyed by the name of the node certificate, relay streams with
// per-stream credit (enforced here too), optional per-agent byte rate limit, rendezvous forwarding, revocation push.
import { createServer, type SecureContext, type Server, type TLSSocket } from 'node:tls';
import type { Socket } from 'node:net';
import type { Registry } from 'prom-client';
import { Counter, Gauge } from 'prom-client';
import type { Logger } from '@edgemesh/common/log';
import { encodeFrame, FrameDecoder, FrameError, MAX_FRAME_BYTES, type Frame } from '@edgemesh/common/tunnel/frame';
import type { NodeCertificate } from '@edgemesh/common/identity/cert';
import type { SignedRevocationList } from '@edgemesh/common/identity/revocation';
import {
  CONTROL_TYPES, decodeControl, encodeControl, MAX_DATA_CHUNK, PROTOCOL_VERSION, RELAY_STREAM_TYPES, RELAY_WINDOW_BYTES, T,
  type ControlInput, type ControlMessage, type ControlType,
} from '@edgemesh/common/tunnel/protocol';
import { decodeStreamFrame, encodeReset, FlowWindow, isStreamType } from '@edgemesh/common/tunnel/streams';
import { Budgets, type Budget } from '@edgemesh/common/budget';
import { ConnLimiter, type ConnSlot } from '@edgemesh/common/connlimit';
import { isFdExhaustion, type FdPressure } from '@edgemesh/common/fds';
import { fullBucket, sourceKey, take, type BucketState } from '@edgemesh/common/ratelimit';
import {
  B, CONTROL_MSGS_BURST, CONTROL_MSGS_PER_SEC, DEADLINE_SWEEP_MS, DEFAULT_LIMITS, oldestPartial, PARTIAL_FRAME_DEADLINE_MS, PartialFrameAccount, partialPast, RELAY_OPEN_ANSWER_TIMEOUT_MS,
  RelayStreamBudgets, StreamLeases, UNAUTH_MIN_EVICT_AGE_MS, unansweredPast, type ServerLimits,
} from './limits.ts';
import type { EnrollRequest, EnrollResult } from './identity/enroller.ts';
import { MESH_TLS_NAME } from './mesh/cert.ts';
import type { AgentEnd, MeshHooks, RelayPort } from './mesh/port.ts';
import { PingFrames, pongTime } from './heartbeat.ts';

/** The server mesh as the relay sees it (mesh/mesh.ts): hooks for agents of other servers, the mesh TLS context. */
export interface MeshAttachment extends MeshHooks {
  secureContext(): SecureContext | undefined;
  accept(sock: TLSSocket): void;
}

/** TLS exporter label of the enrollment channel binding (RFC 8446 7.5; the node key signs it in every ENROLL). */
export const ENROLL_EXPORTER_LABEL = 'EXPORTER-edgemesh-enroll';
export const ENROLL_BINDING_BYTES = 32;
/** ENROLL attempts one connection may make before it is signed in: one per method of the agent's plan
 *  (renew, join, kubernetes, bootstrap). Every failed attempt also costs the source in the enroller's limiter. */
export const MAX_ENROLL_ATTEMPTS_PER_CONN = 4;

/** What the relay needs of the server's identity (identity/index.ts ServerIdentity provides it). */
export interface RelayIdentity {
  /** The TLS key and chain (server certificate + CA certificate) of the control channel. */
  serverCert(): { keyPem: string; chainPem: string };
  onServerCert(fn: (c: { keyPem: string; chainPem: string }) => void): void;
  enroll(req: EnrollRequest, source: string, binding: Uint8Array): Promise<EnrollResult>;
  revocationList(): SignedRevocationList;
  onRevocations(fn: (list: SignedRevocationList) => void): () => void;
  /** Whether a connected node's key was revoked since it signed in (it is dropped). */
  isRevoked(cert: NodeCertificate): boolean;
  /** Key of the STUN MESSAGE-INTEGRITY, handed to signed-in agents in WELCOME (stun.ts). */
  readonly stunKey: Buffer;
}
/** An agent must finish the handshake within this time. */
export const AUTH_TIMEOUT_MS = 10_000;
/** Server pings every agent this often; an agent silent for IDLE_TIMEOUT_MS is dropped. */
export const PING_INTERVAL_MS = 10_000;
export const IDLE_TIMEOUT_MS = 35_000;
/** When an agent's outgoing socket buffer exceeds this, the sender feeding it is paused (credit violations only). */
export const MAX_SOCKET_BUFFER_BYTES = 16 * 1024 * 1024;
export const MAX_STREAMS_PER_AGENT = 4096;
/** Until an agent has signed in, no frame may be bigger than this (an ENROLL is at most a ServiceAccount JWT of
 *  MAX_ENROLL_TOKEN_CHARS plus a few hundred bytes): an unauthenticated client cannot make us hold a MAX_FRAME_BYTES
 *  frame for AUTH_TIMEOUT_MS. */
export const MAX_HANDSHAKE_FRAME_BYTES = 12 * 1024;
/** An agent that lets this much pile up in its socket buffer is not reading (relay DATA to it is already paused
 *  at MAX_SOCKET_BUFFER_BYTES; the rest are small frames it provokes or its peers send): it is dropped. */
export const MAX_AGENT_BACKLOG_BYTES = 4 * MAX_SOCKET_BUFFER_BYTES;

export interface RelayServerOptions {
  host: string;
  port: number;
  identity: RelayIdentity;
  log: Logger;
  registry: Registry;
  /** Per-agent relay byte rate limit (bytes/s of DATA it sends), 0 = unlimited. */
  rateLimitBytesPerSec?: number;
  /** Port of the second STUN socket (as bound), told to agents in WELCOME. */
  stunAltPort?: () => number;
  /** A fleet REPORT from an authenticated agent (its parsed JSON and size); must not throw. */
  onReport?: (node: string, report: Record<string, unknown>, bytes: number) => void;
  /** Override of MAX_AGENT_BACKLOG_BYTES (tests). */
  maxBacklogBytes?: number;
  /** The server's budgets (refusals counted and logged there); a private set when absent (tests). */
  budgets?: Budgets;
  /** Descriptor pressure: new unauthenticated connections are shed first when descriptors run short. */
  fds?: FdPressure;
  /** Named limits (limits.ts; config `limits.*`); DEFAULT_LIMITS for what is not given. */
  limits?: Partial<ServerLimits>;
  /** Overrides of the deadlines (tests). */
  openAnswerTimeoutMs?: number;
  partialFrameDeadlineMs?: number;
}

interface Agent {
  node: string;
  key: Buffer;
  cert: NodeCertificate;
  conn: Conn;
  since: number;
  remote: string;
}

interface RelayStream {
  rid: number;
  a: Conn;
  b: Conn;
  /** What a sends to b, and b to a: offsets, acknowledgements and the window each sender must stay in. */
  ab: FlowWindow;
  ba: FlowWindow;
  /** Its share of the relay-stream budgets; pending until b (the target) first sends DATA. */
  leases: StreamLeases;
  openedAt: number;
  readonly pending: boolean;
}

/** Both directions ended and their END acknowledged: nothing more can follow. */
const finished = (st: RelayStream): boolean => st.ab.ended && st.ab.ack === st.ab.next && st.ba.ended && st.ba.ack === st.ba.next;

class Conn {
  readonly sock: TLSSocket;
  readonly decoder = new FrameDecoder(MAX_HANDSHAKE_FRAME_BYTES);
  /** enroll: waiting for an ENROLL; enrolling: one is being decided (frames until then are dropped). */
  state: 'enroll' | 'enrolling' | 'ready' | 'closed' = 'enroll';
  /** TLS exported keying material of this connection: every ENROLL's proof signs it. */
  readonly binding: Buffer;
  attempts = 0;
  renewing = false;
  node = '';
  key: Buffer = Buffer.alloc(0);
  cert: NodeCertificate | undefined;
  lastSeen = Date.now();
  streams = new Set<number>();
  tokens = 0;
  lastRefill = Date.now();
  paused = false;
  rttMs = 0;
  /** The unauthenticated-connection slot, given back when the handshake succeeds or the connection closes. */
  slot: ConnSlot | undefined;
  readonly frames: PartialFrameAccount;
  /** Frames decoded and not yet handled (while the control-message rate pauses this agent), in order. */
  queue: Frame[] = [];
  readonly control: BucketState = fullBucket({ capacity: CONTROL_MSGS_BURST, ratePerSec: CONTROL_MSGS_PER_SEC }, Date.now());
  controlWait: NodeJS.Timeout | undefined;
  /** PartialView (limits.ts): what its partial frame holds and since when. */
  get pending(): number {
    return this.frames.pending;
  }

  get partialSince(): number | undefined {
    return this.frames.partialSince;
  }

  constructor(sock: TLSSocket, frameBytes: Budget) {
    this.sock = sock;
    this.frames = new PartialFrameAccount(frameBytes);
    this.binding = sock.exportKeyingMaterial(ENROLL_BINDING_BYTES, ENROLL_EXPORTER_LABEL, Buffer.alloc(0));
  }
}

export class RelayServer {
  private readonly opts: RelayServerOptions;
  private server: Server | undefined;
  private readonly conns = new Set<Conn>();
  readonly agents = new Map<string, Agent>();
  private readonly streams = new Map<number, RelayStream>();
  private nextRid = 1;
  private pingTimer: NodeJS.Timeout | undefined;
  /** pingAll writes one PING to every agent in one loop: the frame is encoded once per millisecond (heartbeat.ts). */
  private readonly pings = new PingFrames();
  private sweepTimer: NodeJS.Timeout | undefined;
  readonly budgets: Budgets;
  readonly limits: ServerLimits;
  private readonly streamBudgets: RelayStreamBudgets;
  private readonly unauth: ConnLimiter;
  /** Unauthenticated slots of connections still in their TLS handshake, by `address:port`. */
  private readonly handshaking = new Map<string, ConnSlot>();
  private readonly frameBytes: Budget;
  private unsubscribe: (() => void) | undefined;
  /** The server mesh, when configured: agents on other servers of the cluster (setMesh, before start). */
  private mesh: MeshAttachment | undefined;
  /** Set once the server drains (drain.ts): the reconnect window every agent is told in DRAIN. */
  private drainWithinMs: number | undefined;
  private readonly m: {
    agents: Gauge; auth: Counter; relayed: Counter; streams: Gauge; streamsTotal: Counter; malformed: Counter;
    violations: Counter; rendezvous: Counter; limited: Counter;
  };
  private readonly log: Logger;

  constructor(opts: RelayServerOptions) {
    this.opts = opts;
    this.log = opts.log;
    const r = [opts.registry];
    this.m = {
      agents: new Gauge({ name: 'edgemesh_server_agents_connected', help: 'Authenticated agents connected', registers: r }),
      auth: new Counter({ name: 'edgemesh_server_auth_total', help: 'Agent authentication attempts by outcome', labelNames: ['outcome'], registers: r }),
      relayed: new Counter({ name: 'edgemesh_server_relayed_bytes_total', help: 'Bytes relayed between agents (ciphertext)', registers: r }),
      streams: new Gauge({ name: 'edgemesh_server_relay_streams', help: 'Open relay streams', registers: r }),
      streamsTotal: new Counter({ name: 'edgemesh_server_relay_streams_total', help: 'Relay stream open requests by outcome', labelNames: ['outcome'], registers: r }),
      malformed: new Counter({ name: 'edgemesh_server_malformed_frames_total', help: 'Malformed or unexpected frames dropped', registers: r }),
      violations: new Counter({ name: 'edgemesh_server_credit_violations_total', help: 'Relay streams reset because a sender exceeded its credit', registers: r }),
      rendezvous: new Counter({ name: 'edgemesh_server_punch_rendezvous_total', help: 'Hole-punch rendezvous messages forwarded by outcome', labelNames: ['outcome'], registers: r }),
      limited: new Counter({ name: 'edgemesh_server_rate_limited_total', help: 'Times an agent was paused by the relay rate limit', registers: r }),
    };
    this.budgets = opts.budgets ?? new Budgets({ log: opts.log });
    this.limits = { ...DEFAULT_LIMITS, ...opts.limits };
    this.streamBudgets = new RelayStreamBudgets(this.budgets, this.limits);
    this.unauth = new ConnLimiter({
      budgets: this.budgets, name: B.unauth, perSource: this.limits.unauthPerSource, total: this.limits.unauthTotal, minEvictAgeMs: UNAUTH_MIN_EVICT_AGE_MS, fds: opts.fds,
    });
    this.frameBytes = this.budgets.budget({ name: B.frameBytes, max: this.limits.partialFrameBytes, unit: 'bytes' });
  }

  async start(): Promise<{ host: string; port: number }> {
    const id = this.opts.identity;
    const c0 = id.serverCert();
    // TLS 1.3 only; nothing but the TLS handshake happens before it completes (and it is bounded by AUTH_TIMEOUT_MS).
    // With a mesh, the listener also answers SNI edgemesh-mesh with the mesh certificate and asks every client for a
    // certificate (agents send none; mesh peers must send theirs, checked in mesh.accept).
    const mesh = this.mesh;
    const meshTls = mesh ? { requestCert: true, rejectUnauthorized: false, SNICallback: (name: string, cb: (e: Error | null, ctx?: SecureContext) => void) => cb(null, name === MESH_TLS_NAME ? mesh.secureContext() : undefined) } : {};
    const server = createServer({ key: c0.keyPem, cert: c0.chainPem, minVersion: 'TLSv1.3', handshakeTimeout: AUTH_TIMEOUT_MS, noDelay: true, ...meshTls }, (s) => this.accept(s));
    server.on('tlsClientError', () => this.m.auth.inc({ outcome: 'tls-failed' }));
    server.on('connection', (raw: Socket) => this.admit(raw));
    this.server = server;
    id.onServerCert((c) => server.setSecureContext({ key: c.keyPem, cert: c.chainPem, minVersion: 'TLSv1.3' }));
    this.unsubscribe = id.onRevocations((list) => this.onRevocations(list));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.opts.port, this.opts.host || undefined, () => resolve());
    });
    // After listening, an accept error (EMFILE, ENFILE) is one refused connection, never an uncaught exception.
    this.server.on('error', (e: NodeJS.ErrnoException) => {
      if (isFdExhaustion(e)) this.opts.fds?.noteExhausted();
      this.budgets.refuse(B.acceptError, { err: e.code ?? e.message });
    });
    this.pingTimer = setInterval(() => this.pingAll(), PING_INTERVAL_MS);
    this.pingTimer.unref();
    this.sweepTimer = setInterval(() => this.sweep(), DEADLINE_SWEEP_MS);
    this.sweepTimer.unref();
    const a = this.server.address();
    return typeof a === 'object' && a ? { host: a.address, port: a.port } : { host: this.opts.host, port: this.opts.port };
  }

  async stop(): Promise<void> {
    this.unsubscribe?.();
    if (this.pingTimer) clearInterval(this.pingTimer);
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    for (const c of this.conns) c.sock.destroy();
    const s = this.server;
    this.server = undefined;
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }

  /** Stops accepting connections and tells every signed-in agent (and any still signing in) to move (DRAIN). */
  drainAgents(withinMs: number): void {
    this.drainWithinMs = withinMs;
    this.server?.close(); // existing connections stay; stop() waits for the close
    for (const c of this.conns) if (c.state === 'ready') this.send(c, T.DRAIN, { withinMs });
    this.log.info({ agents: this.agents.size, withinMs }, 'draining: agents told to move');
  }

  status(): unknown {
    return {
      draining: this.drainWithinMs !== undefined,
      agents: [...this.agents.values()].map((a) => ({ node: a.node, key: a.key.toString('hex').slice(0, 16), remote: a.remote, since: new Date(a.since).toISOString(), streams: a.conn.streams.size, rttMs: a.conn.rttMs })),
      relayStreams: this.streams.size,
      unauthenticated: this.unauth.size,
      partialFrameBytes: this.frameBytes.used,
      limits: this.limits,
    };
  }

  /**
   * Accept-side budget, on the TCP connection before any TLS work: unauthenticated connections per source and in total
   * (the oldest idle one makes room). The slot is found again by the connection's address once TLS is up (accept).
   */
  private admit(raw: Socket): void {
    const slot = this.unauth.open(sourceKey(raw.remoteAddress ?? ''), () => raw.destroy());
    if (!slot) {
      raw.on('error', () => {});
      raw.destroy();
      return;
    }
    const key = `${raw.remoteAddress}:${raw.remotePort}`;
    this.handshaking.set(key, slot);
    raw.once('close', () => {
      slot.close();
      if (this.handshaking.get(key) === slot) this.handshaking.delete(key);
    });
  }

  private accept(sock: TLSSocket): void {
    const key = `${sock.remoteAddress}:${sock.remotePort}`;
    const slot = this.handshaking.get(key);
    this.handshaking.delete(key);
    if (!slot) return void sock.destroy(); // evicted during its TLS handshake
    if (this.mesh && sock.servername === MESH_TLS_NAME) {
      slot.close(); // a mesh peer is authenticated by its certificate now, or dropped
      return this.mesh.accept(sock);
    }
    const c = new Conn(sock, this.frameBytes);
    c.slot = slot;
    this.conns.add(c);
    sock.setKeepAlive(true, 15_000);
    const authTimer = setTimeout(() => {
      if (c.state !== 'ready') {
        this.m.auth.inc({ outcome: 'timeout' });
        sock.destroy();
      }
    }, AUTH_TIMEOUT_MS);
    authTimer.unref();
    sock.on('data', (chunk: Buffer) => {
      c.lastSeen = Date.now();
      let frames: Frame[];
      try {
        frames = c.decoder.push(chunk);
      } catch (e) {
        this.m.malformed.inc();
        this.log.debug({ err: (e as FrameError).message, remote: sock.remoteAddress }, 'bad frame, dropping connection');
        sock.destroy();
        return;
      }
      if (!c.frames.update(c.decoder.pending, frames.length, Date.now(), () => this.dropOldestPartial(c))) {
        sock.destroy(); // refused (counted as partial_frame_bytes): not even after dropping others does it fit
        return;
      }
      if (c.paused || c.controlWait) c.frames.paused();
      for (const f of frames) c.queue.push(f);
      this.drain(c);
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      clearTimeout(authTimer);
      clearTimeout(c.controlWait);
      c.queue = [];
      c.slot?.close();
      c.frames.release();
      this.closed(c);
    });
    sock.on('drain', () => this.resumeFeeders(c));
  }

  /** Handles queued frames in order; a control message over the agent's rate pauses it until the bucket refills. */
  private drain(c: Conn): void {
    const params = { capacity: CONTROL_MSGS_BURST, ratePerSec: CONTROL_MSGS_PER_SEC };
    if (c.controlWait) {
      c.sock.pause(); // resumed elsewhere (rate limit, drain) while we wait: stay paused
      return;
    }
    while (c.queue.length) {
      if (c.state === 'closed') {
        c.queue = [];
        return;
      }
      const f = c.queue[0];
      if (c.state === 'ready' && CONTROL_TYPES.has(f.type) && !take(c.control, params, Date.now())) {
        this.budgets.refuse(B.controlRate, { node: c.node, perSec: CONTROL_MSGS_PER_SEC });
        c.sock.pause();
        c.frames.paused();
        const waitMs = Math.max(1, Math.ceil(((1 - c.control.tokens) / CONTROL_MSGS_PER_SEC) * 1000));
        c.controlWait = setTimeout(() => {
          c.controlWait = undefined;
          if (c.sock.destroyed) return;
          this.drain(c);
          if (!c.controlWait && !c.paused) {
            c.frames.resumed(Date.now());
            c.sock.resume();
          }
        }, waitMs);
        c.controlWait.unref();
        return;
      }
      c.queue.shift();
      try {
        this.onFrame(c, f);
      } catch (e) {
        this.m.malformed.inc();
        this.log.debug({ err: (e as Error).message }, 'frame handling failed');
        this.fail(c, 'protocol', 'malformed frame');
        c.queue = [];
        return;
      }
    }
  }

  private send<K extends ControlType>(c: Conn, type: K, body: ControlInput<K>): void {
    if (c.state === 'closed' || c.sock.destroyed) return;
    this.write(c, encodeFrame(type, encodeControl(type, body)));
  }

  /** Every frame to an agent goes through here, so what an agent that never reads makes us hold is bounded. */
  private write(c: Conn, frame: Buffer): void {
    if (c.sock.destroyed) return;
    c.sock.write(frame);
    if (c.sock.writableLength > (this.opts.maxBacklogBytes ?? MAX_AGENT_BACKLOG_BYTES)) {
      this.log.warn({ node: c.node, remote: c.sock.remoteAddress, bytes: c.sock.writableLength }, 'agent is not reading, dropping its connection');
      c.sock.destroy();
    }
  }

  private fail(c: Conn, code: string, message: string): void {
    this.send(c, T.ERROR, { code, message });
    c.sock.end();
    setTimeout(() => c.sock.destroy(), 1000).unref();
    c.state = 'closed';
  }

  private onFrame(c: Conn, f: Frame): void {
    if (c.state === 'enrolling') return; // the agent waits for our answer; anything else now is dropped
    if (c.state === 'enroll') {
      const m = f.type === T.ENROLL ? decodeControl(T.ENROLL, f.payload) : undefined;
      if (!m || m.v !== PROTOCOL_VERSION) {
        this.m.malformed.inc();
        this.m.auth.inc({ outcome: 'bad-request' });
        return this.fail(c, 'protocol', `expected ENROLL v${PROTOCOL_VERSION}`);
      }
      return this.onEnroll(c, m);
    }
    if (c.state !== 'ready') return;
    if (isStreamType(RELAY_STREAM_TYPES, f.type)) return this.onStreamFrame(c, f);
    if (!CONTROL_TYPES.has(f.type)) {
      this.m.malformed.inc();
      return;
    }
    const body = f.payload;
    switch (f.type) {
      case T.ENROLL: {
        const m = decodeControl(T.ENROLL, body);
        return m ? this.onRenew(c, m) : void this.m.malformed.inc();
      }
      case T.PING: {
        const m = decodeControl(T.PING, body);
        return m ? this.send(c, T.PONG, { t: m.t }) : void this.m.malformed.inc();
      }
      case T.PONG: {
        const t = pongTime(body);
        if (t !== undefined) c.rttMs = Math.max(0, Date.now() - t);
        return;
      }
      case T.OPEN: {
        const m = decodeControl(T.OPEN, body);
        return m ? this.onOpen(c, m) : void this.m.malformed.inc();
      }
      case T.RENDEZVOUS: {
        const m = decodeControl(T.RENDEZVOUS, body);
        return m ? this.onRendezvous(c, m) : void this.m.malformed.inc();
      }
      case T.REPORT: {
        const m = decodeControl(T.REPORT, body);
        return m ? this.opts.onReport?.(c.node, m, body.length) : void this.m.malformed.inc();
      }
      default:
        this.m.malformed.inc();
    }
  }

  /** An ENROLL before sign-in: enrollment or sign-in (renew) by the enroller; the connection becomes the node's
   *  (the certificate's name and key, never a later message's) once a certificate is issued. */
  private onEnroll(c: Conn, m: ControlMessage<typeof T.ENROLL>): void {
    c.state = 'enrolling';
    c.attempts++;
    const source = c.sock.remoteAddress ?? '';
    this.opts.identity.enroll({ name: m.name, publicKey: m.key, signature: m.sig, method: m.method, token: m.token }, source, c.binding).then((r) => {
      if (c.state === 'closed') return;
      if (!r.ok) {
        this.m.auth.inc({ outcome: r.reason });
        this.send(c, T.ENROLL_FAIL, { reason: r.reason });
        if (c.attempts >= MAX_ENROLL_ATTEMPTS_PER_CONN || r.reason === 'retry-later') return this.fail(c, 'auth', r.reason);
        c.state = 'enroll';
        return;
      }
      this.register(c, r.cert, m.method);
    }, (e: unknown) => {
      this.log.error({ err: e }, 'enrollment failed unexpectedly');
      this.fail(c, 'internal', 'enrollment failed');
    });
  }

  /** A signed-in agent renews its certificate (method renew, its own name and key). */
  private onRenew(c: Conn, m: ControlMessage<typeof T.ENROLL>): void {
    if (m.method !== 'renew' || m.name !== c.node || !m.key.equals(c.key) || c.renewing) {
      this.m.malformed.inc();
      return this.send(c, T.ENROLL_FAIL, { reason: 'bad-request' });
    }
    c.renewing = true;
    this.opts.identity.enroll({ name: m.name, publicKey: m.key, signature: m.sig, method: 'renew', token: '' }, c.sock.remoteAddress ?? '', c.binding).then((r) => {
      c.renewing = false;
      if (c.state !== 'ready') return;
      if (!r.ok) {
        this.send(c, T.ENROLL_FAIL, { reason: r.reason });
        // Revoked, or no longer a Node: the connection is not the node's any more.
        if (r.reason === 'revoked' || r.reason === 'not-a-node' || r.reason === 'name-pinned' || r.reason === 'unauthorized') this.fail(c, 'auth', r.reason);
        return;
      }
      c.cert = r.cert;
      const a = this.agents.get(c.node);
      if (a?.conn === c) a.cert = r.cert;
      this.send(c, T.CERT, { cert: r.cert.raw });
    }, (e: unknown) => {
      c.renewing = false;
      this.log.error({ err: e }, 'renewal failed unexpectedly');
    });
  }

  private register(c: Conn, cert: NodeCertificate, method: string): void {
    const node = cert.name;
    const key = cert.publicKey;
    const existing = this.agents.get(node);
    if (existing) {
      // Same key: the agent reconnected (its old connection is stale). Another key: the name's pin was reset and the
      // new key enrolled; the old holder is no longer the node. Either way the certificate just issued wins.
      this.log.info({ node, sameKey: existing.key.equals(key) }, 'agent reconnected, replacing its previous connection');
      existing.conn.sock.destroy();
      this.dropAgent(existing.conn);
    }
    c.node = node;
    c.key = key;
    c.cert = cert;
    c.state = 'ready';
    c.decoder.max = MAX_FRAME_BYTES;
    c.slot?.close(); // authenticated: no longer counts against the unauthenticated budget
    c.slot = undefined;
    c.tokens = this.opts.rateLimitBytesPerSec ?? 0;
    this.agents.set(node, { node, key, cert, conn: c, since: Date.now(), remote: `${c.sock.remoteAddress}:${c.sock.remotePort}` });
    this.m.agents.set(this.agents.size);
    this.mesh?.agentUp(node);
    this.m.auth.inc({ outcome: 'ok' });
    this.log.info({ node, method, remote: c.sock.remoteAddress }, 'agent signed in');
    this.send(c, T.WELCOME, { cert: cert.raw, stunAltPort: this.opts.stunAltPort?.() ?? 0, observed: { host: c.sock.remoteAddress ?? '', port: c.sock.remotePort }, stunKey: this.opts.identity.stunKey });
    const list = this.opts.identity.revocationList();
    this.send(c, T.REVOCATIONS, { body: list.body, sig: list.signature });
    this.sendPing(c);
    if (this.drainWithinMs !== undefined) this.send(c, T.DRAIN, { withinMs: this.drainWithinMs });
  }

  /** The revocations changed: every agent gets the new list; a connected node whose key is revoked is dropped. */
  private onRevocations(list: SignedRevocationList): void {
    for (const a of [...this.agents.values()]) {
      if (this.opts.identity.isRevoked(a.cert)) {
        this.log.warn({ node: a.node }, 'node key revoked, dropping its connection');
        this.fail(a.conn, 'auth', 'revoked');
        this.dropAgent(a.conn);
        continue;
      }
      this.send(a.conn, T.REVOCATIONS, { body: list.body, sig: list.signature });
    }
  }

  private onOpen(c: Conn, m: ControlMessage<typeof T.OPEN>): void {
    const { req, to } = m;
    const peer = this.agents.get(to);
    if (!peer && this.mesh?.open(c, req, to)) return this.m.streamsTotal.inc({ outcome: 'mesh' }); // on another server
    if (!peer || peer.conn === c) {
      this.m.streamsTotal.inc({ outcome: 'no-peer' });
      return this.send(c, T.OPEN_FAIL, { req, code: 'no-peer' });
    }
    if (c.streams.size >= MAX_STREAMS_PER_AGENT || peer.conn.streams.size >= MAX_STREAMS_PER_AGENT) {
      this.m.streamsTotal.inc({ outcome: 'limit' });
      return this.send(c, T.OPEN_FAIL, { req, code: 'limit' });
    }
    // Per pair, per target, in total, unanswered per opener: the refusal is the opener's; the target hears nothing.
    const leases = this.streamBudgets.admit(c.node, to);
    if (!leases) {
      this.m.streamsTotal.inc({ outcome: 'limit' });
      return this.send(c, T.OPEN_FAIL, { req, code: 'limit' });
    }
    const rid = this.allocRid();
    const st: RelayStream = {
      rid, a: c, b: peer.conn, ab: new FlowWindow(RELAY_WINDOW_BYTES), ba: new FlowWindow(RELAY_WINDOW_BYTES), leases, openedAt: Date.now(),
      get pending() { return leases.pending; },
    };
    this.streams.set(rid, st);
    c.streams.add(rid);
    peer.conn.streams.add(rid);
    this.m.streams.set(this.streams.size);
    this.m.streamsTotal.inc({ outcome: 'ok' });
    this.send(peer.conn, T.INCOMING, { rid, from: c.node });
    this.send(c, T.OPENED, { req, rid });
  }

  /** A relay stream id not in use here (local relay streams and mesh streams share the space). */
  private allocRid(): number {
    for (;;) {
      const rid = this.nextRid;
      this.nextRid = this.nextRid >= 0xfffffff0 ? 1 : this.nextRid + 1;
      if (!this.streams.has(rid)) return rid;
    }
  }

  private onRendezvous(c: Conn, m: ControlMessage<typeof T.RENDEZVOUS>): void {
    const peer = m.to !== undefined ? this.agents.get(m.to) : undefined;
    if (!peer && this.mesh?.rendezvous(c, m)) return void this.m.rendezvous.inc({ outcome: 'mesh' });
    if (!peer || peer.conn === c) {
      this.m.rendezvous.inc({ outcome: 'no-peer' });
      return;
    }
    this.m.rendezvous.inc({ outcome: 'forwarded' });
    // The server passes on both RTTs it measured so the agents can start punching together (as DCUtR does):
    // see startDelayMs in the agent's punch.ts. Only the validated fields travel on, with the sender's name; the offer
    // is signed by the sender's node key (the receiver checks it), so the server can neither forge nor alter it.
    const { sid, reply, mode, cand, nat, streamId, ts, cert, sig } = m;
    this.send(peer.conn, T.RENDEZVOUS, { sid, reply, mode, cand, nat, streamId, ts, cert, sig, from: c.node, rttFromMs: c.rttMs, rttToMs: peer.conn.rttMs });
  }

  /** DATA/CREDIT/END/RESET of a relay stream: checked against the sender's window, then forwarded unchanged. */
  private onStreamFrame(c: Conn, f: Frame): void {
    const sf = decodeStreamFrame(RELAY_STREAM_TYPES, f.type, f.payload);
    if (!sf || (sf.kind === 'data' && sf.bytes.length > MAX_DATA_CHUNK)) {
      this.m.malformed.inc();
      return;
    }
    const st = this.streams.get(sf.id);
    if (!st && this.mesh?.streamFrame(c, f, sf)) return; // a relay stream to an agent of another server
    if (!st || (st.a !== c && st.b !== c)) return; // late frames for a closed stream
    const fromA = st.a === c;
    const to = fromA ? st.b : st.a;
    /** The direction c sends in, and the one it receives (and acknowledges). */
    const sending = fromA ? st.ab : st.ba;
    const receiving = fromA ? st.ba : st.ab;
    switch (sf.kind) {
      case 'data': {
        // A relay client writes in order on one TCP connection: a gap or a repeat is as wrong as exceeding credit.
        const v = sending.data(sf.offset, sf.bytes.length);
        if (!v.ok || v.skip !== 0) {
          this.m.violations.inc();
          this.log.debug({ node: c.node, rid: st.rid, why: v.ok ? 'overlap' : v.why }, 'relay stream violation, resetting stream');
          return this.resetStream(st, true);
        }
        const n = sf.bytes.length;
        if (!fromA) st.leases.answered(); // the target spoke: no longer an unanswered open
        this.m.relayed.inc(n);
        this.write(to, encodeFrame(T.DATA, f.payload));
        this.rateLimit(c, n);
        if (to.sock.writableLength > MAX_SOCKET_BUFFER_BYTES && !c.paused) {
          c.paused = true;
          c.sock.pause();
          c.frames.paused();
        }
        return;
      }
      case 'credit':
        // Credit from a lets b send more, and the other way round; never for bytes that were not sent.
        if (receiving.acknowledge(sf.ack)) this.write(to, encodeFrame(T.CREDIT, f.payload));
        else if (sf.ack > receiving.next) this.m.malformed.inc();
        break;
      case 'end':
        if (!sending.end(sf.fin)) {
          this.m.violations.inc();
          return this.resetStream(st, true);
        }
        this.write(to, encodeFrame(T.END, f.payload));
        break;
      case 'reset':
        return this.resetStream(st, false, c);
    }
    if (finished(st)) this.forget(st);
  }

  private rateLimit(c: Conn, n: number): void {
    const rate = this.opts.rateLimitBytesPerSec ?? 0;
    if (!rate) return;
    const now = Date.now();
    c.tokens = Math.min(rate, c.tokens + ((now - c.lastRefill) / 1000) * rate);
    c.lastRefill = now;
    c.tokens -= n;
    if (c.tokens < 0 && !c.paused) {
      c.paused = true;
      c.sock.pause();
      this.m.limited.inc();
      c.frames.paused();
      setTimeout(() => {
        c.paused = false;
        if (c.controlWait) return;
        c.frames.resumed(Date.now());
        if (!c.sock.destroyed) c.sock.resume();
      }, Math.ceil((-c.tokens / rate) * 1000)).unref();
    }
  }

  /** `to` drained or went away: resume the agents feeding it, unless one still feeds another full socket. */
  private resumeFeeders(to: Conn): void {
    for (const rid of to.streams) {
      const st = this.streams.get(rid);
      const from = st ? (st.a === to ? st.b : st.a) : undefined;
      if (from?.paused && !this.feedsFullSocket(from)) {
        from.paused = false;
        if (from.controlWait) continue;
        from.frames.resumed(Date.now());
        from.sock.resume();
      }
    }
  }

  private feedsFullSocket(from: Conn): boolean {
    for (const rid of from.streams) {
      const st = this.streams.get(rid);
      const to = st ? (st.a === from ? st.b : st.a) : undefined;
      if (to && to.state !== 'closed' && !to.sock.destroyed && to.sock.writableLength > MAX_SOCKET_BUFFER_BYTES) return true;
    }
    return this.mesh?.holds(from) ?? false;
  }

  /** Resets a stream: tells both sides (or only the other side when `from` sent the reset). */
  private resetStream(st: RelayStream, both: boolean, from?: Conn): void {
    const frame = encodeReset(RELAY_STREAM_TYPES, st.rid);
    if (both || from !== st.a) this.write(st.a, frame);
    if (both || from !== st.b) this.write(st.b, frame);
    this.forget(st);
  }

  private forget(st: RelayStream): void {
    st.leases.release();
    this.streams.delete(st.rid);
    st.a.streams.delete(st.rid);
    st.b.streams.delete(st.rid);
    this.m.streams.set(this.streams.size);
  }

  /** The partial-frame budget is full: drops the connection whose frame has waited longest (not `except`). */
  private dropOldestPartial(except: Conn): boolean {
    const victim = oldestPartial(this.conns, except);
    if (!victim) return false;
    this.budgets.evicted(B.frameBytes);
    victim.frames.release(); // its bytes are free now, before its 'close' arrives
    victim.sock.destroy();
    return true;
  }

  /** Deadlines: a frame must complete in time; a relay stream must be answered by its target in time. */
  private sweep(): void {
    const now = Date.now();
    for (const c of partialPast(this.conns, now, this.opts.partialFrameDeadlineMs ?? PARTIAL_FRAME_DEADLINE_MS)) {
      this.budgets.refuse(B.frameDeadline, { node: c.node || undefined, remote: c.sock.remoteAddress, bytes: c.frames.pending });
      c.frames.release();
      c.sock.destroy();
    }
    for (const st of unansweredPast(this.streams.values(), now, this.opts.openAnswerTimeoutMs ?? RELAY_OPEN_ANSWER_TIMEOUT_MS)) {
      this.budgets.refuse(B.openDeadline, { opener: st.a.node, target: st.b.node });
      this.resetStream(st, true);
    }
  }

  private sendPing(c: Conn): void {
    if (c.state === 'closed' || c.sock.destroyed) return;
    this.write(c, this.pings.at(Date.now()));
  }

  private pingAll(): void {
    const now = Date.now();
    for (const c of this.conns) {
      if (c.state !== 'ready') continue;
      if (now - c.lastSeen > IDLE_TIMEOUT_MS) {
        this.log.info({ node: c.node }, 'agent silent too long, dropping');
        c.sock.destroy();
        continue;
      }
      this.sendPing(c);
    }
  }

  /** `c` is going away (its socket destroyed or closed): its streams are reset. */
  private dropAgent(c: Conn): void {
    // Agents paused because this one's socket was full would otherwise stay paused until they time out.
    this.resumeFeeders(c);
    for (const rid of [...c.streams]) {
      const st = this.streams.get(rid);
      if (st) this.resetStream(st, false, c);
    }
    const a = this.agents.get(c.node);
    const gone = !!a && a.conn === c;
    if (gone) {
      this.agents.delete(c.node);
      this.m.agents.set(this.agents.size);
      this.log.info({ node: c.node }, 'agent disconnected');
    }
    this.mesh?.agentDown(c, gone);
  }

  /** Attaches the server mesh (before start). */
  setMesh(mesh: MeshAttachment): void {
    this.mesh = mesh;
  }

  /** What the mesh uses of the relay (mesh/port.ts). */
  meshPort(): RelayPort {
    const conn = (a: AgentEnd) => a as Conn;
    return {
      agent: (node) => this.agents.get(node)?.conn,
      agentNodes: () => [...this.agents.keys()],
      allocRid: () => this.allocRid(),
      admit: (opener, target) => this.streamBudgets.admit(opener, target),
      write: (a, frame) => this.write(conn(a), frame),
      writev: (a, parts) => {
        const c = conn(a);
        if (c.sock.destroyed) return;
        c.sock.cork();
        for (const p of parts.slice(0, -1)) c.sock.write(p);
        this.write(c, parts[parts.length - 1]); // the backlog rule sees the whole frame
        c.sock.uncork();
      },
      incoming: (to, rid, from) => this.send(conn(to), T.INCOMING, { rid, from }),
      opened: (a, req, rid) => this.send(conn(a), T.OPENED, { req, rid }),
      openFailed: (a, req, code) => this.send(conn(a), T.OPEN_FAIL, { req, code }),
      rendezvous: (to, msg) => this.send(conn(to), T.RENDEZVOUS, msg),
      pause: (a) => {
        const c = conn(a);
        if (c.paused || c.state === 'closed') return;
        c.paused = true;
        c.sock.pause();
        c.frames.paused();
      },
      resume: (a) => {
        const c = conn(a);
        if (!c.paused || this.feedsFullSocket(c)) return;
        c.paused = false;
        if (c.controlWait || c.sock.destroyed) return;
        c.frames.resumed(Date.now());
        c.sock.resume();
      },
    };
  }

  private closed(c: Conn): void {
    this.conns.delete(c);
    if (c.state === 'enroll' && c.attempts > 0) this.m.auth.inc({ outcome: 'abandoned' });
    c.state = 'closed';
    if (c.node) this.dropAgent(c);
  }
}
