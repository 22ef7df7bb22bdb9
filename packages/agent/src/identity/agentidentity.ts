// The agent's identity at run time: the CA it trusts (caFile, caHash, or first use), its node certificate, the
// newest revocation list, and the checks every connection makes with them. ServerConn (control channel) asks it for
// ENROLL messages and hands it the server's chain, certificates and revocation lists; the link handshake and
// rendezvous (identity.ts) verify peers' certificates through it. Pure apart from the stateDir files it keeps.
import { EventEmitter } from 'node:events';
import { createPrivateKey, type KeyObject } from 'node:crypto';
import type { Logger } from '@edgemesh/common/log';
import type { RawKeyPair } from '@edgemesh/common/tunnel/ed25519';
import type { ClusterCa } from '@edgemesh/common/identity/ca';
import { decodeNodeCert, verifyNodeCert, type NodeCertificate, type VerifyResult } from '@edgemesh/common/identity/cert';
import { ENROLL_PROOF_CONTEXT, enrollProofMessage } from '@edgemesh/common/identity/enrollproof';
import { signWithContext } from '@edgemesh/common/identity/keys';
import { nextRenewalDelay } from '@edgemesh/common/identity/renewal';
import { RevocationSet, verifyRevocationList, type SignedRevocationList } from '@edgemesh/common/identity/revocation';
import { pinCa, verifyServerChain, type CaTrust, type ChainResult } from '@edgemesh/common/identity/trust';
import { certAction, enrollmentPlan, loadNodeCert, saveNodeCert, type AgentCredentials, type AgentEnrollMethod } from './enroll.ts';

export interface AgentIdentityOptions {
  node: string;
  stateDir: string;
  keyPair: RawKeyPair;
  trust: CaTrust;
  /** Re-read before every enrollment (the kubelet rotates the ServiceAccount token; a join token file may go). */
  credentials: () => AgentCredentials;
  log: Logger;
  now?: () => number;
}

export interface EnrollMessage { method: AgentEnrollMethod; name: string; key: Buffer; token: string; sig: Buffer }

/** Emits 'revocations' (RevocationSet) when a newer signed list was accepted, 'cert' (NodeCertificate) on a new one. */
export class AgentIdentity extends EventEmitter {
  readonly node: string;
  readonly keyPair: RawKeyPair;
  private readonly o: AgentIdentityOptions;
  private readonly now: () => number;
  private readonly privateKey: KeyObject;
  private trustState: CaTrust;
  private certificate: NodeCertificate | undefined;
  private revoked = new RevocationSet();
  private revokedIssuedAt = -1;

  constructor(o: AgentIdentityOptions) {
    super();
    this.o = o;
    this.node = o.node;
    this.keyPair = o.keyPair;
    this.now = o.now ?? Date.now;
    this.trustState = o.trust;
    const sk = o.keyPair.secretKey;
    this.privateKey = createPrivateKey({ key: { kty: 'OKP', crv: 'Ed25519', d: sk.subarray(0, 32).toString('base64url'), x: sk.subarray(32).toString('base64url') }, format: 'jwk' });
    this.certificate = loadNodeCert(o.stateDir, o.node, o.keyPair.publicKey);
  }

  get trust(): CaTrust {
    return this.trustState;
  }

  /** The CA peers' certificates are checked against (undefined until the first server was verified under TOFU/caHash). */
  get ca(): ClusterCa | undefined {
    return this.trustState.ca;
  }

  get cert(): NodeCertificate | undefined {
    return this.certificate;
  }

  get revocations(): RevocationSet {
    return this.revoked;
  }

  /** The methods to try on a new connection, in order (renew first when we hold a certificate for our key). */
  plan(): AgentEnrollMethod[] {
    let creds: AgentCredentials = {};
    try {
      creds = this.o.credentials();
    } catch (e) {
      this.o.log.warn({ err: (e as Error).message }, 'cannot read the enrollment credentials');
    }
    return enrollmentPlan(this.certificate, creds).filter((m) => m === 'renew' || this.tokenFor(m, creds) !== '');
  }

