// Enrollment I/O around decideEnrollment: the failure limiter, reading the pin / token / revocations, the TokenReview,
// consuming the join token, pinning the name, signing the certificate. Transport-free: the control channel (once
// wired) calls enroll() with what the agent sent inside TLS and the connection's exported keying material.
import { createHash } from 'node:crypto';
import { Counter, type Registry } from 'prom-client';
import type { Logger } from '@edgemesh/common/log';
import type { ClusterCa } from '@edgemesh/common/identity/ca';
import { newSerial, signNodeCert, type NodeCertificate } from '@edgemesh/common/identity/cert';
import { liveEntries, signRevocationList, type SignedRevocationList } from '@edgemesh/common/identity/revocation';
import { MAX_NODE_CERT_VALIDITY_MS } from '@edgemesh/common/identity/renewal';
import { FailureLimiter, type FailureLimiterOptions } from '@edgemesh/common/ratelimit';
import { checkProof, decideEnrollment, isCredentialFailure, publicReason, type Credential, type EnrollPolicy, type PublicReason, type RefuseReason } from './decide.ts';
import { parseJoinToken, JoinTokenStore } from './jointokens.ts';
import type { ClusterNodes } from './nodes.ts';
import { NodeRegistry, REVOCATION_POLL_MS, type EnrollMethod, type Pin } from './registry.ts';
import { isNodeName } from '@edgemesh/common/identity/names';
import type { TokenReviewer } from './tokenreview.ts';

/**
 * Failed enrollments a source may make: 5 at once, then one every 10 s; 50/s for everyone together. A 128-bit
 * token is out of reach of guessing either way; the limit bounds the work (hashes, TokenReviews, logs) an attacker
 * can cause.
 */
export const ENROLL_FAILURE_LIMITS: FailureLimiterOptions = {
  perSource: { capacity: 5, ratePerSec: 0.1 },
  global: { capacity: 100, ratePerSec: 50 },
  maxSources: 10_000,
};
/** Refused enrollments are logged as one summary line at most this often. */
export const ENROLL_LOG_INTERVAL_MS = 60_000;
const METHODS: readonly string[] = ['join', 'kubernetes', 'bootstrap', 'renew'];
/** At most this many distinct corrupt pins are reported in the log (each once). */
const MAX_CORRUPT_REPORTS = 100;
/** Expired join tokens are swept this often. */
export const JOIN_TOKEN_SWEEP_MS = 10 * 60_000;

export interface EnrollRequest {
  readonly name: string;
  /** Raw 32-byte Ed25519 public key (the node's tunnel key). */
  readonly publicKey: Buffer;
  /** Node key's signature of enrollProofMessage(binding, method, name) under ENROLL_PROOF_CONTEXT. */
  readonly signature: Buffer;
  readonly method: EnrollMethod | 'renew';
  /** Join token, ServiceAccount token or bootstrap token; empty for renew. */
  readonly token: string;
}

export type EnrollResult =
  | { readonly ok: true; readonly cert: NodeCertificate; readonly pinned: boolean }
  | { readonly ok: false; readonly reason: PublicReason; readonly detail: RefuseReason | 'rate-limited' };

export interface EnrollerOptions {
  stateDir: string;
  ca: ClusterCa;
  cluster: ClusterNodes;
  policy: EnrollPolicy;
  log: Logger;
  reviewer?: TokenReviewer;
  registry?: Registry;
  now?: () => number;
  limits?: FailureLimiterOptions;
}

export class Enroller {
  readonly registry: NodeRegistry;
  readonly tokens: JoinTokenStore;
  private readonly opts: EnrollerOptions;
  private readonly now: () => number;
  private readonly limiter: FailureLimiter;
  private outcomes: Counter<'method' | 'outcome'> | undefined;
  private readonly timers: NodeJS.Timeout[] = [];
  private revocationSig: string | undefined;
  /** Names whose corrupt pin was reported (once each). */
  private readonly corruptReported = new Set<string>();
  private readonly revocationListeners = new Set<(list: SignedRevocationList) => void>();

