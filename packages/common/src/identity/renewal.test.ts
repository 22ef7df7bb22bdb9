import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CERT_BACKDATE_MS } from './ca.ts';
import { nextRenewalDelay, renewAt, renewalState, validityWindow, NODE_CERT_VALIDITY_MS, RENEW_RETRY_MS } from './renewal.ts';

const NOW = Date.UTC(2026, 0, 1);
const HOUR = 3_600_000;

test('a certificate issued now lives 24 h (backdated a little) and is renewed at half life', () => {
  const w = validityWindow(NOW);
  assert.equal(w.notBefore, NOW - CERT_BACKDATE_MS);
  assert.equal(w.notAfter, NOW + NODE_CERT_VALIDITY_MS);
  assert.equal(renewAt(w), NOW + 12 * HOUR);
  assert.equal(renewalState(w, NOW), 'valid');
  assert.equal(renewalState(w, NOW + 12 * HOUR - 1), 'valid');
  assert.equal(renewalState(w, NOW + 12 * HOUR), 'renew');
  assert.equal(renewalState(w, NOW + 24 * HOUR), 'renew');
  assert.equal(renewalState(w, NOW + 24 * HOUR + 1), 'expired');
  assert.throws(() => validityWindow(NOW, 0), RangeError);
  assert.throws(() => validityWindow(NOW, 8 * 24 * HOUR), RangeError);
});

test('renewal delays: until half life, then retries every minute after a failure, never past expiry', () => {
  const w = validityWindow(NOW);
  assert.equal(nextRenewalDelay(w, NOW), 12 * HOUR);
  assert.equal(nextRenewalDelay(w, NOW + 13 * HOUR), 0);
  assert.equal(nextRenewalDelay(w, NOW + 13 * HOUR, NOW + 13 * HOUR), RENEW_RETRY_MS);
  assert.equal(nextRenewalDelay(w, w.notAfter - 1000, w.notAfter - 1000), 1000);
  // Expired: try at once (re-enrolment with the pinned key is the agent's next step).
  assert.equal(nextRenewalDelay(w, w.notAfter + HOUR), 0);
});
