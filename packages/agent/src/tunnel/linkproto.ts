// Link frames: what two agents say inside one Noise channel (over a relay stream, a UDX stream, later TCP/TLS).
// Frames as common/tunnel/frame.ts ([type u8][length u32][payload]); LINK_FRAMES lists every type with its layout
// (docs/tunnel-protocol.md explains them). HELLO binds the link to a session; everything else belongs to the session
// (its streams survive the link) except PING/PONG, which measure this link.
import { encodeFrame } from '@edgemesh/common/tunnel/frame';
import type { StreamTypes } from '@edgemesh/common/tunnel/streams';
import type { DialErrorCode, DialTarget } from '../proxy/dialer.ts';

export const L = {
  HELLO: 1,
  ATTACH: 2,
  OPEN: 3,
  OK: 4,
  ERR: 5,
  DATA: 6,
  CREDIT: 7,
  END: 8,
  RESET: 9,
  PING: 10,
  PONG: 11,
} as const;

export const LINK_STREAM_TYPES: StreamTypes = { DATA: L.DATA, CREDIT: L.CREDIT, END: L.END, RESET: L.RESET };

export const LINK_FRAMES: readonly { type: number; name: string; payload: string }[] = [
  { type: L.HELLO, name: 'HELLO', payload: '[version u8][sid 16][peer sid 16][proof 32][identity len u16][identity]' },
  { type: L.ATTACH, name: 'ATTACH', payload: '[flags u8][seq u32][count u32] count x [id u32][state u8][recv u64][ack u64]' },
  { type: L.OPEN, name: 'OPEN', payload: '[id u32][protocol u8][port u16][timeout ms u32][ip len u8][ip][service len u16][service]' },
  { type: L.OK, name: 'OK', payload: '[id u32]' },
  { type: L.ERR, name: 'ERR', payload: '[id u32][code u8][message utf-8]' },
  { type: L.DATA, name: 'DATA', payload: '[id u32][offset u64][bytes]' },
  { type: L.CREDIT, name: 'CREDIT', payload: '[id u32][ack u64]' },
  { type: L.END, name: 'END', payload: '[id u32][fin u64]' },
  { type: L.RESET, name: 'RESET', payload: '[id u32]' },
  { type: L.PING, name: 'PING', payload: '[t f64]' },
  { type: L.PONG, name: 'PONG', payload: '[t f64] (the PING echoed)' },
];

export const LINK_VERSION = 1;
export const SID_BYTES = 16;
export const PROOF_BYTES = 32;
/** Certificates (next step of identity) fit; nothing bigger is accepted before the peer is known. */
export const MAX_IDENTITY_BYTES = 8192;

// ---------- HELLO ----------

export interface Hello { sid: Buffer; peerSid: Buffer; proof: Buffer; identity: Buffer }

export function encodeHello(h: Hello): Buffer {
  const p = Buffer.alloc(1 + SID_BYTES * 2 + PROOF_BYTES + 2 + h.identity.length);
  p[0] = LINK_VERSION;
  h.sid.copy(p, 1);
  h.peerSid.copy(p, 1 + SID_BYTES);
  h.proof.copy(p, 1 + SID_BYTES * 2);
  p.writeUInt16BE(h.identity.length, 1 + SID_BYTES * 2 + PROOF_BYTES);
  h.identity.copy(p, 3 + SID_BYTES * 2 + PROOF_BYTES);
  return encodeFrame(L.HELLO, p);
}

export function decodeHello(p: Buffer): Hello | undefined {
  const fixed = 3 + SID_BYTES * 2 + PROOF_BYTES;
  if (p.length < fixed || p[0] !== LINK_VERSION) return undefined;
  const n = p.readUInt16BE(fixed - 2);
  if (n > MAX_IDENTITY_BYTES || p.length !== fixed + n) return undefined;
  const at = (o: number, len: number) => Buffer.from(p.subarray(o, o + len));
  return { sid: at(1, SID_BYTES), peerSid: at(1 + SID_BYTES, SID_BYTES), proof: at(1 + SID_BYTES * 2, PROOF_BYTES), identity: at(fixed, n) };
}

// ---------- ATTACH ----------

export const ATTACH_REQUEST = 1;
export const ATTACH_REPLY = 2;
/** Stream states in an ATTACH entry, from the sender's point of view. */
export const S = { OPENING: 1, ANSWERING: 2, OPEN: 3 } as const;
export type EntryState = (typeof S)[keyof typeof S];
export interface AttachEntry { id: number; state: EntryState; recv: number; ack: number }
export interface Attach { flags: number; seq: number; entries: AttachEntry[] }
const ENTRY_BYTES = 21;

const u64 = (b: Buffer, v: number, at: number) => { b.writeUInt32BE(Math.floor(v / 0x1_0000_0000) >>> 0, at); b.writeUInt32BE(v >>> 0, at + 4); };
const r64 = (b: Buffer, at: number) => b.readUInt32BE(at) * 0x1_0000_0000 + b.readUInt32BE(at + 4);

