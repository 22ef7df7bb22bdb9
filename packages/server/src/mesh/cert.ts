// Mesh certificates: each server of a mesh makes a fresh key at start and a certificate for it signed by the cluster
// CA, with DNS SAN `edgemesh-mesh`, a URI SAN `urn:edgemesh:server:<id>` (its server id, 16 hex) and both serverAuth
// and clientAuth (servers dial each other). A mesh peer must present exactly that: issued by our CA, valid now, not a
// CA, the mesh name, both usages, one server id. The control channel's certificate (no mesh name, serverAuth only)
// and node certificates (not X.509 at all: cert.ts's EMNC format, never presented in TLS) can never pass.
import { randomBytes, X509Certificate } from 'node:crypto';
import { CLIENT_AUTH_OID, issueServerCert, type ClusterCa, type ServerCert } from '@edgemesh/common/identity/ca';

/** The TLS server name a mesh client asks for (SNI): the listener answers it with the mesh certificate. */
export const MESH_TLS_NAME = 'edgemesh-mesh';
export const SERVER_ID_URI_PREFIX = 'urn:edgemesh:server:';
export const SERVER_ID_RE = /^[0-9a-f]{16}$/;
const SERVER_AUTH_OID = '1.3.6.1.5.5.7.3.1';

export const newServerId = (): string => randomBytes(8).toString('hex');

export function issueMeshCert(ca: ClusterCa, id: string, now: number): Promise<ServerCert> {
  return issueServerCert(ca, { now, dnsNames: [MESH_TLS_NAME], clientAuth: true, uris: [SERVER_ID_URI_PREFIX + id] });
}

export type MeshPeerRefusal = 'no-certificate' | 'malformed' | 'not-issued-by-ca' | 'bad-signature' | 'not-yet-valid' | 'expired' | 'is-ca' | 'not-mesh' | 'wrong-usage' | 'no-server-id';

/** Checks the certificate a mesh peer presented (either direction); its server id when it is a mesh certificate. */
export function checkMeshPeer(leaf: X509Certificate | Uint8Array | undefined, ca: Pick<ClusterCa, 'cert' | 'publicKey'>, now: number): { ok: true; id: string } | { ok: false; reason: MeshPeerRefusal } {
  if (!leaf || (leaf instanceof Uint8Array && !leaf.length)) return { ok: false, reason: 'no-certificate' };
  let c: X509Certificate;
  try {
    c = leaf instanceof X509Certificate ? leaf : new X509Certificate(leaf);
  } catch {
    return { ok: false, reason: 'malformed' };
  }
  if (!c.checkIssued(ca.cert)) return { ok: false, reason: 'not-issued-by-ca' };
  if (!c.verify(ca.publicKey)) return { ok: false, reason: 'bad-signature' };
  if (now < c.validFromDate.getTime()) return { ok: false, reason: 'not-yet-valid' };
  if (now > c.validToDate.getTime()) return { ok: false, reason: 'expired' };
  if (c.ca) return { ok: false, reason: 'is-ca' };
  if (c.checkHost(MESH_TLS_NAME, { wildcards: false, subject: 'never' }) === undefined) return { ok: false, reason: 'not-mesh' };
  const usage = c.keyUsage ?? [];
  if (!usage.includes(SERVER_AUTH_OID) || !usage.includes(CLIENT_AUTH_OID)) return { ok: false, reason: 'wrong-usage' };
  const ids = (c.subjectAltName ?? '').split(', ').filter((s) => s.startsWith('URI:' + SERVER_ID_URI_PREFIX)).map((s) => s.slice(4 + SERVER_ID_URI_PREFIX.length));
  if (ids.length !== 1 || !SERVER_ID_RE.test(ids[0])) return { ok: false, reason: 'no-server-id' };
  return { ok: true, id: ids[0] };
}
