// STUN (RFC 8489) Binding codec: 20-byte header with magic cookie, XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY
// (HMAC-SHA1 with a key derived from the cluster token, so the server is not an open reflector and agents can trust
// the mapped address), FINGERPRINT (CRC-32 xor 0x5354554e, last). Pure functions; malformed input -> undefined.
import { createHmac, randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { isIPv4 } from 'node:net';
import { safeEqual } from './auth.ts';

export const STUN_HEADER_BYTES = 20;
export const MAGIC_COOKIE = 0x2112a442;
export const BINDING_REQUEST = 0x0001;
export const BINDING_SUCCESS = 0x0101;
export const ATTR_XOR_MAPPED_ADDRESS = 0x0020;
export const ATTR_MESSAGE_INTEGRITY = 0x0008;
export const ATTR_FINGERPRINT = 0x8028;
const FINGERPRINT_XOR = 0x5354554e;
const MI_BYTES = 20;

export interface StunMessage {
  type: number;
  txid: Buffer;
  mapped?: { host: string; port: number };
  /** true: MESSAGE-INTEGRITY present and valid for the key given; false: present and wrong, or absent. */
  integrity: boolean;
  fingerprint: boolean;
}

/** Key for MESSAGE-INTEGRITY derived from the cluster token (short-term credential style). */
export function stunKey(token: string): Buffer {
  return createHmac('sha256', token).update('edgemesh/stun/v1').digest().subarray(0, 20);
}

/** Demultiplexing check on a shared socket: first two bits zero and the magic cookie. */
export function looksLikeStun(b: Buffer): boolean {
  return b.length >= STUN_HEADER_BYTES && (b[0] & 0xc0) === 0 && b.readUInt32BE(4) === MAGIC_COOKIE;
}

export const newTxid = (): Buffer => randomBytes(12);

function attr(type: number, value: Buffer): Buffer {
  const pad = (4 - (value.length % 4)) % 4;
  const out = Buffer.alloc(4 + value.length + pad);
  out.writeUInt16BE(type, 0);
  out.writeUInt16BE(value.length, 2);
  value.copy(out, 4);
  return out;
}

function xorAddress(host: string, port: number, txid: Buffer): Buffer {
  if (isIPv4(host)) {
    const v = Buffer.alloc(8);
    v[1] = 0x01;
    v.writeUInt16BE(port ^ (MAGIC_COOKIE >>> 16), 2);
    const ip = host.split('.').map(Number);
    v.writeUInt32BE((((ip[0] << 24) | (ip[1] << 16) | (ip[2] << 8) | ip[3]) ^ MAGIC_COOKIE) >>> 0, 4);
    return v;
  }
  const v = Buffer.alloc(20);
  v[1] = 0x02;
  v.writeUInt16BE(port ^ (MAGIC_COOKIE >>> 16), 2);
  const raw = ipv6Bytes(host);
  const mask = Buffer.concat([Buffer.from([0x21, 0x12, 0xa4, 0x42]), txid]);
  for (let i = 0; i < 16; i++) v[4 + i] = raw[i] ^ mask[i];
  return v;
}

function ipv6Bytes(host: string): Buffer {
  const [head, tail] = host.split('::');
  const h = head ? head.split(':') : [];
  const t = tail !== undefined && tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g || '0', 16), i * 2));
  return out;
}

/** Builds a message: header, attributes, then MESSAGE-INTEGRITY (when key) and FINGERPRINT. */
export function encodeStun(type: number, txid: Buffer, attrs: Buffer[], key?: Buffer): Buffer {
  let body = Buffer.concat(attrs);
  const header = Buffer.alloc(STUN_HEADER_BYTES);
  header.writeUInt16BE(type, 0);
  header.writeUInt32BE(MAGIC_COOKIE, 4);
  txid.copy(header, 8);
  if (key) {
    header.writeUInt16BE(body.length + 4 + MI_BYTES, 2);
    const mac = createHmac('sha1', key).update(header).update(body).digest();
    body = Buffer.concat([body, attr(ATTR_MESSAGE_INTEGRITY, mac)]);
  }
  header.writeUInt16BE(body.length + 8, 2);
  const crc = (crc32(Buffer.concat([header, body])) ^ FINGERPRINT_XOR) >>> 0;
  const fp = Buffer.alloc(4);
  fp.writeUInt32BE(crc);
  return Buffer.concat([header, body, attr(ATTR_FINGERPRINT, fp)]);
}

