// Who a peer is, decided in one place. Today a peer proves the static key a server vouched for (OPENED, INCOMING
// and RENDEZVOUS carry it): the Noise handshake shows the peer holds it, checkPeer compares it. The next step
// (CA-signed node certificates checked end to end) changes only this module: ourIdentity() returns our certificate
// (sent in the link HELLO's identity field) and checkPeer verifies the peer's against the CA and the node name.
//
// The pair key (X25519 of the two static keys) is known only to the two nodes: ping MACs and the session proofs in
// the link HELLO are made with keys derived from it.
import { createHmac } from 'node:crypto';
import sodium from 'sodium-native';
import { safeEqual } from '@edgemesh/common/tunnel/auth';

/** What we present in a link HELLO besides the Noise static key (empty until certificates). */
export function ourIdentity(): Buffer {
  return Buffer.alloc(0);
}

/** Why the peer on a link is not `node` (undefined = it is): its Noise static key must be the vouched key. */
export function checkPeer(node: string, vouchedKey: Buffer, presentedKey: Buffer | null, _identity?: Buffer): string | undefined {
  if (!presentedKey || !safeEqual(vouchedKey, presentedKey)) return `peer ${node} presented a key the server did not vouch for`;
  return undefined;
}

/** Why the identity a peer's HELLO presents is not acceptable for `node` with Noise key `presentedKey` (undefined
 *  = fine). Nothing is presented yet; a certificate will be checked here (CA signature, node name, key). */
export function checkIdentity(_node: string, _presentedKey: Buffer, identity: Buffer): string | undefined {
  return identity.length === 0 ? undefined : 'unexpected identity in HELLO (certificates are not enabled)';
}

/** A key only the two nodes can compute: X25519(our secret, their public), bound to both public keys and a label. */
export function pairKey(mySecret: Buffer, myPublic: Buffer, peerPublic: Buffer, label: string): Buffer {
  const sk = Buffer.alloc(32);
  const pk = Buffer.alloc(32);
  const shared = Buffer.alloc(32);
  sodium.crypto_sign_ed25519_sk_to_curve25519(sk, mySecret);
  sodium.crypto_sign_ed25519_pk_to_curve25519(pk, peerPublic);
  sodium.crypto_scalarmult(shared, sk, pk);
  const [x, y] = Buffer.compare(myPublic, peerPublic) < 0 ? [myPublic, peerPublic] : [peerPublic, myPublic];
  return createHmac('sha256', shared).update(label).update(x).update(y).digest();
}

export const SESSION_KEY_LABEL = 'edgemesh/session/v1';

/**
 * The proof in a link HELLO: MAC under the pair's session key over this link's Noise handshake hash and the two
 * session ids. Only a holder of one of the two static keys can make it, and it is bound to this one link (the
 * handshake hash is fresh for every handshake), so a HELLO recorded on one link proves nothing on another.
 */
export function attachProof(sessionKey: Buffer, handshakeHash: Buffer, fromSid: Buffer, toSid: Buffer): Buffer {
  return createHmac('sha256', sessionKey).update('attach').update(handshakeHash).update(fromSid).update(toSid).digest();
}

export function checkAttachProof(sessionKey: Buffer, handshakeHash: Buffer, fromSid: Buffer, toSid: Buffer, proof: Buffer): boolean {
  return safeEqual(attachProof(sessionKey, handshakeHash, fromSid, toSid), proof);
}
