// One agent -> server connection: mutual authentication, reconnect with backoff, relay streams, rendezvous
// messages. Emits 'up', 'down', 'incoming' (relay stream opened by a peer: from, key, stream) and 'rendezvous'
// (a validated Rendezvous). Frames and messages are the server protocol (common/tunnel/protocol.ts); relay streams
// are TunnelStreams over the shared stream frames (common/tunnel/streams.ts).
import { EventEmitter } from 'node:events';
import { connect, type Socket } from 'node:net';
import type { Logger } from '@edgemesh/common/log';
import { backoff } from '@edgemesh/common/backoff';
import { encodeFrame, FrameDecoder, type Frame } from '@edgemesh/common/tunnel/frame';
import { agentProof, ControlMac, keyTranscript, newNonce, safeEqual, serverProof, sessionKey } from '@edgemesh/common/tunnel/auth';
import { signRaw, type RawKeyPair } from '@edgemesh/common/tunnel/ed25519';
import {
  CONTROL_TYPES, decodeControl, encodeControl, PROTOCOL_VERSION, RELAY_STREAM_TYPES, RELAY_WINDOW_BYTES, T,
  type ControlInput, type ControlType,
} from '@edgemesh/common/tunnel/protocol';
import { decodeStreamFrame, encodeCredit, encodeData, encodeEnd, encodeReset, isStreamType } from '@edgemesh/common/tunnel/streams';
import { DialError } from '../proxy/dialer.ts';
import { TunnelStream } from './stream.ts';
import { CONNECT_TIMEOUT_MS, OPEN_TIMEOUT_MS, RECONNECT_MAX_MS, RECONNECT_MIN_MS, SERVER_IDLE_MS, SERVER_KEEPALIVE_MS } from './timers.ts';

export interface RelayOpened { key: Buffer; stream: TunnelStream; server: string }

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
  private readonly streams = new Map<number, TunnelStream>();
  private readonly opens = new Map<number, { resolve: (v: RelayOpened) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
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
    sock.setKeepAlive(true, SERVER_KEEPALIVE_MS);
    sock.on('connect', () => {
      sock.write(encodeFrame(T.HELLO, encodeControl(T.HELLO, { v: PROTOCOL_VERSION, nonce: agentNonce })));
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
          const m = f.type === T.CHALLENGE ? decodeControl(T.CHALLENGE, f.payload) : undefined;
          if (!m || !safeEqual(m.proof, serverProof(this.opts.token, agentNonce, m.nonce))) {
            this.lastError = 'server failed to prove it holds the cluster token';
            this.opts.log.error({ server: this.address }, 'server failed authentication (wrong token on either side?)');
            sock.destroy();
            return;
          }
          const key = this.opts.keyPair.publicKey;
          const nonce = m.nonce;
          sock.write(encodeFrame(T.AUTH, encodeControl(T.AUTH, {
            node: this.opts.node,
            key,
            proof: agentProof(this.opts.token, agentNonce, nonce, this.opts.node, key),
            sig: signRaw(this.opts.keyPair.secretKey, keyTranscript(agentNonce, nonce, this.opts.node)),
          })));
          this.mac = new ControlMac(sessionKey(this.opts.token, agentNonce, nonce), 'agent');
          this.state = 'auth';
          continue;
        }
        if (this.state === 'auth') {
          if (f.type === T.ERROR) return this.onError(f.payload, sock);
          const body = f.type === T.WELCOME ? this.mac!.open(f.type, f.payload) : undefined;
          const m = body ? decodeControl(T.WELCOME, body) : undefined;
          if (!m) {
            this.lastError = 'bad WELCOME';
            sock.destroy();
            return;
          }
          clearTimeout(connectTimer);
          this.stunAltPort = m.stunAltPort;
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
    const m = decodeControl(T.ERROR, body);
    this.lastError = `server refused: ${m?.code ?? '?'}: ${m?.message ?? ''}`;
    this.opts.log.error({ server: this.address, code: m?.code, reason: m?.message }, 'server refused the agent');
    sock.destroy();
  }

  private sendControl<K extends ControlType>(type: K, body: ControlInput<K>): boolean {
    if (this.state !== 'ready' || !this.sock || !this.mac) return false;
    this.sock.write(encodeFrame(type, this.mac.seal(type, encodeControl(type, body))));
    return true;
  }

  private onFrame(f: Frame): void {
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
    const body = this.mac!.open(f.type, p);
    if (!body) {
      this.opts.log.warn({ server: this.address }, 'control message with a bad MAC from server, reconnecting');
      this.sock?.destroy();
      return;
    }
    switch (f.type) {
      case T.PING: {
        const m = decodeControl(T.PING, body);
        if (m) this.sendControl(T.PONG, { t: m.t });
        return;
      }
      case T.ERROR:
        this.onError(body, this.sock!);
        return;
      case T.OPENED: {
        const m = decodeControl(T.OPENED, body);
        const o = m && this.opens.get(m.req);
        if (!m || !o) return;
        this.opens.delete(m.req);
        clearTimeout(o.timer);
        o.resolve({ key: m.key, stream: this.makeStream(m.rid), server: this.address });
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
        if (m) this.emit('incoming', m.from, m.key, this.makeStream(m.rid), this.address);
        return;
      }
      case T.RENDEZVOUS: {
        const m = decodeControl(T.RENDEZVOUS, body);
        if (m?.from !== undefined && m.key !== undefined) this.emit('rendezvous', m);
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

  /** Opens a relay stream to `node` (the server answers with the node's vouched key). */
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
    if (this.state !== 'ready' || !this.sock || !this.mac) return false;
    this.sock.write(encodeFrame(T.REPORT, this.mac.seal(T.REPORT, json)));
    return true;
  }

  rendezvous(body: ControlInput<typeof T.RENDEZVOUS>): boolean {
    return this.sendControl(T.RENDEZVOUS, body);
  }
}
