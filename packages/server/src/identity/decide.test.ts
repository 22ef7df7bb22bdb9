// The enrollment decision, one test per attack the identity design must stop (and the flows it must allow).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RevocationSet } from '@edgemesh/common/identity/revocation';
import { NODE_CERT_VALIDITY_MS } from '@edgemesh/common/identity/renewal';
import { decideEnrollment, publicReason, type Credential, type EnrollInput } from './decide.ts';
import { hashSecret } from './jointokens.ts';
import type { ClusterView } from './nodes.ts';
import type { Pin } from './registry.ts';
import { newBinding, sha256, testNode, type TestNode } from './testutil.ts';

const NOW = Date.UTC(2026, 0, 1, 12);
const BOOT = 'bootstrap-token-' + 'f'.repeat(8) + '0123456789abcdef0123456789';
const CLUSTER: ClusterView = { kind: 'nodes', names: new Set(['edge-a', 'edge-b']) };
const POLICY = { bootstrapToken: true, bootstrapTokenHash: sha256(BOOT), serviceAccounts: ['kube-system/edgemesh-agent'] };
const A = testNode('edge-a');
const pinOf = (n: TestNode, method: Pin['method'] = 'bootstrap'): Pin => ({ name: n.name, key: n.publicKey.toString('base64'), method, enrolledAt: NOW - 86_400_000 });

/** The input of `who` asking for `name` with `cred`; everything else from `over`. */
function input(who: TestNode, cred: Credential, over: Partial<EnrollInput> = {}, name = who.name): EnrollInput {
  const binding = newBinding();
  const req = who.request(cred.method, '', binding, name);
  return { name, publicKey: who.publicKey, proof: { binding, signature: req.signature }, credential: cred, pin: undefined, revoked: new RevocationSet(), cluster: CLUSTER, policy: POLICY, now: NOW, ...over };
}

const joinRecord = (node: string, secret = 'S'.repeat(43), id = '0123456789abcdef', expiresAt = NOW + 3_600_000) => ({
  token: `emj1.${id}.${secret}`, record: { id, node, secretHash: hashSecret(secret), createdAt: NOW - 60_000, expiresAt },
});
const review = (node: string, sa = 'system:serviceaccount:kube-system:edgemesh-agent', audiences = ['edgemesh']) => ({
  authenticated: true, audiences, user: { username: sa, extra: { 'authentication.kubernetes.io/node-name': [node], 'authentication.kubernetes.io/pod-name': ['edgemesh-agent-x'] } },
});

test('bootstrap: the first enrollment of a name pins its key and issues a 24 h certificate', () => {
  const d = decideEnrollment(input(A, { method: 'bootstrap', token: BOOT }));
  assert.equal(d.action, 'issue');
  assert.ok(d.action === 'issue' && d.pin === 'create' && d.notAfter === NOW + NODE_CERT_VALIDITY_MS && d.notBefore < NOW);
  // The same node again (restart, lost certificate): its pinned key is accepted, nothing new pinned.
  const again = decideEnrollment(input(A, { method: 'bootstrap', token: BOOT }, { pin: pinOf(A) }));
  assert.ok(again.action === 'issue' && again.pin === 'keep');
});

test('attack: impersonating a disconnected (or connected) node with the bootstrap token and a new key is refused', () => {
  // The decision has no notion of "connected": the pin decides, whether the victim is online, stopped or knocked off.
  const attacker = testNode('edge-a');
  const d = decideEnrollment(input(attacker, { method: 'bootstrap', token: BOOT }, { pin: pinOf(A) }));
  assert.deepEqual(d, { action: 'refuse', reason: 'name-pinned', public: 'name-pinned' });
  for (const cred of [{ method: 'renew' } as const, { method: 'kubernetes', review: review('edge-a') } as const, { method: 'join', ...joinRecord('edge-a') } as const]) {
    const r = decideEnrollment(input(attacker, cred, { pin: pinOf(A) }));
    assert.equal(r.action, 'refuse', cred.method);
    assert.equal(r.action === 'refuse' && r.reason, cred.method === 'renew' ? 'key-mismatch' : 'name-pinned', cred.method);
  }
});

