// Mesh frames: the server<->server protocol on a mesh link (TLS 1.3, both sides presenting a mesh certificate of the
// cluster CA; cert.ts). Frames as frame.ts ([type u8][length u32][payload]), types in their own block 64-79 (0x40-0x4F)
// so they never collide with agent<->server frame types (protocol.ts uses 1-31). Every payload is binary except the
// rendezvous body, which is the agent's signed offer as JSON (the same fields as RENDEZVOUS, validated again by the
// receiving server with protocol.ts's schema). Pure codec: no I/O. docs/tunnel-protocol.md ("Server mesh") has the table.
import { encodeFrame } from '@edgemesh/common/tunnel/frame';
import type { StreamTypes } from '@edgemesh/common/tunnel/streams';
import { NODE_NAME_RE } from '@edgemesh/common/tunnel/protocol';

export const M = {
  HELLO: 64,
  PRESENCE_ADD: 65,
  PRESENCE_DEL: 66,
  PRESENCE_SYNCED: 67,
  RENDEZVOUS: 68,
  OPEN: 69,
  OPENED: 70,
  OPEN_FAIL: 71,
  REVOCATIONS: 72,
  PING: 73,
  PONG: 74,
  DATA: 76,
  CREDIT: 77,
  END: 78,
  RESET: 79,
} as const;

export const MESH_STREAM_TYPES: StreamTypes = { DATA: M.DATA, CREDIT: M.CREDIT, END: M.END, RESET: M.RESET };
export const MESH_PROTOCOL_VERSION = 1;
/** Server ids are 8 random bytes (16 hex) made at start: cert.ts puts them in the mesh certificate. */
export const SERVER_ID_BYTES = 8;
/** Names per PRESENCE frame: 1,024 names of at most 254 bytes stay far below MAX_FRAME_BYTES. */
export const PRESENCE_NAMES_PER_FRAME = 1024;
export const OPEN_FAIL_CODES = ['no-peer', 'limit'] as const;
export type OpenFailCode = (typeof OPEN_FAIL_CODES)[number];

export interface MeshFrameSpec { type: number; name: string; payload: string }
/** The mesh frame table (docs/tunnel-protocol.md). */
export const MESH_FRAMES: readonly MeshFrameSpec[] = [
  { type: M.HELLO, name: 'HELLO', payload: '[version u8][server id 8]' },
  { type: M.PRESENCE_ADD, name: 'PRESENCE_ADD', payload: '[count u16] count × [len u8][node name]' },
  { type: M.PRESENCE_DEL, name: 'PRESENCE_DEL', payload: '[count u16] count × [len u8][node name]' },
  { type: M.PRESENCE_SYNCED, name: 'PRESENCE_SYNCED', payload: 'empty: the full set sent after HELLO is complete' },
  { type: M.RENDEZVOUS, name: 'RENDEZVOUS', payload: '[from len u8][from][to len u8][to][rttFromMs u16][JSON offer]' },
  { type: M.OPEN, name: 'OPEN', payload: '[mid u32][from len u8][from][to len u8][to]' },
  { type: M.OPENED, name: 'OPENED', payload: '[mid u32]' },
  { type: M.OPEN_FAIL, name: 'OPEN_FAIL', payload: '[mid u32][code u8: 1 no-peer, 2 limit]' },
  { type: M.REVOCATIONS, name: 'REVOCATIONS', payload: '[signature 64][list body]' },
  { type: M.PING, name: 'PING', payload: '[t f64]' },
  { type: M.PONG, name: 'PONG', payload: 'the PING payload echoed' },
  { type: M.DATA, name: 'DATA', payload: '[mid u32][offset u64][ciphertext]' },
  { type: M.CREDIT, name: 'CREDIT', payload: '[mid u32][ack u64]' },
  { type: M.END, name: 'END', payload: '[mid u32][fin u64]' },
  { type: M.RESET, name: 'RESET', payload: '[mid u32]' },
];

const nameOk = (s: string) => NODE_NAME_RE.test(s);

/** Reads length-prefixed names; undefined on any malformed byte (the whole frame is refused). */
class Reader {
  at = 0;
  readonly b: Buffer;
  constructor(b: Buffer) {
    this.b = b;
  }

  u8(): number | undefined {
    return this.at + 1 <= this.b.length ? this.b[this.at++] : undefined;
  }

  u16(): number | undefined {
    if (this.at + 2 > this.b.length) return undefined;
    const v = this.b.readUInt16BE(this.at);
    this.at += 2;
    return v;
  }

  u32(): number | undefined {
    if (this.at + 4 > this.b.length) return undefined;
    const v = this.b.readUInt32BE(this.at);
    this.at += 4;
    return v;
  }

  name(): string | undefined {
    const n = this.u8();
    if (n === undefined || n === 0 || this.at + n > this.b.length) return undefined;
    const s = this.b.toString('latin1', this.at, this.at + n);
    this.at += n;
    return nameOk(s) ? s : undefined;
  }

