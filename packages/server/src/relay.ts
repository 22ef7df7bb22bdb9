// The relay/rendezvous server core: TCP listener, mutual authentication, node registry, relay streams with
// per-stream credit (enforced here too), optional per-agent byte rate limit, rendezvous forwarding.
import { createServer, type Server, type Socket } from 'node:net';
import type { Registry } from 'prom-client';
import { Counter, Gauge } from 'prom-client';
import type { Logger } from '@edgemesh/common/log';
import { encodeFrame, FrameDecoder, FrameError, MAX_FRAME_BYTES, type Frame } from '@edgemesh/common/tunnel/frame';
import { agentProof, ControlMac, keyTranscript, newNonce, safeEqual, serverProof, sessionKey } from '@edgemesh/common/tunnel/auth';
import { verifyRaw } from '@edgemesh/common/tunnel/ed25519';
import {
  CONTROL_TYPES, decodeControl, encodeControl, MAX_DATA_CHUNK, NODE_NAME_RE, PROTOCOL_VERSION, RELAY_STREAM_TYPES, RELAY_WINDOW_BYTES, T,
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

/** An agent must finish the handshake within this time. */
export const AUTH_TIMEOUT_MS = 10_000;
/** Server pings every agent this often; an agent silent for IDLE_TIMEOUT_MS is dropped. */
export const PING_INTERVAL_MS = 10_000;
export const IDLE_TIMEOUT_MS = 35_000;
/** When an agent's outgoing socket buffer exceeds this, the sender feeding it is paused (credit violations only). */
export const MAX_SOCKET_BUFFER_BYTES = 16 * 1024 * 1024;
export const MAX_STREAMS_PER_AGENT = 4096;
/** Until an agent has authenticated, no frame may be bigger than this (HELLO and AUTH are a few hundred bytes): an
 *  unauthenticated client cannot make us hold a MAX_FRAME_BYTES frame for AUTH_TIMEOUT_MS. */
export const MAX_HANDSHAKE_FRAME_BYTES = 4096;
/** An agent that lets this much pile up in its socket buffer is not reading (relay DATA to it is already paused
 *  at MAX_SOCKET_BUFFER_BYTES; the rest are small frames it provokes or its peers send): it is dropped. */
export const MAX_AGENT_BACKLOG_BYTES = 4 * MAX_SOCKET_BUFFER_BYTES;

export interface RelayServerOptions {
  host: string;
  port: number;
  token: string;
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
  readonly sock: Socket;
  readonly decoder = new FrameDecoder(MAX_HANDSHAKE_FRAME_BYTES);
  state: 'hello' | 'auth' | 'ready' | 'closed' = 'hello';
  agentNonce = Buffer.alloc(0);
  serverNonce = newNonce();
  mac: ControlMac | undefined;
  node = '';
  key = Buffer.alloc(0);
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

  constructor(sock: Socket, frameBytes: Budget) {
    this.sock = sock;
    this.frames = new PartialFrameAccount(frameBytes);
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
  private sweepTimer: NodeJS.Timeout | undefined;
  readonly budgets: Budgets;
  readonly limits: ServerLimits;
  private readonly streamBudgets: RelayStreamBudgets;
  private readonly unauth: ConnLimiter;
  private readonly frameBytes: Budget;
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
    this.server = createServer({ noDelay: true }, (s) => this.accept(s));
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
    if (this.pingTimer) clearInterval(this.pingTimer);
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    for (const c of this.conns) c.sock.destroy();
    const s = this.server;
    this.server = undefined;
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }

  status(): unknown {
    return {
      agents: [...this.agents.values()].map((a) => ({ node: a.node, key: a.key.toString('hex').slice(0, 16), remote: a.remote, since: new Date(a.since).toISOString(), streams: a.conn.streams.size, rttMs: a.conn.rttMs })),
      relayStreams: this.streams.size,
      unauthenticated: this.unauth.size,
      partialFrameBytes: this.frameBytes.used,
      limits: this.limits,
    };
  }

  private accept(sock: Socket): void {
    // Accept-side budget: unauthenticated connections per source and in total (the oldest idle one makes room).
    const slot = this.unauth.open(sourceKey(sock.remoteAddress ?? ''), () => sock.destroy());
    if (!slot) {
      sock.on('error', () => {});
      sock.destroy();
      return;
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
    const json = encodeControl(type, body);
    this.write(c, encodeFrame(type, c.mac && CONTROL_TYPES.has(type) ? c.mac.seal(type, json) : json));
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
    if (c.state === 'hello') {
      const m = f.type === T.HELLO ? decodeControl(T.HELLO, f.payload) : undefined;
      if (!m || m.v !== PROTOCOL_VERSION) {
        this.m.malformed.inc();
        this.m.auth.inc({ outcome: 'bad-hello' });
        return this.fail(c, 'protocol', `expected HELLO v${PROTOCOL_VERSION}`);
      }
      c.agentNonce = m.nonce;
      c.state = 'auth';
      this.send(c, T.CHALLENGE, { nonce: c.serverNonce, proof: serverProof(this.opts.token, c.agentNonce, c.serverNonce) });
      return;
    }
    if (c.state === 'auth') {
      const m = f.type === T.AUTH ? decodeControl(T.AUTH, f.payload) : undefined;
      if (!m) {
        this.m.malformed.inc();
        this.m.auth.inc({ outcome: 'bad-auth' });
        return this.fail(c, 'protocol', 'expected AUTH');
      }
      return this.onAuth(c, m);
    }
    if (c.state !== 'ready') return;
    if (isStreamType(RELAY_STREAM_TYPES, f.type)) return this.onStreamFrame(c, f);
    if (!CONTROL_TYPES.has(f.type)) {
      this.m.malformed.inc();
      return;
    }
    const body = c.mac!.open(f.type, f.payload);
    if (!body) {
      this.m.malformed.inc();
      this.log.warn({ node: c.node }, 'control message with a bad MAC, dropping connection');
      return this.fail(c, 'protocol', 'bad MAC');
    }
    switch (f.type) {
      case T.PING: {
        const m = decodeControl(T.PING, body);
        return m ? this.send(c, T.PONG, { t: m.t }) : void this.m.malformed.inc();
      }
      case T.PONG: {
        const m = decodeControl(T.PONG, body);
        if (m) c.rttMs = Math.max(0, Date.now() - m.t);
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

  private onAuth(c: Conn, m: ControlMessage<typeof T.AUTH>): void {
    const { node, key, proof, sig } = m;
    if (!NODE_NAME_RE.test(node)) {
      this.m.auth.inc({ outcome: 'bad-auth' });
      return this.fail(c, 'protocol', 'bad node name or key');
    }
    if (!safeEqual(proof, agentProof(this.opts.token, c.agentNonce, c.serverNonce, node, key))) {
      this.m.auth.inc({ outcome: 'bad-token' });
      this.log.warn({ node, remote: c.sock.remoteAddress }, 'agent failed authentication (wrong cluster token)');
      return this.fail(c, 'auth', 'authentication failed');
    }
    if (!verifyRaw(key, keyTranscript(c.agentNonce, c.serverNonce, node), sig)) {
      this.m.auth.inc({ outcome: 'bad-key-proof' });
      this.log.warn({ node, remote: c.sock.remoteAddress }, 'agent failed to prove its static key');
      return this.fail(c, 'auth', 'key proof failed');
    }
    const existing = this.agents.get(node);
    if (existing && !existing.key.equals(key)) {
      this.m.auth.inc({ outcome: 'name-taken' });
      this.log.warn({ node, remote: c.sock.remoteAddress, holder: existing.remote }, 'refused a second agent claiming a connected node name with another key');
      return this.fail(c, 'name-taken', `node ${node} is connected with another key`);
    }
    if (existing) {
      this.log.info({ node }, 'agent reconnected, replacing its previous connection');
      existing.conn.sock.destroy();
      this.dropAgent(existing.conn);
    }
    c.node = node;
    c.key = key;
    c.mac = new ControlMac(sessionKey(this.opts.token, c.agentNonce, c.serverNonce), 'server');
    c.state = 'ready';
    c.decoder.max = MAX_FRAME_BYTES;
    c.slot?.close(); // authenticated: no longer counts against the unauthenticated budget
    c.slot = undefined;
    c.tokens = this.opts.rateLimitBytesPerSec ?? 0;
    this.agents.set(node, { node, key, conn: c, since: Date.now(), remote: `${c.sock.remoteAddress}:${c.sock.remotePort}` });
    this.m.agents.set(this.agents.size);
    this.m.auth.inc({ outcome: 'ok' });
    this.log.info({ node, remote: c.sock.remoteAddress }, 'agent registered');
    this.send(c, T.WELCOME, { stunAltPort: this.opts.stunAltPort?.() ?? 0, observed: { host: c.sock.remoteAddress ?? '', port: c.sock.remotePort } });
    this.sendPing(c);
  }

  private onOpen(c: Conn, m: ControlMessage<typeof T.OPEN>): void {
    const { req, to } = m;
    const peer = this.agents.get(to);
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
    const rid = this.nextRid;
    this.nextRid = this.nextRid >= 0xfffffff0 ? 1 : this.nextRid + 1;
    const st: RelayStream = {
      rid, a: c, b: peer.conn, ab: new FlowWindow(RELAY_WINDOW_BYTES), ba: new FlowWindow(RELAY_WINDOW_BYTES), leases, openedAt: Date.now(),
      get pending() { return leases.pending; },
    };
    this.streams.set(rid, st);
    c.streams.add(rid);
    peer.conn.streams.add(rid);
    this.m.streams.set(this.streams.size);
    this.m.streamsTotal.inc({ outcome: 'ok' });
    this.send(peer.conn, T.INCOMING, { rid, from: c.node, key: c.key });
    this.send(c, T.OPENED, { req, rid, key: peer.key });
  }

  private onRendezvous(c: Conn, m: ControlMessage<typeof T.RENDEZVOUS>): void {
    const peer = m.to !== undefined ? this.agents.get(m.to) : undefined;
    if (!peer || peer.conn === c) {
      this.m.rendezvous.inc({ outcome: 'no-peer' });
      return;
    }
    this.m.rendezvous.inc({ outcome: 'forwarded' });
    // The server passes on both RTTs it measured so the agents can start punching together (as DCUtR does):
    // see startDelayMs in the agent's punch.ts. Only the validated fields travel on, with the sender's identity.
    const { sid, reply, mode, cand, nat, streamId } = m;
    this.send(peer.conn, T.RENDEZVOUS, { sid, reply, mode, cand, nat, streamId, from: c.node, key: c.key, rttFromMs: c.rttMs, rttToMs: peer.conn.rttMs });
  }

  /** DATA/CREDIT/END/RESET of a relay stream: checked against the sender's window, then forwarded unchanged. */
  private onStreamFrame(c: Conn, f: Frame): void {
    const sf = decodeStreamFrame(RELAY_STREAM_TYPES, f.type, f.payload);
    if (!sf || (sf.kind === 'data' && sf.bytes.length > MAX_DATA_CHUNK)) {
      this.m.malformed.inc();
      return;
    }
    const st = this.streams.get(sf.id);
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
    return false;
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
    this.send(c, T.PING, { t: Date.now() });
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
    if (a && a.conn === c) {
      this.agents.delete(c.node);
      this.m.agents.set(this.agents.size);
      this.log.info({ node: c.node }, 'agent disconnected');
    }
  }

  private closed(c: Conn): void {
    this.conns.delete(c);
    // The agent hung up after our challenge: usually it found our proof wrong (different tokens).
    if (c.state === 'auth') this.m.auth.inc({ outcome: 'abandoned' });
    c.state = 'closed';
    if (c.node) this.dropAgent(c);
  }
}
