// The enrolled-node registry in the server's stateDir: which key each node name is pinned to, and which keys were
// revoked. Shared by the running server and the `edgemesh-server node ...` CLI without a lock:
// - `nodes/<name>.json` — the pin {name, key, method, enrolledAt}. Only ever created exclusively (the first enrollment
//   of a name wins, across processes and restarts) and deleted (`node reset`); never rewritten.
// - `revoked/<name>.<key fingerprint>.json` — one revocation {name, key, revokedAt}. Written by `node revoke`, read by
//   the server, never deleted by either (a revoked key stays refused; the list pushed to agents is trimmed by age).
// The server re-reads a name's pin on every enrollment (the file is the authority) and re-reads the revocations when
// the directory changes (polled: revocations written by the CLI reach the running server within REVOCATION_POLL_MS).
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileExclusiveSync } from '@edgemesh/common/fsutil';
import { isNodeName } from '@edgemesh/common/identity/names';
import { RevocationSet, type RevocationEntry } from '@edgemesh/common/identity/revocation';

export const NODES_DIR = 'nodes';
export const REVOKED_DIR = 'revoked';
/** How often the running server looks for revocations written by the CLI (a readdir and a stat). */
export const REVOCATION_POLL_MS = 5000;

export type EnrollMethod = 'join' | 'kubernetes' | 'bootstrap';

export interface Pin {
  readonly name: string;
  /** Raw 32-byte Ed25519 public key, base64. */
  readonly key: string;
  /** How the name was first enrolled. */
  readonly method: EnrollMethod;
  readonly enrolledAt: number;
}

/** Short, stable fingerprint of a key for file names and listings: hex of the first 8 bytes of its SHA-256. */
export function keyFingerprint(keyB64: string): string {
  return createHash('sha256').update(Buffer.from(keyB64, 'base64')).digest('hex').slice(0, 16);
}

function isPin(v: unknown, name: string): v is Pin {
  const p = v as Pin;
  return !!p && p.name === name && typeof p.key === 'string' && Buffer.from(p.key, 'base64').length === 32
    && (p.method === 'join' || p.method === 'kubernetes' || p.method === 'bootstrap') && Number.isSafeInteger(p.enrolledAt);
}

function isRevocation(v: unknown): v is RevocationEntry {
  const r = v as RevocationEntry;
  return !!r && isNodeName(r.name) && typeof r.key === 'string' && Buffer.from(r.key, 'base64').length === 32 && Number.isSafeInteger(r.revokedAt);
}

export class RegistryError extends Error {}

export class NodeRegistry {
  readonly nodesDir: string;
  readonly revokedDir: string;
  private revocationCache: { sig: string; set: RevocationSet } | undefined;

  constructor(stateDir: string) {
    this.nodesDir = join(stateDir, NODES_DIR);
    this.revokedDir = join(stateDir, REVOKED_DIR);
  }

  private pinFile(name: string): string {
    if (!isNodeName(name)) throw new RegistryError(`not a valid node name: ${JSON.stringify(name)}`);
    return join(this.nodesDir, `${name}.json`);
  }

  /** The pin of a name, read from disk now; undefined when not enrolled. Throws on a corrupt pin (never guessed). */
  readPin(name: string): Pin | undefined {
    let text: string;
    try {
      text = readFileSync(this.pinFile(name), 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch {
      v = undefined;
    }
    if (!isPin(v, name)) throw new RegistryError(`${this.pinFile(name)} is not a valid pin (inspect it, or \`node reset ${name}\`)`);
    return v;
  }

  /** Pins `name` to a key if it is not pinned yet. False when another pin exists (first writer wins). */
  createPin(pin: Pin): boolean {
    return writeFileExclusiveSync(this.pinFile(pin.name), JSON.stringify(pin) + '\n');
  }

  /** Removes a name's pin (`node reset`): the next enrollment of the name pins a new key. Revocations stay. */
  removePin(name: string): boolean {
    try {
      unlinkSync(this.pinFile(name));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw e;
    }
  }

  /** How many names are pinned (a directory listing, no file reads: for /status). */
  pinCount(): number {
    try {
      return readdirSync(this.nodesDir).filter((f) => f.endsWith('.json')).length;
    } catch {
      return 0;
    }
  }

  pins(): Pin[] {
    let names: string[];
    try {
      names = readdirSync(this.nodesDir);
    } catch {
      return [];
    }
    const out: Pin[] = [];
    for (const f of names) {
      if (!f.endsWith('.json')) continue;
      const name = f.slice(0, -5);
      if (!isNodeName(name)) continue;
      try {
        const p = this.readPin(name);
        if (p) out.push(p);
      } catch {
        // listed by the CLI as corrupt via readPin; skipped here
      }
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  /** Revokes a key of a name (idempotent). */
  revoke(name: string, keyB64: string, now: number): RevocationEntry {
    if (!isNodeName(name)) throw new RegistryError(`not a valid node name: ${JSON.stringify(name)}`);
    const entry: RevocationEntry = { name, key: keyB64, revokedAt: now };
    const file = join(this.revokedDir, `${name}.${keyFingerprint(keyB64)}.json`);
    // Exclusive: revoking twice keeps the first revocation time.
    if (!writeFileExclusiveSync(file, JSON.stringify(entry) + '\n')) {
      const prev = JSON.parse(readFileSync(file, 'utf8')) as RevocationEntry;
      return prev;
    }
    this.revocationCache = undefined;
    return entry;
  }

  /** The directory's signature: file names and mtimes (changes when the CLI adds a revocation). */
  private revokedSig(): { sig: string; files: string[] } {
    let files: string[];
    try {
      files = readdirSync(this.revokedDir).filter((f) => f.endsWith('.json')).sort();
    } catch {
      return { sig: '', files: [] };
    }
    let dirM = 0;
    try {
      dirM = statSync(this.revokedDir).mtimeMs;
    } catch {
      // gone meanwhile
    }
    return { sig: `${dirM}:${files.join(',')}`, files };
  }

  /** Every revocation (cached until the directory changes). Corrupt files are skipped and reported by `corrupt`. */
  revocations(): RevocationSet {
    const { sig, files } = this.revokedSig();
    if (this.revocationCache?.sig === sig) return this.revocationCache.set;
    const entries: RevocationEntry[] = [];
    for (const f of files) {
      try {
        const v: unknown = JSON.parse(readFileSync(join(this.revokedDir, f), 'utf8'));
        if (isRevocation(v)) entries.push(v);
      } catch {
        // a half-copied or hand-edited file: ignored until fixed (an unreadable revocation cannot un-revoke: the
        // pin of a revoked node stays, so its name still refuses other keys)
      }
    }
    const set = new RevocationSet(entries);
    this.revocationCache = { sig, set };
    return set;
  }
}
