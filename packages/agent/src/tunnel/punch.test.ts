import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  choosePath, classifyNat, followUpMode, localCandidates, pathAlive, punchPlan, punchSchedule, ReplayWindow, shouldTryUpgrade, startDelayMs,
  upgradeAfter, upgradeDelayMs, type UpgradeState,
} from './punch.ts';
import { MAX_START_DELAY_MS, PATH_TIMEOUT_MS, PUNCH_TIMEOUT_MS, REPUNCH_AFTER_FAILOVER_MS, SHORT_PUNCH_MS, UPGRADE_RETRY_MS } from './timers.ts';
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

test('after losing a direct path, re-punching backs off from 1 s to the retry interval; a success resets it', () => {
  let s: UpgradeState = upgradeAfter({ lastAttemptMs: 0, lastOutcome: 'direct' }, 'lost', 0);
  assert.equal(upgradeDelayMs(s), REPUNCH_AFTER_FAILOVER_MS);
  const delays: number[] = [];
  for (let i = 0; i < 10; i++) {
    s = upgradeAfter(s, 'failed', 0);
    delays.push(upgradeDelayMs(s));
  }
  assert.deepEqual(delays.slice(0, 4), [2000, 4000, 8000, 16000]);
  assert.equal(delays.at(-1), UPGRADE_RETRY_MS);
  assert.ok(delays.every((d, i) => i === 0 || d >= delays[i - 1]));
  s = upgradeAfter(s, 'direct', 0);
  assert.equal(upgradeAfter(s, 'failed', 0).sinceLost, undefined, 'a plain failure after a success waits the full interval');
  assert.equal(upgradeDelayMs(upgradeAfter({ lastAttemptMs: 0, lastOutcome: 'never' }, 'failed', 0)), UPGRADE_RETRY_MS);
  assert.equal(upgradeDelayMs(s, 3000), 3000, 'the retry override caps every delay');
});

test('birthday mode follows only a failed normal punch we asked for, with exactly one symmetric side', () => {
  assert.equal(followUpMode('failed', 'normal', true, 'cone', 'symmetric'), 'birthday');
  assert.equal(followUpMode('failed', 'normal', false, 'cone', 'symmetric'), undefined);
  assert.equal(followUpMode('failed', 'birthday', true, 'cone', 'symmetric'), undefined);
  assert.equal(followUpMode('relay-only', 'normal', true, 'symmetric', 'symmetric'), undefined);
  assert.equal(followUpMode('failed', 'normal', true, 'cone', 'cone'), undefined);
});

test('path choice: direct unless suspected dead while a relay is there', () => {
  assert.equal(choosePath({ direct: true, directSuspect: false, relay: true }), 'direct');
  assert.equal(choosePath({ direct: true, directSuspect: true, relay: true }), 'relay');
  assert.equal(choosePath({ direct: true, directSuspect: true, relay: false }), 'direct');
  assert.equal(choosePath({ direct: false, directSuspect: false, relay: true }), 'relay');
  assert.equal(choosePath({ direct: false, directSuspect: false, relay: false }), 'none');
});

test('candidates: LAN then STUN, deduplicated', () => {
  assert.deepEqual(localCandidates(['198.18.1.2'], 20006, { host: '203.0.113.9', port: 1234 }).map((c) => c.kind), ['lan', 'stun']);
  assert.equal(localCandidates(['203.0.113.9'], 1234, { host: '203.0.113.9', port: 1234 }).length, 1);
  assert.deepEqual(localCandidates(['169.254.96.16', '127.0.0.1', '198.18.1.10'], 1, undefined).map((c) => c.host), ['198.18.1.10']);
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
  const { punchTimeoutMs } = await import('./punch.ts');
  assert.equal(punchTimeoutMs('cone', 'symmetric'), SHORT_PUNCH_MS);
  assert.equal(punchTimeoutMs('cone', 'cone'), PUNCH_TIMEOUT_MS);
  assert.equal(punchTimeoutMs('unknown', 'symmetric'), PUNCH_TIMEOUT_MS);
  assert.ok(punchSchedule(SHORT_PUNCH_MS).every((t) => t < SHORT_PUNCH_MS));
});

test('the frame tables describe every type the codecs know, without gaps or overlaps', async () => {
  const { PING_FIELDS, PING_BYTES } = await import('./ping.ts');
  let at = 0;
  for (const f of PING_FIELDS) {
    assert.equal(f.offset, at, f.field);
    at += f.bytes;
  }
  assert.equal(at, PING_BYTES);
  const { L, LINK_FRAMES } = await import('./linkproto.ts');
  assert.deepEqual(LINK_FRAMES.map((f) => f.type).sort((a, b) => a - b), Object.values(L).sort((a, b) => a - b));
  const { T, SERVER_FRAMES } = await import('@edgemesh/common/tunnel/protocol');
  assert.deepEqual(SERVER_FRAMES.map((f) => f.type).sort((a, b) => a - b), Object.values(T).sort((a, b) => a - b));
});
