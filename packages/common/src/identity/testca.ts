// Test helpers: a CA in memory and node key pairs (used by the identity tests of common and server).
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { generateCa, loadCa, type ClusterCa } from './ca.ts';
import { rawPublicKey } from './keys.ts';

export async function testCa(now = Date.UTC(2026, 0, 1)): Promise<ClusterCa> {
  const { certPem, keyPem } = await generateCa({ now });
  return loadCa(certPem, keyPem);
}

export interface TestNodeKey {
  readonly privateKey: KeyObject;
  readonly publicKey: Buffer;
}

export function nodeKey(): TestNodeKey {
  const { privateKey } = generateKeyPairSync('ed25519');
  return { privateKey, publicKey: rawPublicKey(privateKey) };
}
