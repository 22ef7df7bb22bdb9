// The cluster CA (Ed25519) and the X.509 certificates it issues for the server's TLS 1.3 control channel.
// node:crypto verifies X.509 but cannot issue it; @peculiar/x509 (maintained, WebCrypto-based, Ed25519 support, runs
// on Node's own webcrypto) builds the certificates. node-forge has no Ed25519 certificates and pkijs's crypto engine
// has no Ed25519 signing, so either would need hand-written signing code; the openssl CLI would add a binary
// dependency and temp files holding the CA key. tsyringe inside @peculiar/x509 needs the reflect-metadata polyfill.
// Only issuing (generateCa, issueServerCert: the server) needs the library; loading, pinning and checking
// certificates is node:crypto. So it is loaded at the first issue (loadX509), never by an agent: with its asn1 and
// tsyringe stack it is ~4 MiB RSS and ~3 MiB of heap (README "Memory").
import type * as X509 from '@peculiar/x509';
import { createHash, createPrivateKey, generateKeyPairSync, randomBytes, webcrypto, X509Certificate, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomicSync, writeFileExclusiveSync } from '../fsutil.ts';
import type { CaPublic } from './cert.ts';

let x509Loaded: Promise<typeof X509> | undefined;
/** @peculiar/x509 (and its reflect-metadata polyfill), loaded once on first use, on Node's own WebCrypto. */
export function loadX509(): Promise<typeof X509> {
  return (x509Loaded ??= (async () => {
    await import('reflect-metadata');
    const x509 = await import('@peculiar/x509');
    x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
    return x509;
  })());
}
/** WebCrypto key types as @peculiar/x509 declares them (the DOM lib is not in this project's tsconfig). */
type XKeyPair = Parameters<typeof X509.X509CertificateGenerator.createSelfSigned>[0]['keys'];
type XKey = XKeyPair['privateKey'];

const ED25519 = { name: 'Ed25519' } as const;
export const CA_CERT_FILE = 'ca.crt';
export const CA_KEY_FILE = 'ca.key';
/** The CA outlives every node and server certificate it signs; rotating it means re-enrolling every node. */
export const CA_VALIDITY_MS = 10 * 365 * 86_400_000;
export const CA_COMMON_NAME = 'edgemesh cluster CA';
/** The name in the server's TLS certificate (DNS SAN); agents dial any address and check this name. */
export const SERVER_TLS_NAME = 'edgemesh-server';
/**
 * The server's TLS certificate is made at start with a fresh key and lives this long; the server renews it at half
 * life (renewAt in renewal.ts) with setSecureContext. Short, because nothing revokes it.
 */
export const SERVER_CERT_VALIDITY_MS = 7 * 86_400_000;
/** Certificates start this long before "now", so a verifier whose clock is a little behind accepts them. */
export const CERT_BACKDATE_MS = 5 * 60_000;
const SERVER_AUTH_OID = '1.3.6.1.5.5.7.3.1';
export const CLIENT_AUTH_OID = '1.3.6.1.5.5.7.3.2';

export class CaError extends Error {}

export interface ClusterCa extends CaPublic {
  readonly cert: X509Certificate;
  readonly certPem: string;
  /** `sha256:<hex>` of the CA's SubjectPublicKeyInfo DER (kubeadm's --discovery-token-ca-cert-hash). */
  readonly hash: string;
  /** Absent for a verify-only CA (agents; a server given only ca.crt). */
  readonly privateKey?: KeyObject;
}

/** SHA-256 of a certificate's SubjectPublicKeyInfo DER: the CA's key id (issuer field of node certificates). */
export function caKeyId(cert: X509Certificate): Buffer {
  return createHash('sha256').update(cert.publicKey.export({ type: 'spki', format: 'der' })).digest();
}

export function caHashOf(cert: X509Certificate | string): string {
  const c = typeof cert === 'string' ? new X509Certificate(cert) : cert;
  return `sha256:${caKeyId(c).toString('hex')}`;
}

const CA_HASH_RE = /^sha256:([0-9a-f]{64})$/;

/** The 32 bytes of a `sha256:<64 hex>` pin (case-insensitive hex); undefined when malformed. */
export function parseCaHash(s: string): Buffer | undefined {
  const m = CA_HASH_RE.exec(s.trim().toLowerCase());
  return m ? Buffer.from(m[1], 'hex') : undefined;
}

