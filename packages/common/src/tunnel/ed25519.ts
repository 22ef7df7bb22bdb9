// Ed25519 with raw keys (the format @hyperswarm/secret-stream uses: 32-byte public key, 64-byte seed||public secret).
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify } from 'node:crypto';

export interface RawKeyPair { publicKey: Buffer; secretKey: Buffer }

export function generateKeyPair(): RawKeyPair {
  const { privateKey } = generateKeyPairSync('ed25519');
  const jwk = privateKey.export({ format: 'jwk' });
  const seed = Buffer.from(jwk.d!, 'base64url');
  const pk = Buffer.from(jwk.x!, 'base64url');
  return { publicKey: pk, secretKey: Buffer.concat([seed, pk]) };
}

/** Checks a 64-byte secret key (seed||public) is consistent; returns the pair or undefined. */
export function keyPairFromSecret(secretKey: Buffer): RawKeyPair | undefined {
  if (secretKey.length !== 64) return undefined;
  try {
    const key = createPrivateKey({ key: { kty: 'OKP', crv: 'Ed25519', d: secretKey.subarray(0, 32).toString('base64url'), x: secretKey.subarray(32).toString('base64url') }, format: 'jwk' });
    const pk = Buffer.from(createPublicKey(key).export({ format: 'jwk' }).x!, 'base64url');
    if (!pk.equals(secretKey.subarray(32))) return undefined;
    return { publicKey: pk, secretKey: Buffer.from(secretKey) };
  } catch {
    return undefined;
  }
}

export function signRaw(secretKey: Buffer, data: Buffer): Buffer {
  const key = createPrivateKey({ key: { kty: 'OKP', crv: 'Ed25519', d: secretKey.subarray(0, 32).toString('base64url'), x: secretKey.subarray(32).toString('base64url') }, format: 'jwk' });
  return sign(null, data, key);
}

export function verifyRaw(publicKey: Buffer, data: Buffer, sig: Buffer): boolean {
  if (publicKey.length !== 32 || sig.length !== 64) return false;
  try {
    const key = createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: publicKey.toString('base64url') }, format: 'jwk' });
    return verify(null, data, key, sig);
  } catch {
    return false;
  }
}
