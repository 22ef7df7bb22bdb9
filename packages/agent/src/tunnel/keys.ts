// The node's static Ed25519 key pair (Noise static key for secret-stream, and the identity the server vouches for).
// Generated at first start, stored in stateDir with mode 0600.
import { chmodSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateKeyPair, keyPairFromSecret, type RawKeyPair } from '@edgemesh/common/tunnel/ed25519';

export const KEY_FILE = 'tunnel-key';

export function loadOrCreateKeyPair(stateDir: string): { pair: RawKeyPair; created: boolean; path: string } {
  const path = join(stateDir, KEY_FILE);
  let text: string | undefined;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`cannot read ${path}: ${(e as Error).message}`);
  }
  if (text !== undefined) {
    const pair = keyPairFromSecret(Buffer.from(text.trim(), 'hex'));
    if (!pair) throw new Error(`${path} does not hold a valid key (delete it to generate a new one)`);
    if ((statSync(path).mode & 0o077) !== 0) chmodSync(path, 0o600);
    return { pair, created: false, path };
  }
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const pair = generateKeyPair();
  writeFileSync(path, pair.secretKey.toString('hex') + '\n', { mode: 0o600, flag: 'wx' });
  return { pair, created: true, path };
}
