// Which load-balancing policy a Service gets: from the Istio DestinationRule whose `host` matches the Service
// (exact FQDN first, then the longest wildcard), else round robin. Pure.
import type { DestinationRule, Service } from '../cluster/types.ts';

export type LbPolicy =
  | { readonly kind: 'round_robin' | 'random' | 'least_request'; readonly rule?: string }
  /** Maglev on the client IP, or on an HTTP header of the first request (falls back to the client IP). */
  | { readonly kind: 'maglev'; readonly header?: string; readonly rule?: string };

export const DEFAULT_POLICY: LbPolicy = Object.freeze({ kind: 'round_robin' });

/** Expands a DestinationRule host to a FQDN the way Istio does: short names are relative to the rule's namespace. */
export function expandHost(host: string, ruleNamespace: string, domain: string): string {
  const h = host.toLowerCase().replace(/\.$/, '');
  if (h === '*' || h.startsWith('*.')) return h;
  const parts = h.split('.');
  if (parts.length === 1) return `${h}.${ruleNamespace}.svc.${domain}`;
  if (parts.length === 2) return `${h}.svc.${domain}`;
  if (parts.length === 3 && parts[2] === 'svc') return `${h}.${domain}`;
  return h;
}

/** The DestinationRule that applies to `svc`, or undefined. */
export function ruleFor(svc: Service, rules: ReadonlyMap<string, DestinationRule>, domain: string): DestinationRule | undefined {
  const fqdn = `${svc.name}.${svc.namespace}.svc.${domain}`.toLowerCase();
  let best: { r: DestinationRule; score: number } | undefined;
  for (const r of rules.values()) {
    const h = expandHost(r.host, r.namespace, domain);
    let score = -1;
    if (h === fqdn) score = 1_000_000;
    else if (h === '*') score = 1;
    else if (h.startsWith('*.') && fqdn.endsWith(h.slice(1))) score = h.length;
    if (score < 0) continue;
    // Same namespace as the Service wins a tie (Istio prefers the client/service namespace), then the key.
    score = score * 2 + (r.namespace === svc.namespace ? 1 : 0);
    if (!best || score > best.score || (score === best.score && r.key < best.r.key)) best = { r, score };
  }
  return best?.r;
}

export function policyFromRule(r: DestinationRule | undefined): LbPolicy {
  if (!r) return DEFAULT_POLICY;
  if (r.consistentHash) return r.consistentHash.httpHeaderName ? { kind: 'maglev', header: r.consistentHash.httpHeaderName.toLowerCase(), rule: r.key } : { kind: 'maglev', rule: r.key };
  switch (r.simple) {
    case 'RANDOM': return { kind: 'random', rule: r.key };
    case 'LEAST_REQUEST':
    case 'LEAST_CONN': return { kind: 'least_request', rule: r.key };
    // PASSTHROUGH (forward to the original destination) has no meaning behind a Service IP: round robin.
    default: return { kind: 'round_robin', rule: r.key };
  }
}

export function policyFor(svc: Service, rules: ReadonlyMap<string, DestinationRule>, domain: string): LbPolicy {
  return policyFromRule(ruleFor(svc, rules, domain));
}
