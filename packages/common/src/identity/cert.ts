// Node certificates: our own small signed structure binding a node name to the node's Ed25519 key (Nebula's host
// certificate is the model), signed by the cluster CA. Peers check each other's certificate end to end in the link
// handshake, so what a server says about a key is never trusted on its own.
//
// Encoding (deterministic: one byte string per certificate; decode refuses anything else, trailing bytes included):
//   magic "EMNC" | version u8 (1) | nameLen u8 | name (ASCII, a Kubernetes node name) | publicKey (32)
//   | groupCount u8 | { len u8 | group (ASCII) }* | notBefore u64 ms | notAfter u64 ms | serial (16)
//   | issuer (32: SHA-256 of the CA's SubjectPublicKeyInfo, the bytes of caHash) | signature (64)
// The CA signs NODE_CERT_CONTEXT || everything before the signature. The context prefix makes a node certificate
// signature useless as an X.509 signature (a DER TBSCertificate starts with 0x30) and vice versa, so one CA key can
// sign both the server's TLS certificate and the node certificates.
import { randomBytes, type KeyObject } from 'node:crypto';
import { ED25519_PUBLIC_KEY_BYTES, ED25519_SIGNATURE_BYTES, fromPem, signWithContext, toPem, verifyWithContext } from './keys.ts';
import { isGroupName, isNodeName } from './names.ts';

export const NODE_CERT_MAGIC = Buffer.from('EMNC', 'latin1');
export const NODE_CERT_VERSION = 1;
export const NODE_CERT_CONTEXT = 'edgemesh node certificate v1\0';
export const NODE_CERT_PEM_LABEL = 'EDGEMESH NODE CERTIFICATE';
export const SERIAL_BYTES = 16;
export const ISSUER_ID_BYTES = 32;
/** At most this many groups in a certificate (a node belongs to one group per routing label; a few labels at most). */
export const MAX_CERT_GROUPS = 8;
/** Upper bound of an encoded certificate (name 253 + 8 groups of 63 + fixed fields), for receive budgets. */
export const MAX_NODE_CERT_BYTES = 4 + 1 + 1 + 253 + 32 + 1 + MAX_CERT_GROUPS * 64 + 8 + 8 + SERIAL_BYTES + ISSUER_ID_BYTES + ED25519_SIGNATURE_BYTES;

export interface NodeCertFields {
  /** The Kubernetes Node name this certificate speaks for. */
  readonly name: string;
  /** Raw 32-byte Ed25519 public key (the node's tunnel / Noise static key). */
  readonly publicKey: Buffer;
  /** Informational; authorization takes a caller's group from the verifier's own view of the cluster. */
  readonly groups: readonly string[];
  /** Validity window, ms since the epoch, inclusive. */
  readonly notBefore: number;
  readonly notAfter: number;
  readonly serial: Buffer;
  /** SHA-256 of the issuing CA's SubjectPublicKeyInfo (the bytes of its caHash). */
  readonly issuer: Buffer;
}

export interface NodeCertificate extends NodeCertFields {
  readonly version: number;
  readonly signature: Buffer;
  /** The exact encoded bytes (what travels and what the signature covers, minus the signature). */
  readonly raw: Buffer;
}

export class CertError extends Error {}

function checkFields(f: NodeCertFields): void {
  if (!isNodeName(f.name)) throw new CertError(`not a valid node name: ${JSON.stringify(f.name.slice(0, 64))}`);
  if (f.publicKey.length !== ED25519_PUBLIC_KEY_BYTES) throw new CertError('public key must be 32 bytes');
  if (f.groups.length > MAX_CERT_GROUPS) throw new CertError(`at most ${MAX_CERT_GROUPS} groups`);
  for (const g of f.groups) if (!isGroupName(g)) throw new CertError(`not a valid group name: ${JSON.stringify(g.slice(0, 64))}`);
  if (!Number.isSafeInteger(f.notBefore) || !Number.isSafeInteger(f.notAfter) || f.notBefore < 0 || f.notAfter < f.notBefore) throw new CertError('bad validity window');
  if (f.serial.length !== SERIAL_BYTES) throw new CertError(`serial must be ${SERIAL_BYTES} bytes`);
  if (f.issuer.length !== ISSUER_ID_BYTES) throw new CertError(`issuer must be ${ISSUER_ID_BYTES} bytes`);
}

/** The to-be-signed bytes. */
export function encodeNodeCertBody(f: NodeCertFields): Buffer {
  checkFields(f);
  const parts: Buffer[] = [NODE_CERT_MAGIC, Buffer.from([NODE_CERT_VERSION, f.name.length]), Buffer.from(f.name, 'latin1'), f.publicKey, Buffer.from([f.groups.length])];
  for (const g of f.groups) parts.push(Buffer.from([g.length]), Buffer.from(g, 'latin1'));
  const times = Buffer.alloc(16);
  times.writeBigUInt64BE(BigInt(f.notBefore), 0);
  times.writeBigUInt64BE(BigInt(f.notAfter), 8);
  parts.push(times, f.serial, f.issuer);
  return Buffer.concat(parts);
}

/** Signs the fields with the CA key. `issuer` must be the CA's key id (caKeyId). */
export function signNodeCert(fields: NodeCertFields, caPrivateKey: KeyObject): NodeCertificate {
  const body = encodeNodeCertBody(fields);
  const signature = signWithContext(caPrivateKey, NODE_CERT_CONTEXT, body);
  return { ...fields, groups: [...fields.groups], version: NODE_CERT_VERSION, signature, raw: Buffer.concat([body, signature]) };
}

