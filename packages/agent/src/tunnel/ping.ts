// Authenticated punch/heartbeat packets on the shared UDP socket. The MAC key comes from an X25519 exchange of the
// two nodes' static keys, so only the two peers can make or check them; a counter (anti-replay window) stops
// replays. Layout:
//   [0] 0xE5 magic  [1] type  [2..10) sender key id  [10..22) txid  [22..30) counter u64  [30..34) udx stream id
//   [34..50) HMAC-SHA256 truncated to 16 bytes over [0..34)
import { createHmac } from 'node:crypto';
import { safeEqual } from '@edgemesh/common/tunnel/auth';
import { pairKey } from './identity.ts';

export const PING_MAGIC = 0xe5;
export const PING_BYTES = 50;
export const P = { PING: 1, PONG: 2 } as const;

/** The packet's fields (docs/tunnel-protocol.md). */
export const PING_FIELDS: readonly { offset: number; bytes: number; field: string }[] = [
  { offset: 0, bytes: 1, field: 'magic 0xE5' },
  { offset: 1, bytes: 1, field: 'type: 1 PING, 2 PONG' },
  { offset: 2, bytes: 8, field: 'sender key id' },
  { offset: 10, bytes: 12, field: 'txid (a PONG echoes it)' },
  { offset: 22, bytes: 8, field: 'counter u64 (replay window)' },
  { offset: 30, bytes: 4, field: 'the sender\'s UDX stream id for us' },
  { offset: 34, bytes: 16, field: 'HMAC-SHA256 over bytes 0..34, truncated' },
];
const BODY = 34;

export interface PingPacket { type: number; keyId: Buffer; txid: Buffer; counter: bigint; streamId: number }

export const keyId = (publicKey: Buffer): Buffer => publicKey.subarray(0, 8);

/** The pairwise ping key: only the two peers can compute it (identity.ts). */
export function pingKey(mySecret: Buffer, myPublic: Buffer, peerPublic: Buffer): Buffer {
  return pairKey(mySecret, myPublic, peerPublic, 'edgemesh/ping/v1');
}

export function isPing(b: Buffer): boolean {
  return b.length === PING_BYTES && b[0] === PING_MAGIC;
}

export function encodePing(key: Buffer, p: PingPacket): Buffer {
  const b = Buffer.alloc(PING_BYTES);
  b[0] = PING_MAGIC;
  b[1] = p.type;
  p.keyId.copy(b, 2, 0, 8);
  p.txid.copy(b, 10, 0, 12);
  b.writeBigUInt64BE(p.counter, 22);
  b.writeUInt32BE(p.streamId >>> 0, 30);
  createHmac('sha256', key).update(b.subarray(0, BODY)).digest().copy(b, BODY, 0, 16);
  return b;
}

/** Header fields without checking the MAC (to find the peer's key by key id). */
export function peekKeyId(b: Buffer): Buffer {
  return b.subarray(2, 10);
}

/** Decodes and checks the MAC; undefined when forged or malformed. */
export function decodePing(key: Buffer, b: Buffer): PingPacket | undefined {
  if (!isPing(b)) return undefined;
  const mac = createHmac('sha256', key).update(b.subarray(0, BODY)).digest().subarray(0, 16);
  if (!safeEqual(mac, b.subarray(BODY, PING_BYTES))) return undefined;
  const type = b[1];
  if (type !== P.PING && type !== P.PONG) return undefined;
  return { type, keyId: Buffer.from(b.subarray(2, 10)), txid: Buffer.from(b.subarray(10, 22)), counter: b.readBigUInt64BE(22), streamId: b.readUInt32BE(30) };
}
