// A Duplex with credit-based flow control: the sender may have at most `window` bytes the receiver has not yet
// handed to its reader. Used for relay streams (credit also enforced by the server) and for the streams multiplexed
// inside a Noise link. A slow reader stops only its own stream.
import { Duplex } from 'node:stream';
import { encodeStreamFrame } from '@edgemesh/common/tunnel/frame';

export const STREAM_WINDOW_BYTES = 2 * 1024 * 1024;
export const MAX_CHUNK_BYTES = 64 * 1024;

export interface CreditIO {
  data(chunk: Buffer): void;
  credit(n: number): void;
  end(): void;
  reset(): void;
  /** Called once when the stream is finished (both ends closed, reset or destroyed). */
  closed(): void;
}

/** The CreditIO of stream `id` on a framed transport (the relay connection or a link's mux): one frame type each. */
export function framedIO(send: (frame: Buffer) => void, t: { DATA: number; CREDIT: number; END: number; RESET: number }, id: number, closed: () => void): CreditIO {
  return {
    data: (c) => send(encodeStreamFrame(t.DATA, id, c)),
    credit: (n) => {
      const b = Buffer.allocUnsafe(4);
      b.writeUInt32BE(n >>> 0);
      send(encodeStreamFrame(t.CREDIT, id, b));
    },
    end: () => send(encodeStreamFrame(t.END, id)),
    reset: () => send(encodeStreamFrame(t.RESET, id)),
    closed,
  };
}

export class CreditStream extends Duplex {
  private readonly io: CreditIO;
  private readonly window: number;
  private credit: number;
  private pending: { chunk: Buffer; off: number; cb: (e?: Error | null) => void } | undefined;
  private unacked = 0;
  private sentEnd = false;
  private gotEnd = false;
  private wasReset = false;
  private done = false;
  bytesIn = 0;
  bytesOut = 0;
  /** The path the stream was opened on (set by the tunnel): 'direct' or 'relay'. */
  path: string | undefined;

  constructor(io: CreditIO, window = STREAM_WINDOW_BYTES) {
    super({ allowHalfOpen: true, highWaterMark: MAX_CHUNK_BYTES });
    this.io = io;
    this.window = window;
    this.credit = window;
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.pending = { chunk, off: 0, cb };
    this.pump();
  }

  private pump(): void {
    const p = this.pending;
    while (p && this.credit > 0 && p.off < p.chunk.length) {
      const n = Math.min(this.credit, MAX_CHUNK_BYTES, p.chunk.length - p.off);
      this.io.data(p.chunk.subarray(p.off, p.off + n));
      p.off += n;
      this.credit -= n;
      this.bytesOut += n;
    }
    if (p && p.off >= p.chunk.length) {
      this.pending = undefined;
      p.cb();
    }
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.sentEnd = true;
    this.io.end();
    cb();
    this.maybeDone();
  }

  override _read(): void {
    if (this.unacked > 0 && !this.done) {
      this.io.credit(this.unacked);
      this.unacked = 0;
    }
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    if (!this.wasReset && !(this.sentEnd && this.gotEnd) && !this.done) this.io.reset();
    this.finish();
    const p = this.pending;
    this.pending = undefined;
    p?.cb(err ?? new Error('stream destroyed'));
    cb(err);
  }

  // --- from the transport ---
  onData(b: Buffer): void {
    if (this.gotEnd || this.destroyed) return;
    // `unacked` is what the peer sent beyond the credit we granted back; more than one window means it ignores its
    // credit: reset rather than buffer without bound for a reader that is not reading.
    if (this.unacked + b.length > this.window) {
      this.destroy(this.listenerCount('error') > 0 ? new Error('peer exceeded its stream credit') : undefined);
      return;
    }
    this.bytesIn += b.length;
    this.unacked += b.length;
    if (this.push(b) && this.unacked >= this.window / 4) {
      this.io.credit(this.unacked);
      this.unacked = 0;
    }
  }

  onCredit(n: number): void {
    this.credit += n;
    this.pump();
  }

  onEnd(): void {
    if (this.gotEnd) return;
    this.gotEnd = true;
    this.push(null);
    this.maybeDone();
  }

  onReset(): void {
    this.wasReset = true;
    // No error listener = nobody holds the stream any more: close quietly rather than throw.
    this.destroy(this.listenerCount('error') > 0 ? new Error('stream reset by peer') : undefined);
  }

  private maybeDone(): void {
    if (this.sentEnd && this.gotEnd) this.finish();
  }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    this.io.closed();
  }
}
