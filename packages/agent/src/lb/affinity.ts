// ClientIP session affinity (Service.spec.sessionAffinity): a client IP sticks to the endpoint it last used until
// `timeoutSeconds` pass without a new connection. Bounded, clock injected.
import { LRUCache } from 'lru-cache';

export const AFFINITY_MAX_CLIENTS = 65_536;

export class AffinityTable {
  private readonly cache: LRUCache<string, { endpoint: string; at: number }>;
  private readonly timeoutMs: number;
  private readonly now: () => number;

  constructor(timeoutSeconds: number, now: () => number = Date.now, max = AFFINITY_MAX_CLIENTS) {
    this.timeoutMs = timeoutSeconds * 1000;
    this.now = now;
    this.cache = new LRUCache({ max });
  }

  /** The endpoint this client is bound to, if the binding has not expired. */
  get(clientIP: string): string | undefined {
    const e = this.cache.get(clientIP);
    if (!e) return undefined;
    if (this.now() - e.at >= this.timeoutMs) {
      this.cache.delete(clientIP);
      return undefined;
    }
    return e.endpoint;
  }

  /** Binds (or refreshes) the client to an endpoint; the timeout restarts. */
  set(clientIP: string, endpoint: string): void {
    this.cache.set(clientIP, { endpoint, at: this.now() });
  }

  get size(): number {
    return this.cache.size;
  }
}
