// Wire helpers over dns-packet: parse a query (or say why not), encode a reply that echoes the question bytes
// exactly as asked, EDNS0, truncation to the client's UDP size, and ID/TTL patching of pre-encoded replies.
import dnsPacket from 'dns-packet';
import type { Answer, OptAnswer } from 'dns-packet';

/** Our advertised EDNS UDP payload size and the largest UDP reply we send (DNS flag day 2020: no fragmentation). */
export const EDNS_UDP_SIZE = 1232;
/** Classic DNS UDP limit without EDNS. */
export const PLAIN_UDP_SIZE = 512;
export const MAX_TCP_MESSAGE = 65535;

const QR = 0x8000;
const AA = 0x0400;
const TC = 0x0200;
const RD = 0x0100;
const RA = 0x0080;
const AD = 0x0020;
const CD = 0x0010;

export interface Edns {
  udpSize: number;
  version: number;
  do: boolean;
}

export interface ParsedQuery {
  id: number;
  rd: boolean;
  cd: boolean;
  name: string;
  type: string;
  class: string;
  /** Raw question section (name + type + class) exactly as the client sent it. */
  questionBytes: Buffer;
  edns?: Edns;
}

/** What to do with a datagram: answer it, reply with a header-only error, or drop it (malformed). */
export type QueryParse =
  | { kind: 'query'; q: ParsedQuery }
  | { kind: 'error'; id: number; flags: number; rcode: number }
  | { kind: 'malformed'; reason: string };

/** End offset of an uncompressed-or-pointer-terminated name starting at `off`; -1 when it runs off the buffer. */
function nameEnd(buf: Buffer, off: number): number {
  for (let hops = 0; hops < 128; hops++) {
    if (off >= buf.length) return -1;
    const len = buf[off];
    if (len === 0) return off + 1;
    if ((len & 0xc0) === 0xc0) return off + 2 <= buf.length ? off + 2 : -1;
    if ((len & 0xc0) !== 0) return -1;
    off += len + 1;
  }
  return -1;
}

export function parseQuery(buf: Buffer): QueryParse {
  if (buf.length < 12) return { kind: 'malformed', reason: 'short' };
  const id = buf.readUInt16BE(0);
  const flags = buf.readUInt16BE(2);
  if (flags & QR) return { kind: 'malformed', reason: 'response' };
  const opcode = (flags >> 11) & 0xf;
  let p: dnsPacket.DecodedPacket;
  try {
    p = dnsPacket.decode(buf);
  } catch {
    return { kind: 'malformed', reason: 'decode' };
  }
  if (opcode !== 0) return { kind: 'error', id, flags, rcode: 4 }; // NOTIMP
  const qs = p.questions ?? [];
  if (qs.length !== 1 || !qs[0]) return { kind: 'error', id, flags, rcode: 1 }; // FORMERR
  const end = nameEnd(buf, 12);
  if (end < 0 || end + 4 > buf.length) return { kind: 'malformed', reason: 'question' };
  let edns: Edns | undefined;
  for (const a of p.additionals ?? []) {
    if (a && a.type === 'OPT') {
      if (edns) return { kind: 'error', id, flags, rcode: 1 }; // two OPT records: FORMERR (RFC 6891)
      const o = a as OptAnswer;
      edns = { udpSize: o.udpPayloadSize, version: o.ednsVersion, do: (o.flags & 0x8000) !== 0 };
    }
  }
  const q = qs[0];
  return {
    kind: 'query',
    q: { id, rd: (flags & RD) !== 0, cd: (flags & CD) !== 0, name: q.name, type: String(q.type), class: String(q.class ?? 'IN'), questionBytes: buf.subarray(12, end + 4), edns },
  };
}

/** Largest reply for a transport: TCP 64 KiB; UDP the client's EDNS size clamped to [512, EDNS_UDP_SIZE], else 512. */
export function maxReplySize(q: ParsedQuery | undefined, tcp: boolean): number {
  if (tcp) return MAX_TCP_MESSAGE;
  if (!q?.edns) return PLAIN_UDP_SIZE;
  return Math.min(Math.max(q.edns.udpSize, PLAIN_UDP_SIZE), EDNS_UDP_SIZE);
}