test('attack: a key the caller does not hold (stolen public key, replayed proof) is refused', () => {
  const thief = testNode('edge-a');
  const i = input(thief, { method: 'bootstrap', token: BOOT }, { pin: pinOf(A) });
  // Claims A's public key, but can only sign with its own.
  assert.deepEqual(decideEnrollment({ ...i, publicKey: A.publicKey }), { action: 'refuse', reason: 'bad-proof', public: 'unauthorized' });
  // A's genuine proof from another connection (another channel binding) does not verify on this one.
  const genuine = input(A, { method: 'renew' }, { pin: pinOf(A) });
  assert.equal(decideEnrollment(genuine).action, 'issue');
  assert.deepEqual(decideEnrollment({ ...genuine, proof: { ...genuine.proof, binding: newBinding() } }), { action: 'refuse', reason: 'bad-proof', public: 'unauthorized' });
  // The proof names the method and the name: A's renewal proof is no proof for a bootstrap enrollment as edge-b.
  assert.equal(decideEnrollment({ ...genuine, name: 'edge-b', pin: undefined }).action, 'refuse');
});

test('attack: names that are not Nodes of the cluster are refused; until the cluster synced, everyone waits', () => {
  const x = testNode('not-a-cluster-node');
  assert.deepEqual(decideEnrollment(input(x, { method: 'bootstrap', token: BOOT })), { action: 'refuse', reason: 'not-a-node', public: 'not-a-node' });
  assert.deepEqual(decideEnrollment(input(A, { method: 'bootstrap', token: BOOT }, { cluster: { kind: 'unsynced' } })), { action: 'refuse', reason: 'cluster-not-ready', public: 'retry-later' });
  assert.equal(decideEnrollment(input(x, { method: 'bootstrap', token: BOOT }, { cluster: { kind: 'any' } })).action, 'issue', 'cluster.source none: no name check');
  for (const bad of ['Edge-A', '../etc/passwd', 'a'.repeat(254), '']) {
    assert.deepEqual(decideEnrollment(input(testNode('x'), { method: 'bootstrap', token: BOOT }, {}, bad)), { action: 'refuse', reason: 'bad-request', public: 'bad-request' }, bad);
  }
});

test('attack: a wrong bootstrap token, or bootstrap enrollment turned off', () => {
  assert.deepEqual(decideEnrollment(input(A, { method: 'bootstrap', token: BOOT + 'x' })), { action: 'refuse', reason: 'token-invalid', public: 'unauthorized' });
  assert.deepEqual(decideEnrollment(input(A, { method: 'bootstrap', token: BOOT }, { policy: { ...POLICY, bootstrapToken: false } })), { action: 'refuse', reason: 'bootstrap-disabled', public: 'method-disabled' });
});

test('join token: works for its name; refused for another name, expired, wrong secret, unknown or already used', () => {
  const j = joinRecord('edge-a');
  const ok = decideEnrollment(input(A, { method: 'join', ...j }));
  assert.ok(ok.action === 'issue' && ok.consumeToken === '0123456789abcdef' && ok.pin === 'create');
  const B = testNode('edge-b');
  assert.deepEqual(decideEnrollment(input(B, { method: 'join', ...j })), { action: 'refuse', reason: 'token-wrong-node', public: 'token-wrong-node' });
  const expired = joinRecord('edge-a', 'S'.repeat(43), '0123456789abcdef', NOW - 1);
  assert.deepEqual(decideEnrollment(input(A, { method: 'join', ...expired })), { action: 'refuse', reason: 'token-expired', public: 'unauthorized' });
  assert.deepEqual(decideEnrollment(input(A, { method: 'join', token: `emj1.0123456789abcdef.${'T'.repeat(43)}`, record: j.record })), { action: 'refuse', reason: 'token-invalid', public: 'unauthorized' });
  // Used tokens are deleted: a reused token finds no record.
  assert.deepEqual(decideEnrollment(input(A, { method: 'join', token: j.token, record: undefined })), { action: 'refuse', reason: 'token-unknown', public: 'unauthorized' });
  assert.deepEqual(decideEnrollment(input(A, { method: 'join', token: 'hello', record: undefined })), { action: 'refuse', reason: 'token-malformed', public: 'unauthorized' });
});