  get done(): boolean {
    return this.at === this.b.length;
  }
}

function nameBytes(s: string): Buffer {
  if (!nameOk(s)) throw new RangeError(`not a node name: ${JSON.stringify(s)}`);
  const b = Buffer.from(s, 'latin1');
  return Buffer.concat([Buffer.from([b.length]), b]);
}

export function encodeHello(id: Buffer): Buffer {
  if (id.length !== SERVER_ID_BYTES) throw new RangeError('server id must be 8 bytes');
  return encodeFrame(M.HELLO, Buffer.concat([Buffer.from([MESH_PROTOCOL_VERSION]), id]));
}

export function decodeHello(p: Buffer): { version: number; id: Buffer } | undefined {
  return p.length === 1 + SERVER_ID_BYTES ? { version: p[0], id: Buffer.from(p.subarray(1)) } : undefined;
}

/** PRESENCE_ADD / PRESENCE_DEL frames for `names`, PRESENCE_NAMES_PER_FRAME per frame. */
export function encodePresence(type: typeof M.PRESENCE_ADD | typeof M.PRESENCE_DEL, names: readonly string[]): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < names.length; i += PRESENCE_NAMES_PER_FRAME) {
    const chunk = names.slice(i, i + PRESENCE_NAMES_PER_FRAME);
    const count = Buffer.allocUnsafe(2);
    count.writeUInt16BE(chunk.length);
    out.push(encodeFrame(type, Buffer.concat([count, ...chunk.map(nameBytes)])));
  }
  return out;
}

export function decodePresence(p: Buffer): string[] | undefined {
  const r = new Reader(p);
  const n = r.u16();
  if (n === undefined || n > PRESENCE_NAMES_PER_FRAME) return undefined;
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    const s = r.name();
    if (s === undefined) return undefined;
    out.push(s);
  }
  return r.done ? out : undefined;
}

export interface MeshRendezvous { from: string; to: string; rttFromMs: number; offer: Buffer }

export function encodeRendezvous(m: MeshRendezvous): Buffer {
  const rtt = Buffer.allocUnsafe(2);
  rtt.writeUInt16BE(Math.max(0, Math.min(0xffff, Math.round(m.rttFromMs))));
  return encodeFrame(M.RENDEZVOUS, Buffer.concat([nameBytes(m.from), nameBytes(m.to), rtt, m.offer]));
}

export function decodeRendezvous(p: Buffer): MeshRendezvous | undefined {
  const r = new Reader(p);
  const from = r.name();
  const to = r.name();
  const rttFromMs = r.u16();
  if (from === undefined || to === undefined || rttFromMs === undefined) return undefined;
  return { from, to, rttFromMs, offer: p.subarray(r.at) };
}

export function encodeOpen(mid: number, from: string, to: string): Buffer {
  const id = Buffer.allocUnsafe(4);
  id.writeUInt32BE(mid >>> 0);
  return encodeFrame(M.OPEN, Buffer.concat([id, nameBytes(from), nameBytes(to)]));
}

export function decodeOpen(p: Buffer): { mid: number; from: string; to: string } | undefined {
  const r = new Reader(p);
  const mid = r.u32();
  const from = r.name();
  const to = r.name();
  return mid !== undefined && from !== undefined && to !== undefined && r.done ? { mid, from, to } : undefined;
}

export function encodeOpened(mid: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(mid >>> 0);
  return encodeFrame(M.OPENED, b);
}

export function decodeMid(p: Buffer): number | undefined {
  return p.length === 4 ? p.readUInt32BE(0) : undefined;
}

export function encodeOpenFail(mid: number, code: OpenFailCode): Buffer {
  const b = Buffer.allocUnsafe(5);
  b.writeUInt32BE(mid >>> 0);
  b[4] = OPEN_FAIL_CODES.indexOf(code) + 1;
  return encodeFrame(M.OPEN_FAIL, b);
}

export function decodeOpenFail(p: Buffer): { mid: number; code: OpenFailCode } | undefined {
  if (p.length !== 5) return undefined;
  const code = OPEN_FAIL_CODES[p[4] - 1];
  return code ? { mid: p.readUInt32BE(0), code } : undefined;
}

export const REVOCATION_SIG_BYTES = 64;

export function encodeRevocations(body: Buffer, signature: Buffer): Buffer {
  return encodeFrame(M.REVOCATIONS, Buffer.concat([signature, body]));
}

export function decodeRevocations(p: Buffer): { body: Buffer; signature: Buffer } | undefined {
  return p.length > REVOCATION_SIG_BYTES ? { signature: p.subarray(0, REVOCATION_SIG_BYTES), body: p.subarray(REVOCATION_SIG_BYTES) } : undefined;
}

export function encodePing(type: typeof M.PING | typeof M.PONG, t: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeDoubleBE(t);
  return encodeFrame(type, b);
}

export function decodePing(p: Buffer): number | undefined {
  return p.length === 8 ? p.readDoubleBE(0) : undefined;
}