export function encodeAttach(a: Attach): Buffer {
  const p = Buffer.allocUnsafe(9 + a.entries.length * ENTRY_BYTES);
  p[0] = a.flags;
  p.writeUInt32BE(a.seq >>> 0, 1);
  p.writeUInt32BE(a.entries.length, 5);
  let o = 9;
  for (const e of a.entries) {
    p.writeUInt32BE(e.id >>> 0, o);
    p[o + 4] = e.state;
    u64(p, e.recv, o + 5);
    u64(p, e.ack, o + 13);
    o += ENTRY_BYTES;
  }
  return encodeFrame(L.ATTACH, p);
}

export function decodeAttach(p: Buffer, maxEntries: number): Attach | undefined {
  if (p.length < 9) return undefined;
  const n = p.readUInt32BE(5);
  if (n > maxEntries || p.length !== 9 + n * ENTRY_BYTES) return undefined;
  const entries: AttachEntry[] = [];
  for (let i = 0, o = 9; i < n; i++, o += ENTRY_BYTES) {
    const state = p[o + 4];
    if (state !== S.OPENING && state !== S.ANSWERING && state !== S.OPEN) return undefined;
    entries.push({ id: p.readUInt32BE(o), state, recv: r64(p, o + 5), ack: r64(p, o + 13) });
  }
  return { flags: p[0], seq: p.readUInt32BE(1), entries };
}

// ---------- OPEN / OK / ERR ----------

/** The stream header: what to dial on the far side (a DialTarget) and how long the caller still waits. */
export interface StreamHeader { target: DialTarget; timeoutMs: number }

export function encodeOpen(id: number, h: StreamHeader): Buffer {
  const ip = Buffer.from(h.target.ip, 'latin1');
  const svc = Buffer.from(h.target.serviceKey, 'utf8');
  const p = Buffer.allocUnsafe(14 + ip.length + svc.length);
  p.writeUInt32BE(id >>> 0, 0);
  p[4] = h.target.protocol === 'tcp' ? 1 : 2;
  p.writeUInt16BE(h.target.port, 5);
  p.writeUInt32BE(Math.max(0, Math.min(0xffffffff, Math.round(h.timeoutMs))), 7);
  p[11] = ip.length;
  ip.copy(p, 12);
  p.writeUInt16BE(svc.length, 12 + ip.length);
  svc.copy(p, 14 + ip.length);
  return encodeFrame(L.OPEN, p);
}

export function decodeOpen(p: Buffer): { id: number; header: StreamHeader | undefined } | undefined {
  if (p.length < 4) return undefined;
  const id = p.readUInt32BE(0);
  if (p.length < 14) return { id, header: undefined };
  const proto = p[4] === 1 ? 'tcp' : p[4] === 2 ? 'udp' : undefined;
  const port = p.readUInt16BE(5);
  const ipLen = p[11];
  if (!proto || port === 0 || ipLen > 45 || p.length < 14 + ipLen) return { id, header: undefined };
  const ip = p.subarray(12, 12 + ipLen).toString('latin1');
  const svcLen = p.readUInt16BE(12 + ipLen);
  if (svcLen > 512 || p.length !== 14 + ipLen + svcLen || !/^[0-9a-fA-F.:]{2,45}$/.test(ip)) return { id, header: undefined };
  const serviceKey = p.subarray(14 + ipLen).toString('utf8');
  return { id, header: { target: { protocol: proto, serviceKey, ip, port }, timeoutMs: p.readUInt32BE(7) } };
}

export const encodeOk = (id: number): Buffer => {
  const p = Buffer.allocUnsafe(4);
  p.writeUInt32BE(id >>> 0);
  return encodeFrame(L.OK, p);
};

const ERR_CODES: readonly DialErrorCode[] = ['refused', 'timeout', 'unreachable', 'forbidden', 'no-route'];

export function encodeErr(id: number, code: DialErrorCode, message: string): Buffer {
  const m = Buffer.from(message.slice(0, 512), 'utf8');
  const p = Buffer.allocUnsafe(5 + m.length);
  p.writeUInt32BE(id >>> 0, 0);
  p[4] = ERR_CODES.indexOf(code) + 1;
  m.copy(p, 5);
  return encodeFrame(L.ERR, p);
}

export function decodeErr(p: Buffer): { id: number; code: DialErrorCode; message: string } | undefined {
  if (p.length < 5) return undefined;
  return { id: p.readUInt32BE(0), code: ERR_CODES[p[4] - 1] ?? 'refused', message: p.subarray(5).toString('utf8') };
}

export function decodeId(p: Buffer): number | undefined {
  return p.length === 4 ? p.readUInt32BE(0) : undefined;
}

// ---------- PING / PONG ----------

export function encodePingFrame(type: typeof L.PING | typeof L.PONG, t: number): Buffer {
  const p = Buffer.allocUnsafe(8);
  p.writeDoubleBE(t);
  return encodeFrame(type, p);
}
