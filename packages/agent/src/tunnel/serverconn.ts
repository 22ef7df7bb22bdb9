// One agent -> server connection: mutual authentication, reconnect with backoff, relay streams, rendezvous
// messages. Emits 'incoming' (relay stream opened by a peer) and 'rendezvous'.
import { EventEmitter } from 'node:events';
import { connect, type Socket } from 'node:net';
import type { Logger } from '@edgemesh/common/log';
import { backoff } from '@edgemesh/common/backoff';
import { encodeFrame, FrameDecoder, type Frame } from '@edgemesh/common/tunnel/frame';
import { agentProof, ControlMac, keyTranscript, newNonce, PROTOCOL_VERSION, safeEqual, serverProof, sessionKey } from '@edgemesh/common/tunnel/auth';
import { signRaw, type RawKeyPair } from '@edgemesh/common/tunnel/ed25519';
import { CONTROL_TYPES, parseJson, RELAY_WINDOW_BYTES, T } from '@edgemesh/common/tunnel/protocol';
import { DialError } from '../proxy/dialer.ts';
import { CreditStream, framedIO } from './credit.ts';

export const RECONNECT_MIN_MS = 500;
export const RECONNECT_MAX_MS = 30_000;
export const CONNECT_TIMEOUT_MS = 10_000;
/** Server silent this long (it pings every 10 s) = connection dead. */
export const SERVER_IDLE_MS = 35_000;
export const OPEN_TIMEOUT_MS = 10_000;

export interface ServerConnOptions {
  host: string;
  port: number;
  node: string;
  token: string;
  keyPair: RawKeyPair;
  log: Logger;
}

export class ServerConn extends EventEmitter {
  readonly address: string;
  readonly host: string;
  readonly port: number;
  private readonly opts: ServerConnOptions;
  private sock: Socket | undefined;
  private mac: ControlMac | undefined;
  private state: 'idle' | 'hello' | 'auth' | 'ready' = 'idle';
  private stopped = false;
  private readonly bo = backoff(RECONNECT_MIN_MS, RECONNECT_MAX_MS);
  private readonly streams = new Map<number, CreditStream>();
  private readonly opens = new Map<number, { resolve: (v: { rid: number; key: Buffer; stream: CreditStream }) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private nextReq = 1;
  private retryTimer: NodeJS.Timeout | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
  /** Last error that made the connection fail (for status). */
  lastError: string | null = null;
  stunAltPort = 0;
  rttMs = 0;

  constructor(opts: ServerConnOptions) {
    super();
    this.opts = opts;
    this.host = opts.host;
    this.port = opts.port;
    this.address = `${opts.host}:${opts.port}`;
  }

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
    this.sock?.destroy();
  }