  constructor(opts: EnrollerOptions) {
    this.opts = opts;
    this.now = opts.now ?? Date.now;
    this.registry = new NodeRegistry(opts.stateDir);
    this.tokens = new JoinTokenStore(opts.stateDir);
    this.limiter = new FailureLimiter(opts.limits ?? ENROLL_FAILURE_LIMITS, this.now());
    if (opts.registry) this.useRegistry(opts.registry);
  }

  /** Counts outcomes in edgemesh_server_enrollments_total{method,outcome} on `registry` (the server's, once it exists). */
  useRegistry(registry: Registry): void {
    if (this.outcomes) return;
    this.outcomes = new Counter({ name: 'edgemesh_server_enrollments_total', help: 'Enrollment and renewal requests by method and outcome (issued or the refusal reason)', labelNames: ['method', 'outcome'], registers: [registry] });
  }

  /** Starts the periodic jobs: aggregate failure log, join token sweep, revocation pick-up. */
  start(): void {
    const every = (ms: number, fn: () => void) => {
      const t = setInterval(() => {
        try {
          fn();
        } catch (e) {
          this.opts.log.warn({ err: e }, 'identity housekeeping failed');
        }
      }, ms);
      t.unref();
      this.timers.push(t);
    };
    every(ENROLL_LOG_INTERVAL_MS, () => this.logSummary());
    every(JOIN_TOKEN_SWEEP_MS, () => this.tokens.sweep(this.now()));
    every(REVOCATION_POLL_MS, () => this.checkRevocations());
    this.checkRevocations();
  }

  stop(): void {
    for (const t of this.timers) clearInterval(t);
    this.timers.length = 0;
    this.logSummary();
  }

  /** Writes the aggregate line for refused attempts since the last one (never one line per attempt). */
  logSummary(): void {
    const s = this.limiter.takeSummary();
    if (s) this.opts.log.warn({ failures: s.failures, rateLimited: s.limited, sources: s.sources, reasons: s.reasons }, 'refused enrollment attempts');
  }

  /**
   * Handles one enrollment or renewal. `source` is the peer address (for the limiter); `binding` the channel's
   * exported keying material the proof signature covers. Never throws for bad input.
   */
  async enroll(req: EnrollRequest, source: string, binding: Uint8Array): Promise<EnrollResult> {
    const now = this.now();
    if (!this.limiter.allow(source, now)) return this.refused(req.method, 'rate-limited', 'retry-later');
    if (!isNodeName(req.name) || !Buffer.isBuffer(req.publicKey) || !Buffer.isBuffer(req.signature) || typeof req.token !== 'string' || !METHODS.includes(req.method)) return this.fail(source, String(req.method), 'bad-request');
    // The proof first: a caller without the key gets no TokenReview, no file read.
    const bad = checkProof(req.name, req.publicKey, req.method, binding, req.signature);
    if (bad) return this.fail(source, req.method, bad);
    let pin: Pin | undefined;
    try {
      pin = this.registry.readPin(req.name);
    } catch {
      // A corrupt pin is never guessed around: the name is refused until an operator runs `node reset`.
      if (!this.corruptReported.has(req.name) && this.corruptReported.size < MAX_CORRUPT_REPORTS) {
        this.corruptReported.add(req.name);
        this.opts.log.error({ node: req.name }, 'the pin of this node is corrupt; its enrollment is refused until `edgemesh-server node reset`');
      }
      return this.fail(source, req.method, 'name-pinned');
    }
    let credential: Credential;
    switch (req.method) {
      case 'join': {
        const t = parseJoinToken(req.token);
        credential = { method: 'join', token: req.token, record: t ? this.tokens.read(t.id) : undefined };
        break;
      }
      case 'kubernetes':
        credential = { method: 'kubernetes', review: this.opts.policy.serviceAccounts.length && this.opts.reviewer ? await this.opts.reviewer.review(req.token) : { authenticated: false } };
        break;
      case 'bootstrap':
        credential = { method: 'bootstrap', token: req.token };
        break;
      case 'renew':
        credential = { method: 'renew' };
        break;
    }
    const d = decideEnrollment({
      name: req.name, publicKey: req.publicKey, proof: { binding, signature: req.signature }, credential, pin,
      revoked: this.registry.revocations(), cluster: this.opts.cluster.view(), policy: this.opts.policy, now: this.now(),
    });
    if (d.action === 'refuse') return this.fail(source, req.method, d.reason);
    if (d.consumeToken && !this.tokens.consume(d.consumeToken)) return this.fail(source, req.method, 'token-unknown');
    let pinned = false;
    if (d.pin === 'create') {
      pinned = this.registry.createPin({ name: d.name, key: d.publicKey.toString('base64'), method: d.method as EnrollMethod, enrolledAt: now });
      if (!pinned) {
        // Another enrollment of this name won the race (this process or another): only its key is accepted.
        const winner = this.registry.readPin(d.name);
        if (winner?.key !== d.publicKey.toString('base64')) return this.fail(source, req.method, 'name-pinned');
      } else {
        this.opts.log.info({ node: d.name, method: d.method, key: createHash('sha256').update(d.publicKey).digest('hex').slice(0, 16) }, 'node enrolled: name pinned to its key');
      }
    }
    const cert = signNodeCert({ name: d.name, publicKey: d.publicKey, groups: [], notBefore: d.notBefore, notAfter: d.notAfter, serial: newSerial(), issuer: this.opts.ca.keyId }, this.opts.ca.privateKey!);
    this.outcomes?.inc({ method: req.method, outcome: 'issued' });
    return { ok: true, cert, pinned };
  }

