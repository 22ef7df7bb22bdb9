// Stream multiplexer running inside one Noise link between two agents (over the relay or a direct UDX stream).
// Frames as frame.ts; each stream opens with a header answered OK or an error code; then credit-flow-controlled
// bytes. Ping/pong measure the link RTT.
import { encodeFrame, encodeStreamFrame, FrameDecoder } from '@edgemesh/common/tunnel/frame';
import { parseJson } from '@edgemesh/common/tunnel/protocol';
import { DialError, type DialErrorCode } from '../proxy/dialer.ts';
import { CreditStream, framedIO } from './credit.ts';

export const M = { OPEN: 1, OK: 2, ERR: 3, DATA: 4, CREDIT: 5, END: 6, RESET: 7, PING: 8, PONG: 9 } as const;
/** How many streams one link carries at once. */
export const MAX_STREAMS_PER_LINK = 8192;

export interface StreamHeader { protocol: 'tcp' | 'udp'; serviceKey: string; ip: string; port: number }

export function parseHeader(b: Buffer): StreamHeader | undefined {
  const m = parseJson(b);
  if (!m) return undefined;
  const { protocol, serviceKey, ip, port } = m;
  if ((protocol !== 'tcp' && protocol !== 'udp') || typeof serviceKey !== 'string' || typeof ip !== 'string') return undefined;
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) return undefined;
  return { protocol, serviceKey, ip, port };
}

export type IncomingHandler = (h: StreamHeader, accept: () => CreditStream, reject: (code: DialErrorCode, message: string) => void) => void;

export class Mux {
  private readonly sendRaw: (b: Buffer) => void;
  private readonly decoder = new FrameDecoder();
  private readonly streams = new Map<number, CreditStream>();
  private readonly opening = new Map<number, { resolve: (s: CreditStream) => void; reject: (e: Error) => void; stream: CreditStream }>();
  /** Ids of streams the peer opened that we have not answered yet (the local dial is under way). */
  private readonly answering = new Set<number>();
  private nextId: number;
  private closedFlag = false;
  onIncoming: IncomingHandler = (_h, _a, reject) => reject('refused', 'no handler');
  onPong: (rttMs: number) => void = () => {};
  onProtocolError: (why: string) => void = () => {};

  constructor(sendRaw: (b: Buffer) => void, initiator: boolean) {
    this.sendRaw = sendRaw;
    this.nextId = initiator ? 1 : 2;
  }

  get size(): number {
    return this.streams.size;
  }

  private makeStream(id: number): CreditStream {
    const s = new CreditStream(framedIO(this.sendRaw, M, id, () => this.streams.delete(id)));
    this.streams.set(id, s);
    // Accepted after the link died (the local dial was slow): nothing will ever close it, so close it now and let
    // whoever holds the stream release its socket.
    if (this.closedFlag) s.destroy();
    return s;
  }

  open(h: StreamHeader): Promise<CreditStream> {
    if (this.closedFlag) return Promise.reject(new DialError('unreachable', 'link closed'));
    if (this.streams.size >= MAX_STREAMS_PER_LINK) return Promise.reject(new DialError('unreachable', 'too many streams on link'));
    const id = this.nextId;
    this.nextId += 2;
    if (this.nextId > 0xfffffff0) this.nextId -= 0xfffffff0 - 2;
    const stream = this.makeStream(id);
    return new Promise((resolve, reject) => {
      this.opening.set(id, { resolve, reject, stream });
      this.sendRaw(encodeStreamFrame(M.OPEN, id, Buffer.from(JSON.stringify(h))));
    });
  }

  /** Abandons a pending open (timeout or abort): resets the stream. */
  cancel(s: CreditStream): void {
    for (const [id, o] of this.opening) {
      if (o.stream === s) {
        this.opening.delete(id);
        s.destroy();
      }
    }
  }

  ping(): void {
    const b = Buffer.allocUnsafe(8);
    b.writeDoubleBE(performance.now());
    this.sendRaw(encodeFrame(M.PING, b));
  }

  push(chunk: Buffer): void {
    let frames;
    try {
      frames = this.decoder.push(chunk);
    } catch (e) {
      this.onProtocolError((e as Error).message);
      return;
    }
    for (const f of frames) this.onFrame(f.type, f.payload);
  }

  private onFrame(type: number, p: Buffer): void {
    if (type === M.PING && p.length === 8) return this.sendRaw(encodeFrame(M.PONG, p));
    if (type === M.PONG && p.length === 8) return this.onPong(performance.now() - p.readDoubleBE(0));
    if (p.length < 4) return this.onProtocolError('short frame');
    const id = p.readUInt32BE(0);
    const body = p.subarray(4);
    switch (type) {
      case M.OPEN: {
        if (this.streams.has(id) || this.answering.has(id) || (id & 1) === (this.nextId & 1)) return this.onProtocolError('bad stream id');
        const h = parseHeader(body);
        if (!h) return this.sendErr(id, 'forbidden', 'bad header');
        // The peer's streams count against the same limit as ours, also while their local dial is under way.
        if (this.streams.size + this.answering.size >= MAX_STREAMS_PER_LINK) return this.sendErr(id, 'refused', 'too many streams on link');
        this.answering.add(id);
        this.onIncoming(
          h,
          () => {
            this.answering.delete(id);
            const s = this.makeStream(id);
            this.sendRaw(encodeStreamFrame(M.OK, id));
            return s;
          },
          (code, message) => {
            if (!this.answering.delete(id)) return;
            this.sendErr(id, code, message);
          },
        );
        return;
      }
      case M.OK: {
        const o = this.opening.get(id);
        if (!o) return;
        this.opening.delete(id);
        o.resolve(o.stream);
        return;
      }
      case M.ERR: {
        const o = this.opening.get(id);
        if (!o) return;
        this.opening.delete(id);
        this.streams.delete(id);
        const m = parseJson(body);
        const code = (['refused', 'timeout', 'unreachable', 'forbidden', 'no-route'] as const).find((c) => c === m?.code) ?? 'refused';
        o.reject(new DialError(code, `remote agent: ${typeof m?.message === 'string' ? m.message : code}`));
        return;
      }
      case M.DATA:
        this.streams.get(id)?.onData(Buffer.from(body));
        return;
      case M.CREDIT:
        if (body.length === 4) this.streams.get(id)?.onCredit(body.readUInt32BE(0));
        return;
      case M.END:
        this.streams.get(id)?.onEnd();
        return;
      case M.RESET: {
        const o = this.opening.get(id);
        if (o) {
          this.opening.delete(id);
          o.reject(new DialError('refused', 'stream reset'));
        }
        this.streams.get(id)?.onReset();
        return;
      }
      default:
        this.onProtocolError(`unknown frame type ${type}`);
    }
  }

  private sendErr(id: number, code: DialErrorCode, message: string): void {
    this.sendRaw(encodeStreamFrame(M.ERR, id, Buffer.from(JSON.stringify({ code, message }))));
  }

  /** The link died: every stream is destroyed, pending opens fail. */
  close(err?: Error): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    for (const o of this.opening.values()) {
      o.reject(new DialError('unreachable', err?.message ?? 'link closed'));
      o.stream.destroy();
    }
    this.opening.clear();
    // Streams nobody listens to for errors (never handed out, or already abandoned) close quietly: an 'error' event
    // without a listener would take the process down.
    for (const s of this.streams.values()) s.destroy(s.listenerCount('error') > 0 ? (err ?? new Error('link closed')) : undefined);
    this.streams.clear();
  }

  get closed(): boolean {
    return this.closedFlag;
  }
}
