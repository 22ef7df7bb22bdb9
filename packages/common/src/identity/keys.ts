// Ed25519 keys as the identity code handles them: node keys travel raw (32-byte public key, the Noise static key of
// the tunnel), the CA and the server's TLS key as node:crypto KeyObjects (PEM on disk).
import { createPublicKey, sign, verify, type KeyObject } from 'node:crypto';

export const ED25519_PUBLIC_KEY_BYTES = 32;
export const ED25519_SIGNATURE_BYTES = 64;

/** A KeyObject for a raw 32-byte Ed25519 public key; undefined when it is not one. */
export function publicKeyFromRaw(raw: Uint8Array): KeyObject | undefined {
  if (raw.length !== ED25519_PUBLIC_KEY_BYTES) return undefined;
  try {
    return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(raw).toString('base64url') }, format: 'jwk' });
  } catch {
    return undefined;
  }
}

/** The raw 32 bytes of an Ed25519 public (or private) KeyObject. Throws for other key types. */
export function rawPublicKey(key: KeyObject): Buffer {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  if (pub.asymmetricKeyType !== 'ed25519') throw new Error(`expected an Ed25519 key, got ${pub.asymmetricKeyType}`);
  return Buffer.from(pub.export({ format: 'jwk' }).x!, 'base64url');
}

/** Ed25519 signature of `context || data`: the context keeps signatures of one kind from being valid as another. */
export function signWithContext(privateKey: KeyObject, context: string, data: Uint8Array): Buffer {
  return sign(null, Buffer.concat([Buffer.from(context, 'latin1'), data]), privateKey);
}

export function verifyWithContext(publicKey: KeyObject, context: string, data: Uint8Array, signature: Uint8Array): boolean {
  if (signature.length !== ED25519_SIGNATURE_BYTES) return false;
  try {
    return verify(null, Buffer.concat([Buffer.from(context, 'latin1'), data]), publicKey, signature);
  } catch {
    return false;
  }
}

/** PEM armour for our own binary formats (node certificate, revocation list). */
export function toPem(label: string, der: Uint8Array): string {
  const b64 = Buffer.from(der).toString('base64');
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

/** The bytes of the first PEM block with this label; undefined when there is none. */
export function fromPem(label: string, text: string): Buffer | undefined {
  const m = new RegExp(`-----BEGIN ${label}-----\\r?\\n([A-Za-z0-9+/=\\r\\n]*?)-----END ${label}-----`).exec(text);
  if (!m) return undefined;
  return Buffer.from(m[1].replace(/\s+/g, ''), 'base64');
}
