// The server name (SNI, RFC 6066) and ALPN offer (RFC 7301) of a TLS ClientHello, read from the first bytes of a
// connection without terminating TLS — for passthrough routing by SNI and for picking the certificate to terminate
// with. Pure: takes the bytes read so far and says "need more", "here it is" or "not a ClientHello". Bounded: a
// ClientHello may span several records, but never more than HELLO_MAX_BYTES of handshake data.
//
//   record     type(1)=22 handshake, legacy_version(2), length(2) <= 2^14, fragment
//   handshake  msg_type(1)=1 client_hello, length(3), body (possibly split over records)
//   body       legacy_version(2) random(32) session_id<0..32> cipher_suites<2..2^16-2> compression_methods<1..2^8-1>
//              extensions<0..2^16-1>: type(2) length(2) data
//   SNI (0)    server_name_list<1..2^16-1>: name_type(1)=0 host_name<1..2^16-1>
//   ALPN (16)  protocol_name_list<2..2^16-1>: name<1..2^8-1>

export const TLS_RECORD_HANDSHAKE = 22;
export const TLS_HANDSHAKE_CLIENT_HELLO = 1;
export const TLS_MAX_RECORD_BYTES = 16_384;
/** Handshake bytes of a ClientHello we accept (real ones are 0.2-2 KB; post-quantum key shares add ~1.2 KB). */
export const HELLO_MAX_BYTES = 16_384;
/**
 * Bytes read from a connection to find its ClientHello (records' headers and fragments): twice the ClientHello
 * bound, room for it split over many records; a peer that needs more is refused.
 */
export const HELLO_MAX_READ_BYTES = 2 * HELLO_MAX_BYTES;

export interface ClientHelloInfo {
  /** The host_name, lower-cased, without a trailing dot; undefined when the client sent none. */
  readonly serverName: string | undefined;
  readonly alpn: readonly string[];
}

export type HelloParse =
  | { readonly kind: 'need' }
  | { readonly kind: 'ok'; readonly hello: ClientHelloInfo }
  | { readonly kind: 'error'; readonly reason: string };

const NEED: HelloParse = Object.freeze({ kind: 'need' });
const err = (reason: string): HelloParse => ({ kind: 'error', reason });
const HOST_RE = /^[a-z0-9_]([a-z0-9_.-]{0,252})$/;

/** Concatenates the handshake fragments of the leading records; undefined + reason when a record is not handshake. */
function handshakeBytes(b: Uint8Array): { bytes: Buffer; complete: boolean } | { error: string } {
  const parts: Uint8Array[] = [];
  let total = 0;
  let at = 0;
  let want: number | undefined;
  while (at + 5 <= b.length) {
    if (b[at] !== TLS_RECORD_HANDSHAKE) return { error: at === 0 ? `not a TLS handshake (first byte ${b[at]})` : 'a non-handshake record inside the ClientHello' };
    if (b[at + 1] !== 3) return { error: `record version ${b[at + 1]}.${b[at + 2]}` };
    const len = (b[at + 3] << 8) | b[at + 4];
    if (len === 0 || len > TLS_MAX_RECORD_BYTES) return { error: `record length ${len}` };
    const end = at + 5 + len;
    const frag = b.subarray(at + 5, Math.min(end, b.length));
    parts.push(frag);
    total += frag.length;
    if (want === undefined && total >= 4) {
      const head = Buffer.concat(parts).subarray(0, 4);
      if (head[0] !== TLS_HANDSHAKE_CLIENT_HELLO) return { error: `handshake type ${head[0]} (not a ClientHello)` };
      want = 4 + ((head[1] << 16) | (head[2] << 8) | head[3]);
      if (want - 4 > HELLO_MAX_BYTES) return { error: `ClientHello of ${want - 4} bytes` };
    }
    if (want !== undefined && total >= want) return { bytes: Buffer.concat(parts).subarray(0, want), complete: true };
    if (end > b.length) break;
    at = end;
  }
  if (b.length >= 1 && b[0] !== TLS_RECORD_HANDSHAKE) return { error: `not a TLS handshake (first byte ${b[0]})` };
  return { bytes: Buffer.alloc(0), complete: false };
}

