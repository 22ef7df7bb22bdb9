// Files in a stateDir: the directory is 0700 (created once at start, tightened if it exists), every file in it 0600.
// Durable replacement for small state files: write a temp file in the same directory, fsync it, rename it over the
// target, fsync the directory, so a crash or power cut leaves either the old or the new content, never a torn file.
import { chmodSync, closeSync, fdatasyncSync, fsyncSync, linkSync, mkdirSync, openSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname } from 'node:path';

/** Mode of a stateDir (and of the directories inside it): only the owner may list or enter it. */
export const STATE_DIR_MODE = 0o700;
/** Mode of every file in a stateDir: keys, certificates, registries, tables. */
export const STATE_FILE_MODE = 0o600;

/**
 * Creates `dir` (and missing parents) with mode 0700, or tightens an existing directory we own to 0700. Throws when it
 * is not a directory. Called once at start; files are then written with writeFileAtomicSync / writeFileExclusiveSync.
 */
export function ensureStateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: STATE_DIR_MODE });
  const st = statSync(dir);
  if (!st.isDirectory()) throw new Error(`${dir} is not a directory`);
  if ((st.mode & 0o777) !== STATE_DIR_MODE && (process.getuid === undefined || st.uid === process.getuid())) chmodSync(dir, STATE_DIR_MODE);
}

/**
 * Writes `text` to a fresh temp file beside `file` (its directory made 0700 when missing), fsynced, and returns its
 * path. pid + random in the name: two agents sharing the stateDir during a takeover never write the same temp file.
 */
function writeTempSync(file: string, text: string | Uint8Array, mode: number): string {
  mkdirSync(dirname(file), { recursive: true, mode: STATE_DIR_MODE });
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const fd = openSync(tmp, 'wx', mode);
  try {
    writeSync(fd, typeof text === 'string' ? Buffer.from(text) : text);
    fdatasyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return tmp;
}

export function writeFileAtomicSync(file: string, text: string | Uint8Array, mode = STATE_FILE_MODE): void {
  const dir = dirname(file);
  const tmp = writeTempSync(file, text, mode);
  try {
    renameSync(tmp, file);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  // The rename itself is durable only once the directory is synced; best effort (some filesystems refuse).
  try {
    const dfd = openSync(dir, 'r');
    try { fsyncSync(dfd); } finally { closeSync(dfd); }
  } catch {
    // the content is in place either way
  }
}

/**
 * Creates `file` only if it does not exist (O_EXCL), fully written and fsynced before it becomes visible under its
 * name (written to a temp file, then hard-linked: link() fails with EEXIST when another process won). Returns false
 * when the file already existed. This is the "first writer wins" primitive two processes can share without a lock.
 */
export function writeFileExclusiveSync(file: string, text: string | Uint8Array, mode = STATE_FILE_MODE): boolean {
  const tmp = writeTempSync(file, text, mode);
  try {
    linkSync(tmp, file);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  } finally {
    rmSync(tmp, { force: true });
  }
}
