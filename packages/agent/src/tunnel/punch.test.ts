import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  classifyNat, localCandidates, parseCandidates, pathAlive, punchPlan, punchSchedule, ReplayWindow, shouldTryUpgrade, startDelayMs,
  PATH_TIMEOUT_MS, PUNCH_TIMEOUT_MS, REPUNCH_AFTER_FAILOVER_MS, UPGRADE_RETRY_MS, MAX_START_DELAY_MS,
} from './punch.ts';
import { decodePing, encodePing, keyId, P, pingKey } from './ping.ts';
import { generateKeyPair } from '@edgemesh/common/tunnel/ed25519';

test('NAT type from STUN answers', () => {
  const local = { hosts: ['198.18.1.2'], port: 20006 };
  assert.equal(classifyNat(local, undefined, undefined), 'unknown');
  assert.equal(classifyNat(local, { host: '198.18.1.2', port: 20006 }, { host: '198.18.1.2', port: 20006 }), 'open');
  assert.equal(classifyNat(local, { host: '203.0.113.5', port: 20006 }, { host: '203.0.113.5', port: 20006 }), 'cone');
  assert.equal(classifyNat(local, { host: '203.0.113.5', port: 40001 }, { host: '203.0.113.5', port: 40002 }), 'symmetric');
  assert.equal(classifyNat(local, { host: '203.0.113.5', port: 40001 }, undefined), 'unknown');
});

test('symmetric on both sides stays on the relay; anything else punches', () => {
  assert.equal(punchPlan('symmetric', 'symmetric'), 'relay-only');
  for (const [x, y] of [['cone', 'cone'], ['cone', 'symmetric'], ['symmetric', 'open'], ['unknown', 'cone']] as const) assert.equal(punchPlan(x, y), 'punch');
});

test('synchronised start: the responder waits about the reply travel time, bounded', () => {
  assert.equal(startDelayMs('initiator', 80, 40), 0);
  assert.equal(startDelayMs('responder', 80, 40), 60);
  assert.equal(startDelayMs('responder', 5000, 5000), MAX_START_DELAY_MS);
});

test('punch schedule is dense first, ends before the timeout, increasing', () => {
  const s = punchSchedule();
  assert.equal(s[0], 0);
  assert.ok(s.every((t, i) => i === 0 || t > s[i - 1]));
  assert.ok(s[s.length - 1] < PUNCH_TIMEOUT_MS);
  assert.ok(s.filter((t) => t <= 1000).length >= 6);
});

test('path liveness and upgrade retries', () => {
  assert.equal(pathAlive(1000, 1000 + PATH_TIMEOUT_MS), true);
  assert.equal(pathAlive(1000, 1001 + PATH_TIMEOUT_MS), false);
  assert.equal(shouldTryUpgrade({ lastAttemptMs: 0, lastOutcome: 'never' }, 0), true);
  assert.equal(shouldTryUpgrade({ lastAttemptMs: 0, lastOutcome: 'failed' }, UPGRADE_RETRY_MS - 1), false);
  assert.equal(shouldTryUpgrade({ lastAttemptMs: 0, lastOutcome: 'failed' }, UPGRADE_RETRY_MS), true);
  assert.equal(shouldTryUpgrade({ lastAttemptMs: 0, lastOutcome: 'lost' }, REPUNCH_AFTER_FAILOVER_MS), true);
});

test('candidates: LAN then STUN, deduplicated; wire candidates validated and bounded', () => {
  assert.deepEqual(localCandidates(['198.18.1.2'], 20006, { host: '203.0.113.9', port: 1234 }).map((c) => c.kind), ['lan', 'stun']);
  assert.equal(localCandidates(['203.0.113.9'], 1234, { host: '203.0.113.9', port: 1234 }).length, 1);
  assert.deepEqual(localCandidates(['169.254.96.16', '127.0.0.1', '198.18.1.10'], 1, undefined).map((c) => c.host), ['198.18.1.10']);
  const parsed = parseCandidates([{ host: '1.2.3.4', port: 5, kind: 'lan' }, { host: 'evil.example', port: 5 }, { host: '1.2.3.4', port: 0 }, 'x', ...Array(40).fill({ host: '1.1.1.1', port: 1 })]);
  assert.equal(parsed[0].kind, 'lan');
  assert.ok(parsed.length <= 16);
  assert.ok(parsed.every((c) => c.host !== 'evil.example' && c.port > 0));
});

test('replay window: fresh counters pass once, old or repeated ones are dropped', () => {
  const w = new ReplayWindow();
  assert.equal(w.accept(100n), true);
  assert.equal(w.accept(100n), false);
  assert.equal(w.accept(99n), true);
  assert.equal(w.accept(99n), false);
  assert.equal(w.accept(200n), true);
  assert.equal(w.accept(150n), true);
  assert.equal(w.accept(100n), false, 'beyond the window');
  assert.equal(w.accept(137n), true);
});

test('ping keys agree between the two peers only; pings authenticate', () => {
  const a = generateKeyPair(), b = generateKeyPair(), c = generateKeyPair();
  const kab = pingKey(a.secretKey, a.publicKey, b.publicKey);
  assert.deepEqual(kab, pingKey(b.secretKey, b.publicKey, a.publicKey));
  assert.notDeepEqual(kab, pingKey(c.secretKey, c.publicKey, b.publicKey));
  const pkt = encodePing(kab, { type: P.PING, keyId: keyId(a.publicKey), txid: randomBytes(12), counter: 7n, streamId: 9 });
  assert.equal(decodePing(kab, pkt)?.counter, 7n);
  const bad = Buffer.from(pkt);
  bad[25] ^= 1;
  assert.equal(decodePing(kab, bad), undefined);
  assert.equal(decodePing(pingKey(c.secretKey, c.publicKey, b.publicKey), pkt), undefined);
});

test('birthday roles: only when exactly one side is symmetric and the other answered STUN', async () => {
  const { birthdayRole, birthdayPorts, EPHEMERAL_MIN_PORT } = await import('./punch.ts');
  assert.equal(birthdayRole('symmetric', 'cone'), 'hard');
  assert.equal(birthdayRole('cone', 'symmetric'), 'easy');
  assert.equal(birthdayRole('open', 'symmetric'), 'easy');
  assert.equal(birthdayRole('symmetric', 'symmetric'), undefined);
  assert.equal(birthdayRole('cone', 'cone'), undefined);
  assert.equal(birthdayRole('unknown', 'symmetric'), undefined);
  const ports = birthdayPorts(1000);
  assert.equal(new Set(ports).size, 1000);
  assert.ok(ports.every((p) => p >= EPHEMERAL_MIN_PORT && p <= 65535));
});

test('the normal punch is cut short when birthday mode can follow', async () => {
  const { punchTimeoutMs, SHORT_PUNCH_MS } = await import('./punch.ts');
  assert.equal(punchTimeoutMs('cone', 'symmetric'), SHORT_PUNCH_MS);
  assert.equal(punchTimeoutMs('cone', 'cone'), PUNCH_TIMEOUT_MS);
  assert.equal(punchTimeoutMs('unknown', 'symmetric'), PUNCH_TIMEOUT_MS);
  assert.ok(punchSchedule(SHORT_PUNCH_MS).every((t) => t < SHORT_PUNCH_MS));
});
