import { test } from 'node:test';
import assert from 'node:assert/strict';
import { liveEntries, RevocationSet, signRevocationList, verifyRevocationList, type RevocationEntry } from './revocation.ts';
import { nodeKey, testCa } from './testca.ts';

const NOW = Date.UTC(2026, 0, 1);
const DAY = 86_400_000;

test('a signed revocation list verifies against its CA, not another, and never rolls back', async () => {
  const ca = await testCa();
  const other = await testCa();
  const k = nodeKey();
  const entries: RevocationEntry[] = [{ name: 'edge-a', key: k.publicKey.toString('base64'), revokedAt: NOW }];
  const signed = signRevocationList({ issuer: ca.keyId.toString('hex'), issuedAt: NOW + 5, entries }, ca.privateKey!);
  const r = verifyRevocationList(signed, ca);
  assert.ok(r.ok);
  assert.deepEqual(r.list.entries, entries);
  assert.deepEqual(verifyRevocationList(signed, other), { ok: false, reason: 'bad-signature' });
  assert.deepEqual(verifyRevocationList(signed, ca, NOW + 5), { ok: false, reason: 'stale' });
  const tampered = { body: Buffer.from(signed.body.toString().replace('edge-a', 'edge-b')), signature: signed.signature };
  assert.deepEqual(verifyRevocationList(tampered, ca), { ok: false, reason: 'bad-signature' });
  // Signed by another CA but naming ours as issuer: still a bad signature for our CA; naming itself: wrong issuer for us.
  const foreign = signRevocationList({ issuer: other.keyId.toString('hex'), issuedAt: NOW, entries: [] }, ca.privateKey!);
  assert.deepEqual(verifyRevocationList(foreign, ca), { ok: false, reason: 'wrong-issuer' });
  const set = new RevocationSet(r.list.entries);
  assert.equal(set.isRevoked({ publicKey: k.publicKey }), true);
  assert.equal(set.isRevoked({ publicKey: nodeKey().publicKey }), false);
  assert.equal(set.hasName('edge-a'), true);
  assert.equal(set.hasName('edge-b'), false);
});

test('liveEntries drops revocations older than the longest certificate lifetime', () => {
  const e = (name: string, revokedAt: number): RevocationEntry => ({ name, key: nodeKey().publicKey.toString('base64'), revokedAt });
  const entries = [e('old', NOW - 3 * DAY), e('recent', NOW - DAY / 2)];
  assert.deepEqual(liveEntries(entries, NOW, DAY).map((x) => x.name), ['recent']);
  assert.deepEqual(liveEntries(entries, NOW, 7 * DAY).map((x) => x.name), ['old', 'recent']);
});
