// A server that is told to stop (SIGTERM: a rolling update, a scale-down) moves its agents to another replica before
// it closes, so relayed connections resume instead of failing. Phases, in order:
//   serving  -> unready:  /readyz fails, everything else goes on (kube-proxy and the endpoints controller take a few
//                         seconds to stop sending new connections here; refusing them now would only make them retry);
//   unready  -> draining: the listener closes and every agent gets DRAIN {withinMs}: it reconnects at a random moment
//                         in that window (through the same Service address, which now reaches another replica);
//   draining -> done:     every agent has left, or the drain bound passed: the server closes what is left and exits.
// The decisions are pure (drainStep, reconnectWindowMs); Drainer runs them against the relay with one timer.

/** Readiness is false this long before agents are told to move: the Service must stop sending new agents here first
 *  (EndpointSlice update plus kube-proxy sync is ~1-5 s; Kubernetes' own guidance for a preStop pause is 5 s). */
export const UNREADY_BEFORE_DRAIN_MS = 5_000;
/** Agents asked to move per second, at most: the replicas that take them sign them in at this rate without a queue
 *  (bench/server measured ~2,300 sign-ins/s on one core; half of it leaves room for the replicas' own work). */
export const RECONNECTS_PER_SEC = 1_000;
/** The reconnect window is never shorter than this (a handful of agents still spread over a second). */
export const MIN_RECONNECT_WINDOW_MS = 1_000;
/** The drain is checked this often (agents left, bound reached): only while stopping. */
export const DRAIN_POLL_MS = 100;

export type DrainPhase = 'serving' | 'unready' | 'draining' | 'done';

export interface DrainState {
  phase: DrainPhase;
  /** When the phase began (ms, any monotonic clock). */
  since: number;
}

export interface DrainConfig {
  /** How long readiness is false before DRAIN is sent (UNREADY_BEFORE_DRAIN_MS; config shutdownUnreadySeconds). */
  unreadyMs: number;
  /** How long agents may take to leave after DRAIN (config shutdownDrainSeconds). */
  drainMs: number;
}

export type DrainAction = 'unready' | 'drain' | 'close';

/**
 * The next state of a stopping server and what to do on entering it. `stop` is true once a stop was asked (the
 * signal); `agents` is how many agents are still signed in. Loops until no phase changes, so a server with no agents
 * and zero delays goes straight to done in one call.
 */
export function drainStep(s: DrainState, input: { now: number; stop: boolean; agents: number }, cfg: DrainConfig): { state: DrainState; actions: DrainAction[] } {
  const actions: DrainAction[] = [];
  let st = s;
  for (;;) {
    const { now } = input;
    let next: DrainPhase | undefined;
    if (st.phase === 'serving' && input.stop) next = 'unready';
    else if (st.phase === 'unready' && (now - st.since >= cfg.unreadyMs || input.agents === 0)) next = 'draining';
    else if (st.phase === 'draining' && (input.agents === 0 || now - st.since >= cfg.drainMs)) next = 'done';
    if (!next) return { state: st, actions };
    actions.push(next === 'unready' ? 'unready' : next === 'draining' ? 'drain' : 'close');
    st = { phase: next, since: now };
  }
}

/** The window agents spread their reconnects over: long enough that the other replicas sign them in at
 *  RECONNECTS_PER_SEC, at most half the drain bound (so they have moved before it ends), never under the minimum. */
export function reconnectWindowMs(agents: number, drainMs: number): number {
  const spread = Math.ceil((agents / RECONNECTS_PER_SEC) * 1000);
  return Math.max(0, Math.min(Math.max(MIN_RECONNECT_WINDOW_MS, spread), Math.floor(drainMs / 2)));
}

/** What the drainer drives (the server's relay and readiness). */
export interface DrainTarget {
  setUnready(): void;
  /** Closes the listener and sends DRAIN {withinMs} to every agent (and to any that still signs in). */
  drain(withinMs: number): void;
  agents(): number;
}

/** Runs drainStep on a timer until done; resolves then (the caller closes the rest). */
export function runDrain(t: DrainTarget, cfg: DrainConfig, now: () => number = () => performance.now()): Promise<{ left: number; ms: number }> {
  const t0 = now();
  let state: DrainState = { phase: 'serving', since: t0 };
  return new Promise((resolve) => {
    const tick = (): void => {
      const r = drainStep(state, { now: now(), stop: true, agents: t.agents() }, cfg);
      state = r.state;
      for (const a of r.actions) {
        if (a === 'unready') t.setUnready();
        else if (a === 'drain') t.drain(reconnectWindowMs(t.agents(), cfg.drainMs));
      }
      if (state.phase === 'done') return resolve({ left: t.agents(), ms: Math.round(now() - t0) });
      setTimeout(tick, DRAIN_POLL_MS);
    };
    tick();
  });
}
