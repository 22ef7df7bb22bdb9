// The one way the proxy reaches an endpoint. Same-node endpoints are dialed directly; endpoints on other nodes go
// through the tunnel (tunnel/dialer.ts implements Dialer too). Implementations resolve only once the far side is
// connected (for the tunnel: after the remote agent answered OK), and reject with a DialError otherwise.
import type { Duplex } from 'node:stream';

export interface DialTarget {
  /** Service key `ns/name` the endpoint belongs to (the remote agent checks it knows the endpoint). */
  readonly serviceKey: string;
  readonly protocol: 'tcp' | 'udp';
  readonly ip: string;
  readonly port: number;
  /** Node hosting the endpoint; undefined or this node's name = dial directly. */
  readonly nodeName?: string;
}

/** A datagram channel that keeps datagrams whole (length-framed when it crosses a stream). */
export interface DatagramChannel {
  send(datagram: Buffer): void;
  onMessage(fn: (datagram: Buffer) => void): void;
  onClose(fn: (err?: Error) => void): void;
  close(): void;
}

export type DialErrorCode = 'refused' | 'timeout' | 'unreachable' | 'forbidden' | 'no-route';

export class DialError extends Error {
  readonly code: DialErrorCode;
  /** The socket error behind it (`EHOSTUNREACH`, ...), when a local dial failed. */
  readonly sysCode?: string;
  constructor(code: DialErrorCode, message: string, sysCode?: string) {
    super(message);
    this.code = code;
    if (sysCode !== undefined) this.sysCode = sysCode;
  }
}

/**
 * The one deadline of a dial, created by the proxy (one per connect attempt) and passed down: the tunnel gives the
 * direct path a share of what remains before it tries the relay, and tells the far agent how long it may dial.
 */
export interface Deadline {
  readonly signal: AbortSignal;
  /** Milliseconds left (0 once passed). */
  remaining(): number;
  /** The dial is over (connected or failed): the deadline will not fire. Optional to call; it only saves work. */
  release?(): void;
  /**
   * Calls `fn` once when the deadline passes or the caller gives up, as a listener on `signal` would, without making
   * the signal (an AbortController and an event listener per dial). Returns the function that removes it.
   */
  onAbort?(fn: () => void): () => void;
}

/**
 * A deadline `ms` from now; with `caller`, it also ends when the caller gives up (its signal aborts).
 *
 * Cheap for the common case of a dial that finishes in time (one per proxied connection): no timer and no
 * AbortSignal of its own. Its signal is made when first read; deadlines of one length expire in the order they were
 * made, so each length has one FIFO and one timer (as Node's own timer lists), and a released deadline at the head of
 * its FIFO is dropped at once. (`AbortSignal.timeout` per dial cost a timer that always fired, 3 s later, and a
 * DOMException each: ~6 % of the proxy's CPU at 3,000 new connections/s.)
 */
export function dialDeadline(ms: number, caller?: AbortSignal): Required<Deadline> {
  const d = new QueuedDeadline(performance.now() + Math.max(0, ms), caller);
  queueFor(Math.max(0, Math.ceil(ms))).add(d);
  return d;
}

class QueuedDeadline implements Deadline {
  readonly at: number;
  private readonly caller: AbortSignal | undefined;
  private ctrl: AbortController | undefined;
  private onCaller: (() => void) | undefined;
  /** onAbort's function (one dial watches a deadline at a time; a second one goes through the signal). */
  private hook: (() => void) | undefined;
  /** Released or passed: nothing more to do for it. */
  done = false;

  constructor(at: number, caller: AbortSignal | undefined) {
    this.at = at;
    this.caller = caller;
  }

  get signal(): AbortSignal {
    if (this.ctrl) return this.ctrl.signal;
    const ctrl = (this.ctrl = new AbortController());
    if (performance.now() >= this.at) ctrl.abort(timeoutReason());
    else if (this.caller?.aborted) ctrl.abort(this.caller.reason);
    else if (this.caller && !this.done) {
      this.onCaller = () => ctrl.abort(this.caller!.reason);
      this.caller.addEventListener('abort', this.onCaller, { once: true });
    }
    return ctrl.signal;
  }

  remaining(): number {
    return this.caller?.aborted ? 0 : Math.max(0, this.at - performance.now());
  }

  onAbort(fn: () => void): () => void {
    // With a caller's signal to follow, or a signal made already, or a hook taken: through the signal.
    if (this.caller || this.ctrl || this.hook || this.done) {
      const s = this.signal;
      s.addEventListener('abort', fn, { once: true });
      return () => s.removeEventListener('abort', fn);
    }
    this.hook = fn;
    return () => { if (this.hook === fn) this.hook = undefined; };
  }

  release(): void {
    if (this.done) return;
    this.done = true;
    this.unhook();
  }

  /** Called by its queue once `at` has passed. */
  expire(): void {
    if (this.done) return;
    this.done = true;
    const hook = this.hook;
    this.unhook();
    if (this.ctrl && !this.ctrl.signal.aborted) this.ctrl.abort(timeoutReason());
    hook?.();
  }

  private unhook(): void {
    if (this.onCaller) this.caller!.removeEventListener('abort', this.onCaller);
    this.onCaller = undefined;
    this.hook = undefined;
  }
}

const timeoutReason = () => new DOMException('the dial deadline passed', 'TimeoutError');

/** Entries at the head of a FIFO skipped before the array is compacted (bounds the dead prefix). */
const DEADLINE_QUEUE_COMPACT_AT = 1024;

/** The deadlines of one length, in expiry order, and the one timer for the earliest live one. */
class DeadlineQueue {
  private items: QueuedDeadline[] = [];
  private head = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly ms: number;

  constructor(ms: number) {
    this.ms = ms;
  }

  add(d: QueuedDeadline): void {
    this.dropReleased();
    this.items.push(d);
    if (this.timer === undefined) this.arm();
  }

  private dropReleased(): void {
    while (this.head < this.items.length && this.items[this.head].done) this.head++;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head >= DEADLINE_QUEUE_COMPACT_AT && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }

  private arm(): void {
    this.dropReleased();
    const first = this.items[this.head];
    if (!first) {
      queues.delete(this.ms); // lengths come and go (the flat dialer's share of what is left): keep no empty queue
      return;
    }
    // A timer may fire a millisecond early: fire() re-arms for what is left.
    this.timer = setTimeout(() => this.fire(), Math.max(1, Math.ceil(first.at - performance.now())));
    this.timer.unref();
  }

  private fire(): void {
    this.timer = undefined;
    const now = performance.now();
    while (this.head < this.items.length && (this.items[this.head].done || this.items[this.head].at <= now)) {
      const d = this.items[this.head];
      this.items[this.head++] = undefined as never;
      d.expire();
    }
    this.arm();
  }
}

const queues = new Map<number, DeadlineQueue>();
const queueFor = (ms: number): DeadlineQueue => {
  let q = queues.get(ms);
  if (!q) queues.set(ms, (q = new DeadlineQueue(ms)));
  return q;
};

export interface Dialer {
  dialTcp(target: DialTarget, deadline?: Deadline): Promise<Duplex>;
  openUdp(target: DialTarget, deadline?: Deadline): Promise<DatagramChannel>;
}
