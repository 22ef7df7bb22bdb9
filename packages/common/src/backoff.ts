// Jittered exponential backoff, shared by informer supervision and server reconnects.
export interface Backoff { next(): number; reset(): void; readonly attempts: number }

export function backoff(minMs: number, maxMs: number, random: () => number = Math.random): Backoff {
  let attempts = 0;
  return {
    get attempts() { return attempts; },
    next() {
      const base = Math.min(maxMs, minMs * 2 ** attempts);
      attempts++;
      // "Equal jitter": half fixed, half random, so retries never collapse to zero and never synchronise.
      return Math.round(base / 2 + random() * (base / 2));
    },
    reset() { attempts = 0; },
  };
}

export const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() { signal?.removeEventListener('abort', done); clearTimeout(t); resolve(); }
    signal?.addEventListener('abort', done, { once: true });
  });
