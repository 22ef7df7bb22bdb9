// One-time join tokens: `edgemesh-server token create --node NAME` writes a record, the running server consumes it.
// Token text: `emj1.<id>.<secret>` — id 8 random bytes (hex, names the record; not secret), secret 32 random bytes
// (base64url, 256 bits). Only SHA-256 of the secret is stored (a fast hash is enough for a 256-bit random secret:
// nothing to brute-force), so the token itself is never at rest on the server.
//
// Storage: one file per token, `<stateDir>/join-tokens/<id>.json` (0600). The CLI creates a file (exclusive), the
// server reads the one file a presented token names and consumes it by unlinking it: unlink succeeds exactly once,
// so a token works once even with several server processes on the same stateDir, and no lock is needed. A running
// server sees a new token at once because it reads the file when the token is presented.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readdirSync, readFileSync, rmSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileExclusiveSync } from '@edgemesh/common/fsutil';
import { isNodeName } from '@edgemesh/common/identity/names';

export const JOIN_TOKEN_DIR = 'join-tokens';
export const JOIN_TOKEN_PREFIX = 'emj1';
export const JOIN_TOKEN_ID_BYTES = 8;
export const JOIN_TOKEN_SECRET_BYTES = 32;
/** Default lifetime of a join token: long enough to hand it to whoever installs the node today. */
export const DEFAULT_JOIN_TOKEN_TTL_MS = 24 * 3_600_000;
/** Longest lifetime `--ttl` accepts: an unused token lying around for longer is a liability. */
export const MAX_JOIN_TOKEN_TTL_MS = 30 * 24 * 3_600_000;
/** A temp file older than this is a crashed writer's leftover (a live one exists for microseconds). */
const STALE_TEMP_MS = 60_000;
/** Longest token text accepted from the network. */
export const MAX_JOIN_TOKEN_CHARS = 128;

export interface JoinTokenRecord {
  readonly id: string;
  readonly node: string;
  /** SHA-256 of the secret part, hex. */
  readonly secretHash: string;
  readonly createdAt: number;
  readonly expiresAt: number;
}

const TOKEN_RE = /^emj1\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$/;

export function parseJoinToken(text: string): { id: string; secret: string } | undefined {
  if (typeof text !== 'string' || text.length > MAX_JOIN_TOKEN_CHARS) return undefined;
  const m = TOKEN_RE.exec(text.trim());
  return m ? { id: m[1], secret: m[2] } : undefined;
}

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex');
}

/** Constant-time check of a presented secret against a record. */
export function secretMatches(record: JoinTokenRecord, secret: string): boolean {
  const a = Buffer.from(hashSecret(secret), 'hex');
  const b = Buffer.from(record.secretHash, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Parses `90s`, `30m`, `1h`, `7d` (or a sum such as `1h30m`) into ms. */
export function parseDuration(s: string): number | undefined {
  const m = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/.exec(s.trim());
  if (!m || s.trim() === '') return undefined;
  const [d, h, min, sec] = m.slice(1).map((x) => Number(x ?? 0));
  return ((d * 24 + h) * 60 + min) * 60_000 + sec * 1000;
}

function isRecord(v: unknown, id: string): v is JoinTokenRecord {
  const r = v as JoinTokenRecord;
  return !!r && r.id === id && isNodeName(r.node) && /^[0-9a-f]{64}$/.test(r.secretHash) && Number.isSafeInteger(r.createdAt) && Number.isSafeInteger(r.expiresAt);
}

export class JoinTokenStore {
  readonly dir: string;
  constructor(stateDir: string) {
    this.dir = join(stateDir, JOIN_TOKEN_DIR);
  }

  private file(id: string): string {
    return join(this.dir, `${id}.json`);
  }

  /** Creates a token for `node`; returns the token text (shown once) and its record. */
  create(node: string, ttlMs: number, now: number, random: (n: number) => Buffer = randomBytes): { token: string; record: JoinTokenRecord } {
    if (!isNodeName(node)) throw new Error(`not a valid node name: ${JSON.stringify(node)}`);
    if (!(ttlMs > 0 && ttlMs <= MAX_JOIN_TOKEN_TTL_MS)) throw new Error(`ttl must be between 1 s and ${MAX_JOIN_TOKEN_TTL_MS / 86_400_000} days`);
    for (let attempt = 0; attempt < 4; attempt++) {
      const id = random(JOIN_TOKEN_ID_BYTES).toString('hex');
      const secret = random(JOIN_TOKEN_SECRET_BYTES).toString('base64url');
      const record: JoinTokenRecord = { id, node, secretHash: hashSecret(secret), createdAt: now, expiresAt: now + ttlMs };
      if (writeFileExclusiveSync(this.file(id), JSON.stringify(record) + '\n')) return { token: `${JOIN_TOKEN_PREFIX}.${id}.${secret}`, record };
    }
    throw new Error('could not pick an unused token id');
  }

  /** The record a token id names, or undefined (no such token, already used, or unreadable). */
  read(id: string): JoinTokenRecord | undefined {
    if (!/^[0-9a-f]{16}$/.test(id)) return undefined;
    try {
      const v: unknown = JSON.parse(readFileSync(this.file(id), 'utf8'));
      return isRecord(v, id) ? v : undefined;
    } catch {
      return undefined;
    }
  }

  /** Uses the token up. True for exactly one caller; false when it was already consumed (or never existed). */
  consume(id: string): boolean {
    try {
      unlinkSync(this.file(id));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw e;
    }
  }

  /** Tokens on disk, unused (expired ones included until swept): a directory listing only. */
  count(): number {
    try {
      return readdirSync(this.dir).filter((n) => n.endsWith('.json')).length;
    } catch {
      return 0;
    }
  }

  list(): JoinTokenRecord[] {
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch {
      return [];
    }
    return names.filter((n) => n.endsWith('.json')).map((n) => this.read(n.slice(0, -5))).filter((r): r is JoinTokenRecord => !!r).sort((a, b) => a.createdAt - b.createdAt);
  }

  /** Removes expired tokens (and temp files a crashed writer left); returns how many tokens went. */
  sweep(now: number): number {
    let n = 0;
    for (const r of this.list()) {
      if (r.expiresAt < now && this.consume(r.id)) n++;
    }
    try {
      for (const f of readdirSync(this.dir)) {
        const p = join(this.dir, f);
        if (f.endsWith('.tmp') && statSync(p).mtimeMs < now - STALE_TEMP_MS) rmSync(p, { force: true });
      }
    } catch {
      // no directory yet, or a file went meanwhile
    }
    return n;
  }
}
