// DNS metrics on the agent's prom-client registry. Label children are cached so the per-query cost is one Map lookup.
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
}

export const noMetrics: DnsMetrics = { query() {}, malformed() {}, cache() {}, upstream() {}, truncated() {} };

export function createDnsMetrics(registry: Registry): DnsMetrics {
  const queries = new Counter({ name: 'edgemesh_dns_queries_total', help: 'DNS queries answered, by question type, response code and source', labelNames: ['type', 'rcode', 'source'], registers: [registry] });
  const malformed = new Counter({ name: 'edgemesh_dns_malformed_total', help: 'Malformed DNS messages dropped', labelNames: ['transport'], registers: [registry] });
  const cache = new Counter({ name: 'edgemesh_dns_cache_total', help: 'Cache lookups: answer = encoded-reply cache, forward = upstream response cache', labelNames: ['cache', 'result'], registers: [registry] });
  const upstream = new Histogram({ name: 'edgemesh_dns_upstream_duration_seconds', help: 'Upstream query latency by upstream and outcome', labelNames: ['upstream', 'outcome'], buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5], registers: [registry] });
  const truncated = new Counter({ name: 'edgemesh_dns_truncated_total', help: 'UDP replies sent truncated (TC) because they did not fit', registers: [registry] });
  const qChildren = new Map<string, { inc(): void }>();
  const mChildren = { udp: malformed.labels('udp'), tcp: malformed.labels('tcp') };
  const cChildren = {
    answer: { hit: cache.labels('answer', 'hit'), miss: cache.labels('answer', 'miss') },
    forward: { hit: cache.labels('forward', 'hit'), miss: cache.labels('forward', 'miss') },
  };
  return {
    query(type, rcode, source) {
      const t = KNOWN_TYPES.has(type) ? type : 'OTHER';
      const k = `${t}|${rcode}|${source}`;
      let c = qChildren.get(k);
      if (!c) {
        c = queries.labels(t, RCODE_NAMES[rcode] ?? String(rcode), source);
        qChildren.set(k, c);
      }
      c.inc();
    },
    malformed(transport) { mChildren[transport].inc(); },
    cache(kind, hit) { cChildren[kind][hit ? 'hit' : 'miss'].inc(); },
    upstream(up, seconds, outcome) { upstream.labels(up, outcome).observe(seconds); },
    truncated() { truncated.inc(); },
  };
}
