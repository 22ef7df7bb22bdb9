// The sending side of a mesh link. Control frames (presence, opens, credit, rendezvous, ping) go out at once; relay
// DATA waits in one queue per mesh stream and is written round-robin, one frame per stream per turn, only while the
// socket holds less than WRITE_HIGH_WATER_BYTES. So one fast pair cannot fill the link ahead of the others (each turn
// every stream gets one frame), credit is never stuck behind bulk data, and the socket buffer stays small. A queue is
// bounded by its stream's credit window (the servers police it end to end), all queues together by what the caller
// pauses its feeders at (queuedBytes).

/** Bytes the socket may hold before DATA waits in the per-stream queues: a few frames, enough to keep TCP busy. */
export const WRITE_HIGH_WATER_BYTES = 512 * 1024;

export interface Sink {
  write(chunk: Buffer): unknown;
  cork(): void;
  uncork(): void;
  readonly writableLength: number;
}

/** A frame as one buffer, or its parts (header + shared payload: written back to back, corked, never copied here). */
export type FramePart = Buffer | Buffer[];
const size = (f: FramePart): number => (Buffer.isBuffer(f) ? f.length : f.reduce((n, b) => n + b.length, 0));

export class FairWriter {
  private readonly sink: Sink;
  private readonly highWater: number;
  /** Per stream: its frames in order. Map order is the round-robin order (a served stream moves to the end). */
  private readonly queues = new Map<number, FramePart[]>();
  private queued = 0;

  constructor(sink: Sink, highWater = WRITE_HIGH_WATER_BYTES) {
    this.sink = sink;
    this.highWater = highWater;
  }

  /** Bytes waiting in the stream queues (not yet handed to the socket). */
  get queuedBytes(): number {
    return this.queued;
  }

  control(frame: Buffer): void {
    this.sink.write(frame);
  }

  private put(f: FramePart): void {
    if (Buffer.isBuffer(f)) return void this.sink.write(f);
    this.sink.cork();
    for (const b of f) this.sink.write(b);
    this.sink.uncork();
  }

  /** A DATA frame (or its parts, written back to back) of stream `id`. */
  data(id: number, frame: FramePart): void {
    if (!this.queues.size && this.sink.writableLength < this.highWater) {
      this.put(frame);
      return;
    }
    let q = this.queues.get(id);
    if (!q) {
      q = [];
      this.queues.set(id, q);
    }
    q.push(frame);
    this.queued += size(frame);
    this.flush();
  }

  /** Writes queued DATA round-robin while the socket has room (call on 'drain' too). */
  flush(): void {
    while (this.queues.size && this.sink.writableLength < this.highWater) {
      for (const [id, q] of this.queues) {
        const f = q.shift()!;
        this.queued -= size(f);
        this.queues.delete(id);
        if (q.length) this.queues.set(id, q); // to the back of the turn
        this.put(f);
        if (this.sink.writableLength >= this.highWater) return;
      }
    }
  }

  /** The stream ended or was reset: what it still had queued is dropped. */
  drop(id: number): void {
    const q = this.queues.get(id);
    if (!q) return;
    for (const f of q) this.queued -= size(f);
    this.queues.delete(id);
  }

  clear(): void {
    this.queues.clear();
    this.queued = 0;
  }
}
