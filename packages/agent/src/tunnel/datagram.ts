// UDP datagrams over a byte stream: [length u16][datagram], so datagrams stay whole (EdgeMesh's tunnel lost the
// boundaries). A DatagramChannel over any Duplex.
import type { Duplex } from 'node:stream';
import type { DatagramChannel } from '../proxy/dialer.ts';

export const MAX_DATAGRAM_BYTES = 65_535;

/** Incremental decoder of length-prefixed datagrams. */
export class DatagramDecoder {
  private buf: Buffer = Buffer.alloc(0);
  push(chunk: Buffer): Buffer[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out: Buffer[] = [];
    let off = 0;
    while (this.buf.length - off >= 2) {
      const len = this.buf.readUInt16BE(off);
      if (this.buf.length - off - 2 < len) break;
      out.push(Buffer.from(this.buf.subarray(off + 2, off + 2 + len)));
      off += 2 + len;
    }
    this.buf = off === this.buf.length ? Buffer.alloc(0) : this.buf.subarray(off);
    return out;
  }
}

export function encodeDatagram(d: Buffer): Buffer {
  if (d.length > MAX_DATAGRAM_BYTES) throw new RangeError('datagram too large');
  const h = Buffer.allocUnsafe(2);
  h.writeUInt16BE(d.length);
  return Buffer.concat([h, d]);
}

export function streamDatagramChannel(s: Duplex): DatagramChannel {
  const dec = new DatagramDecoder();
  const closers: ((e?: Error) => void)[] = [];
  let closed = false;
  const fireClose = (e?: Error) => {
    if (closed) return;
    closed = true;
    for (const f of closers) f(e);
  };
  s.on('error', (e) => fireClose(e));
  s.on('close', () => fireClose());
  s.on('end', () => s.end());
  return {
    send(d) {
      if (!closed && d.length <= MAX_DATAGRAM_BYTES) s.write(encodeDatagram(d));
    },
    onMessage(fn) {
      s.on('data', (c: Buffer) => {
        for (const d of dec.push(c)) fn(d);
      });
    },
    onClose(fn) {
      closers.push(fn);
    },
    close() {
      s.destroy();
      fireClose();
    },
  };
}
