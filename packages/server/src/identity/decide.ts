// The enrollment decision: given what an agent presented and what the server knows, issue a certificate or refuse.
// Pure (the signature and hash checks are deterministic); the Enroller does the I/O around it.
//
// Order of checks, and why:
//  1. request shape (name is a Kubernetes node name, key is 32 bytes);
//  2. proof that the caller holds the private key it wants certified (a signature over the channel binding);
//  3. the credential of the method: join token (exists, secret matches, not expired), Kubernetes (TokenReview says
//     authenticated, our audience, an allowed ServiceAccount, a node claim), bootstrap token (enabled, matches), or
//     renew (the key is the one pinned for the name). Every failure here is answered "unauthorized" and nothing else,
//     so an unauthenticated caller learns nothing about tokens, names or pins;
//  4. the credential names this node (join token bound to the name, node claim = name);
//  5. the key is not revoked;
//  6. the name is a Node of the cluster (when the server reads the cluster);
//  7. the pin: a pinned name accepts only its pinned key, whichever method and whether or not the node is connected
//     (replacing a node's key takes `node reset`); an unpinned name is pinned now — except by the bootstrap token once
//     the name has had a key revoked (a stolen box holds the bootstrap token: its replacement needs a join token or
//     Kubernetes).
import { createHash, timingSafeEqual } from 'node:crypto';
import type { RevocationSet } from '@edgemesh/common/identity/revocation';
import { publicKeyFromRaw, verifyWithContext } from '@edgemesh/common/identity/keys';
import { isNodeName } from '@edgemesh/common/identity/names';
import { validityWindow, NODE_CERT_VALIDITY_MS } from '@edgemesh/common/identity/renewal';
import { parseJoinToken, secretMatches, type JoinTokenRecord } from './jointokens.ts';
import type { ClusterView } from './nodes.ts';
import type { EnrollMethod, Pin } from './registry.ts';
import { interpretTokenReview, type TokenReviewStatus } from './tokenreview.ts';

import { ENROLL_PROOF_CONTEXT, enrollProofMessage } from '@edgemesh/common/identity/enrollproof';

export { ENROLL_PROOF_CONTEXT, enrollProofMessage };

export type Credential =
  | { readonly method: 'join'; readonly token: string; readonly record: JoinTokenRecord | undefined }
  | { readonly method: 'kubernetes'; readonly review: TokenReviewStatus | 'failed' | 'busy' }
  | { readonly method: 'bootstrap'; readonly token: string }
  | { readonly method: 'renew' };

export interface EnrollPolicy {
  readonly bootstrapToken: boolean;
  /** SHA-256 of the bootstrap token (undefined when bootstrap enrollment is off). */
  readonly bootstrapTokenHash?: Buffer;
  /** `namespace/name` ServiceAccounts allowed to enroll their node; empty = Kubernetes enrollment off. */
  readonly serviceAccounts: readonly string[];
  readonly certValidityMs?: number;
}

export interface EnrollInput {
  readonly name: string;
  readonly publicKey: Buffer;
  readonly proof: { readonly binding: Uint8Array; readonly signature: Uint8Array };
  readonly credential: Credential;
  /** The name's pin as on disk now. */
  readonly pin: Pin | undefined;
  readonly revoked: RevocationSet;
  readonly cluster: ClusterView;
  readonly policy: EnrollPolicy;
  readonly now: number;
}

/** Why a request was refused (logged and counted; the caller sees `publicReason`). */
export type RefuseReason =
  | 'bad-request' | 'bad-proof'
  | 'token-unknown' | 'token-invalid' | 'token-expired' | 'token-malformed'
  | 'kubernetes-disabled' | 'review-failed' | 'busy' | 'not-authenticated' | 'wrong-audience' | 'not-a-service-account' | 'service-account-not-allowed' | 'no-node-claim'
  | 'bootstrap-disabled'
  | 'not-enrolled' | 'key-mismatch'
  | 'token-wrong-node' | 'revoked' | 'cluster-not-ready' | 'not-a-node' | 'name-pinned' | 'bootstrap-after-revocation';

/** What the caller is told. Credential failures collapse into `unauthorized`; retryable ones say so. */
export type PublicReason = 'bad-request' | 'unauthorized' | 'retry-later' | 'method-disabled' | 'token-wrong-node' | 'revoked' | 'not-a-node' | 'name-pinned';

export function publicReason(r: RefuseReason): PublicReason {
  switch (r) {
    case 'bad-request': return 'bad-request';
    case 'busy': case 'review-failed': case 'cluster-not-ready': return 'retry-later';
    case 'kubernetes-disabled': case 'bootstrap-disabled': case 'bootstrap-after-revocation': return 'method-disabled';
    case 'token-wrong-node': case 'revoked': case 'not-a-node': case 'name-pinned': return r;
    default: return 'unauthorized';
  }
}

