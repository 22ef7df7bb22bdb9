// TunnelStream: a Duplex over stream frames (streams.ts layout), used for relay streams to the server and for the
// streams of a peer session. Flow control: the sender may have at most `window` bytes beyond the receiver's
// acknowledgement. Every byte has an offset; the sender keeps what is not acknowledged (at most the window), so when a
// session moves to another transport the stream resumes from the offset the receiver reports (rewind) and the reader
// never notices. A slow reader stops only its own stream.
import { Duplex } from 'node:stream';
import { FlowWindow } from '@edgemesh/common/tunnel/streams';

export const STREAM_WINDOW_BYTES = 2 * 1024 * 1024;
export const MAX_CHUNK_BYTES = 64 * 1024;

/** How a stream reaches its transport. */
export interface StreamIO {
  /** Whether frames can go out now (a transport is attached); when not, nothing is lost: resume() resends. */
  canSend(): boolean;
  data(offset: number, bytes: Buffer): void;
  credit(ack: number): void;
  end(fin: number): void;
  reset(): void;
  /** Called once when the stream is finished (both ends closed and acknowledged, reset or destroyed). */
  closed(): void;
}

export class TunnelStream extends Duplex {
  private io: StreamIO;
  readonly window: number;
  // --- send side ---
  /** Bytes written and not yet acknowledged, in order, starting at offset `keptFrom`. */
  private kept: Buffer[] = [];
  private keptFrom = 0;
  /** Bytes accepted from the writer. */
  private written = 0;
  /** Bytes transmitted on the current transport; cursor into `kept` (index, offset of that chunk). */
  private tx = 0;
  private txIdx = 0;
  private txAt = 0;
  private peerAck = 0;
  /** Our END's position once the writer finished. */
  private fin: number | undefined;
  private endSent = false;
  private pending: { chunk: Buffer; off: number; cb: (e?: Error | null) => void } | undefined;
  // --- receive side ---
  private readonly rx: FlowWindow;
  private wasReset = false;
  /** Destroyed after our END: kept until the peer acknowledged it, so a resumed transport can still deliver it. */
  private lingering = false;
  private done = false;
  bytesIn = 0;
  bytesOut = 0;
  /** The path the stream was opened on (set by the tunnel): 'direct' or 'relay'. */
  path: string | undefined;

  constructor(io: StreamIO, window = STREAM_WINDOW_BYTES) {
    super({ allowHalfOpen: true, highWaterMark: MAX_CHUNK_BYTES });
    this.io = io;
    this.window = window;
    this.rx = new FlowWindow(window);
  }

  /** Moves a stream that has carried nothing yet to another transport (an open re-asked in a new session). */
  rebind(io: StreamIO): void {
    if (this.written || this.rx.next || this.done) throw new Error('rebind: the stream already carried data');
    this.io = io;
  }

