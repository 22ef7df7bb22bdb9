import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeNodeCert, encodeNodeCertBody, newSerial, nodeCertFromPem, nodeCertToPem, signNodeCert, verifyNodeCert, CertError, MAX_NODE_CERT_BYTES, type NodeCertFields } from './cert.ts';
import { RevocationSet } from './revocation.ts';
import { nodeKey, testCa } from './testca.ts';

const NOW = Date.UTC(2026, 0, 1, 12);
const HOUR = 3_600_000;

test('a signed node certificate round-trips (binary and PEM) and verifies against its CA', async () => {
  const ca = await testCa();
  const k = nodeKey();
  const fields: NodeCertFields = { name: 'edge-a', publicKey: k.publicKey, groups: ['site-1'], notBefore: NOW - HOUR, notAfter: NOW + 23 * HOUR, serial: newSerial(), issuer: ca.keyId };
  const cert = signNodeCert(fields, ca.privateKey!);
  const back = decodeNodeCert(cert.raw);
  assert.equal(back.name, 'edge-a');
  assert.deepEqual(back.groups, ['site-1']);
  assert.ok(back.publicKey.equals(k.publicKey));
  assert.equal(back.notAfter, NOW + 23 * HOUR);
  assert.ok(nodeCertFromPem(nodeCertToPem(cert)).raw.equals(cert.raw));
  // Deterministic: the same fields encode to the same bytes.
  assert.ok(encodeNodeCertBody(fields).equals(encodeNodeCertBody({ ...fields, groups: [...fields.groups] })));
  const r = verifyNodeCert(cert.raw, { ca, now: NOW, name: 'edge-a', publicKey: k.publicKey });
  assert.equal(r.ok, true);
  assert.ok(cert.raw.length <= MAX_NODE_CERT_BYTES);
});

test('verification refuses: another CA, a changed byte, outside the window, another name, another key, revoked', async () => {
  const ca = await testCa();
  const other = await testCa();
  const k = nodeKey();
  const cert = signNodeCert({ name: 'edge-a', publicKey: k.publicKey, groups: [], notBefore: NOW, notAfter: NOW + 24 * HOUR, serial: newSerial(), issuer: ca.keyId }, ca.privateKey!);
  // Signed by another CA that claims our CA's key id: the signature check fails.
  const forged = signNodeCert({ name: 'edge-a', publicKey: k.publicKey, groups: [], notBefore: NOW, notAfter: NOW + 24 * HOUR, serial: newSerial(), issuer: ca.keyId }, other.privateKey!);
  assert.deepEqual(verifyNodeCert(forged.raw, { ca, now: NOW }), { ok: false, reason: 'bad-signature' });
  assert.deepEqual(verifyNodeCert(cert.raw, { ca: other, now: NOW }), { ok: false, reason: 'wrong-issuer' });
  // Flip one byte of the name ("edge-a" -> "edge-b"): the CA never signed that.
  const tampered = Buffer.from(cert.raw);
  tampered[4 + 1 + 1 + 5] = 'b'.charCodeAt(0);
  assert.equal(decodeNodeCert(tampered).name, 'edge-b');
  assert.deepEqual(verifyNodeCert(tampered, { ca, now: NOW }), { ok: false, reason: 'bad-signature' });
  assert.deepEqual(verifyNodeCert(cert.raw, { ca, now: NOW - 1 }), { ok: false, reason: 'not-yet-valid' });
  assert.deepEqual(verifyNodeCert(cert.raw, { ca, now: NOW + 24 * HOUR }), { ok: true, cert: decodeNodeCert(cert.raw) });
  assert.deepEqual(verifyNodeCert(cert.raw, { ca, now: NOW + 24 * HOUR + 1 }), { ok: false, reason: 'expired' });
  assert.deepEqual(verifyNodeCert(cert.raw, { ca, now: NOW, name: 'edge-b' }), { ok: false, reason: 'wrong-name' });
  assert.deepEqual(verifyNodeCert(cert.raw, { ca, now: NOW, publicKey: nodeKey().publicKey }), { ok: false, reason: 'wrong-key' });
  const revoked = new RevocationSet([{ name: 'edge-a', key: k.publicKey.toString('base64'), revokedAt: NOW }]);
  assert.deepEqual(verifyNodeCert(cert.raw, { ca, now: NOW, revoked }), { ok: false, reason: 'revoked' });
  assert.equal(verifyNodeCert(cert.raw, { ca, now: NOW, revoked: new RevocationSet() }).ok, true);
});

test('decoding refuses truncated, padded, oversized and ill-formed certificates', async () => {
  const ca = await testCa();
  const cert = signNodeCert({ name: 'edge-a', publicKey: nodeKey().publicKey, groups: [], notBefore: NOW, notAfter: NOW + HOUR, serial: newSerial(), issuer: ca.keyId }, ca.privateKey!);
  assert.throws(() => decodeNodeCert(cert.raw.subarray(0, cert.raw.length - 1)), CertError);
  assert.throws(() => decodeNodeCert(Buffer.concat([cert.raw, Buffer.from([0])])), /trailing/);
  assert.throws(() => decodeNodeCert(Buffer.alloc(MAX_NODE_CERT_BYTES + 1)), /too large/);
  assert.throws(() => decodeNodeCert(Buffer.from('XXXX')), /not an edgemesh/);
  assert.deepEqual(verifyNodeCert(Buffer.from('garbage'), { ca, now: NOW }), { ok: false, reason: 'malformed' });
  // Upper-case or dotted-wrong names are not Kubernetes node names.
  for (const name of ['Edge-A', '-edge', 'edge..a', '', 'a'.repeat(254)]) {
    assert.throws(() => signNodeCert({ name, publicKey: nodeKey().publicKey, groups: [], notBefore: NOW, notAfter: NOW + HOUR, serial: newSerial(), issuer: ca.keyId }, ca.privateKey!), CertError, name);
  }
  assert.throws(() => encodeNodeCertBody({ name: 'a', publicKey: Buffer.alloc(31), groups: [], notBefore: 0, notAfter: 1, serial: newSerial(), issuer: ca.keyId }), /32 bytes/);
  assert.throws(() => encodeNodeCertBody({ name: 'a', publicKey: Buffer.alloc(32), groups: [], notBefore: 2, notAfter: 1, serial: newSerial(), issuer: ca.keyId }), /validity/);
});
