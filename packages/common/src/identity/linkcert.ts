// The X.509 certificate a node presents in a TLS link to a peer (agent tunnel/tcplink.ts). TLS needs X.509; a node's
// identity is its node certificate (cert.ts, our own format, signed by the cluster CA). So the node wraps it: a
// self-signed X.509 certificate for the node's own Ed25519 key, the node certificate in an extension. The TLS
// handshake proves the key (CertificateVerify); the peer then checks the node certificate inside against its CA,
// the name it expects, that key, and its revocation list. The X.509 wrapper itself vouches for nothing.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { createPrivateKey, createPublicKey, randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import { rawPublicKey } from './keys.ts';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
type XKey = Parameters<typeof x509.X509CertificateGenerator.createSelfSigned>[0]['keys']['privateKey'];

/** The extension carrying the node certificate: an OID under the 2.25 (UUID) arc, needing no registration
 *  (a 48-bit arc: @peculiar/asn1 encodes arcs up to 2^53 only). */
export const LINK_CERT_NODE_CERT_OID = '2.25.219447391628751';
/** The wrapper starts this long before "now" (a peer's clock a little behind; nobody checks it, OpenSSL may). */
const LINK_CERT_BACKDATE_MS = 5 * 60_000;

/** A self-signed X.509 certificate for the raw Ed25519 node key (64 bytes seed||public) carrying `nodeCert`, and the
 *  key, both PEM (for tls.createSecureContext). Valid as long as the node certificate (`notAfter`). */
export async function makeLinkCert(o: { name: string; secretKey: Buffer; nodeCert: Buffer; notAfter: number; now: number }): Promise<{ certPem: string; keyPem: string }> {
  const jwk = { kty: 'OKP', crv: 'Ed25519', d: o.secretKey.subarray(0, 32).toString('base64url'), x: o.secretKey.subarray(32).toString('base64url') };
  const priv = createPrivateKey({ key: jwk, format: 'jwk' });
  const pub = createPublicKey(priv);
  const ED25519 = { name: 'Ed25519' } as const;
  const keys = { privateKey: priv.toCryptoKey(ED25519, false, ['sign']) as unknown as XKey, publicKey: pub.toCryptoKey(ED25519, true, ['verify']) as unknown as XKey };
  const serial = randomBytes(16);
  serial[0] &= 0x7f;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial.toString('hex'),
    name: `CN=${o.name}`,
    notBefore: new Date(o.now - LINK_CERT_BACKDATE_MS),
    notAfter: new Date(Math.max(o.notAfter, o.now)),
    keys,
    signingAlgorithm: ED25519,
    extensions: [new x509.Extension(LINK_CERT_NODE_CERT_OID, false, o.nodeCert)],
  });
  return { certPem: cert.toString('pem') + '\n', keyPem: priv.export({ type: 'pkcs8', format: 'pem' }) as string };
}

/** The key and the node certificate a peer's link certificate (DER) carries; undefined when it is not one. */
export function linkCertParts(der: Uint8Array): { publicKey: Buffer; nodeCert: Buffer } | undefined {
  try {
    const publicKey = rawPublicKey(new X509Certificate(der).publicKey);
    const ext = new x509.X509Certificate(der).getExtension(LINK_CERT_NODE_CERT_OID);
    if (!ext) return undefined;
    return { publicKey, nodeCert: Buffer.from(ext.value) };
  } catch {
    return undefined;
  }
}
