// One agent -> server connection: TLS 1.3 to the server (its chain checked against the pinned CA before anything is
// sent), enrollment / sign-in inside TLS (AgentIdentity makes the ENROLLs), renewal at half life, reconnect with
// backoff, relay streams, rendezvous messages, revocation lists. Emits 'up', 'down', 'incoming' (relay stream opened by
// a peer: from, key, stream) and 'rendezvous' (a validated Rendezvous). Frames and messages are the server protocol
// (common/tunnel/protocol.ts); relay streams are TunnelStreams over the shared stream frames (common/tunnel/streams.ts).
import { EventEmitter } from 'node:events';
import type { PeerCertificate } from 'node:tls';
import { connect, type TLSSocket } from 'node:tls';
import type { Logger } from '@edgemesh/common/log';
import { backoff } from '@edgemesh/common/backoff';
import { encodeFrame, FrameDecoder, type Frame } from '@edgemesh/common/tunnel/frame';
import { SERVER_TLS_NAME } from '@edgemesh/common/identity/ca';
import type { ChainResult } from '@edgemesh/common/identity/trust';
import {
  CONTROL_TYPES, decodeControl, encodeControl, PROTOCOL_VERSION, RELAY_STREAM_TYPES, RELAY_WINDOW_BYTES, T,
  type ControlInput, type ControlType,
} from '@edgemesh/common/tunnel/protocol';
import { decodeStreamFrame, encodeCredit, encodeData, encodeEnd, encodeReset, isStreamType } from '@edgemesh/common/tunnel/streams';
import { DialError } from '../proxy/dialer.ts';
import type { AgentIdentity } from '../identity/agentidentity.ts';
import type { AgentEnrollMethod } from '../identity/enroll.ts';
import { TunnelStream } from './stream.ts';
import { DrainFollower } from './serverpick.ts';
import { CONNECT_TIMEOUT_MS, OPEN_TIMEOUT_MS, RECONNECT_MAX_MS, RECONNECT_MIN_MS, SERVER_IDLE_MS, SERVER_KEEPALIVE_MS } from './timers.ts';

/** TLS exporter label of the enrollment channel binding (the server's relay.ts uses the same). */
export const ENROLL_EXPORTER_LABEL = 'EXPORTER-edgemesh-enroll';
export const ENROLL_BINDING_BYTES = 32;
/** The same refusal of the server is logged at most this often (a wrong pin would otherwise log every backoff). */
export const REFUSAL_LOG_INTERVAL_MS = 60_000;

export interface RelayOpened { stream: TunnelStream; server: string }

export interface ServerConnOptions {
  host: string;
  port: number;
  identity: AgentIdentity;
  log: Logger;
}

/** The DER chain a TLS peer presented, leaf first (node:tls links it through issuerCertificate). */
export function peerChain(leaf: PeerCertificate & { issuerCertificate?: PeerCertificate }): Buffer[] {
  const out: Buffer[] = [];
  let c: (PeerCertificate & { issuerCertificate?: PeerCertificate }) | undefined = leaf;
  while (c?.raw && out.length < 8) {
    if (out.some((d) => d.equals(c!.raw))) break;
    out.push(c.raw);
    c = c.issuerCertificate as typeof c;
  }
  return out;
}

export class ServerConn extends EventEmitter {
  readonly address: string;
  readonly host: string;
  readonly port: number;
  private readonly opts: ServerConnOptions;
  private readonly id: AgentIdentity;
  private sock: TLSSocket | undefined;
  private state: 'idle' | 'tls' | 'enroll' | 'ready' = 'idle';
  private stopped = false;
  private readonly bo = backoff(RECONNECT_MIN_MS, RECONNECT_MAX_MS);
  private readonly streams = new Map<number, TunnelStream>();
  private readonly opens = new Map<number, { resolve: (v: RelayOpened) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private nextReq = 1;
  private retryTimer: NodeJS.Timeout | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
  private renewTimer: NodeJS.Timeout | undefined;
  private renewFailedAt: number | undefined;
  private lastRefusal = { why: '', at: -Infinity };
  /** DRAIN from the server: when to reconnect, which of the name's IPs to try last (serverpick.ts). */
  private readonly drain = new DrainFollower();
  /** Last error that made the connection fail (for status). */
  lastError: string | null = null;
  stunAltPort = 0;
  /** The STUN integrity key this server told us in WELCOME. */
  stunKey: Buffer | undefined;
  rttMs = 0;

  constructor(opts: ServerConnOptions) {
    super();
    this.opts = opts;
    this.id = opts.identity;
    this.host = opts.host;
    this.port = opts.port;
    this.address = `${opts.host}:${opts.port}`;
  }

  /** The server sent DRAIN: new relay streams go to other servers first (Tunnel.openRelay). */
  get draining(): boolean { return this.drain.draining; }

  get connected(): boolean {
    return this.state === 'ready';
  }

  start(): void {
    this.stopped = false;
    this.dial();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.idleTimer);
    clearTimeout(this.renewTimer);
    this.drain.closed();
    this.sock?.destroy();
  }