test('kubernetes: the node claim decides the name; other service accounts, audiences and nodes are refused', () => {
  assert.equal(decideEnrollment(input(A, { method: 'kubernetes', review: review('edge-a') })).action, 'issue');
  assert.deepEqual(decideEnrollment(input(A, { method: 'kubernetes', review: review('edge-b') })), { action: 'refuse', reason: 'token-wrong-node', public: 'token-wrong-node' });
  assert.equal((decideEnrollment(input(A, { method: 'kubernetes', review: review('edge-a', 'system:serviceaccount:default:some-app') })) as { reason: string }).reason, 'service-account-not-allowed');
  assert.equal((decideEnrollment(input(A, { method: 'kubernetes', review: review('edge-a', undefined, ['https://kubernetes.default.svc']) })) as { reason: string }).reason, 'wrong-audience');
  assert.equal((decideEnrollment(input(A, { method: 'kubernetes', review: { authenticated: false } })) as { reason: string }).reason, 'not-authenticated');
  assert.equal((decideEnrollment(input(A, { method: 'kubernetes', review: { ...review('edge-a'), user: { username: 'system:serviceaccount:kube-system:edgemesh-agent' } } })) as { reason: string }).reason, 'no-node-claim');
  assert.equal((decideEnrollment(input(A, { method: 'kubernetes', review: { ...review('edge-a'), user: { username: 'alice', extra: review('edge-a').user.extra } } })) as { reason: string }).reason, 'not-a-service-account');
  assert.deepEqual(decideEnrollment(input(A, { method: 'kubernetes', review: 'failed' })), { action: 'refuse', reason: 'review-failed', public: 'retry-later' });
  assert.deepEqual(decideEnrollment(input(A, { method: 'kubernetes', review: review('edge-a') }, { policy: { ...POLICY, serviceAccounts: [] } })), { action: 'refuse', reason: 'kubernetes-disabled', public: 'method-disabled' });
});

test('attack: a revoked node gets nothing, by any method; its name is closed to the bootstrap token', () => {
  const revoked = new RevocationSet([{ name: 'edge-a', key: A.publicKey.toString('base64'), revokedAt: NOW - 1000 }]);
  for (const cred of [{ method: 'renew' } as const, { method: 'bootstrap', token: BOOT } as const, { method: 'join', ...joinRecord('edge-a') } as const, { method: 'kubernetes', review: review('edge-a') } as const]) {
    assert.deepEqual(decideEnrollment(input(A, cred, { pin: pinOf(A), revoked })), { action: 'refuse', reason: 'revoked', public: 'revoked' }, cred.method);
  }
  // After `node reset` (pin removed): a new key by bootstrap token is still refused (the thief holds that token) ...
  const replacement = testNode('edge-a');
  assert.deepEqual(decideEnrollment(input(replacement, { method: 'bootstrap', token: BOOT }, { revoked })), { action: 'refuse', reason: 'bootstrap-after-revocation', public: 'method-disabled' });
  // ... while a join token the operator made for the replacement works.
  assert.ok((decideEnrollment(input(replacement, { method: 'join', ...joinRecord('edge-a') }, { revoked })) as { pin: string }).pin === 'create');
});

test('renewal: the pinned key renews (even after its certificate expired); an unknown name does not learn it is unknown', () => {
  const d = decideEnrollment(input(A, { method: 'renew' }, { pin: pinOf(A), now: NOW + 30 * 86_400_000 }));
  assert.ok(d.action === 'issue' && d.pin === 'keep' && d.notAfter === NOW + 30 * 86_400_000 + NODE_CERT_VALIDITY_MS);
  assert.deepEqual(decideEnrollment(input(A, { method: 'renew' })), { action: 'refuse', reason: 'not-enrolled', public: 'unauthorized' });
});

test('what an unauthenticated caller is told never separates a wrong token from an unknown name or pin', () => {
  for (const r of ['bad-proof', 'token-unknown', 'token-invalid', 'token-expired', 'token-malformed', 'not-authenticated', 'wrong-audience', 'service-account-not-allowed', 'no-node-claim', 'not-a-service-account', 'not-enrolled', 'key-mismatch'] as const) {
    assert.equal(publicReason(r), 'unauthorized', r);
  }
  // Name checks run only after the credential was accepted: a wrong token for a non-Node name says "unauthorized".
  const x = testNode('not-a-cluster-node');
  assert.equal((decideEnrollment(input(x, { method: 'bootstrap', token: 'wrong' })) as { public: string }).public, 'unauthorized');
  assert.equal((decideEnrollment(input(testNode('edge-a'), { method: 'bootstrap', token: 'wrong' }, { pin: pinOf(A) })) as { public: string }).public, 'unauthorized');
});
