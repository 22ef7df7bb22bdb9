// Who a peer is, decided in one place. A peer proves its node key in the Noise handshake and presents its node
// certificate (signed by the cluster CA) in the link HELLO's identity field; checkPeerCert verifies it end to end:
// our CA, the name of the node we meant to reach (or that the server says is calling), the key Noise proved, the
// validity window and our revocation list. What a server says about a key is never trusted.
//
// The pair key (X25519 of the two static keys) is known only to the two nodes: ping MACs and the session proofs in
// the link HELLO are made with keys derived from it.
import { createHmac } from 'node:crypto';
import sodium from 'sodium-native';
import type { VerifyResult } from '@edgemesh/common/identity/cert';
import { safeEqual } from '@edgemesh/common/tunnel/auth';

/** What the link handshake needs of the agent's identity (AgentIdentity; unit tests give one with a test CA). */
export interface PeerIdentity {
  /** Our node certificate (sent in our HELLO). */
  ourCert(): Buffer;
  /** A peer's certificate against our CA and revocations: it must name `name` and bind `key`. */
  verifyPeer(raw: Uint8Array, name: string, key: Uint8Array): VerifyResult;
}

/** Why the certificate a peer's HELLO presents is not acceptable for `node` with Noise key `presentedKey`
 *  (undefined = fine); `notAfter` of the accepted certificate otherwise. */
export function checkPeerCert(id: PeerIdentity, node: string, presentedKey: Buffer, identity: Buffer): { why: string } | { notAfter: number } {
  if (identity.length === 0) return { why: `peer ${node} presented no certificate` };
  const v = id.verifyPeer(identity, node, presentedKey);
  return v.ok ? { notAfter: v.cert.notAfter } : { why: `peer ${node} certificate refused: ${v.reason}` };
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

/** Our HELLO's proof for a link whose peer proved `remoteKey`: MAC under the pair key of this link. */
export function helloProof(keyPair: { secretKey: Buffer; publicKey: Buffer }, remoteKey: Buffer, handshakeHash: Buffer, sid: Buffer, peerSid: Buffer): Buffer {
  return attachProof(pairKey(keyPair.secretKey, keyPair.publicKey, remoteKey, SESSION_KEY_LABEL), handshakeHash, sid, peerSid);
}

/** The peer's HELLO on a link: its certificate (checkPeerCert) and its session proof under the pair key. */
export function checkHello(id: PeerIdentity, keyPair: { secretKey: Buffer; publicKey: Buffer }, node: string, link: { remoteKey: Buffer; handshakeHash: Buffer },
  hello: { sid: Buffer; peerSid: Buffer; proof: Buffer; identity: Buffer }): { why: string; reason: 'certificate' | 'proof' } | { notAfter: number } {
  const cert = checkPeerCert(id, node, link.remoteKey, hello.identity);
  if ('why' in cert) return { why: cert.why, reason: 'certificate' };
  const sk = pairKey(keyPair.secretKey, keyPair.publicKey, link.remoteKey, SESSION_KEY_LABEL);
  if (!checkAttachProof(sk, link.handshakeHash, hello.sid, hello.peerSid, hello.proof)) return { why: 'bad session proof', reason: 'proof' };
  return cert;
}
