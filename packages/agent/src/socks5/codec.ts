// SOCKS5 wire format (RFC 1928) and username/password sub-negotiation (RFC 1929): parsers that take the bytes read
// so far and say "need more", "here it is (n bytes used)" or "malformed", and encoders for every reply. Pure.
//
//   greeting   VER=5 NMETHODS(1-255) METHODS...            -> VER=5 METHOD (0x00 none, 0x02 user/pass, 0xFF none acceptable)
//   auth       VER=1 ULEN(1-255) UNAME PLEN(0-255) PASSWD    -> VER=1 STATUS (0 = success)
//   request    VER=5 CMD RSV ATYP DST.ADDR DST.PORT          -> VER=5 REP RSV=0 ATYP BND.ADDR BND.PORT
//              ATYP 1 = IPv4 (4 bytes), 3 = domain (LEN + name), 4 = IPv6 (16 bytes); port big-endian
import { isIPv4, isIPv6 } from 'node:net';

export const SOCKS_VERSION = 0x05;
export const AUTH_VERSION = 0x01;

export const METHOD_NO_AUTH = 0x00;
export const METHOD_USERPASS = 0x02;
export const METHOD_NONE_ACCEPTABLE = 0xff;

export const CMD_CONNECT = 0x01;
export const CMD_BIND = 0x02;
export const CMD_UDP_ASSOCIATE = 0x03;

export const ATYP_IPV4 = 0x01;
export const ATYP_DOMAIN = 0x03;
export const ATYP_IPV6 = 0x04;

/** Reply codes (REP), RFC 1928 section 6. */
export const REP = {
  SUCCEEDED: 0x00,
  GENERAL_FAILURE: 0x01,
  NOT_ALLOWED: 0x02,
  NETWORK_UNREACHABLE: 0x03,
  HOST_UNREACHABLE: 0x04,
  CONNECTION_REFUSED: 0x05,
  TTL_EXPIRED: 0x06,
  COMMAND_NOT_SUPPORTED: 0x07,
  ADDRESS_TYPE_NOT_SUPPORTED: 0x08,
} as const;
export type ReplyCode = (typeof REP)[keyof typeof REP];

/** Metric label for a reply code. */
export function replyName(rep: number): string {
  switch (rep) {
    case REP.SUCCEEDED: return 'succeeded';
    case REP.GENERAL_FAILURE: return 'general_failure';
    case REP.NOT_ALLOWED: return 'not_allowed';
    case REP.NETWORK_UNREACHABLE: return 'network_unreachable';
    case REP.HOST_UNREACHABLE: return 'host_unreachable';
    case REP.CONNECTION_REFUSED: return 'connection_refused';
    case REP.TTL_EXPIRED: return 'ttl_expired';
    case REP.COMMAND_NOT_SUPPORTED: return 'command_not_supported';
    case REP.ADDRESS_TYPE_NOT_SUPPORTED: return 'address_type_not_supported';
    default: return 'unknown';
  }
}

/** The largest greeting (2 + 255 methods), auth message (3 + 255 + 255) and request (7 + 255): 1,032 bytes in all. */
export const MAX_GREETING_BYTES = 257;
export const MAX_AUTH_BYTES = 513;
export const MAX_REQUEST_BYTES = 262;

export type Parsed<T> =
  | { readonly kind: 'need' }
  | { readonly kind: 'ok'; readonly value: T; readonly used: number }
  /** Malformed. `reply`: the request reply to send before closing (only where the protocol has one). */
  | { readonly kind: 'error'; readonly reason: string; readonly reply?: ReplyCode };

const NEED = Object.freeze({ kind: 'need' as const });

export interface Greeting {
  readonly methods: readonly number[];
}

export function parseGreeting(b: Uint8Array): Parsed<Greeting> {
  if (b.length < 1) return NEED;
  if (b[0] !== SOCKS_VERSION) return { kind: 'error', reason: `version ${b[0]} (not SOCKS5)` };
  if (b.length < 2) return NEED;
  const n = b[1];
  if (n === 0) return { kind: 'error', reason: 'no authentication methods offered' };
  if (b.length < 2 + n) return NEED;
  return { kind: 'ok', value: { methods: [...b.subarray(2, 2 + n)] }, used: 2 + n };
}

export interface UserPass {
  readonly username: Buffer;
  readonly password: Buffer;
}

export function parseAuth(b: Uint8Array): Parsed<UserPass> {
  if (b.length < 1) return NEED;
  if (b[0] !== AUTH_VERSION) return { kind: 'error', reason: `username/password version ${b[0]}` };
  if (b.length < 2) return NEED;
  const ulen = b[1];
  if (ulen === 0) return { kind: 'error', reason: 'empty username' };
  if (b.length < 3 + ulen) return NEED;
  const plen = b[2 + ulen];
  const end = 3 + ulen + plen;
  if (b.length < end) return NEED;
  return { kind: 'ok', value: { username: Buffer.from(b.subarray(2, 2 + ulen)), password: Buffer.from(b.subarray(3 + ulen, end)) }, used: end };
}

