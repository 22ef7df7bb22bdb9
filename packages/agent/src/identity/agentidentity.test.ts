import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '@edgemesh/common/log';
import { generateKeyPair } from '@edgemesh/common/tunnel/ed25519';
import { newSerial, signNodeCert } from '@edgemesh/common/identity/cert';
import { testCa } from '@edgemesh/common/identity/testca';
import { NODE_CERT_VALIDITY_MS, validityWindow } from '@edgemesh/common/identity/renewal';
import { signRevocationList } from '@edgemesh/common/identity/revocation';
import { AgentIdentity } from './agentidentity.ts';

test('certificate kept, renewal due at half life and retried after a failure, expiry, revocations: on an injected clock', async () => {
  const t0 = Date.UTC(2026, 5, 1);
  let now = t0;
  const ca = await testCa(t0 - 86_400_000);
  const dir = mkdtempSync(join(tmpdir(), 'em-aid-'));
  try {
    const kp = generateKeyPair();
    const id = new AgentIdentity({ node: 'n1', stateDir: dir, keyPair: kp, trust: { mode: 'hash', hash: ca.hash }, credentials: () => ({ joinToken: 'emj1.x.y' }), log: silentLogger, now: () => now });
    assert.deepEqual(id.plan(), ['join']);
    assert.equal(id.renewal().action, 'enroll');
    const issue = (name: string, at: number) => signNodeCert({ name, publicKey: kp.publicKey, groups: [], ...validityWindow(at), serial: newSerial(), issuer: ca.keyId }, ca.privateKey!);
    const chain = { ok: true as const, ca, learned: true };
    assert.match(String(id.acceptCert(issue('n2', now).raw, chain)), /wrong-name/, 'a certificate for another name is refused');
    assert.equal(id.acceptCert(issue('n1', now).raw, chain), undefined);
    assert.equal(statSync(join(dir, 'node.crt')).mode & 0o777, 0o600);
    assert.equal(statSync(join(dir, 'ca.crt')).mode & 0o777, 0o600, 'the CA learned by caHash is pinned');
    assert.deepEqual(id.plan(), ['renew', 'join']);
    const r0 = id.renewal();
    assert.equal(r0.action, 'none');
    assert.equal(r0.delayMs, NODE_CERT_VALIDITY_MS / 2);
    now = t0 + NODE_CERT_VALIDITY_MS / 2 + 1;
    assert.equal(id.renewal().action, 'renew');
    assert.equal(id.renewal(now).delayMs, 60_000, 'a failed renewal is retried after RENEW_RETRY_MS');
    now = t0 + NODE_CERT_VALIDITY_MS + 1;
    assert.equal(id.renewal().action, 'enroll', 'expired');
    // A fresh certificate (renewal) replaces it; an older one does not.
    assert.equal(id.acceptCert(issue('n1', now).raw, chain), undefined);
    assert.equal(id.cert!.notAfter, now + NODE_CERT_VALIDITY_MS);
    assert.equal(id.acceptCert(issue('n1', now - 1000).raw, chain), undefined);
    assert.equal(id.cert!.notAfter, now + NODE_CERT_VALIDITY_MS, 'an older certificate does not replace a newer one');
    // Revocations: newer lists only; the peer check refuses a revoked key.
    const peer = generateKeyPair();
    const peerCert = signNodeCert({ name: 'p', publicKey: peer.publicKey, groups: [], notBefore: now - 1, notAfter: now + 3_600_000, serial: newSerial(), issuer: ca.keyId }, ca.privateKey!);
    assert.equal(id.verifyPeer(peerCert.raw, 'p', peer.publicKey).ok, true);
    const list = signRevocationList({ issuer: ca.keyId.toString('hex'), issuedAt: now, entries: [{ name: 'p', key: peer.publicKey.toString('base64'), revokedAt: now }] }, ca.privateKey!);
    assert.equal(id.acceptRevocations(list), true);
    assert.equal(id.acceptRevocations(list), false, 'the same list again is stale');
    const v = id.verifyPeer(peerCert.raw, 'p', peer.publicKey);
    assert.equal(v.ok ? 'ok' : v.reason, 'revoked');
    assert.equal(id.verifyPeer(peerCert.raw, 'q', peer.publicKey).ok, false, 'wrong name');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