/** Reasons that mean "the credential was wrong" (what the failure limiter counts against the source). */
export function isCredentialFailure(r: RefuseReason): boolean {
  return publicReason(r) === 'unauthorized';
}

export type EnrollDecision =
  | {
    readonly action: 'issue';
    readonly method: EnrollMethod | 'renew';
    readonly name: string;
    readonly publicKey: Buffer;
    /** create: pin the name to this key now (exclusively); keep: it already is. */
    readonly pin: 'create' | 'keep';
    /** The join token to use up (before issuing). */
    readonly consumeToken?: string;
    readonly notBefore: number;
    readonly notAfter: number;
  }
  | { readonly action: 'refuse'; readonly reason: RefuseReason; readonly public: PublicReason };

const refuse = (reason: RefuseReason): EnrollDecision => ({ action: 'refuse', reason, public: publicReason(reason) });

function sameHash(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * Steps 1 and 2 alone (the Enroller runs them before any TokenReview, so a caller without the key costs the API
 * server nothing): undefined when the request is well-formed and the signature verifies.
 */
export function checkProof(name: string, publicKey: Buffer, method: EnrollMethod | 'renew', binding: Uint8Array, signature: Uint8Array): 'bad-request' | 'bad-proof' | undefined {
  if (!isNodeName(name) || publicKey.length !== 32) return 'bad-request';
  const key = publicKeyFromRaw(publicKey);
  if (!key) return 'bad-request';
  if (!verifyWithContext(key, ENROLL_PROOF_CONTEXT, enrollProofMessage(binding, method, name), signature)) return 'bad-proof';
  return undefined;
}

export function decideEnrollment(input: EnrollInput): EnrollDecision {
  const { name, publicKey, credential: cred, policy, now } = input;
  // 1 + 2. shape, and proof of possession bound to this channel
  const shape = checkProof(name, publicKey, cred.method, input.proof.binding, input.proof.signature);
  if (shape) return refuse(shape);
  // 3 + 4. the credential, and that it names this node
  const keyB64 = publicKey.toString('base64');
  let consumeToken: string | undefined;
  switch (cred.method) {
    case 'join': {
      const t = parseJoinToken(cred.token);
      if (!t) return refuse('token-malformed');
      if (!cred.record || cred.record.id !== t.id) return refuse('token-unknown');
      if (!secretMatches(cred.record, t.secret)) return refuse('token-invalid');
      if (now > cred.record.expiresAt) return refuse('token-expired');
      if (cred.record.node !== name) return refuse('token-wrong-node');
      consumeToken = t.id;
      break;
    }
    case 'kubernetes': {
      if (policy.serviceAccounts.length === 0) return refuse('kubernetes-disabled');
      if (cred.review === 'busy') return refuse('busy');
      if (cred.review === 'failed') return refuse('review-failed');
      const r = interpretTokenReview(cred.review, policy.serviceAccounts);
      if (!r.ok) return refuse(r.reason);
      if (r.node !== name) return refuse('token-wrong-node');
      break;
    }
    case 'bootstrap': {
      if (!policy.bootstrapToken || !policy.bootstrapTokenHash) return refuse('bootstrap-disabled');
      if (!sameHash(createHash('sha256').update(cred.token, 'utf8').digest(), policy.bootstrapTokenHash)) return refuse('token-invalid');
      break;
    }
    case 'renew': {
      // The pinned key is the credential: proven above by the signature.
      if (!input.pin) return refuse('not-enrolled');
      if (input.pin.key !== keyB64) return refuse('key-mismatch');
      break;
    }
  }
  // 5. revoked keys never get a certificate again
  if (input.revoked.isRevoked({ publicKey })) return refuse('revoked');
  // 6. only Nodes of the cluster
  if (input.cluster.kind === 'unsynced') return refuse('cluster-not-ready');
  if (input.cluster.kind === 'nodes' && !input.cluster.names.has(name)) return refuse('not-a-node');
  // 7. the pin
  let pin: 'create' | 'keep';
  if (input.pin) {
    if (input.pin.key !== keyB64) return refuse('name-pinned');
    pin = 'keep';
  } else {
    if (cred.method === 'bootstrap' && input.revoked.hasName(name)) return refuse('bootstrap-after-revocation');
    pin = 'create';
  }
  const w = validityWindow(now, policy.certValidityMs ?? NODE_CERT_VALIDITY_MS);
  return { action: 'issue', method: cred.method, name, publicKey, pin, consumeToken, notBefore: w.notBefore, notAfter: w.notAfter };
}