  private tokenFor(method: AgentEnrollMethod, creds: AgentCredentials): string {
    switch (method) {
      case 'join': return creds.joinToken ?? '';
      case 'kubernetes': return creds.serviceAccountToken ?? '';
      case 'bootstrap': return creds.bootstrapToken ?? '';
      default: return '';
    }
  }

  /** The ENROLL for `method` on the connection whose TLS exporter is `binding`: the proof signs binding, method, name. */
  enrollMessage(method: AgentEnrollMethod, binding: Uint8Array): EnrollMessage {
    let token = '';
    if (method !== 'renew') {
      try {
        token = this.tokenFor(method, this.o.credentials());
      } catch {
        token = '';
      }
    }
    const sig = signWithContext(this.privateKey, ENROLL_PROOF_CONTEXT, enrollProofMessage(binding, method, this.node));
    return { method, name: this.node, key: this.keyPair.publicKey, token, sig };
  }

  /** Checks the server's TLS chain (DER, leaf first) against our trust before anything is sent. */
  checkServer(chain: readonly Uint8Array[]): ChainResult {
    return verifyServerChain(this.trustState, chain, this.now());
  }

  /**
   * A certificate the server issued us on a connection whose chain gave `chain`: checked (our CA, our name, our key,
   * in its validity window), kept in stateDir; a CA learned by caHash or first use is pinned now (the channel worked).
   * Returns why it is refused, if it is.
   */
  acceptCert(raw: Buffer, chain: ChainResult & { ok: true }): string | undefined {
    // Two servers checked before either signed us in may have shown different CAs: only the one pinned counts.
    if (this.trustState.ca && this.trustState.ca.hash !== chain.ca.hash) return 'ca-changed';
    const v = verifyNodeCert(raw, { ca: chain.ca, now: this.now(), name: this.node, publicKey: this.keyPair.publicKey });
    if (!v.ok) return `the server issued an unusable certificate (${v.reason})`;
    if (chain.learned && !this.trustState.ca) {
      const file = pinCa(this.o.stateDir, chain.ca);
      this.o.log.info({ caHash: chain.ca.hash, file }, 'pinned the cluster CA');
      this.trustState = { ...this.trustState, ca: chain.ca } as CaTrust;
    }
    if (!this.certificate || v.cert.notAfter >= this.certificate.notAfter) {
      this.certificate = v.cert;
      saveNodeCert(this.o.stateDir, v.cert);
      this.emit('cert', v.cert);
    }
    return undefined;
  }

  /** What the certificate needs now (nothing, renewal, a new enrollment) and when to look again (ms). */
  renewal(lastFailureAt?: number): { action: 'enroll' | 'renew' | 'none'; delayMs: number } {
    const now = this.now();
    const c = this.certificate;
    return { action: certAction(c, now), delayMs: c ? nextRenewalDelay(c, now, lastFailureAt) : 0 };
  }

  /** A revocation list from the server: kept when the CA signed it and it is newer than ours. */
  acceptRevocations(signed: SignedRevocationList): boolean {
    const ca = this.trustState.ca;
    if (!ca) return false;
    const r = verifyRevocationList(signed, ca, this.revokedIssuedAt);
    if (!r.ok) {
      if (r.reason !== 'stale') this.o.log.warn({ reason: r.reason }, 'refused a revocation list');
      return false;
    }
    this.revokedIssuedAt = r.list.issuedAt;
    this.revoked = new RevocationSet(r.list.entries);
    this.emit('revocations', this.revoked);
    return true;
  }

  /** A peer's certificate: our CA, `name` (the node we meant to reach / it claims to be), `key` (what Noise proved). */
  verifyPeer(raw: Uint8Array, name: string, key: Uint8Array | undefined): VerifyResult {
    const ca = this.trustState.ca;
    if (!ca) return { ok: false, reason: 'wrong-issuer' };
    return verifyNodeCert(raw, { ca, now: this.now(), name, publicKey: key, revoked: this.revoked });
  }

  /** Our certificate's bytes (what we present to peers); empty before the first enrollment. */
  ourCert(): Buffer {
    return this.certificate?.raw ?? Buffer.alloc(0);
  }

  /** Our node key's signature of `data` under `context` (rendezvous offers). */
  sign(context: string, data: Uint8Array): Buffer {
    return signWithContext(this.privateKey, context, data);
  }
}

export { decodeNodeCert };