  /** Logs a refusal (server chain, enrollment) at most once per REFUSAL_LOG_INTERVAL_MS unless it changed. */
  private refused(why: string): void {
    this.lastError = why;
    const now = performance.now();
    if (why === this.lastRefusal.why && now - this.lastRefusal.at < REFUSAL_LOG_INTERVAL_MS) return;
    this.lastRefusal = { why, at: now };
    this.opts.log.error({ server: this.address, why }, 'cannot sign in to the server');
  }

  private dial(): void {
    if (this.stopped) return;
    // We verify the chain ourselves (the pinned CA, not the system roots) before writing anything.
    const sock = connect({ host: this.opts.host, port: this.opts.port, servername: SERVER_TLS_NAME, minVersion: 'TLSv1.3', rejectUnauthorized: false, ...this.drain.connectOptions(this.opts.host) });
    sock.setNoDelay(true);
    this.sock = sock;
    this.state = 'tls';
    const decoder = new FrameDecoder();
    let chain: ChainResult | undefined;
    let binding: Buffer | undefined;
    let plan: AgentEnrollMethod[] = [];
    const connectTimer = setTimeout(() => {
      this.lastError = 'connect/handshake timeout';
      sock.destroy();
    }, CONNECT_TIMEOUT_MS);
    sock.setKeepAlive(true, SERVER_KEEPALIVE_MS);
    const tryNext = (): void => {
      const method = plan.shift();
      if (!method) {
        this.refused(this.lastError ?? 'no enrollment credential was accepted');
        sock.destroy();
        return;
      }
      const m = this.id.enrollMessage(method, binding!);
      sock.write(encodeFrame(T.ENROLL, encodeControl(T.ENROLL, { v: PROTOCOL_VERSION, ...m })));
    };
    sock.on('secureConnect', () => {
      const r = this.id.checkServer(peerChain(sock.getPeerCertificate(true)));
      if (!r.ok) {
        this.refused(`server certificate refused: ${r.reason}`);
        sock.destroy();
        return;
      }
      chain = r;
      binding = sock.exportKeyingMaterial(ENROLL_BINDING_BYTES, ENROLL_EXPORTER_LABEL, Buffer.alloc(0));
      plan = this.id.plan();
      this.state = 'enroll';
      this.lastError = null;
      tryNext();
    });
    sock.on('data', (chunk: Buffer) => {
      this.touch();
      let frames: Frame[];
      try {
        frames = decoder.push(chunk);
      } catch {
        this.lastError = 'bad frame from server';
        sock.destroy();
        return;
      }
      for (const f of frames) {
        if (sock.destroyed) return;
        if (this.state === 'tls') return void sock.destroy();
        if (this.state === 'enroll') {
          if (f.type === T.ERROR) return this.onError(f.payload, sock);
          if (f.type === T.ENROLL_FAIL) {
            const m = decodeControl(T.ENROLL_FAIL, f.payload);
            this.lastError = `enrollment refused: ${m?.reason ?? '?'}`;
            this.opts.log.debug({ server: this.address, reason: m?.reason }, 'enrollment method refused, trying the next');
            tryNext();
            continue;
          }
          const m = f.type === T.WELCOME ? decodeControl(T.WELCOME, f.payload) : undefined;
          if (!m || !chain?.ok) {
            this.lastError = 'bad WELCOME';
            sock.destroy();
            return;
          }
          const bad = this.id.acceptCert(m.cert, chain);
          if (bad) {
            this.refused(bad);
            sock.destroy();
            return;
          }
          clearTimeout(connectTimer);
          this.stunAltPort = m.stunAltPort;
          this.stunKey = m.stunKey;
          this.state = 'ready';
          this.lastError = null;
          this.renewFailedAt = undefined;
          this.bo.reset();
          this.opts.log.info({ server: this.address }, 'connected to server');
          this.scheduleRenewal();
          this.emit('up');
          continue;
        }
        this.onFrame(f, chain);
      }
    });
    sock.on('error', (e) => {
      this.lastError = e.message;
    });
    sock.on('close', () => {
      clearTimeout(connectTimer);
      clearTimeout(this.idleTimer);
      clearTimeout(this.renewTimer);
      const redialNow = this.drain.closed();
      const wasReady = this.state === 'ready';
      this.state = 'idle';
      this.sock = undefined;
      for (const s of this.streams.values()) s.abort(new Error('server connection lost'));
      this.streams.clear();
      for (const o of this.opens.values()) {
        clearTimeout(o.timer);
        o.reject(new DialError('unreachable', 'server connection lost'));
      }
      this.opens.clear();
      if (wasReady) {
        this.opts.log.warn({ server: this.address }, 'server connection lost');
        this.emit('down');
      }
      if (!this.stopped) {
        const wait = redialNow ? 0 : this.bo.next();
        this.opts.log.debug({ server: this.address, wait, err: this.lastError }, 'reconnecting to server');
        this.retryTimer = setTimeout(() => this.dial(), wait);
        this.retryTimer.unref();
      }
    });
  }

