// Stream frames, written once for every layer that carries streams: relay streams between an agent and the server
// (server frames), and the streams of a peer session inside a Noise link (link frames). Each layer gives the four
// frame types its own numbers (StreamTypes); the payload layouts are the same everywhere:
//
//   DATA    [id u32][offset u64][bytes]   `offset` = position of the first byte in the stream
//   CREDIT  [id u32][ack u64]             the receiver has taken every byte before `ack` (+1 once it took END)
//   END     [id u32][fin u64]             the sender's last byte is at fin-1; END counts as one position (like TCP FIN)
//   RESET   [id u32]                      the stream is abandoned
//
// Offsets and acknowledgements are absolute, so a frame that is lost or repeated when a session moves to another
// transport is harmless: a receiver takes bytes only at the offset it expects next, and the sender may send up to
// ack + window. FlowWindow holds those rules for one direction of one stream: the server uses one per direction to
// police relay senders, a TunnelStream (agent) uses them for its receive side.
import { FRAME_HEADER_BYTES } from './frame.ts';

export interface StreamTypes { readonly DATA: number; readonly CREDIT: number; readonly END: number; readonly RESET: number }

export const STREAM_ID_BYTES = 4;
export const DATA_HEADER_BYTES = 12;
export const CREDIT_BYTES = 12;
export const END_BYTES = 12;
export const RESET_BYTES = 4;
/** Offsets stay below 2^53 (exact in a JS number): 9 PB per stream. */
export const MAX_OFFSET = Number.MAX_SAFE_INTEGER;

export type StreamFrame =
  | { kind: 'data'; id: number; offset: number; bytes: Buffer }
  | { kind: 'credit'; id: number; ack: number }
  | { kind: 'end'; id: number; fin: number }
  | { kind: 'reset'; id: number };

function writeU64(b: Buffer, v: number, at: number): void {
  b.writeUInt32BE(Math.floor(v / 0x1_0000_0000) >>> 0, at);
  b.writeUInt32BE(v >>> 0, at + 4);
}

function readU64(b: Buffer, at: number): number {
  return b.readUInt32BE(at) * 0x1_0000_0000 + b.readUInt32BE(at + 4);
}

function frame(type: number, len: number, alloc: (n: number) => Buffer = Buffer.allocUnsafe): Buffer {
  const out = alloc(FRAME_HEADER_BYTES + len);
  out[0] = type;
  out.writeUInt32BE(len, 1);
  return out;
}

/** `alloc` gives the frame's buffer: a Noise link's own (Link.alloc), which it then encrypts in place, saving a copy. */
export function encodeData(t: StreamTypes, id: number, offset: number, bytes: Uint8Array, alloc?: (n: number) => Buffer): Buffer {
  const out = frame(t.DATA, DATA_HEADER_BYTES + bytes.length, alloc);
  out.writeUInt32BE(id >>> 0, 5);
  writeU64(out, offset, 9);
  out.set(bytes, 5 + DATA_HEADER_BYTES);
  return out;
}

export function encodeCredit(t: StreamTypes, id: number, ack: number): Buffer {
  const out = frame(t.CREDIT, CREDIT_BYTES);
  out.writeUInt32BE(id >>> 0, 5);
  writeU64(out, ack, 9);
  return out;
}

export function encodeEnd(t: StreamTypes, id: number, fin: number): Buffer {
  const out = frame(t.END, END_BYTES);
  out.writeUInt32BE(id >>> 0, 5);
  writeU64(out, fin, 9);
  return out;
}

export function encodeReset(t: StreamTypes, id: number): Buffer {
  const out = frame(t.RESET, RESET_BYTES);
  out.writeUInt32BE(id >>> 0, 5);
  return out;
}

export function isStreamType(t: StreamTypes, type: number): boolean {
  return type === t.DATA || type === t.CREDIT || type === t.END || type === t.RESET;
}

/** Decodes a stream frame's payload; undefined when the type is not a stream frame or the layout is wrong. */
export function decodeStreamFrame(t: StreamTypes, type: number, p: Buffer): StreamFrame | undefined {
  switch (type) {
    case t.DATA:
      if (p.length < DATA_HEADER_BYTES) return undefined;
      return { kind: 'data', id: p.readUInt32BE(0), offset: readU64(p, 4), bytes: p.subarray(DATA_HEADER_BYTES) };
    case t.CREDIT:
      return p.length === CREDIT_BYTES ? { kind: 'credit', id: p.readUInt32BE(0), ack: readU64(p, 4) } : undefined;
    case t.END:
      return p.length === END_BYTES ? { kind: 'end', id: p.readUInt32BE(0), fin: readU64(p, 4) } : undefined;
    case t.RESET:
      return p.length === RESET_BYTES ? { kind: 'reset', id: p.readUInt32BE(0) } : undefined;
    default:
      return undefined;
  }
}

/** What FlowWindow.data decided about a DATA frame. */
export type DataVerdict =
  | { ok: true; skip: number } // take the bytes after the first `skip` (already had them)
  | { ok: false; why: 'duplicate' | 'gap' | 'overflow' };

/**
 * One direction of one stream: the next offset expected, the acknowledgement granted back, the window. A sender may
 * have bytes up to ack + window; more is a violation (the stream is reset). Pure bookkeeping, no I/O.
 */
export class FlowWindow {
  /** Next position expected (bytes taken, +1 once END was taken). */
  next = 0;
  /** Highest acknowledgement granted: the sender may send below ack + window. */
  ack = 0;
  ended = false;
  readonly window: number;

  constructor(window: number) {
    this.window = window;
  }

  /** A DATA frame at `offset` with `len` bytes. */
  data(offset: number, len: number): DataVerdict {
    if (this.ended) return { ok: false, why: 'duplicate' };
    if (offset > this.next) return { ok: false, why: 'gap' };
    const end = offset + len;
    if (end <= this.next) return { ok: false, why: 'duplicate' };
    if (end > this.ack + this.window) return { ok: false, why: 'overflow' };
    const skip = this.next - offset;
    this.next = end;
    return { ok: true, skip };
  }

  /** An END at `fin`: taken only when every byte before it was. */
  end(fin: number): boolean {
    if (this.ended || fin !== this.next) return false;
    this.ended = true;
    this.next = fin + 1;
    return true;
  }

  /** An acknowledgement for this direction: monotonic, never beyond what was taken. */
  acknowledge(ack: number): boolean {
    if (ack <= this.ack || ack > this.next) return false;
    this.ack = ack;
    return true;
  }
}
