import { test } from 'node:test';
import assert from 'node:assert/strict';
import { firstStreamId, keepLink, meshTargets } from './decide.ts';

test('dedupe: two links starting at once: both sides keep the one the lower id dialled, whichever arrived first', () => {
  const lo = '00000000000000aa';
  const hi = 'ff000000000000aa';
  // lo's view: its own dial is 'out'; hi's view of the same link is 'in'.
  for (const first of ['lo-dial', 'hi-dial'] as const) {
    const loExisting = first === 'lo-dial' ? 'out' : 'in';
    const loCand = first === 'lo-dial' ? 'in' : 'out';
    const hiExisting = first === 'lo-dial' ? 'in' : 'out';
    const hiCand = first === 'lo-dial' ? 'out' : 'in';
    const loKeeps = keepLink(lo, hi, { direction: loExisting, established: false }, loCand) === 'candidate' ? loCand : loExisting;
    const hiKeeps = keepLink(hi, lo, { direction: hiExisting, established: false }, hiCand) === 'candidate' ? hiCand : hiExisting;
    assert.equal(loKeeps, 'out', first);
    assert.equal(hiKeeps, 'in', first);
  }
  assert.equal(keepLink(lo, hi, undefined, 'in'), 'candidate', 'a single link is always kept');
  assert.equal(keepLink(lo, lo, undefined, 'out'), 'self');
});

test('dedupe: an established link is never replaced (its streams would be reset), on either side', () => {
  const lo = '00000000000000aa';
  const hi = 'ff000000000000aa';
  // hi dialled first and the link is up; lo's later dial is the newcomer on both sides.
  assert.equal(keepLink(lo, hi, { direction: 'in', established: true }, 'out'), 'existing');
  assert.equal(keepLink(hi, lo, { direction: 'out', established: true }, 'in'), 'existing');
});

test('mesh stream ids: the two sides never allocate the same parity', () => {
  assert.notEqual(firstStreamId('aa', 'bb') % 2, firstStreamId('bb', 'aa') % 2);
});

test('targets: peers and DNS records, without our own addresses, once each, IPv6 bracketed', () => {
  const own = new Set(['10.0.0.1', '127.0.0.1']);
  assert.deepEqual(meshTargets(['s1.example:20004'], ['10.0.0.2', '10.0.0.1', '::ffff:10.0.0.3', 'fd00::5', '10.0.0.2'], own, 20004),
    ['10.0.0.2:20004', '10.0.0.3:20004', '[fd00::5]:20004', 's1.example:20004']);
});
