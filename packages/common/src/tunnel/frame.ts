// Length-prefixed frames: [type u8][length u32 BE][payload]. Used on the agent<->server TCP connection and, inside
// the Noise channel, for the stream multiplexer between two agents. Decoding is incremental and bounded.

export const FRAME_HEADER_BYTES = 5;
/** Largest payload accepted; bigger frames are a protocol error (the connection is dropped). */
export const MAX_FRAME_BYTES = 1024 * 1024;

export class FrameError extends Error {}

export function encodeFrame(type: number, payload: Uint8Array = Buffer.alloc(0)): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  out[0] = type;
  out.writeUInt32BE(payload.length, 1);
  out.set(payload, FRAME_HEADER_BYTES);
  return out;
}

/** A frame whose payload starts with a u32 stream id (DATA, CREDIT, END, RESET, ...). */
export function encodeStreamFrame(type: number, id: number, body: Uint8Array = Buffer.alloc(0)): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER_BYTES + 4 + body.length);
  out[0] = type;
  out.writeUInt32BE(4 + body.length, 1);
  out.writeUInt32BE(id >>> 0, 5);
  out.set(body, 9);
  return out;
}

export interface Frame { type: number; payload: Buffer }

/** Incremental decoder: push chunks, get whole frames. Throws FrameError on an oversized frame. */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);
  /** Largest payload accepted; may be raised once the peer is authenticated. */
  max: number;
  constructor(max = MAX_FRAME_BYTES) {
    this.max = max;
  }

  push(chunk: Buffer): Frame[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out: Frame[] = [];
    let off = 0;
    while (this.buf.length - off >= FRAME_HEADER_BYTES) {
      const len = this.buf.readUInt32BE(off + 1);
      if (len > this.max) throw new FrameError(`frame of ${len} bytes exceeds ${this.max}`);
      if (this.buf.length - off < FRAME_HEADER_BYTES + len) break;
      out.push({ type: this.buf[off], payload: this.buf.subarray(off + FRAME_HEADER_BYTES, off + FRAME_HEADER_BYTES + len) });
      off += FRAME_HEADER_BYTES + len;
    }
    this.buf = off === this.buf.length ? Buffer.alloc(0) : this.buf.subarray(off);
    return out;
  }

  /** Bytes held waiting for the rest of a frame. */
  get pending(): number {
    return this.buf.length;
  }
}