export interface Reply {
  rcode: number;
  aa: boolean;
  ad?: boolean;
  answers: readonly Answer[];
  authorities: readonly Answer[];
  additionals: readonly Answer[];
}

export interface Encoded {
  wire: Buffer;
  /** Offsets of the 32-bit TTL fields (not OPT), for patching cached replies as they age. */
  ttlOffsets: number[];
  truncated: boolean;
}

const answerEnc = (dnsPacket as unknown as { answer: { encode(a: Answer, buf: Buffer, off: number): Buffer; encodingLength(a: Answer): number } }).answer;
const answerEncodeBytes = () => (answerEnc.encode as unknown as { bytes: number }).bytes;

function optRecord(q: ParsedQuery, rcode: number): OptAnswer {
  return { name: '.', type: 'OPT', udpPayloadSize: EDNS_UDP_SIZE, extendedRcode: rcode >> 4, ednsVersion: 0, flags: q.edns!.do ? 0x8000 : 0, flag_do: q.edns!.do, options: [] };
}

/** Encodes a reply to `q`. Records that do not fit `maxSize` are dropped as a whole and TC is set (RFC 2181 §9). */
export function encodeReply(q: ParsedQuery, r: Reply, maxSize: number): Encoded {
  const opt = q.edns ? optRecord(q, r.rcode) : undefined;
  const optLen = opt ? answerEnc.encodingLength(opt) : 0;
  const sections = [r.answers, r.authorities, r.additionals];
  let total = 12 + q.questionBytes.length + optLen;
  const lens = sections.map((list) => list.map((a) => answerEnc.encodingLength(a)));
  for (const l of lens) for (const n of l) total += n;
  let truncated = false;
  let use = sections;
  if (total > maxSize) {
    truncated = true;
    use = [[], [], []];
    total = 12 + q.questionBytes.length + optLen;
  }
  const wire = Buffer.allocUnsafe(total);
  let flags = QR | RA | (r.rcode & 0xf);
  if (q.rd) flags |= RD;
  if (q.cd) flags |= CD;
  if (r.aa) flags |= AA;
  if (r.ad) flags |= AD;
  if (truncated) flags |= TC;
  wire.writeUInt16BE(q.id, 0);
  wire.writeUInt16BE(flags, 2);
  wire.writeUInt16BE(1, 4);
  wire.writeUInt16BE(use[0].length, 6);
  wire.writeUInt16BE(use[1].length, 8);
  wire.writeUInt16BE(use[2].length + (opt ? 1 : 0), 10);
  q.questionBytes.copy(wire, 12);
  let off = 12 + q.questionBytes.length;
  const ttlOffsets: number[] = [];
  for (const list of use) {
    for (const a of list) {
      answerEnc.encode(a, wire, off);
      const n = answerEncodeBytes();
      // TTL sits 4 bytes after the owner name's type+class; the RDATA length and data follow (10 bytes before RDATA).
      ttlOffsets.push(nameEnd(wire, off) + 4);
      off += n;
    }
  }
  if (opt) {
    answerEnc.encode(opt, wire, off);
    off += answerEncodeBytes();
  }
  return { wire: off === total ? wire : wire.subarray(0, off), ttlOffsets, truncated };
}

/** A header-only error reply (FORMERR/NOTIMP/SERVFAIL ...) echoing the ID, opcode and RD bit. */
export function errorReply(id: number, queryFlags: number, rcode: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(id, 0);
  b.writeUInt16BE(QR | RA | (queryFlags & (0x7800 | RD | CD)) | (rcode & 0xf), 2);
  return b;
}