  // ---------- send side ----------

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.pending = { chunk, off: 0, cb };
    this.accept();
  }

  /** Takes what the window allows from the blocked write, then transmits. */
  private accept(): void {
    const p = this.pending;
    if (p) {
      const room = this.peerAck + this.window - this.written;
      if (room > 0 && p.off < p.chunk.length) {
        const n = Math.min(room, p.chunk.length - p.off);
        this.kept.push(p.off === 0 && n === p.chunk.length ? p.chunk : p.chunk.subarray(p.off, p.off + n));
        p.off += n;
        this.written += n;
        this.bytesOut += n;
      }
      if (p.off >= p.chunk.length) {
        this.pending = undefined;
        p.cb();
      }
    }
    this.transmit();
  }

  /** Sends everything between `tx` and `written` (and END) while the transport is there. */
  transmit(): void {
    if (this.done || !this.io.canSend()) return;
    while (this.tx < this.written) {
      let c = this.kept[this.txIdx];
      while (c && this.tx >= this.txAt + c.length) {
        this.txAt += c.length;
        c = this.kept[++this.txIdx];
      }
      if (!c) break; // cannot happen: tx < written means the chunk is kept
      const from = this.tx - this.txAt;
      const n = Math.min(MAX_CHUNK_BYTES, c.length - from);
      this.io.data(this.tx, from === 0 && n === c.length ? c : c.subarray(from, from + n));
      this.tx += n;
    }
    if (this.fin !== undefined && !this.endSent) {
      this.endSent = true;
      this.io.end(this.fin);
    }
  }

  override _final(cb: (e?: Error | null) => void): void {
    this.fin = this.written;
    this.transmit();
    cb();
    this.maybeDone();
  }

  /** The peer acknowledged every position before `ack` (its END position + 1 once it took our END). */
  onCredit(ack: number): void {
    if (!this.acknowledged(ack)) return;
    if (this.lingering && this.fin !== undefined && ack === this.fin + 1) return this.endLinger();
    this.accept();
    this.maybeDone();
  }

  /** Bookkeeping of an acknowledgement: drops what the peer has. False when it says nothing new (or is bogus). */
  private acknowledged(ack: number): boolean {
    const top = this.written + (this.fin !== undefined ? 1 : 0);
    if (ack <= this.peerAck || ack > top) return false;
    this.peerAck = ack;
    // Drop chunks wholly acknowledged.
    const upTo = Math.min(ack, this.written);
    let drop = 0;
    while (drop < this.kept.length && this.keptFrom + this.kept[drop].length <= upTo) this.keptFrom += this.kept[drop++].length;
    if (drop) {
      this.kept.splice(0, drop);
      if (this.txIdx >= drop) this.txIdx -= drop;
      else this.rewindCursor(Math.max(this.tx, this.keptFrom));
    }
    return true;
  }

  /** Resuming on a new transport: the peer holds `recv` positions and acknowledged `ack`; resend from there. */
  resumeFrom(recv: number, ack: number): void {
    if (this.done) return;
    this.acknowledged(ack);
    if (this.lingering && this.fin !== undefined && this.peerAck === this.fin + 1) return this.endLinger();
    const at = Math.min(Math.max(recv, this.keptFrom), this.written);
    this.rewindCursor(at);
    this.endSent = this.fin !== undefined && recv > this.fin;
    // Our acknowledgement may have been lost with the old transport: send it again.
    if (this.rx.ack > 0 && this.io.canSend()) this.io.credit(this.rx.ack);
    this.accept();
    this.maybeDone();
  }

  private rewindCursor(at: number): void {
    this.tx = at;
    this.txIdx = 0;
    this.txAt = this.keptFrom;
    while (this.txIdx < this.kept.length - 1 && this.txAt + this.kept[this.txIdx].length <= at) this.txAt += this.kept[this.txIdx++].length;
  }

  // ---------- receive side ----------

  override _read(): void {
    this.grant();
  }

  private grant(): void {
    if (this.done || this.rx.next === this.rx.ack) return;
    this.rx.acknowledge(this.rx.next);
    if (this.io.canSend()) this.io.credit(this.rx.ack);
  }

  onData(offset: number, b: Buffer): void {
    if (this.destroyed || this.rx.ended) return;
    const v = this.rx.data(offset, b.length);
    if (!v.ok) {
      // More than one window beyond what we acknowledged: the peer ignores its credit. Reset rather than buffer
      // without bound. Repeats and gaps are normal while a session resumes (the peer resends from our offset).
      if (v.why === 'overflow') this.destroy(this.listenerCount('error') > 0 ? new Error('peer exceeded its stream credit') : undefined);
      return;
    }
    const bytes = v.skip ? b.subarray(v.skip) : b;
    this.bytesIn += bytes.length;
    if (this.push(bytes) && this.rx.next - this.rx.ack >= this.window / 4) this.grant();
  }

  onEnd(fin: number): void {
    if (this.destroyed || !this.rx.end(fin)) return;
    this.push(null);
    // Acknowledge END at once: the sender may forget its kept bytes; no more data can follow, so credit is moot.
    this.grant();
    this.maybeDone();
  }

  onReset(): void {
    this.wasReset = true;
    if (this.lingering) return this.finish();
    if (this.rx.ended) {
      // The peer finished sending and stopped reading (a server that answered and closed): not an error. Our reader
      // takes what it sent, then the stream closes; what we still write goes nowhere.
      const p = this.pending;
      this.pending = undefined;
      p?.cb();
      if (this.readableEnded) this.destroy();
      else this.once('end', () => this.destroy());
      return;
    }
    // No error listener = nobody holds the stream any more: close quietly rather than throw.
    this.destroy(this.listenerCount('error') > 0 ? new Error('stream reset by peer') : undefined);
  }

  // ---------- state for resumption ----------

  /** Positions received and acknowledged (what a peer resuming on another transport resends from). */
  get received(): { recv: number; ack: number } {
    return { recv: this.rx.next, ack: this.rx.ack };
  }

  /** Both ENDs exchanged: only acknowledgements could be missing. */
  get bothEnded(): boolean {
    return this.rx.ended && this.fin !== undefined;
  }

  get finished(): boolean {
    return this.done;
  }

  /** The session ended this stream without the peer (gone for good, or the peer no longer has it). */
  abort(err?: Error, graceful = false): void {
    if (this.done) return;
    this.wasReset = true;
    if (graceful) {
      this.finish();
      if (!this.readableEnded) this.once('end', () => this.destroy());
      else this.destroy();
      return;
    }
    this.destroy(err && this.listenerCount('error') > 0 ? err : undefined);
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    const p = this.pending;
    this.pending = undefined;
    p?.cb(err ?? new Error('stream destroyed'));
    if (!this.done && !this.wasReset) {
      if (this.fin !== undefined && this.peerAck <= this.fin && !err) {
        // We finished writing: our bytes and END must still arrive (perhaps over the next transport); the reset
        // ("we stopped reading") follows once the peer acknowledged them.
        this.lingering = true;
        return cb(err);
      }
      if (this.io.canSend()) this.io.reset();
    }
    this.finish();
    cb(err);
  }

  private endLinger(): void {
    if (!this.rx.ended && this.io.canSend()) this.io.reset();
    this.finish();
  }

  private maybeDone(): void {
    if (this.rx.ended && this.fin !== undefined && this.peerAck === this.fin + 1) this.finish();
  }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    this.kept = [];
    this.io.closed();
  }
}
