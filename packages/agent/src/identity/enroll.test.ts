import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { newSerial, signNodeCert } from '@edgemesh/common/identity/cert';
import { validityWindow } from '@edgemesh/common/identity/renewal';
import { nodeKey, testCa } from '@edgemesh/common/identity/testca';
import { certAction, enrollmentPlan, loadNodeCert, readCredentials, saveNodeCert, NODE_CERT_FILE } from './enroll.ts';

const NOW = Date.UTC(2026, 0, 1);

test('the certificate is kept in stateDir (0600) and only used for this node and key', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'em-agent-id-'));
  try {
    const ca = await testCa(NOW);
    const k = nodeKey();
    const cert = signNodeCert({ name: 'edge-a', publicKey: k.publicKey, groups: [], ...validityWindow(NOW), serial: newSerial(), issuer: ca.keyId }, ca.privateKey!);
    saveNodeCert(dir, cert);
    assert.equal(statSync(join(dir, NODE_CERT_FILE)).mode & 0o777, 0o600);
    assert.ok(loadNodeCert(dir, 'edge-a', k.publicKey)?.raw.equals(cert.raw));
    assert.equal(loadNodeCert(dir, 'edge-b', k.publicKey), undefined, 'another name (stateDir copied from another node)');
    assert.equal(loadNodeCert(dir, 'edge-a', nodeKey().publicKey), undefined, 'another key (key regenerated)');
    writeFileSync(join(dir, NODE_CERT_FILE), 'garbage');
    assert.equal(loadNodeCert(dir, 'edge-a', k.publicKey), undefined);
    assert.equal(certAction(undefined, NOW), 'enroll');
    assert.equal(certAction(cert, NOW + 3_600_000), 'none');
    assert.equal(certAction(cert, NOW + 13 * 3_600_000), 'renew');
    assert.equal(certAction(cert, NOW + 25 * 3_600_000), 'enroll');
    assert.deepEqual(enrollmentPlan(cert, { joinToken: 'j', serviceAccountToken: 's', bootstrapToken: 'b' }), ['renew', 'join', 'kubernetes', 'bootstrap']);
    assert.deepEqual(enrollmentPlan(undefined, { bootstrapToken: 'b' }), ['bootstrap']);
    assert.deepEqual(enrollmentPlan(undefined, {}), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('credentials: a used-up join token file may be gone; a weak bootstrap token is always an error', () => {
  const dir = mkdtempSync(join(tmpdir(), 'em-agent-id-'));
  try {
    writeFileSync(join(dir, 'join'), 'emj1.0123456789abcdef.' + 'x'.repeat(43) + '\n');
    const cfg = (over: Partial<{ tokenFile: string; joinTokenFile: string; serviceAccountTokenFile: string }>) => ({ tunnel: { tokenFile: '', joinTokenFile: '', serviceAccountTokenFile: '', ...over } });
    assert.deepEqual(readCredentials(cfg({ joinTokenFile: join(dir, 'join') }), {}), { joinToken: 'emj1.0123456789abcdef.' + 'x'.repeat(43), serviceAccountToken: undefined, bootstrapToken: undefined });
    assert.deepEqual(readCredentials(cfg({ joinTokenFile: join(dir, 'gone') }), {}), { joinToken: undefined, serviceAccountToken: undefined, bootstrapToken: undefined });
    assert.throws(() => readCredentials(cfg({ serviceAccountTokenFile: join(dir, 'gone') }), {}), /tunnel\.serviceAccountTokenFile/);
    // Join token present, no bootstrap token file: fine.
    assert.equal(readCredentials(cfg({ joinTokenFile: join(dir, 'join'), tokenFile: join(dir, 'none') }), {}).bootstrapToken, undefined);
    // Only a missing bootstrap token: the error names tunnel.tokenFile.
    assert.throws(() => readCredentials(cfg({ tokenFile: join(dir, 'none') }), {}), /tunnel\.tokenFile/);
    assert.throws(() => readCredentials(cfg({ joinTokenFile: join(dir, 'join') }), { EDGEMESH_TOKEN: 'short' }), /entropy/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
