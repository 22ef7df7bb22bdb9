// Sockets opened from now on, tracked by async_hooks: "no socket left behind" is checked on exactly the handles a
// test created, not on a process-wide count that other tests' sockets (still closing) move as well.
import { createHook } from 'node:async_hooks';

/** async_hooks resource types of sockets. */
export const SOCKET_TYPES = ['TCPWRAP', 'TCPSERVERWRAP', 'UDPWRAP'] as const;

export interface HandleTracker {
  /** Types of the tracked handles created since start that are not closed yet. */
  open(): string[];
  /** Stops tracking. */
  stop(): void;
}

export function trackHandles(types: readonly string[] = SOCKET_TYPES): HandleTracker {
  const live = new Map<number, string>();
  const hook = createHook({
    init(id, type) { if (types.includes(type)) live.set(id, type); },
    destroy(id) { live.delete(id); },
  }).enable();
  return { open: () => [...live.values()], stop: () => { hook.disable(); } };
}
