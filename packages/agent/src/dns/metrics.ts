// DNS metrics on the agent's prom-client registry. Per-query counts are plain integers in a Map, added to the
// prom-client counters when the registry is scraped (collect), so the hot path never touches prom-client.
import { Counter, Histogram, type Registry } from 'prom-client';

const KNOWN_TYPES = new Set(['A', 'AAAA', 'SRV', 'PTR', 'CNAME', 'SOA', 'NS', 'TXT', 'MX', 'ANY', 'HTTPS', 'SVCB', 'CAA', 'DS', 'DNSKEY']);
const RCODE_NAMES = ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED'];

export type AnswerSource = 'cluster' | 'forward' | 'error';

export interface DnsMetrics {
  query(type: string, rcode: number, source: AnswerSource): void;
  malformed(transport: 'udp' | 'tcp'): void;
  cache(kind: 'answer' | 'forward', hit: boolean): void;
  upstream(upstream: string, seconds: number, outcome: string): void;
  truncated(): void;
  /** A query from a source that is not a client (REFUSED over UDP, closed at accept over TCP). */
  refused(transport: 'udp' | 'tcp'): void;
  /** A UDP answer limited by RRL: dropped, or sent truncated (slip). */
  rateLimited(action: 'dropped' | 'slipped'): void;
}

export const noMetrics: DnsMetrics = { query() {}, malformed() {}, cache() {}, upstream() {}, truncated() {}, refused() {}, rateLimited() {} };

export function createDnsMetrics(registry: Registry): DnsMetrics {
  const pending = new Map<string, { labels: [string, string, string]; n: number }>();
  const cachePending = { answerHit: 0, answerMiss: 0, forwardHit: 0, forwardMiss: 0 };
  const queries: Counter<'type' | 'rcode' | 'source'> = new Counter({
    name: 'edgemesh_dns_queries_total', help: 'DNS queries answered, by question type, response code and source', labelNames: ['type', 'rcode', 'source'], registers: [registry],
    collect() {
      for (const p of pending.values()) if (p.n) { queries.labels(...p.labels).inc(p.n); p.n = 0; }
    },
  });
  const malformed = new Counter({ name: 'edgemesh_dns_malformed_total', help: 'Malformed DNS messages dropped', labelNames: ['transport'], registers: [registry] });
  const cache: Counter<'cache' | 'result'> = new Counter({
    name: 'edgemesh_dns_cache_total', help: 'Cache lookups: answer = encoded-reply cache, forward = upstream response cache', labelNames: ['cache', 'result'], registers: [registry],
    collect() {
      const c = cachePending;
      if (c.answerHit) cache.labels('answer', 'hit').inc(c.answerHit);
      if (c.answerMiss) cache.labels('answer', 'miss').inc(c.answerMiss);
      if (c.forwardHit) cache.labels('forward', 'hit').inc(c.forwardHit);
      if (c.forwardMiss) cache.labels('forward', 'miss').inc(c.forwardMiss);
      c.answerHit = c.answerMiss = c.forwardHit = c.forwardMiss = 0;
    },
  });
  const upstream = new Histogram({ name: 'edgemesh_dns_upstream_duration_seconds', help: 'Upstream query latency by upstream and outcome', labelNames: ['upstream', 'outcome'], buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5], registers: [registry] });
  const truncated = new Counter({ name: 'edgemesh_dns_truncated_total', help: 'UDP replies sent truncated (TC) because they did not fit', registers: [registry] });
  const mChildren = { udp: malformed.labels('udp'), tcp: malformed.labels('tcp') };
  // Attack paths: plain integers, added at scrape time like the query counts (a flood must not cost more per packet).
  const floods = { refusedUdp: 0, refusedTcp: 0, dropped: 0, slipped: 0 };
  const refused: Counter<'transport'> = new Counter({
    name: 'edgemesh_dns_refused_total', help: 'Queries refused because the source is not a client (not this node, its pod CIDRs or dns.allowCIDRs)', labelNames: ['transport'], registers: [registry],
    collect() {
      if (floods.refusedUdp) refused.labels('udp').inc(floods.refusedUdp);
      if (floods.refusedTcp) refused.labels('tcp').inc(floods.refusedTcp);
      floods.refusedUdp = floods.refusedTcp = 0;
    },
  });
  const rrl: Counter<'action'> = new Counter({
    name: 'edgemesh_dns_rrl_total', help: 'UDP answers limited by response-rate limiting: dropped, or slipped (sent truncated so the client retries over TCP)', labelNames: ['action'], registers: [registry],
    collect() {
      if (floods.dropped) rrl.labels('dropped').inc(floods.dropped);
      if (floods.slipped) rrl.labels('slipped').inc(floods.slipped);
      floods.dropped = floods.slipped = 0;
    },
  });
  return {
    query(type, rcode, source) {
      const t = KNOWN_TYPES.has(type) ? type : 'OTHER';
      const k = `${t}|${rcode}|${source}`;
      let p = pending.get(k);
      if (!p) {
        p = { labels: [t, RCODE_NAMES[rcode] ?? String(rcode), source], n: 0 };
        pending.set(k, p);
      }
      p.n++;
    },
    malformed(transport) { mChildren[transport].inc(); },
    cache(kind, hit) {
      if (kind === 'answer') { if (hit) cachePending.answerHit++; else cachePending.answerMiss++; }
      else if (hit) cachePending.forwardHit++;
      else cachePending.forwardMiss++;
    },
    upstream(up, seconds, outcome) { upstream.labels(up, outcome).observe(seconds); },
    truncated() { truncated.inc(); },
    refused(transport) { if (transport === 'udp') floods.refusedUdp++; else floods.refusedTcp++; },
    rateLimited(action) { if (action === 'dropped') floods.dropped++; else floods.slipped++; },
  };
}
