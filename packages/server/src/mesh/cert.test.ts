import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { issueServerCert } from '@edgemesh/common/identity/ca';
import { newSerial, signNodeCert } from '@edgemesh/common/identity/cert';
import { nodeKey, testCa } from '@edgemesh/common/identity/testca';
import { checkMeshPeer, issueMeshCert, newServerId } from './cert.ts';

const NOW = Date.UTC(2026, 0, 1);
const leaf = (pem: string) => new X509Certificate(pem);

test('a mesh certificate of our CA passes with its server id; everything else is refused by name', async () => {
  const ca = await testCa(NOW);
  const other = await testCa(NOW);
  const id = newServerId();
  const mesh = await issueMeshCert(ca, id, NOW);
  assert.deepEqual(checkMeshPeer(leaf(mesh.certPem), ca, NOW + 1000), { ok: true, id });
  // The control channel's certificate (agents see it): no mesh name, no clientAuth.
  assert.deepEqual(checkMeshPeer(leaf((await issueServerCert(ca, { now: NOW })).certPem), ca, NOW), { ok: false, reason: 'not-mesh' });
  // The mesh name without clientAuth, or clientAuth without a server id.
  assert.deepEqual(checkMeshPeer(leaf((await issueServerCert(ca, { now: NOW, dnsNames: ['edgemesh-mesh'] })).certPem), ca, NOW), { ok: false, reason: 'wrong-usage' });
  assert.deepEqual(checkMeshPeer(leaf((await issueServerCert(ca, { now: NOW, dnsNames: ['edgemesh-mesh'], clientAuth: true })).certPem), ca, NOW), { ok: false, reason: 'no-server-id' });
  assert.deepEqual(checkMeshPeer(leaf((await issueMeshCert(other, id, NOW)).certPem), ca, NOW), { ok: false, reason: 'not-issued-by-ca' });
  assert.deepEqual(checkMeshPeer(ca.cert, ca, NOW), { ok: false, reason: 'is-ca' });
  assert.deepEqual(checkMeshPeer(leaf(mesh.certPem), ca, mesh.notAfter + 1000), { ok: false, reason: 'expired' });
  assert.deepEqual(checkMeshPeer(undefined, ca, NOW), { ok: false, reason: 'no-certificate' });
  // A node certificate (our EMNC format, signed by the same CA) is not X.509: never a mesh peer.
  const k = nodeKey();
  const node = signNodeCert({ name: 'edgemesh-mesh', publicKey: k.publicKey, groups: [], notBefore: NOW, notAfter: NOW + 3_600_000, serial: newSerial(), issuer: ca.keyId }, ca.privateKey!);
  assert.deepEqual(checkMeshPeer(node.raw, ca, NOW), { ok: false, reason: 'malformed' });
});
