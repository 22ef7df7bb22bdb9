// The Enroller against a real stateDir: pins survive a restart (a racing redialler loses), a join token works once,
// concurrent first enrollments pin exactly one key, revocations written by another process are picked up, and a
// guesser is rate-limited.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { ensureStateDir } from '@edgemesh/common/fsutil';
import { silentLogger } from '@edgemesh/common/log';
import { verifyNodeCert } from '@edgemesh/common/identity/cert';
import { testCa } from '@edgemesh/common/identity/testca';
import type { ClusterCa } from '@edgemesh/common/identity/ca';
import { verifyRevocationList, RevocationSet, type SignedRevocationList } from '@edgemesh/common/identity/revocation';
import { Enroller, type EnrollerOptions } from './enroller.ts';
import { NodeRegistry } from './registry.ts';
import type { ClusterNodes } from './nodes.ts';
import { newBinding, sha256, testNode } from './testutil.ts';

const BOOT = 'b'.repeat(4) + '0123456789abcdef0123456789abcdef';
const nodes = (names: string[]): ClusterNodes => ({ view: () => ({ kind: 'nodes', names: new Set(names) }), synced: () => true, stop: async () => {} });

async function withState(fn: (stateDir: string, ca: ClusterCa) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'em-enroll-'));
  try {
    const stateDir = join(dir, 'state');
    ensureStateDir(stateDir);
    await fn(stateDir, await testCa(Date.now()));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function enroller(stateDir: string, ca: ClusterCa, over: Partial<EnrollerOptions> = {}): Enroller {
  return new Enroller({ stateDir, ca, cluster: nodes(['edge-a', 'edge-b']), policy: { bootstrapToken: true, bootstrapTokenHash: sha256(BOOT), serviceAccounts: [] }, log: silentLogger, ...over });
}

test('pins persist: after a server restart the racing redialler with the bootstrap token is refused', () => withState(async (stateDir, ca) => {
  const a = testNode('edge-a');
  const first = enroller(stateDir, ca);
  let b = newBinding();
  const r = await first.enroll(a.request('bootstrap', BOOT, b), '198.51.100.1', b);
  assert.ok(r.ok && r.pinned);
  assert.equal(verifyNodeCert(r.cert.raw, { ca, now: Date.now(), name: 'edge-a', publicKey: a.publicKey }).ok, true);
  assert.equal(statSync(join(stateDir, 'nodes', 'edge-a.json')).mode & 0o777, 0o600);
  assert.equal(statSync(join(stateDir, 'nodes')).mode & 0o777, 0o700);
  // "Restart": a new Enroller on the same stateDir. The attacker redials first, with its own key.
  const restarted = enroller(stateDir, ca);
  const attacker = testNode('edge-a');
  for (let i = 0; i < 3; i++) {
    b = newBinding();
    const x = await restarted.enroll(attacker.request('bootstrap', BOOT, b), '203.0.113.66', b);
    assert.deepEqual(x.ok ? 'issued' : x.reason, 'name-pinned');
  }
  b = newBinding();
  const back = await restarted.enroll(a.request('renew', '', b), '198.51.100.1', b);
  assert.ok(back.ok && !back.pinned, 'the real node renews with its pinned key');
}));

test('concurrent first enrollments of one name: exactly one key is pinned', () => withState(async (stateDir, ca) => {
  const e1 = enroller(stateDir, ca);
  const e2 = enroller(stateDir, ca);
  const contenders = Array.from({ length: 8 }, () => testNode('edge-b'));
  const results = await Promise.all(contenders.map((n, i) => {
    const b = newBinding();
    return (i % 2 ? e1 : e2).enroll(n.request('bootstrap', BOOT, b), `198.51.100.${i + 1}`, b);
  }));
  const winners = results.filter((r) => r.ok);
  assert.equal(winners.length, 1);
  assert.ok(results.filter((r) => !r.ok).every((r) => !r.ok && r.reason === 'name-pinned'));
  const pin = new NodeRegistry(stateDir).readPin('edge-b')!;
  assert.equal(pin.key, winners[0].ok && winners[0].cert.publicKey.toString('base64'));
}));

test('a join token works once, for its name only; the running server sees a token created after it started', () => withState(async (stateDir, ca) => {
  const e = enroller(stateDir, ca, { policy: { bootstrapToken: false, serviceAccounts: [] } });
  // Created "by the CLI" (another store object on the same stateDir) after the Enroller exists.
  const { token } = new Enroller({ stateDir, ca, cluster: nodes([]), policy: { bootstrapToken: false, serviceAccounts: [] }, log: silentLogger }).tokens.create('edge-a', 3_600_000, Date.now());
  assert.equal(statSync(join(stateDir, 'join-tokens')).mode & 0o777, 0o700);
  const b1 = newBinding();
  const other = await e.enroll(testNode('edge-b').request('join', token, b1), '198.51.100.9', b1);
  assert.deepEqual(other.ok ? 'issued' : other.reason, 'token-wrong-node');
  const a = testNode('edge-a');
  const b2 = newBinding();
  const r = await e.enroll(a.request('join', token, b2), '198.51.100.1', b2);
  assert.ok(r.ok && r.pinned);
  assert.equal(new NodeRegistry(stateDir).readPin('edge-a')?.method, 'join');
  const b3 = newBinding();
  const reuse = await e.enroll(testNode('edge-a').request('join', token, b3), '203.0.113.66', b3);
  assert.deepEqual(reuse.ok ? 'issued' : [reuse.reason, reuse.detail], ['unauthorized', 'token-unknown']);
  // Bootstrap is off: the bootstrap token gets nothing.
  const b4 = newBinding();
  const boot = await e.enroll(testNode('edge-b').request('bootstrap', BOOT, b4), '198.51.100.2', b4);
  assert.deepEqual(boot.ok ? 'issued' : boot.reason, 'method-disabled');
}));

test('a revocation written by another process reaches the running server: refused, pushed as a signed list', () => withState(async (stateDir, ca) => {
  const e = enroller(stateDir, ca);
  const a = testNode('edge-a');
  let b = newBinding();
  assert.ok((await e.enroll(a.request('bootstrap', BOOT, b), '198.51.100.1', b)).ok);
  const pushed: SignedRevocationList[] = [];
  e.onRevocations((l) => pushed.push(l));
  e.checkRevocations();
  assert.equal(pushed.length, 1, 'the first look publishes the (empty) list');
  e.checkRevocations();
  assert.equal(pushed.length, 1, 'no change, nothing pushed');
  // `edgemesh-server node revoke edge-a` (the CLI's own registry object).
  new NodeRegistry(stateDir).revoke('edge-a', a.publicKey.toString('base64'), Date.now());
  e.checkRevocations();
  assert.equal(pushed.length, 2, 'the change is pushed');
  const v = verifyRevocationList(pushed[1], ca, JSON.parse(pushed[0].body.toString()).issuedAt - 1);
  assert.ok(v.ok && new RevocationSet(v.list.entries).isRevoked({ publicKey: a.publicKey }));
  b = newBinding();
  const r = await e.enroll(a.request('renew', '', b), '198.51.100.1', b);
  assert.deepEqual(r.ok ? 'issued' : r.reason, 'revoked');
}));

test('a guesser is rate-limited per source and its attempts are counted, not logged one by one', () => withState(async (stateDir, ca) => {
  const lines: unknown[] = [];
  const log = { ...silentLogger, warn: (o: unknown) => { lines.push(o); }, debug: () => {}, info: () => {}, error: () => {}, child: () => log } as unknown as typeof silentLogger;
  const registry = new Registry();
  const e = enroller(stateDir, ca, { log, registry });
  const x = testNode('edge-a');
  const answers: string[] = [];
  for (let i = 0; i < 30; i++) {
    const b = newBinding();
    const r = await e.enroll(x.request('bootstrap', `guess-${i}-0123456789abcdef0123456789`, b), '203.0.113.66', b);
    answers.push(r.ok ? 'issued' : r.detail);
  }
  assert.equal(answers.filter((a) => a === 'token-invalid').length, 5);
  assert.equal(answers.filter((a) => a === 'rate-limited').length, 25);
  // Another source is unaffected, and the real token still works from it.
  const b = newBinding();
  assert.ok((await e.enroll(x.request('bootstrap', BOOT, b), '198.51.100.1', b)).ok);
  assert.equal(lines.length, 0, 'nothing logged per attempt');
  e.logSummary();
  assert.equal(lines.length, 1);
  assert.deepEqual(lines[0], { failures: 5, rateLimited: 25, sources: 1, reasons: { 'token-invalid': 5 } });
  const metrics = await registry.getSingleMetricAsString('edgemesh_server_enrollments_total');
  assert.match(metrics, /method="bootstrap",outcome="rate-limited"} 25/);
  assert.match(metrics, /method="bootstrap",outcome="issued"} 1/);
}));

test('a caller that cannot prove its key costs no TokenReview', () => withState(async (stateDir, ca) => {
  let reviews = 0;
  const reviewer = { review: async () => { reviews++; return { authenticated: false }; } };
  const e = enroller(stateDir, ca, { reviewer, policy: { bootstrapToken: false, serviceAccounts: ['kube-system/edgemesh-agent'] } });
  const a = testNode('edge-a');
  const b = newBinding();
  const r = await e.enroll(a.request('kubernetes', 'some-token', b), '198.51.100.1', newBinding());
  assert.deepEqual(r.ok ? 'issued' : [r.reason, r.detail], ['unauthorized', 'bad-proof']);
  assert.equal(reviews, 0);
  const r2 = await e.enroll(a.request('kubernetes', 'some-token', b), '198.51.100.1', b);
  assert.deepEqual(r2.ok ? 'issued' : r2.detail, 'not-authenticated');
  assert.equal(reviews, 1);
  const odd = await e.enroll({ ...a.request('bootstrap', 'x', b), method: 'telepathy' as 'renew' }, '198.51.100.1', b);
  assert.deepEqual(odd.ok ? 'issued' : odd.detail, 'bad-request');
}));
