// Header rewriting when the gateway forwards an HTTP/1.1 request and its response (RFC 9110 section 7.6.1). Pure.
// Works on Node's rawHeaders (a flat [name, value, name, value, ...] list: case and repeats kept).

/** Connection-specific headers never forwarded (plus whatever the Connection header names). */
export const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'proxy-authenticate']);

function connectionTokens(raw: readonly string[]): Set<string> {
  const out = new Set<string>();
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (raw[i].toLowerCase() !== 'connection') continue;
    for (const t of raw[i + 1].split(',')) if (t.trim()) out.add(t.trim().toLowerCase());
  }
  return out;
}

/**
 * The request headers for the upstream: hop-by-hop headers dropped, `expect` dropped (the gateway answered any
 * 100-continue itself), the client's address appended to `x-forwarded-for`, `x-forwarded-proto` set. Host is kept.
 */
export function upstreamRequestHeaders(raw: readonly string[], clientIP: string, proto: 'http' | 'https'): string[] {
  const drop = connectionTokens(raw);
  const out: string[] = [];
  const xff: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i];
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || drop.has(lower) || lower === 'expect' || lower === 'x-forwarded-proto') continue;
    if (lower === 'x-forwarded-for') {
      xff.push(raw[i + 1]);
      continue;
    }
    out.push(name, raw[i + 1]);
  }
  out.push('x-forwarded-for', [...xff, clientIP].join(', '));
  out.push('x-forwarded-proto', proto);
  return out;
}

/** The response headers for the client: hop-by-hop headers dropped (Node frames the response itself). */
export function clientResponseHeaders(raw: readonly string[]): string[] {
  const drop = connectionTokens(raw);
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const lower = raw[i].toLowerCase();
    if (HOP_BY_HOP.has(lower) || drop.has(lower)) continue;
    out.push(raw[i], raw[i + 1]);
  }
  return out;
}

/** The client address for x-forwarded-for (IPv4-mapped IPv6 shown as IPv4). */
export function clientAddress(remote: string | undefined): string {
  const a = remote ?? '';
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a || 'unknown';
}
