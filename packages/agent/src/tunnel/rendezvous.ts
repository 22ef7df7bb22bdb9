// Rendezvous offers signed by the sender's node key (the server only forwards them; it cannot forge or alter one):
// the sender attaches its node certificate and signs a canonical encoding of the offer, its own name, the peer's
// name and its clock; the receiver verifies the certificate (our CA, the sender's name, not revoked), the signature,
// the age, and keeps only usable candidates. Pure over plain data.
import { isIP } from 'node:net';
import type { VerifyResult } from '@edgemesh/common/identity/cert';
import { publicKeyFromRaw, verifyWithContext } from '@edgemesh/common/identity/keys';
import type { Rendezvous, RendezvousCandidate } from '@edgemesh/common/tunnel/protocol';

export const RENDEZVOUS_CONTEXT = 'edgemesh rendezvous v1\0';
/** An offer older (or further ahead) than this is refused: a punch starts within seconds of its offer, and clocks of
 *  nodes are NTP-synced within well under this; a recorded offer cannot be replayed later. */
export const RENDEZVOUS_MAX_AGE_MS = 60_000;
/** Candidates kept from one offer (LAN addresses + a STUN address; more is an attempt to make us spray packets). */
export const MAX_RENDEZVOUS_CANDIDATES = 8;

export interface OfferFields {
  sid: string;
  reply?: boolean;
  mode: 'normal' | 'birthday';
  cand: readonly RendezvousCandidate[];
  nat: string;
  streamId: number;
}

/** The signed bytes: sender, receiver, the offer fields, the sender's clock. */
export function rendezvousMessage(from: string, to: string, o: OfferFields, ts: number): Buffer {
  return Buffer.from(JSON.stringify(['v1', from, to, o.sid, !!o.reply, o.mode, o.cand.map((c) => [c.host, c.port, c.kind]), o.nat, o.streamId, ts]));
}

/** Addresses a peer may ask us to send to: unicast, not loopback, not unspecified, not multicast/broadcast. */
export function usableCandidate(host: string): boolean {
  const v = isIP(host);
  if (v === 4) {
    const [a, b, c, d] = host.split('.').map(Number);
    if (a === 0 || a === 127 || a >= 224) return false;
    return !(a === 255 && b === 255 && c === 255 && d === 255);
  }
  if (v === 6) {
    const h = host.toLowerCase();
    return !(h === '::' || h === '::1' || h.startsWith('ff') || h.startsWith('::ffff:127.') || h.startsWith('::ffff:0.'));
  }
  return false;
}

export type OfferCheck = { ok: true; key: Buffer; cand: RendezvousCandidate[] } | { ok: false; reason: string };

/** The sender's rate first (limits.ts admitRendezvous: a map lookup), then checkOffer (two Ed25519 verifies): an
 *  offer over its sender's rate is refused as `rate` without any signature check. */
export function screenOffer(m: Rendezvous, self: string, now: number, admit: (peer: string, now: number) => boolean, verifyCert: (raw: Uint8Array, name: string) => VerifyResult): OfferCheck {
  if (!m.from) return { ok: false, reason: 'no-sender' };
  if (!admit(m.from, now)) return { ok: false, reason: 'rate' };
  return checkOffer(m, self, now, verifyCert);
}

/** Checks an offer received from `m.from` for us (`self`); `verifyCert` is AgentIdentity.verifyPeer. */
export function checkOffer(m: Rendezvous, self: string, now: number, verifyCert: (raw: Uint8Array, name: string) => VerifyResult): OfferCheck {
  if (!m.from) return { ok: false, reason: 'no-sender' };
  const v = verifyCert(m.cert, m.from);
  if (!v.ok) return { ok: false, reason: `certificate-${v.reason}` };
  if (Math.abs(now - m.ts) > RENDEZVOUS_MAX_AGE_MS) return { ok: false, reason: 'stale' };
  const key = publicKeyFromRaw(v.cert.publicKey);
  if (!key || !verifyWithContext(key, RENDEZVOUS_CONTEXT, rendezvousMessage(m.from, self, m, m.ts), m.sig)) return { ok: false, reason: 'bad-signature' };
  const cand = m.cand.filter((c) => usableCandidate(c.host)).slice(0, MAX_RENDEZVOUS_CANDIDATES);
  return { ok: true, key: v.cert.publicKey, cand };
}