  private fail(source: string, method: string, reason: RefuseReason): EnrollResult {
    // Every refusal costs the source: a guesser runs out of answers after the burst.
    this.limiter.fail(source, reason, this.now());
    return this.refused(method, reason, publicReason(reason));
  }

  private refused(method: string, detail: RefuseReason | 'rate-limited', reason: PublicReason): EnrollResult {
    this.outcomes?.inc({ method: METHODS.includes(method) ? method : 'other', outcome: detail });
    if (detail !== 'rate-limited' && !isCredentialFailure(detail as RefuseReason)) {
      // Refusals of authenticated callers (not-a-node, name-pinned, revoked, ...) are operator-relevant; they are
      // still only logged at debug per attempt, and counted in the summary.
      this.opts.log.debug({ method, reason: detail }, 'enrollment refused');
    }
    return { ok: false, reason, detail };
  }

  /** The current revocation list, signed by the CA, trimmed to entries whose certificates can still be valid. */
  revocationList(): SignedRevocationList {
    const entries = liveEntries(this.registry.revocations().entries(), this.now(), MAX_NODE_CERT_VALIDITY_MS);
    return signRevocationList({ issuer: this.opts.ca.keyId.toString('hex'), issuedAt: this.now(), entries }, this.opts.ca.privateKey!);
  }

  /** Called with a fresh signed list whenever the revocations change (the control channel pushes it to agents). */
  onRevocations(fn: (list: SignedRevocationList) => void): () => void {
    this.revocationListeners.add(fn);
    return () => this.revocationListeners.delete(fn);
  }

  /** Looks for revocations the CLI wrote; on a change, logs it and notifies the listeners. */
  checkRevocations(): void {
    const set = this.registry.revocations();
    const sig = set.entries().map((e) => `${e.name}/${e.key}`).sort().join(',');
    if (sig === this.revocationSig) return;
    if (this.revocationSig !== undefined) this.opts.log.info({ revoked: set.size }, 'revocation list changed');
    this.revocationSig = sig;
    const list = this.revocationList();
    for (const fn of this.revocationListeners) fn(list);
  }

  /** For /status and `edgemesh fleet`: counts only (no keys, no tokens). */
  status(): { enrolled: number; revoked: number; pendingJoinTokens: number } {
    return { enrolled: this.registry.pinCount(), revoked: this.registry.revocations().size, pendingJoinTokens: this.tokens.count() };
  }
}