export function parseClientHello(b: Uint8Array): HelloParse {
  const hs = handshakeBytes(b);
  if ('error' in hs) return err(hs.error);
  if (!hs.complete) return NEED;
  const m = hs.bytes;
  let p = 4;
  const need = (n: number) => p + n <= m.length;
  if (!need(2 + 32 + 1)) return err('ClientHello too short');
  p += 2 + 32;
  const sid = m[p];
  if (sid > 32) return err('session id longer than 32 bytes');
  p += 1 + sid;
  if (!need(2)) return err('truncated cipher suites');
  const cs = m.readUInt16BE(p);
  if (cs < 2 || cs % 2) return err('bad cipher suites length');
  p += 2 + cs;
  if (!need(1)) return err('truncated compression methods');
  const cm = m[p];
  if (cm < 1) return err('no compression methods');
  p += 1 + cm;
  if (p > m.length) return err('truncated compression methods');
  let serverName: string | undefined;
  let alpn: string[] = [];
  if (p === m.length) return { kind: 'ok', hello: { serverName, alpn } }; // no extensions at all
  if (!need(2)) return err('truncated extensions');
  const extLen = m.readUInt16BE(p);
  p += 2;
  if (p + extLen !== m.length) return err('extensions length does not match the message');
  const seen = new Set<number>();
  while (p < m.length) {
    if (!need(4)) return err('truncated extension header');
    const type = m.readUInt16BE(p);
    const len = m.readUInt16BE(p + 2);
    p += 4;
    if (!need(len)) return err('truncated extension');
    if (seen.has(type)) return err(`extension ${type} twice`);
    seen.add(type);
    const data = m.subarray(p, p + len);
    p += len;
    if (type === 0) {
      const r = parseServerName(data);
      if (typeof r === 'object') return err(r.error);
      serverName = r;
    } else if (type === 16) {
      const r = parseAlpn(data);
      if (!Array.isArray(r)) return err(r.error);
      alpn = r;
    }
  }
  return { kind: 'ok', hello: { serverName, alpn } };
}

function parseServerName(d: Uint8Array): string | undefined | { error: string } {
  if (d.length === 0) return undefined; // a server's empty echo; clients should not send it
  if (d.length < 2) return { error: 'truncated server_name' };
  const listLen = (d[0] << 8) | d[1];
  if (listLen + 2 !== d.length) return { error: 'server_name list length does not match' };
  let p = 2;
  let host: string | undefined;
  while (p < d.length) {
    if (p + 3 > d.length) return { error: 'truncated server_name entry' };
    const type = d[p];
    const len = (d[p + 1] << 8) | d[p + 2];
    p += 3;
    if (p + len > d.length) return { error: 'truncated server_name entry' };
    if (type === 0) {
      if (host !== undefined) return { error: 'two host_name entries' };
      if (len === 0) return { error: 'empty host_name' };
      let name = Buffer.from(d.subarray(p, p + len)).toString('latin1').toLowerCase();
      if (name.endsWith('.')) name = name.slice(0, -1);
      if (!HOST_RE.test(name) || name.includes('..')) return { error: 'host_name is not a DNS name' };
      host = name;
    }
    p += len;
  }
  return host;
}

function parseAlpn(d: Uint8Array): string[] | { error: string } {
  if (d.length < 2) return { error: 'truncated ALPN' };
  const listLen = (d[0] << 8) | d[1];
  if (listLen + 2 !== d.length || listLen === 0) return { error: 'ALPN list length does not match' };
  const out: string[] = [];
  let p = 2;
  while (p < d.length) {
    const len = d[p];
    if (len === 0 || p + 1 + len > d.length) return { error: 'bad ALPN entry' };
    out.push(Buffer.from(d.subarray(p + 1, p + 1 + len)).toString('latin1'));
    p += 1 + len;
  }
  return out;
}
