// Per-Service endpoint picker: round robin, random, least-request (power of two choices) or Maglev, with optional
// ClientIP affinity on top. Holds only small in-memory state; randomness and clock are injected. Pure of I/O.
import { AffinityTable } from './affinity.ts';
import type { Rng } from './hash.ts';
import { maglevLookup, maglevTable } from './maglev.ts';
import type { LbPolicy } from './policy.ts';

export interface PickContext {
  readonly clientIP: string;
  /** Value of the policy's HTTP header in the first request, when the policy hashes on a header. */
  readonly headerValue?: string;
}

export interface BalancerOptions {
  policy: LbPolicy;
  /** ClientIP affinity timeout in seconds; undefined = no affinity. */
  affinitySeconds?: number;
  rng?: Rng;
  now?: () => number;
}

/** Items are identified by a stable string key (endpoint address:port). */
export class Balancer {
  readonly policy: LbPolicy;
  private readonly rng: Rng;
  private readonly affinity: AffinityTable | undefined;
  private rr = 0;
  private readonly active = new Map<string, number>();
  private maglev: { names: string; table: Int32Array } | undefined;

  constructor(opts: BalancerOptions) {
    this.policy = opts.policy;
    this.rng = opts.rng ?? Math.random;
    this.affinity = opts.affinitySeconds !== undefined && opts.affinitySeconds > 0 ? new AffinityTable(opts.affinitySeconds, opts.now) : undefined;
  }

  /** Whether picks depend on the caller's address (ClientIP affinity, or a hash that falls back to it). */
  get usesClientIP(): boolean {
    return this.affinity !== undefined || this.policy.kind === 'maglev';
  }

  /** Picks one of `keys` (non-empty, in a stable order). */
  pick(keys: readonly string[], ctx: PickContext): string {
    if (keys.length === 0) throw new Error('Balancer.pick: no candidates');
    if (this.affinity) {
      const k = this.affinity.get(ctx.clientIP);
      if (k !== undefined && keys.includes(k)) {
        this.affinity.set(ctx.clientIP, k);
        return k;
      }
    }
    const k = keys.length === 1 ? keys[0] : this.choose(keys, ctx);
    this.affinity?.set(ctx.clientIP, k);
    return k;
  }

  private choose(keys: readonly string[], ctx: PickContext): string {
    switch (this.policy.kind) {
      case 'random':
        return keys[Math.floor(this.rng() * keys.length)];
      case 'least_request': {
        const i = Math.floor(this.rng() * keys.length);
        let j = Math.floor(this.rng() * (keys.length - 1));
        if (j >= i) j++;
        const a = this.active.get(keys[i]) ?? 0;
        const b = this.active.get(keys[j]) ?? 0;
        return a <= b ? keys[i] : keys[j];
      }
      case 'maglev': {
        const id = keys.join('\n');
        if (this.maglev?.names !== id) this.maglev = { names: id, table: maglevTable(keys) };
        const hashKey = this.policy.header && ctx.headerValue !== undefined ? ctx.headerValue : ctx.clientIP;
        return keys[maglevLookup(this.maglev.table, hashKey)];
      }
      default:
        return keys[this.rr++ % keys.length];
    }
  }

  /** Least-request bookkeeping: a connection/session to `key` started. */
  started(key: string): void {
    this.active.set(key, (this.active.get(key) ?? 0) + 1);
  }

  /** ... and ended. */
  ended(key: string): void {
    const n = (this.active.get(key) ?? 0) - 1;
    if (n > 0) this.active.set(key, n);
    else this.active.delete(key);
  }

  activeCount(key: string): number {
    return this.active.get(key) ?? 0;
  }
}