/** Copies a pre-encoded reply for a new query: patches the 2-byte ID and, when it aged, the TTLs. */
export function patchReply(wire: Buffer, id: number, ttlOffsets: readonly number[] | undefined, agedSeconds: number): Buffer {
  const out = Buffer.allocUnsafe(wire.length);
  wire.copy(out);
  out.writeUInt16BE(id, 0);
  if (ttlOffsets && agedSeconds > 0) {
    for (const o of ttlOffsets) {
      const t = out.readUInt32BE(o);
      out.writeUInt32BE(t > agedSeconds ? t - agedSeconds : 0, o);
    }
  }
  return out;
}

/** End of the question section (header + one question), or -1 when the message has none that parses. */
function questionEnd(msg: Buffer): number {
  if (msg.length < 12 || msg.readUInt16BE(4) !== 1) return -1;
  const end = nameEnd(msg, 12);
  return end < 0 || end + 4 > msg.length ? -1 : end + 4;
}

/**
 * REFUSED for a client we do not serve: header and question only (no OPT, no records), so it is never larger than
 * the query — refusing is no amplification. null for what is not a query (a response, shorter than a header).
 */
export function refusedReply(query: Buffer): Buffer | null {
  if (query.length < 12 || (query.readUInt16BE(2) & QR)) return null;
  const q = questionEnd(query);
  const out = Buffer.alloc(q > 0 ? q : 12);
  if (q > 0) query.copy(out, 0, 0, q);
  else query.copy(out, 0, 0, 4);
  const flags = query.readUInt16BE(2);
  out.writeUInt16BE(QR | (flags & (0x7800 | RD | CD)) | 5, 2);
  out.writeUInt16BE(q > 0 ? 1 : 0, 4);
  out.writeUInt16BE(0, 6);
  out.writeUInt16BE(0, 8);
  out.writeUInt16BE(0, 10);
  return out;
}

/**
 * The RRL "slip" reply for a limited answer: its header and question with TC set and no records, so the client
 * retries over TCP. Never larger than the query.
 */
export function slipReply(reply: Buffer): Buffer {
  const q = questionEnd(reply);
  const out = Buffer.allocUnsafe(q > 0 ? q : 12);
  reply.copy(out, 0, 0, out.length);
  out.writeUInt16BE(reply.readUInt16BE(2) | TC, 2);
  out.writeUInt16BE(q > 0 ? 1 : 0, 4);
  out.writeUInt16BE(0, 6);
  out.writeUInt16BE(0, 8);
  out.writeUInt16BE(0, 10);
  return out;
}

/**
 * What makes two answers "identical" for rate limiting: the question (name case-folded, type, class) and the
 * response code, read from the reply itself so cached, computed and forwarded answers are keyed alike. A small
 * integer (26 bits of a FNV-1a hash of the question × 16 + rcode), so that accounting builds no string on the hot
 * path; two questions sharing a hash share an account, which only ever limits more, never less.
 */
export function answerKey(reply: Buffer): number {
  const n = reply.length;
  if (n < 12) return -1;
  const rcode = reply[3] & 0x0f;
  let h = 0x811c9dc5;
  let i = 12;
  for (let hops = 0; ; hops++) {
    if (i >= n || hops > 127) return -2 - rcode;
    const len = reply[i];
    h = Math.imul(h ^ len, 16777619);
    if (len === 0) { i++; break; }
    if (len >= 0xc0) { if (i + 1 >= n) return -2 - rcode; h = Math.imul(h ^ reply[i + 1], 16777619); i += 2; break; }
    const end = i + 1 + len;
    if (end > n) return -2 - rcode;
    for (let j = i + 1; j < end; j++) {
      const b = reply[j];
      h = Math.imul(h ^ (b >= 65 && b <= 90 ? b | 0x20 : b), 16777619);
    }
    i = end;
  }
  if (i + 4 > n) return -2 - rcode;
  h = Math.imul(h ^ reply[i], 16777619);
  h = Math.imul(h ^ reply[i + 1], 16777619);
  h = Math.imul(h ^ reply[i + 2], 16777619);
  h = Math.imul(h ^ reply[i + 3], 16777619);
  return (h & 0x3ffffff) * 16 + rcode;
}