  private dial(): void {
    if (this.stopped) return;
    const agentNonce = newNonce();
    const sock = connect({ host: this.opts.host, port: this.opts.port, noDelay: true });
    this.sock = sock;
    this.state = 'hello';
    this.mac = undefined;
    const decoder = new FrameDecoder();
    const connectTimer = setTimeout(() => {
      this.lastError = 'connect/handshake timeout';
      sock.destroy();
    }, CONNECT_TIMEOUT_MS);
    sock.setKeepAlive(true, 15_000);
    sock.on('connect', () => {
      sock.write(encodeFrame(T.HELLO, Buffer.from(JSON.stringify({ v: PROTOCOL_VERSION, nonce: agentNonce.toString('base64') }))));
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
        if (this.state === 'hello') {
          if (f.type === T.ERROR) return this.onError(f.payload, sock);
          const m = f.type === T.CHALLENGE ? parseJson(f.payload) : undefined;
          const nonce = typeof m?.nonce === 'string' ? Buffer.from(m.nonce, 'base64') : Buffer.alloc(0);
          const proof = typeof m?.proof === 'string' ? Buffer.from(m.proof, 'base64') : Buffer.alloc(0);
          if (!m || nonce.length !== 32 || !safeEqual(proof, serverProof(this.opts.token, agentNonce, nonce))) {
            this.lastError = 'server failed to prove it holds the cluster token';
            this.opts.log.error({ server: this.address }, 'server failed authentication (wrong token on either side?)');
            sock.destroy();
            return;
          }
          const key = this.opts.keyPair.publicKey;
          sock.write(encodeFrame(T.AUTH, Buffer.from(JSON.stringify({
            node: this.opts.node,
            key: key.toString('base64'),
            proof: agentProof(this.opts.token, agentNonce, nonce, this.opts.node, key).toString('base64'),
            sig: signRaw(this.opts.keyPair.secretKey, keyTranscript(agentNonce, nonce, this.opts.node)).toString('base64'),
          }))));
          this.mac = new ControlMac(sessionKey(this.opts.token, agentNonce, nonce), 'agent');
          this.state = 'auth';
          continue;
        }
        if (this.state === 'auth') {
          if (f.type === T.ERROR) return this.onError(f.payload, sock);
          const body = f.type === T.WELCOME ? this.mac!.open(f.type, f.payload) : undefined;
          const m = body ? parseJson(body) : undefined;
          if (!m) {
            this.lastError = 'bad WELCOME';
            sock.destroy();
            return;
          }
          clearTimeout(connectTimer);
          this.stunAltPort = typeof m.stunAltPort === 'number' ? m.stunAltPort : 0;
          this.state = 'ready';
          this.lastError = null;
          this.bo.reset();
          this.opts.log.info({ server: this.address }, 'connected to server');
          this.emit('up');
          continue;
        }
        this.onFrame(f);
      }
    });
    sock.on('error', (e) => {
      this.lastError = e.message;
    });
    sock.on('close', () => {
      clearTimeout(connectTimer);
      clearTimeout(this.idleTimer);
      const wasReady = this.state === 'ready';
      this.state = 'idle';
      this.sock = undefined;
      for (const s of this.streams.values()) s.destroy(s.listenerCount('error') > 0 ? new Error('server connection lost') : undefined);
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
        const wait = this.bo.next();
        this.opts.log.debug({ server: this.address, wait, err: this.lastError }, 'reconnecting to server');
        this.retryTimer = setTimeout(() => this.dial(), wait);
        this.retryTimer.unref();
      }
    });
  }

  private touch(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      this.lastError = 'server silent';
      this.sock?.destroy();
    }, SERVER_IDLE_MS);
    this.idleTimer.unref();
  }

  /** `body`: the ERROR's JSON (sent in the clear during the handshake, MAC'd and already checked after it). */
  private onError(body: Buffer, sock: Socket): void {
    const m = parseJson(body);
    this.lastError = `server refused: ${String(m?.code ?? '?')}: ${String(m?.message ?? '')}`;
    this.opts.log.error({ server: this.address, code: m?.code, reason: m?.message }, 'server refused the agent');
    sock.destroy();
  }

  private sendControl(type: number, body: Record<string, unknown>): boolean {
    if (this.state !== 'ready' || !this.sock || !this.mac) return false;
    this.sock.write(encodeFrame(type, this.mac.seal(type, Buffer.from(JSON.stringify(body)))));
    return true;
  }

  private onFrame(f: Frame): void {
    const p = f.payload;
    if (f.type === T.DATA || f.type === T.CREDIT || f.type === T.END || f.type === T.RESET) {
      if (p.length < 4) return;
      const s = this.streams.get(p.readUInt32BE(0));
      if (!s) return;
      if (f.type === T.DATA) s.onData(Buffer.from(p.subarray(4)));
      else if (f.type === T.CREDIT && p.length === 8) s.onCredit(p.readUInt32BE(4));
      else if (f.type === T.END) s.onEnd();
      else if (f.type === T.RESET) s.onReset();
      return;
    }
    if (!CONTROL_TYPES.has(f.type)) return;
    const body = this.mac!.open(f.type, p);
    if (!body) {
      this.opts.log.warn({ server: this.address }, 'control message with a bad MAC from server, reconnecting');
      this.sock?.destroy();
      return;
    }
    const m = parseJson(body);
    if (!m) return;
    switch (f.type) {
      case T.PING:
        this.sendControl(T.PONG, { t: m.t });
        return;
      case T.ERROR:
        this.onError(body, this.sock!);
        return;
      case T.OPENED: {
        const o = typeof m.req === 'number' ? this.opens.get(m.req) : undefined;
        if (!o || typeof m.rid !== 'number' || typeof m.key !== 'string') return;
        this.opens.delete(m.req as number);
        clearTimeout(o.timer);
        o.resolve({ rid: m.rid, key: Buffer.from(m.key, 'base64'), stream: this.makeStream(m.rid) });
        return;
      }
      case T.OPEN_FAIL: {
        const o = typeof m.req === 'number' ? this.opens.get(m.req) : undefined;
        if (!o) return;
        this.opens.delete(m.req as number);
        clearTimeout(o.timer);
        o.reject(new DialError('unreachable', `server ${this.address}: ${String(m.code)}`));
        return;
      }
      case T.INCOMING: {
        if (typeof m.rid !== 'number' || typeof m.from !== 'string' || typeof m.key !== 'string') return;
        const key = Buffer.from(m.key, 'base64');
        if (key.length !== 32) return;
        this.emit('incoming', m.from, key, this.makeStream(m.rid));
        return;
      }
      case T.RENDEZVOUS:
        if (typeof m.from === 'string' && typeof m.key === 'string') this.emit('rendezvous', m);
        return;
      default:
        return;
    }
  }

  private makeStream(rid: number): CreditStream {
    const s = new CreditStream(framedIO((b) => this.sock?.write(b), T, rid, () => this.streams.delete(rid)), RELAY_WINDOW_BYTES);
    this.streams.set(rid, s);
    return s;
  }

  /** Opens a relay stream to `node` (the server answers with the node's vouched key). */
  openRelay(node: string): Promise<{ rid: number; key: Buffer; stream: CreditStream }> {
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
    if (this.state !== 'ready' || !this.sock || !this.mac) return false;
    this.sock.write(encodeFrame(T.REPORT, this.mac.seal(T.REPORT, json)));
    return true;
  }

  rendezvous(body: Record<string, unknown>): boolean {
    return this.sendControl(T.RENDEZVOUS, body);
  }
}