export type AddressType = 'ipv4' | 'ipv6' | 'domain';

export interface Request {
  readonly command: number;
  readonly addressType: AddressType;
  /** Dotted IPv4, RFC 5952 IPv6, or the domain name as sent (bytes as latin1; checked by the caller). */
  readonly host: string;
  readonly port: number;
}

export function parseRequest(b: Uint8Array): Parsed<Request> {
  if (b.length < 1) return NEED;
  if (b[0] !== SOCKS_VERSION) return { kind: 'error', reason: `request version ${b[0]}`, reply: REP.GENERAL_FAILURE };
  if (b.length < 4) return NEED;
  const command = b[1];
  // b[2] is RSV (0x00); its value is not checked (robustness: it carries nothing).
  const atyp = b[3];
  let host: string;
  let at: number;
  let addressType: AddressType;
  if (atyp === ATYP_IPV4) {
    if (b.length < 4 + 4 + 2) return NEED;
    host = `${b[4]}.${b[5]}.${b[6]}.${b[7]}`;
    at = 8;
    addressType = 'ipv4';
  } else if (atyp === ATYP_IPV6) {
    if (b.length < 4 + 16 + 2) return NEED;
    host = formatIPv6(b.subarray(4, 20));
    at = 20;
    addressType = 'ipv6';
  } else if (atyp === ATYP_DOMAIN) {
    if (b.length < 5) return NEED;
    const len = b[4];
    if (len === 0) return { kind: 'error', reason: 'empty domain name', reply: REP.HOST_UNREACHABLE };
    if (b.length < 5 + len + 2) return NEED;
    host = Buffer.from(b.subarray(5, 5 + len)).toString('latin1');
    at = 5 + len;
    addressType = 'domain';
  } else {
    // The length of an unknown address type is unknown: answer and close.
    return { kind: 'error', reason: `address type ${atyp}`, reply: REP.ADDRESS_TYPE_NOT_SUPPORTED };
  }
  const port = (b[at] << 8) | b[at + 1];
  return { kind: 'ok', value: { command, addressType, host, port }, used: at + 2 };
}

/** RFC 5952 text of 16 address bytes (lower case, longest run of two or more zero groups as `::`). */
export function formatIPv6(a: Uint8Array): string {
  const g: number[] = [];
  for (let i = 0; i < 16; i += 2) g.push((a[i] << 8) | a[i + 1]);
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) { best = i; bestLen = j - i; }
    i = j;
  }
  const hex = g.map((x) => x.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

export function encodeMethodChoice(method: number): Buffer {
  return Buffer.from([SOCKS_VERSION, method]);
}

export function encodeAuthStatus(ok: boolean): Buffer {
  return Buffer.from([AUTH_VERSION, ok ? 0x00 : 0x01]);
}

/**
 * A request reply. BND.ADDR/BND.PORT default to 0.0.0.0:0: clients of CONNECT do not use them, and the agent's own
 * addresses are nothing the client needs to learn.
 */
export function encodeReply(rep: ReplyCode, bind: { host: string; port: number } = { host: '0.0.0.0', port: 0 }): Buffer {
  let addr: Buffer;
  let atyp: number;
  if (isIPv4(bind.host)) {
    atyp = ATYP_IPV4;
    addr = Buffer.from(bind.host.split('.').map(Number));
  } else if (isIPv6(bind.host)) {
    atyp = ATYP_IPV6;
    addr = ipv6Bytes(bind.host);
  } else {
    throw new Error(`bind address ${bind.host} is not an IP`);
  }
  const out = Buffer.alloc(4 + addr.length + 2);
  out[0] = SOCKS_VERSION;
  out[1] = rep;
  out[2] = 0;
  out[3] = atyp;
  addr.copy(out, 4);
  out.writeUInt16BE(bind.port, 4 + addr.length);
  return out;
}

function ipv6Bytes(s: string): Buffer {
  const [head, tail] = s.includes('::') ? s.split('::') : [s, undefined];
  const hs = head ? head.split(':') : [];
  const ts = tail ? tail.split(':') : [];
  const groups = tail === undefined ? hs : [...hs, ...Array<string>(8 - hs.length - ts.length).fill('0'), ...ts];
  const out = Buffer.alloc(16);
  groups.forEach((x, i) => out.writeUInt16BE(parseInt(x, 16) || 0, i * 2));
  return out;
}

/** The method to answer a greeting with: user/pass when required (and offered), else none (when offered). Pure. */
export function chooseMethod(offered: readonly number[], requireAuth: boolean): number {
  if (requireAuth) return offered.includes(METHOD_USERPASS) ? METHOD_USERPASS : METHOD_NONE_ACCEPTABLE;
  return offered.includes(METHOD_NO_AUTH) ? METHOD_NO_AUTH : METHOD_NONE_ACCEPTABLE;
}