export function newSerial(random: (n: number) => Buffer = randomBytes): Buffer {
  return random(SERIAL_BYTES);
}

/** Parses the encoding above. Throws CertError on anything but one exact, well-formed certificate. */
export function decodeNodeCert(buf: Uint8Array): NodeCertificate {
  const b = Buffer.from(buf);
  if (b.length > MAX_NODE_CERT_BYTES) throw new CertError('certificate too large');
  let off = 0;
  const need = (n: number) => {
    if (off + n > b.length) throw new CertError('truncated certificate');
    const s = b.subarray(off, off + n);
    off += n;
    return s;
  };
  if (!need(4).equals(NODE_CERT_MAGIC)) throw new CertError('not an edgemesh node certificate');
  const version = need(1)[0];
  if (version !== NODE_CERT_VERSION) throw new CertError(`unsupported certificate version ${version}`);
  const name = need(need(1)[0]).toString('latin1');
  const publicKey = Buffer.from(need(ED25519_PUBLIC_KEY_BYTES));
  const groupCount = need(1)[0];
  if (groupCount > MAX_CERT_GROUPS) throw new CertError('too many groups');
  const groups: string[] = [];
  for (let i = 0; i < groupCount; i++) groups.push(need(need(1)[0]).toString('latin1'));
  const times = need(16);
  const notBefore = times.readBigUInt64BE(0);
  const notAfter = times.readBigUInt64BE(8);
  if (notBefore > BigInt(Number.MAX_SAFE_INTEGER) || notAfter > BigInt(Number.MAX_SAFE_INTEGER)) throw new CertError('bad validity window');
  const serial = Buffer.from(need(SERIAL_BYTES));
  const issuer = Buffer.from(need(ISSUER_ID_BYTES));
  const signature = Buffer.from(need(ED25519_SIGNATURE_BYTES));
  if (off !== b.length) throw new CertError('trailing bytes after the certificate');
  const fields: NodeCertFields = { name, publicKey, groups, notBefore: Number(notBefore), notAfter: Number(notAfter), serial, issuer };
  checkFields(fields);
  // Canonical: re-encoding must give the same bytes (it does by construction; this guards future field changes).
  if (!encodeNodeCertBody(fields).equals(b.subarray(0, b.length - ED25519_SIGNATURE_BYTES))) throw new CertError('non-canonical certificate');
  return { ...fields, version, signature, raw: b };
}

export function nodeCertToPem(cert: NodeCertificate): string {
  return toPem(NODE_CERT_PEM_LABEL, cert.raw);
}

export function nodeCertFromPem(text: string): NodeCertificate {
  const der = fromPem(NODE_CERT_PEM_LABEL, text);
  if (!der) throw new CertError(`no ${NODE_CERT_PEM_LABEL} block`);
  return decodeNodeCert(der);
}

/** Why a certificate is not accepted. */
export type CertRefusal = 'malformed' | 'wrong-issuer' | 'bad-signature' | 'not-yet-valid' | 'expired' | 'wrong-name' | 'wrong-key' | 'revoked';

/** What a verifier knows about the CA: its public key and key id (SHA-256 of its SPKI). */
export interface CaPublic {
  readonly publicKey: KeyObject;
  readonly keyId: Buffer;
}

/** Answers whether a certificate was revoked (RevocationSet in revocation.ts implements it). */
export interface RevocationCheck {
  isRevoked(cert: Pick<NodeCertFields, 'name' | 'publicKey' | 'serial'>): boolean;
}

export interface VerifyOptions {
  ca: CaPublic;
  /** The verifier's clock, ms since the epoch. */
  now: number;
  /** The node the caller meant to reach, or the name it claims to be: the certificate must name exactly this node. */
  name?: string;
  /** The key the other side proved it holds (e.g. the Noise static key of the handshake): the certificate must bind it. */
  publicKey?: Uint8Array;
  revoked?: RevocationCheck;
}

export type VerifyResult = { ok: true; cert: NodeCertificate } | { ok: false; reason: CertRefusal };

/**
 * Verifies a node certificate (encoded bytes or decoded): issuer, CA signature, validity window against the injected
 * clock, name, key and revocation, in that order. Pure apart from the signature check.
 */
export function verifyNodeCert(input: Uint8Array | NodeCertificate, opts: VerifyOptions): VerifyResult {
  let cert: NodeCertificate;
  try {
    cert = input instanceof Uint8Array ? decodeNodeCert(input) : decodeNodeCert(input.raw);
  } catch {
    return { ok: false, reason: 'malformed' };
  }
  if (!cert.issuer.equals(opts.ca.keyId)) return { ok: false, reason: 'wrong-issuer' };
  const body = cert.raw.subarray(0, cert.raw.length - ED25519_SIGNATURE_BYTES);
  if (!verifyWithContext(opts.ca.publicKey, NODE_CERT_CONTEXT, body, cert.signature)) return { ok: false, reason: 'bad-signature' };
  if (opts.now < cert.notBefore) return { ok: false, reason: 'not-yet-valid' };
  if (opts.now > cert.notAfter) return { ok: false, reason: 'expired' };
  if (opts.name !== undefined && cert.name !== opts.name) return { ok: false, reason: 'wrong-name' };
  if (opts.publicKey !== undefined && !cert.publicKey.equals(Buffer.from(opts.publicKey))) return { ok: false, reason: 'wrong-key' };
  if (opts.revoked?.isRevoked(cert)) return { ok: false, reason: 'revoked' };
  return { ok: true, cert };
}
