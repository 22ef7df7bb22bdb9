// Certificate lifetimes and renewal, as pure functions of an injected clock (ms since the epoch).
import { CERT_BACKDATE_MS } from './ca.ts';

/** Node certificates live this long: a revocation that somehow misses an agent is bounded by it. */
export const NODE_CERT_VALIDITY_MS = 24 * 3_600_000;
/** Longest node certificate the server issues (a config asking for more is refused). */
export const MAX_NODE_CERT_VALIDITY_MS = 7 * 24 * 3_600_000;
/** An agent asks again this long after a failed renewal (capped by the certificate's expiry). */
export const RENEW_RETRY_MS = 60_000;

/** The validity window of a certificate issued at `now`. */
export function validityWindow(now: number, validityMs = NODE_CERT_VALIDITY_MS): { notBefore: number; notAfter: number } {
  if (!(validityMs > 0 && validityMs <= MAX_NODE_CERT_VALIDITY_MS)) throw new RangeError(`certificate validity must be in (0, ${MAX_NODE_CERT_VALIDITY_MS}] ms`);
  return { notBefore: now - CERT_BACKDATE_MS, notAfter: now + validityMs };
}

/** When to renew: at half of the certificate's life (measured from its issue time, notBefore + backdate). */
export function renewAt(cert: { notBefore: number; notAfter: number }): number {
  const issued = Math.min(cert.notBefore + CERT_BACKDATE_MS, cert.notAfter);
  return issued + Math.floor((cert.notAfter - issued) / 2);
}

export type RenewalState = 'valid' | 'renew' | 'expired';

export function renewalState(cert: { notBefore: number; notAfter: number }, now: number): RenewalState {
  if (now > cert.notAfter) return 'expired';
  return now >= renewAt(cert) ? 'renew' : 'valid';
}

/** Delay until the next renewal attempt: until renewAt, or RENEW_RETRY_MS after a failure, never past expiry. */
export function nextRenewalDelay(cert: { notBefore: number; notAfter: number }, now: number, lastAttemptFailedAt?: number): number {
  const due = renewAt(cert);
  if (now < due && lastAttemptFailedAt === undefined) return due - now;
  const retry = lastAttemptFailedAt === undefined ? now : lastAttemptFailedAt + RENEW_RETRY_MS;
  return Math.max(0, Math.min(retry, Math.max(cert.notAfter, now)) - now);
}
