// Time for the tunnel's state machines, injectable so PeerPaths, PunchSession and links run under a fake clock in
// unit tests. Timers are unref'd: the tunnel never keeps the process alive on its own.

export interface Timer { readonly id: unknown }

export interface Clock {
  /** Milliseconds, monotonic. */
  now(): number;
  setTimeout(fn: () => void, ms: number): Timer;
  clearTimeout(t: Timer | undefined): void;
}

/** The real clock. A timer that throws (a bug) is reported to `onError` instead of taking the process down: timers
 *  run on behalf of peers, and one peer's trouble must not cost the others their connections. */
export function makeRealClock(onError: (err: unknown) => void): Clock {
  return {
    now: () => performance.now(),
    setTimeout(fn, ms) {
      const t = setTimeout(() => {
        try {
          fn();
        } catch (e) {
          onError(e);
        }
      }, Math.max(0, ms));
      t.unref();
      return { id: t };
    },
    clearTimeout(t) {
      if (t) clearTimeout(t.id as NodeJS.Timeout);
    },
  };
}

export const realClock: Clock = makeRealClock((e) => console.error('tunnel timer failed:', e));

/** A clock that moves only when told (tests). Timers fire in time order, each at its due time. */
export class ManualClock implements Clock {
  private t = 0;
  private seq = 0;
  private readonly timers = new Map<number, { at: number; fn: () => void }>();

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): Timer {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return { id };
  }

  clearTimeout(t: Timer | undefined): void {
    if (t) this.timers.delete(t.id as number);
  }

  /** Advances time by `ms`, running every timer that falls due on the way. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const e of this.timers) if (e[1].at <= end && (!next || e[1].at < next[1].at || (e[1].at === next[1].at && e[0] < next[0]))) next = e;
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].fn();
    }
    this.t = end;
  }

  get pending(): number {
    return this.timers.size;
  }
}