function positiveSerial(): string {
  const b = randomBytes(16);
  b[0] &= 0x7f;
  if (b[0] === 0) b[0] = 1;
  return b.toString('hex');
}

async function cryptoPair(): Promise<{ pair: XKeyPair; privateKey: KeyObject }> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const pair = {
    privateKey: privateKey.toCryptoKey(ED25519, false, ['sign']) as unknown as XKey,
    publicKey: publicKey.toCryptoKey(ED25519, true, ['verify']) as unknown as XKey,
  };
  return { pair, privateKey };
}

/** A new self-signed Ed25519 CA. */
export async function generateCa(opts: { now: number; validityMs?: number; commonName?: string }): Promise<{ certPem: string; keyPem: string }> {
  const x509 = await loadX509();
  const { pair, privateKey } = await cryptoPair();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: positiveSerial(),
    name: `CN=${opts.commonName ?? CA_COMMON_NAME}`,
    notBefore: new Date(opts.now - CERT_BACKDATE_MS),
    notAfter: new Date(opts.now + (opts.validityMs ?? CA_VALIDITY_MS)),
    keys: pair,
    signingAlgorithm: ED25519,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature, true),
      await x509.SubjectKeyIdentifierExtension.create(pair.publicKey),
    ],
  });
  return { certPem: cert.toString('pem') + '\n', keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string };
}

/**
 * Loads a CA certificate (and optionally its key). Refuses anything but a self-signed Ed25519 CA certificate, and a key
 * that does not belong to it. Throws CaError naming the problem.
 */
export function loadCa(certPem: string, keyPem?: string): ClusterCa {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch (e) {
    throw new CaError(`not a PEM X.509 certificate: ${(e as Error).message}`);
  }
  if (cert.publicKey.asymmetricKeyType !== 'ed25519') throw new CaError(`the CA key must be Ed25519, not ${cert.publicKey.asymmetricKeyType}`);
  if (!cert.ca) throw new CaError('the certificate is not a CA certificate (basicConstraints cA is not set)');
  if (!cert.checkIssued(cert) || !cert.verify(cert.publicKey)) throw new CaError('the CA certificate is not self-signed');
  let privateKey: KeyObject | undefined;
  if (keyPem !== undefined) {
    try {
      privateKey = createPrivateKey(keyPem);
    } catch (e) {
      throw new CaError(`not a PEM private key: ${(e as Error).message}`);
    }
    if (!cert.checkPrivateKey(privateKey)) throw new CaError('the CA key does not belong to the CA certificate');
  }
  const keyId = caKeyId(cert);
  return { cert, certPem: cert.toString(), hash: `sha256:${keyId.toString('hex')}`, keyId, publicKey: cert.publicKey, privateKey };
}

export interface ServerCert {
  /** The server certificate followed by the CA certificate: what the TLS server sends (caHash and TOFU agents need it). */
  readonly chainPem: string;
  readonly certPem: string;
  readonly keyPem: string;
  readonly notBefore: number;
  readonly notAfter: number;
}

/** Issues the server's TLS certificate (fresh Ed25519 key, serverAuth, DNS SAN SERVER_TLS_NAME) with the CA key. */
export async function issueServerCert(ca: ClusterCa, opts: { now: number; validityMs?: number; dnsNames?: readonly string[]; clientAuth?: boolean; uris?: readonly string[] }): Promise<ServerCert> {
  if (!ca.privateKey) throw new CaError('the CA key is needed to issue the server certificate');
  const x509 = await loadX509();
  const { pair, privateKey } = await cryptoPair();
  const notBefore = opts.now - CERT_BACKDATE_MS;
  const notAfter = opts.now + (opts.validityMs ?? SERVER_CERT_VALIDITY_MS);
  const names = [SERVER_TLS_NAME, ...(opts.dnsNames ?? []).filter((n) => n !== SERVER_TLS_NAME)];
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: positiveSerial(),
    subject: `CN=${SERVER_TLS_NAME}`,
    issuer: ca.cert.subject.split('\n').join(', '),
    notBefore: new Date(notBefore),
    notAfter: new Date(notAfter),
    publicKey: pair.publicKey,
    signingKey: ca.privateKey.toCryptoKey(ED25519, false, ['sign']) as unknown as XKey,
    signingAlgorithm: ED25519,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      // clientAuth too for a server-mesh certificate (packages/server/src/mesh/cert.ts): servers dial each other.
      new x509.ExtendedKeyUsageExtension(opts.clientAuth ? [SERVER_AUTH_OID, CLIENT_AUTH_OID] : [SERVER_AUTH_OID]),
      new x509.SubjectAlternativeNameExtension([...names.map((value) => ({ type: 'dns' as const, value })), ...(opts.uris ?? []).map((value) => ({ type: 'url' as const, value }))]),
      await x509.AuthorityKeyIdentifierExtension.create(ca.publicKey.toCryptoKey(ED25519, true, ['verify']) as unknown as XKey),
    ],
  });
  const certPem = cert.toString('pem') + '\n';
  // Second precision in X.509: report what the certificate says.
  return { certPem, chainPem: certPem + ca.certPem, keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, notBefore: cert.notBefore.getTime(), notAfter: cert.notAfter.getTime() };
}

