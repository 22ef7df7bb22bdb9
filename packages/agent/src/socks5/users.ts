// RFC 1929 username/password for the SOCKS5 listener: `socks5.usersFile` holds `user:password` lines (`#` comments,
// blank lines ignored), e.g. a mounted Secret. Read once at start; a bad file fails the start naming the key. The
// check compares SHA-256 digests in constant time and costs the same for an unknown user. Nothing of a password is
// ever logged.
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { ConfigError } from '@edgemesh/common/config';
import type { Logger } from '@edgemesh/common/log';

const KEY = 'socks5.usersFile';
/** RFC 1929: ULEN and PLEN are one octet. */
export const MAX_CREDENTIAL_BYTES = 255;
/** A users file larger than this is refused at start (it is a handful of lines). */
export const MAX_USERS_FILE_BYTES = 1 << 20;

const digest = (b: Buffer | string) => createHash('sha256').update(b).digest();

export class Users {
  private readonly byName: Map<string, Buffer>;
  /** Compared against when the user is unknown, so both paths cost one digest and one comparison. */
  private readonly dummy = digest('edgemesh-socks5-no-such-user');

  constructor(entries: Iterable<[string, string]>) {
    this.byName = new Map([...entries].map(([u, p]) => [u, digest(p)]));
  }

  get size(): number {
    return this.byName.size;
  }

  check(username: Buffer, password: Buffer): boolean {
    const want = this.byName.get(username.toString('utf8'));
    const ok = timingSafeEqual(digest(password), want ?? this.dummy);
    return ok && want !== undefined;
  }
}

/** Parses a users file. Throws ConfigError naming the line (never its content). Pure. */
export function parseUsers(text: string): Users {
  const out = new Map<string, string>();
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    const at = line.indexOf(':');
    if (at <= 0) throw new ConfigError(KEY, `line ${i + 1}: expected user:password`);
    const user = line.slice(0, at);
    const pass = line.slice(at + 1);
    if (Buffer.byteLength(user) > MAX_CREDENTIAL_BYTES || Buffer.byteLength(pass) > MAX_CREDENTIAL_BYTES) throw new ConfigError(KEY, `line ${i + 1}: user and password are at most ${MAX_CREDENTIAL_BYTES} bytes (RFC 1929)`);
    if (!pass) throw new ConfigError(KEY, `line ${i + 1}: empty password`);
    if (out.has(user)) throw new ConfigError(KEY, `line ${i + 1}: user ${JSON.stringify(user)} listed twice`);
    out.set(user, pass);
  });
  if (!out.size) throw new ConfigError(KEY, 'no user:password line (leave socks5.usersFile empty for no authentication)');
  return new Users(out);
}

/** Reads socks5.usersFile; warns when others may read it. Throws ConfigError. */
export function loadUsers(file: string, log: Logger): Users {
  let text: string;
  try {
    const st = statSync(file);
    if (st.size > MAX_USERS_FILE_BYTES) throw new ConfigError(KEY, `${file} is larger than ${MAX_USERS_FILE_BYTES} bytes`);
    // (A Kubernetes Secret volume: set defaultMode 0400.)
    if ((st.mode & 0o007) !== 0) log.warn({ file, mode: (st.mode & 0o777).toString(8) }, 'socks5.usersFile is readable by every user of this host');
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw new ConfigError(KEY, `cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parseUsers(text);
}