  /** Renews the certificate over this connection at half life (another server may have done it first). */
  private scheduleRenewal(): void {
    clearTimeout(this.renewTimer);
    const { delayMs } = this.id.renewal(this.renewFailedAt);
    this.renewTimer = setTimeout(() => {
      if (this.state !== 'ready' || !this.sock) return;
      const r = this.id.renewal(this.renewFailedAt);
      if (r.action === 'none' && r.delayMs > 0) return this.scheduleRenewal();
      const binding = this.sock.exportKeyingMaterial(ENROLL_BINDING_BYTES, ENROLL_EXPORTER_LABEL, Buffer.alloc(0));
      this.sendControl(T.ENROLL, { v: PROTOCOL_VERSION, ...this.id.enrollMessage('renew', binding) });
      // Answered by CERT or ENROLL_FAIL; without an answer, look again after the retry interval.
      this.renewFailedAt = Date.now();
      this.scheduleRenewal();
    }, Math.min(delayMs, 2 ** 31 - 1));
    this.renewTimer.unref();
  }

  private touch(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      this.lastError = 'server silent';
      this.sock?.destroy();
    }, SERVER_IDLE_MS);
    this.idleTimer.unref();
  }

  /** `body`: the ERROR's JSON. */
  private onError(body: Buffer, sock: TLSSocket): void {
    const m = decodeControl(T.ERROR, body);
    this.lastError = `server refused: ${m?.code ?? '?'}: ${m?.message ?? ''}`;
    this.opts.log.error({ server: this.address, code: m?.code, reason: m?.message }, 'server refused the agent');
    sock.destroy();
  }

  private sendControl<K extends ControlType>(type: K, body: ControlInput<K>): boolean {
    if (this.state !== 'ready' || !this.sock) return false;
    this.sock.write(encodeFrame(type, encodeControl(type, body)));
    return true;
  }

  private onFrame(f: Frame, chain: ChainResult | undefined): void {
    const p = f.payload;
    if (isStreamType(RELAY_STREAM_TYPES, f.type)) {
      const sf = decodeStreamFrame(RELAY_STREAM_TYPES, f.type, p);
      const s = sf && this.streams.get(sf.id);
      if (!sf || !s) return;
      if (sf.kind === 'data') s.onData(sf.offset, sf.bytes);
      else if (sf.kind === 'credit') s.onCredit(sf.ack);
      else if (sf.kind === 'end') s.onEnd(sf.fin);
      else s.onReset();
      return;
    }
    if (!CONTROL_TYPES.has(f.type)) return;
    const body = p;
    switch (f.type) {
      case T.CERT: {
        const m = decodeControl(T.CERT, body);
        const bad = m && chain?.ok ? this.id.acceptCert(m.cert, chain) : 'bad CERT';
        if (bad) this.opts.log.warn({ server: this.address, why: bad }, 'renewed certificate refused');
        else this.renewFailedAt = undefined;
        this.scheduleRenewal();
        return;
      }
      case T.ENROLL_FAIL: {
        const m = decodeControl(T.ENROLL_FAIL, body);
        this.opts.log.warn({ server: this.address, reason: m?.reason }, 'certificate renewal refused');
        this.renewFailedAt = Date.now();
        this.scheduleRenewal();
        return;
      }
      case T.REVOCATIONS: {
        const m = decodeControl(T.REVOCATIONS, body);
        if (m) this.id.acceptRevocations({ body: m.body, signature: m.sig });
        return;
      }
      case T.PING: {
        const m = decodeControl(T.PING, body);
        if (m) this.sendControl(T.PONG, { t: m.t });
        return;
      }
      case T.ERROR:
        this.onError(body, this.sock!);
        return;
      case T.DRAIN: // reconnect soon (the same address reaches another replica), at once rather than after a backoff
        return this.drain.onDrain(body, this.sock?.remoteAddress ?? '', this.opts.log.child({ server: this.address }), () => { this.lastError = 'server drained'; this.sock?.destroy(); });
      case T.OPENED: {
        const m = decodeControl(T.OPENED, body);
        const o = m && this.opens.get(m.req);
        if (!m || !o) return;
        this.opens.delete(m.req);
        clearTimeout(o.timer);
        o.resolve({ stream: this.makeStream(m.rid), server: this.address });
        return;
      }
      case T.OPEN_FAIL: {
        const m = decodeControl(T.OPEN_FAIL, body);
        const o = m && this.opens.get(m.req);
        if (!m || !o) return;
        this.opens.delete(m.req);
        clearTimeout(o.timer);
        o.reject(new DialError('unreachable', `server ${this.address}: ${m.code}`));
        return;
      }
      case T.INCOMING: {
        const m = decodeControl(T.INCOMING, body);
        if (m) this.emit('incoming', m.from, this.makeStream(m.rid), this.address);
        return;
      }
      case T.RENDEZVOUS: {
        const m = decodeControl(T.RENDEZVOUS, body);
        if (m?.from !== undefined) this.emit('rendezvous', m);
        return;
      }
      default:
        return;
    }
  }

  private makeStream(rid: number): TunnelStream {
    const T_ = RELAY_STREAM_TYPES;
    const write = (b: Buffer) => { this.sock?.write(b); };
    const s = new TunnelStream({
      canSend: () => this.state === 'ready' && !!this.sock,
      data: (off, bytes) => write(encodeData(T_, rid, off, bytes)),
      credit: (ack) => write(encodeCredit(T_, rid, ack)),
      end: (fin) => write(encodeEnd(T_, rid, fin)),
      reset: () => write(encodeReset(T_, rid)),
      closed: () => { if (this.streams.get(rid) === s) this.streams.delete(rid); },
    }, RELAY_WINDOW_BYTES);
    this.streams.set(rid, s);
    return s;
  }

  /** Opens a relay stream to `node` (the peer proves who it is in the link handshake, not the server). */
  openRelay(node: string): Promise<RelayOpened> {
    const req = this.nextReq++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.opens.delete(req);
        reject(new DialError('timeout', `server ${this.address}: no answer to OPEN`));
      }, OPEN_TIMEOUT_MS);
      this.opens.set(req, { resolve, reject, timer });
      if (!this.sendControl(T.OPEN, { req, to: node })) {
        clearTimeout(timer);
        this.opens.delete(req);
        reject(new DialError('unreachable', `server ${this.address} not connected`));
      }
    });
  }

  /** Sends the fleet report (JSON, already within MAX_REPORT_BYTES; fleet/reporter.ts decides when). */
  sendReport(json: Buffer): boolean {
    if (this.state !== 'ready' || !this.sock) return false;
    this.sock.write(encodeFrame(T.REPORT, json));
    return true;
  }

  rendezvous(body: ControlInput<typeof T.RENDEZVOUS>): boolean {
    return this.sendControl(T.RENDEZVOUS, body);
  }
}
