import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { issueServerCert } from './ca.ts';
import { pinCa, resolveCaTrust, verifyServerChain, AGENT_CA_FILE, TrustError } from './trust.ts';
import { testCa } from './testca.ts';

const NOW = Date.now();
const chainOf = (pem: string) => pem.split(/(?<=-----END CERTIFICATE-----\n?)/).filter((p) => p.includes('BEGIN')).map((p) => new X509Certificate(p).raw);

async function tmp<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'em-trust-'));
  try {
    return await fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('caFile: the server of that CA is accepted, a server with another CA is refused', () => tmp(async (dir) => {
  const ca = await testCa(NOW);
  const evil = await testCa(NOW);
  writeFileSync(join(dir, 'ca.pem'), ca.certPem);
  const { trust, warning } = resolveCaTrust({ caFile: join(dir, 'ca.pem'), caHash: '', stateDir: join(dir, 'state') });
  assert.equal(warning, undefined);
  const good = await issueServerCert(ca, { now: NOW });
  const bad = await issueServerCert(evil, { now: NOW });
  assert.equal(verifyServerChain(trust, chainOf(good.chainPem), NOW).ok, true);
  // The impostor sends its own CA along: irrelevant, the agent trusts only its caFile.
  assert.deepEqual(verifyServerChain(trust, chainOf(bad.chainPem), NOW), { ok: false, reason: 'not-issued-by-ca' });
  assert.deepEqual(verifyServerChain(trust, [], NOW), { ok: false, reason: 'empty-chain' });
}));

test('caHash: the CA in the chain must have that hash; once pinned, a changed CA is refused', () => tmp(async (dir) => {
  const ca = await testCa(NOW);
  const evil = await testCa(NOW);
  const stateDir = join(dir, 'state');
  const { trust } = resolveCaTrust({ caFile: '', caHash: ca.hash, stateDir });
  const good = await issueServerCert(ca, { now: NOW });
  const bad = await issueServerCert(evil, { now: NOW });
  assert.deepEqual(verifyServerChain(trust, chainOf(bad.chainPem), NOW), { ok: false, reason: 'ca-hash-mismatch' });
  // The impostor's leaf with our CA appended: the leaf is not issued by it.
  assert.deepEqual(verifyServerChain(trust, [...chainOf(bad.certPem), ca.cert.raw], NOW), { ok: false, reason: 'not-issued-by-ca' });
  // A leaf alone (no CA in the chain) cannot be checked against a hash.
  assert.deepEqual(verifyServerChain(trust, chainOf(good.certPem), NOW), { ok: false, reason: 'ca-hash-mismatch' });
  const r = verifyServerChain(trust, chainOf(good.chainPem), NOW);
  assert.ok(r.ok && r.learned);
  pinCa(stateDir, r.ca);
  assert.equal(statSync(join(stateDir, AGENT_CA_FILE)).mode & 0o777, 0o600);
  const again = resolveCaTrust({ caFile: '', caHash: ca.hash, stateDir });
  assert.equal(again.trust.ca?.hash, ca.hash);
  const r2 = verifyServerChain(again.trust, chainOf(good.certPem), NOW);
  assert.ok(r2.ok && !r2.learned, 'with the CA pinned, the leaf alone suffices');
  assert.deepEqual(verifyServerChain(again.trust, chainOf(bad.chainPem), NOW), { ok: false, reason: 'ca-changed' });
  // The configured hash contradicts the pinned CA: a config error at start.
  assert.throws(() => resolveCaTrust({ caFile: '', caHash: evil.hash, stateDir }), (e: unknown) => e instanceof TrustError && e.key === 'tunnel.caHash');
}));

test('trust on first use: warned, the first CA is pinned, a later server with another CA is refused', () => tmp(async (dir) => {
  const ca = await testCa(NOW);
  const evil = await testCa(NOW);
  const stateDir = join(dir, 'state');
  const first = resolveCaTrust({ caFile: '', caHash: '', stateDir });
  assert.equal(first.trust.mode, 'tofu');
  assert.match(first.warning!, /trust on first use/);
  const good = await issueServerCert(ca, { now: NOW });
  const r = verifyServerChain(first.trust, chainOf(good.chainPem), NOW);
  assert.ok(r.ok && r.learned);
  pinCa(stateDir, r.ca);
  const later = resolveCaTrust({ caFile: '', caHash: '', stateDir });
  assert.match(later.warning!, /pinned at first use/);
  const bad = await issueServerCert(evil, { now: NOW });
  assert.deepEqual(verifyServerChain(later.trust, chainOf(bad.chainPem), NOW), { ok: false, reason: 'ca-changed' });
  assert.equal(verifyServerChain(later.trust, chainOf(good.chainPem), NOW).ok, true);
}));

test('config errors name the key', () => tmp(async (dir) => {
  const key = (fn: () => unknown) => {
    try {
      fn();
    } catch (e) {
      return (e as TrustError).key;
    }
    return undefined;
  };
  assert.equal(key(() => resolveCaTrust({ caFile: join(dir, 'missing.pem'), caHash: '', stateDir: dir })), 'tunnel.caFile');
  writeFileSync(join(dir, 'junk.pem'), 'junk');
  assert.equal(key(() => resolveCaTrust({ caFile: join(dir, 'junk.pem'), caHash: '', stateDir: dir })), 'tunnel.caFile');
  assert.equal(key(() => resolveCaTrust({ caFile: '', caHash: 'sha256:1234', stateDir: dir })), 'tunnel.caHash');
  assert.equal(key(() => resolveCaTrust({ caFile: join(dir, 'junk.pem'), caHash: 'sha256:' + '0'.repeat(64), stateDir: dir })), 'tunnel.caHash');
}));