export function bindingRequest(txid: Buffer, key?: Buffer): Buffer {
  return encodeStun(BINDING_REQUEST, txid, [], key);
}

export function bindingSuccess(txid: Buffer, mapped: { host: string; port: number }, key?: Buffer): Buffer {
  return encodeStun(BINDING_SUCCESS, txid, [attr(ATTR_XOR_MAPPED_ADDRESS, xorAddress(mapped.host, mapped.port, txid))], key);
}

function parseXorAddress(v: Buffer, txid: Buffer): { host: string; port: number } | undefined {
  if (v.length < 8) return undefined;
  const port = v.readUInt16BE(2) ^ (MAGIC_COOKIE >>> 16);
  if (v[1] === 0x01 && v.length === 8) {
    const n = (v.readUInt32BE(4) ^ MAGIC_COOKIE) >>> 0;
    return { host: [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.'), port };
  }
  if (v[1] === 0x02 && v.length === 20) {
    const mask = Buffer.concat([Buffer.from([0x21, 0x12, 0xa4, 0x42]), txid]);
    const g: string[] = [];
    for (let i = 0; i < 16; i += 2) g.push((((v[4 + i] ^ mask[i]) << 8) | (v[5 + i] ^ mask[i + 1])).toString(16));
    return { host: g.join(':'), port };
  }
  return undefined;
}

/** Decodes a STUN message; undefined when malformed (bad header, lengths, attribute overrun, bad fingerprint). */
export function decodeStun(b: Buffer, key?: Buffer): StunMessage | undefined {
  if (!looksLikeStun(b)) return undefined;
  const len = b.readUInt16BE(2);
  if (len % 4 !== 0 || STUN_HEADER_BYTES + len !== b.length) return undefined;
  const type = b.readUInt16BE(0);
  const txid = Buffer.from(b.subarray(8, 20));
  const msg: StunMessage = { type, txid, integrity: false, fingerprint: false };
  let off = STUN_HEADER_BYTES;
  let seenMi = false;
  while (off < b.length) {
    if (off + 4 > b.length) return undefined;
    const at = b.readUInt16BE(off);
    const alen = b.readUInt16BE(off + 2);
    const vstart = off + 4;
    const vend = vstart + alen;
    if (vend > b.length) return undefined;
    const v = b.subarray(vstart, vend);
    const next = vstart + alen + ((4 - (alen % 4)) % 4);
    if (next > b.length) return undefined;
    if (at === ATTR_FINGERPRINT) {
      if (alen !== 4 || next !== b.length) return undefined;
      const hdr = Buffer.from(b.subarray(0, off));
      hdr.writeUInt16BE(off - STUN_HEADER_BYTES + 8, 2);
      if (((crc32(hdr) ^ FINGERPRINT_XOR) >>> 0) !== v.readUInt32BE(0)) return undefined;
      msg.fingerprint = true;
    } else if (seenMi) {
      // Only FINGERPRINT may follow MESSAGE-INTEGRITY; anything else is ignored per the RFC.
    } else if (at === ATTR_MESSAGE_INTEGRITY) {
      if (alen !== MI_BYTES) return undefined;
      seenMi = true;
      if (key) {
        const hdr = Buffer.from(b.subarray(0, off));
        hdr.writeUInt16BE(off - STUN_HEADER_BYTES + 4 + MI_BYTES, 2);
        msg.integrity = safeEqual(createHmac('sha1', key).update(hdr).digest(), v);
      }
    } else if (at === ATTR_XOR_MAPPED_ADDRESS) {
      msg.mapped = parseXorAddress(v, txid);
    }
    off = next;
  }
  return msg;
}
