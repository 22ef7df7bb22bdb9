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

/**
 * Incremental decoder: push chunks, get whole frames. Throws FrameError on an oversized frame. The chunks of an
 * incomplete frame are kept as they came and joined once when it is complete (never copied per chunk: a 1 MiB frame
 * trickled in 1,000 chunks costs one copy, not 1,000).
 */
export class FrameDecoder {
  private parts: Buffer[] = [];
  private size = 0;
  /** Largest payload accepted; may be raised once the peer is authenticated. */
  max: number;
  constructor(max = MAX_FRAME_BYTES) {
    this.max = max;
  }

  /** Joins the held chunks into one (only when a header or a whole frame needs it). */
  private head(): Buffer {
    if (this.parts.length > 1) this.parts = [Buffer.concat(this.parts, this.size)];
    return this.parts[0];
  }

  push(chunk: Buffer): Frame[] {
    if (chunk.length) {
      this.parts.push(chunk);
      this.size += chunk.length;
    }
    const out: Frame[] = [];
    while (this.size >= FRAME_HEADER_BYTES) {
      const first = this.parts[0].length >= FRAME_HEADER_BYTES ? this.parts[0] : this.head();
      const len = first.readUInt32BE(1);
      if (len > this.max) throw new FrameError(`frame of ${len} bytes exceeds ${this.max}`);
      const total = FRAME_HEADER_BYTES + len;
      if (this.size < total) break;
      const buf = first.length >= total ? first : this.head();
      out.push({ type: buf[0], payload: buf.subarray(FRAME_HEADER_BYTES, total) });
      if (buf.length === total) this.parts.shift();
      else this.parts[0] = buf.subarray(total);
      this.size -= total;
    }
    return out;
  }

  /** Bytes held waiting for the rest of a frame. */
  get pending(): number {
    return this.size;
  }
}