export type ServerChainRefusal = 'malformed' | 'not-issued-by-ca' | 'bad-signature' | 'not-yet-valid' | 'expired' | 'is-ca' | 'wrong-name' | 'not-server-auth';

/** Checks a leaf certificate presented by a server against a known CA: issued and signed by it, valid now, serverAuth, SAN SERVER_TLS_NAME. */
export function checkServerLeaf(leafDer: Uint8Array, ca: CaPublic & { cert: X509Certificate }, now: number): { ok: true } | { ok: false; reason: ServerChainRefusal } {
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(leafDer);
  } catch {
    return { ok: false, reason: 'malformed' };
  }
  if (!leaf.checkIssued(ca.cert)) return { ok: false, reason: 'not-issued-by-ca' };
  if (!leaf.verify(ca.publicKey)) return { ok: false, reason: 'bad-signature' };
  if (now < leaf.validFromDate.getTime()) return { ok: false, reason: 'not-yet-valid' };
  if (now > leaf.validToDate.getTime()) return { ok: false, reason: 'expired' };
  if (leaf.ca) return { ok: false, reason: 'is-ca' };
  if (leaf.checkHost(SERVER_TLS_NAME, { wildcards: false, subject: 'never' }) === undefined) return { ok: false, reason: 'wrong-name' };
  if (!leaf.keyUsage?.includes(SERVER_AUTH_OID)) return { ok: false, reason: 'not-server-auth' };
  return { ok: true };
}

/**
 * The server's CA. Given (`certFile` + `keyFile`, e.g. a Kubernetes Secret): loaded, never written; the key may be
 * 0600, 0400 or 0440 (a Secret volume readable by the pod's fsGroup), never readable by others. Not given:
 * `<stateDir>/ca.crt` and `ca.key` (0600), generated once when neither exists (exclusive create: two processes
 * starting at once end up with the same CA), loaded otherwise. The stateDir must exist (ensureStateDir).
 */
export async function loadOrCreateCa(opts: { stateDir: string; now: number; certFile?: string; keyFile?: string }): Promise<{ ca: ClusterCa; created: boolean; certFile: string }> {
  const given = !!(opts.certFile || opts.keyFile);
  if (given && !(opts.certFile && opts.keyFile)) throw new CaError('a given CA needs both the certificate and the key file');
  const certFile = opts.certFile || join(opts.stateDir, CA_CERT_FILE);
  const keyFile = opts.keyFile || join(opts.stateDir, CA_KEY_FILE);
  let created = false;
  if (!given && !existsSync(certFile) && !existsSync(keyFile)) {
    const gen = await generateCa({ now: opts.now });
    // Key first: a crash in between leaves a key without a certificate, which the check below reports.
    if (writeFileExclusiveSync(keyFile, gen.keyPem)) {
      writeFileAtomicSync(certFile, gen.certPem);
      created = true;
    }
  }
  const read = (file: string) => {
    try {
      return readFileSync(file, 'utf8');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      if (!given && code === 'ENOENT' && file === certFile) throw new CaError(`${keyFile} exists without ${certFile} (restore the certificate, or remove both to create a new CA and re-enroll every node)`);
      throw new CaError(`cannot read ${file}: ${code}`);
    }
  };
  const certPem = read(certFile);
  const keyPem = read(keyFile);
  const mode = statSync(keyFile).mode & 0o777;
  const allowed = given ? [0o600, 0o400, 0o440] : [0o600, 0o400];
  if (!allowed.includes(mode)) throw new CaError(`${keyFile} has mode ${mode.toString(8).padStart(4, '0')}: the CA key must be readable by its owner only${given ? ' (or 0440 from a Secret volume)' : ' (0600)'}`);
  return { ca: loadCa(certPem, keyPem), created, certFile };
}
