// Revocation: a list of (node name, node key) pairs the CA no longer vouches for. Revoking the key (not one
// certificate) covers every certificate ever issued for it, renewals included. The server signs the list with the CA
// key, so an agent accepts it from any channel (control connection, another server of the mesh) and keeps the newest.
import type { KeyObject } from 'node:crypto';
import type { CaPublic, NodeCertFields, RevocationCheck } from './cert.ts';
import { ED25519_PUBLIC_KEY_BYTES, signWithContext, verifyWithContext } from './keys.ts';
import { isNodeName } from './names.ts';

export const REVOCATION_CONTEXT = 'edgemesh revocation list v1\0';
/** A list larger than this is refused (receive budget): ~100 bytes an entry, so ~10,000 revoked keys. */
export const MAX_REVOCATION_LIST_BYTES = 1 << 20;

export interface RevocationEntry {
  readonly name: string;
  /** Raw 32-byte public key, base64. */
  readonly key: string;
  /** ms since the epoch. */
  readonly revokedAt: number;
}

export interface RevocationList {
  /** Key id (hex) of the CA that signed it. */
  readonly issuer: string;
  /** ms since the epoch; an agent never replaces its list with an older one (no rollback). */
  readonly issuedAt: number;
  readonly entries: readonly RevocationEntry[];
}

/** Set of revoked keys, answering for certificates (cert.ts RevocationCheck). A key revoked under any name is out. */
export class RevocationSet implements RevocationCheck {
  private readonly keys = new Map<string, RevocationEntry>();
  constructor(entries: Iterable<RevocationEntry> = []) {
    for (const e of entries) this.keys.set(e.key, e);
  }
  isRevoked(cert: Pick<NodeCertFields, 'publicKey'>): boolean {
    return this.keys.has(cert.publicKey.toString('base64'));
  }
  /** The revocation of this key, if any. */
  entryFor(publicKey: Buffer): RevocationEntry | undefined {
    return this.keys.get(publicKey.toString('base64'));
  }
  /** Whether any key of this name was ever revoked. */
  hasName(name: string): boolean {
    for (const e of this.keys.values()) if (e.name === name) return true;
    return false;
  }
  get size(): number {
    return this.keys.size;
  }
  entries(): RevocationEntry[] {
    return [...this.keys.values()];
  }
}

/**
 * Entries still worth pushing at `now`: a revoked key cannot get a new certificate, so once the longest certificate
 * issued before the revocation has expired (revokedAt + maxCertLifetimeMs) peers refuse it as expired anyway.
 * The server's registry keeps every entry (it refuses the key forever); only the pushed list shrinks.
 */
export function liveEntries(entries: readonly RevocationEntry[], now: number, maxCertLifetimeMs: number): RevocationEntry[] {
  return entries.filter((e) => e.revokedAt + maxCertLifetimeMs >= now);
}

function checkEntry(e: unknown): e is RevocationEntry {
  const r = e as RevocationEntry;
  return !!r && typeof r === 'object' && isNodeName(r.name) && typeof r.key === 'string' && Buffer.from(r.key, 'base64').length === ED25519_PUBLIC_KEY_BYTES
    && Number.isSafeInteger(r.revokedAt) && r.revokedAt >= 0;
}

export interface SignedRevocationList {
  /** The JSON bytes of the list, exactly as signed. */
  readonly body: Buffer;
  readonly signature: Buffer;
}

export function signRevocationList(list: RevocationList, caPrivateKey: KeyObject): SignedRevocationList {
  const body = Buffer.from(JSON.stringify({ issuer: list.issuer, issuedAt: list.issuedAt, entries: list.entries.map((e) => ({ name: e.name, key: e.key, revokedAt: e.revokedAt })) }));
  return { body, signature: signWithContext(caPrivateKey, REVOCATION_CONTEXT, body) };
}

export type RevocationListRefusal = 'too-large' | 'bad-signature' | 'malformed' | 'wrong-issuer' | 'stale';

/**
 * Verifies a signed list against the CA; `newerThan` is the issuedAt of the list the caller holds (a list that is not
 * newer is refused as stale, so a replayed old list cannot un-revoke a key).
 */
export function verifyRevocationList(signed: SignedRevocationList, ca: CaPublic, newerThan = -1): { ok: true; list: RevocationList } | { ok: false; reason: RevocationListRefusal } {
  if (signed.body.length > MAX_REVOCATION_LIST_BYTES) return { ok: false, reason: 'too-large' };
  if (!verifyWithContext(ca.publicKey, REVOCATION_CONTEXT, signed.body, signed.signature)) return { ok: false, reason: 'bad-signature' };
  let v: RevocationList;
  try {
    v = JSON.parse(signed.body.toString('utf8')) as RevocationList;
  } catch {
    return { ok: false, reason: 'malformed' };
  }
  if (!v || typeof v.issuer !== 'string' || !Number.isSafeInteger(v.issuedAt) || !Array.isArray(v.entries) || !v.entries.every(checkEntry)) return { ok: false, reason: 'malformed' };
  if (v.issuer !== ca.keyId.toString('hex')) return { ok: false, reason: 'wrong-issuer' };
  if (v.issuedAt <= newerThan) return { ok: false, reason: 'stale' };
  return { ok: true, list: v };
}
