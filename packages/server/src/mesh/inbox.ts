// The frames a mesh link brought, handled in order under the link's control budget. Control frames (presence,
// rendezvous, opens and their answers, ping/pong) each cost work here and often a message to an agent; a peer server
// that sends them faster than MESH_CONTROL_PER_SEC has its link paused — its frames wait, in order, and TCP pushes
// back on it — until the bucket refills, as relay.ts does for an agent over CONTROL_MSGS_PER_SEC. Nothing is dropped
// (dropping presence would leave the two servers disagreeing on who is where). Stream frames (DATA, CREDIT, END,
// RESET) are bounded by the credit windows instead, and revocation lists by their own bucket; they take no tokens,
// but wait behind a queued control frame (order is kept).
import type { Frame } from '@edgemesh/common/tunnel/frame';
import { fullBucket, take, type BucketParams, type BucketState } from '@edgemesh/common/ratelimit';
import { M } from './frames.ts';

/**
 * Control frames one mesh link may have handled per second, and the burst. A link carries what thousands of agents
 * do across servers: after a server restart every agent there re-announces (presence is batched, 1,024 names per
 * frame) and re-opens its cross-server relay streams, a few per agent: 20,000 agents' opens are ~2 s of this rate.
 * A flood beyond it costs a bounded share of a core, never all of it.
 */
export const MESH_CONTROL_PER_SEC = 10_000;
export const MESH_CONTROL_BURST = 20_000;
const PARAMS: BucketParams = { capacity: MESH_CONTROL_BURST, ratePerSec: MESH_CONTROL_PER_SEC };

const CONTROL = new Set<number>([M.PRESENCE_ADD, M.PRESENCE_DEL, M.PRESENCE_SYNCED, M.RENDEZVOUS, M.OPEN, M.OPENED, M.OPEN_FAIL, M.PING, M.PONG]);
/** Whether a frame type takes a token of the link's control budget. */
export const isMeshControl = (type: number): boolean => CONTROL.has(type);

export interface InboxHooks {
  /** Handles one frame; false when the link is gone (the rest is dropped). */
  handle(f: Frame): boolean;
  /** Stop / restart reading the link's socket. */
  pause(): void;
  resume(): void;
  /** The budget refused a frame (once per wait for a refill): counted by the caller. */
  refused(): void;
  now(): number;
  setTimer(fn: () => void, ms: number): unknown;
  clearTimer(t: unknown): void;
}

export class MeshInbox {
  private readonly h: InboxHooks;
  private readonly bucket: BucketState;
  private queue: Frame[] = [];
  /** Index of the next frame in `queue` (shifting a long array per frame would be quadratic). */
  private head = 0;
  private wait: unknown;
  private paused = false;
  private closed = false;

  constructor(h: InboxHooks) {
    this.h = h;
    this.bucket = fullBucket(PARAMS, h.now());
  }

  /** Frames waiting for the budget (at most what one read brought: reading is paused meanwhile). */
  get waiting(): number {
    return this.queue.length - this.head;
  }

  push(frames: readonly Frame[]): void {
    if (this.closed) return;
    for (const f of frames) this.queue.push(f);
    this.drain();
  }

  close(): void {
    this.closed = true;
    this.queue = [];
    this.head = 0;
    if (this.wait !== undefined) this.h.clearTimer(this.wait);
    this.wait = undefined;
  }

  private drain(): void {
    if (this.wait !== undefined) return;
    while (this.head < this.queue.length && !this.closed) {
      const f = this.queue[this.head];
      if (isMeshControl(f.type) && !take(this.bucket, PARAMS, this.h.now())) {
        this.h.refused();
        if (!this.paused) this.h.pause();
        this.paused = true;
        const ms = Math.max(1, Math.ceil(((1 - this.bucket.tokens) / PARAMS.ratePerSec) * 1000));
        this.wait = this.h.setTimer(() => {
          this.wait = undefined;
          if (this.closed) return;
          this.drain();
          if (this.wait === undefined && !this.closed) {
            this.paused = false;
            this.h.resume();
          }
        }, ms);
        return;
      }
      this.head++;
      if (!this.h.handle(f)) return this.close();
    }
    if (this.head === this.queue.length) {
      this.queue = [];
      this.head = 0;
    }
  }
}
