// Host and route matching for the ingress gateway. Pure.
//
// Hosts (Istio): `*` matches every host; `*.example.com` matches any name ending in `.example.com` (one or more
// labels); anything else matches exactly; case-insensitive. When several patterns match, the most specific wins:
// exact, then the longest wildcard, then `*`.
import type { HttpMatch, StringMatch } from '../cluster/types.ts';

export function hostMatches(pattern: string, host: string): boolean {
  const p = pattern.toLowerCase();
  const h = host.toLowerCase();
  if (p === '*') return true;
  if (p.startsWith('*.')) return h.length > p.length - 1 && h.endsWith(p.slice(1));
  return p === h;
}

/** How specific a pattern is (higher wins): exact > longer wildcard > shorter wildcard > `*`. */
export function specificity(pattern: string): number {
  if (pattern === '*') return 0;
  if (pattern.startsWith('*.')) return pattern.length;
  return 1_000_000 + pattern.length;
}

/** The best score of `patterns` for `host`, or -1 when none matches. */
export function bestMatch(patterns: readonly string[], host: string): number {
  let best = -1;
  for (const p of patterns) if (hostMatches(p, host)) best = Math.max(best, specificity(p));
  return best;
}

/** The entry whose hosts match `host` most specifically (first on ties), or undefined. */
export function selectByHost<T extends { readonly hosts: readonly string[] }>(entries: readonly T[], host: string): T | undefined {
  let pick: T | undefined;
  let score = -1;
  for (const e of entries) {
    const s = bestMatch(e.hosts, host);
    if (s > score) {
      score = s;
      pick = e;
    }
  }
  return pick;
}

/**
 * The virtual host for a request host: the most specific VirtualService host wins; on a tie, the one whose Gateway
 * server's own hosts match more specifically (`secure.example.com` with httpsRedirect over a `*` server).
 */
export function selectVirtualHost<T extends { readonly hosts: readonly string[]; readonly serverHosts: readonly string[] }>(entries: readonly T[], host: string): T | undefined {
  let pick: T | undefined;
  let score = -1;
  let tie = -1;
  for (const e of entries) {
    const s = bestMatch(e.hosts, host);
    if (s < 0) continue;
    const t = bestMatch(e.serverHosts, host);
    if (s > score || (s === score && t > tie)) {
      score = s;
      tie = t;
      pick = e;
    }
  }
  return pick;
}

/**
 * The intersection of a Gateway server's hosts and a VirtualService's hosts: the more specific of each matching pair
 * (`*.example.com` and `www.example.com` give `www.example.com`; `*` and `a.b` give `a.b`). Empty = not bound.
 */
export function intersectHosts(serverHosts: readonly string[], vsHosts: readonly string[]): string[] {
  const out = new Set<string>();
  for (const s of serverHosts) {
    for (const v of vsHosts) {
      if (hostMatches(s, v)) out.add(v.toLowerCase());
      else if (hostMatches(v, s)) out.add(s.toLowerCase());
    }
  }
  return [...out].sort();
}

/** The host of a Host header / :authority: without port or trailing dot, lower-cased; undefined when unusable. */
export function requestHost(header: string | undefined): string | undefined {
  if (!header) return undefined;
  let h = header.trim().toLowerCase();
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    if (end < 0) return undefined;
    h = h.slice(0, end + 1);
  } else {
    const colon = h.lastIndexOf(':');
    if (colon >= 0) h = h.slice(0, colon);
  }
  if (h.endsWith('.')) h = h.slice(0, -1);
  return h || undefined;
}

export interface RequestFacts {
  /** The request target's path, without the query string. */
  readonly path: string;
  /** Lower-case header names. */
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  /** The gateway port the request came in on. */
  readonly port: number;
}

function stringMatches(m: StringMatch, value: string, ignoreCase = false): boolean {
  const v = ignoreCase ? value.toLowerCase() : value;
  if ('exact' in m) return v === (ignoreCase ? m.exact.toLowerCase() : m.exact);
  if ('prefix' in m) return v.startsWith(ignoreCase ? m.prefix.toLowerCase() : m.prefix);
  // Regular expressions (RE2 in Istio) are not evaluated here: JavaScript's engine backtracks, and these come from
  // anyone who may write a VirtualService. The planner warns about them.
  return false;
}

/** Does one `match` entry of an HTTP route match? Unsupported conditions never match. */
export function httpMatchMatches(m: HttpMatch, req: RequestFacts): boolean {
  if (m.unsupported.length) return false;
  if (m.port !== undefined && m.port !== req.port) return false;
  if (m.uri && !stringMatches(m.uri, req.path, m.ignoreUriCase)) return false;
  for (const [name, want] of Object.entries(m.headers)) {
    const got = req.headers[name];
    if (got === undefined) return false;
    const value = Array.isArray(got) ? got.join(',') : got;
    if (!stringMatches(want, value)) return false;
  }
  return true;
}

/** The first route (in order) any of whose matches matches (a route without matches matches everything). */
export function selectHttpRoute<R extends { readonly match: readonly HttpMatch[] }>(routes: readonly R[], req: RequestFacts): { route: R; match: HttpMatch | undefined } | undefined {
  for (const route of routes) {
    if (!route.match.length) return { route, match: undefined };
    const m = route.match.find((x) => httpMatchMatches(x, req));
    if (m) return { route, match: m };
  }
  return undefined;
}

/**
 * The path after `rewrite.uri` (Istio): a prefix match has its matched prefix replaced, any other match the whole
 * path; the query string is kept.
 */
export function rewritePath(target: string, rewriteUri: string | undefined, match: HttpMatch | undefined): string {
  if (rewriteUri === undefined) return target;
  const q = target.indexOf('?');
  const path = q >= 0 ? target.slice(0, q) : target;
  const query = q >= 0 ? target.slice(q) : '';
  if (match?.uri && 'prefix' in match.uri && path.toLowerCase().startsWith(match.uri.prefix.toLowerCase())) {
    let rest = path.slice(match.uri.prefix.length);
    // `/api` -> `/` with path `/api/x` gives `/x`, not `//x`.
    if (rewriteUri.endsWith('/') && rest.startsWith('/')) rest = rest.slice(1);
    return (rewriteUri + rest || '/') + query;
  }
  return rewriteUri + query;
}

/** Picks by weight with `rnd` in [0, 1); entries with weight 0 are never picked (all 0: undefined). */
export function pickWeighted<T extends { readonly weight: number }>(items: readonly T[], rnd: number): T | undefined {
  const total = items.reduce((s, i) => s + Math.max(0, i.weight), 0);
  if (total <= 0) return undefined;
  let x = rnd * total;
  for (const i of items) {
    if (i.weight <= 0) continue;
    if (x < i.weight) return i;
    x -= i.weight;
  }
  return items.filter((i) => i.weight > 0).at(-1);
}
