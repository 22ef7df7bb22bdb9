import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Budgets } from './budget.ts';
import { FD_RESERVE_MAX, FD_RESERVE_MIN, FdPressure, fdHeadroom, fdReserve, isFdExhaustion, parseNofile } from './fds.ts';

const LIMITS = `Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            2048                 4096                 files
Max locked memory         8388608              8388608              bytes
`;

test('fds: parses Max open files from /proc/self/limits (numbers and unlimited)', () => {
  assert.deepEqual(parseNofile(LIMITS), { soft: 2048, hard: 4096 });
  assert.deepEqual(parseNofile('Max open files            unlimited            unlimited            files\n'), { soft: Infinity, hard: Infinity });
  assert.equal(parseNofile('garbage'), undefined);
  const real = parseNofile(readFileSync('/proc/self/limits', 'utf8'));
  assert.ok(real && real.soft > 0, 'this process has a finite or unlimited soft limit');
});

test('fds: reserve is 10 % of the limit within [min, max]; headroom', () => {
  assert.equal(fdReserve(2048), 204);
  assert.equal(fdReserve(100), FD_RESERVE_MIN);
  assert.equal(fdReserve(1_048_576), FD_RESERVE_MAX);
  assert.equal(fdReserve(Infinity), FD_RESERVE_MAX);
  assert.equal(fdHeadroom(2048, 1800, 204), 44);
  assert.equal(fdHeadroom(2048, 1900, 204), -56);
  assert.equal(isFdExhaustion(Object.assign(new Error('x'), { code: 'EMFILE' })), true);
  assert.equal(isFdExhaustion(Object.assign(new Error('x'), { code: 'ENFILE' })), true);
  assert.equal(isFdExhaustion(new Error('x')), false);
  assert.equal(isFdExhaustion(undefined), false);
});

test('fds: samples the descriptor directory; admit() sheds below the reserve and counts the refusal', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'em-fds-'));
  try {
    const limits = join(dir, 'limits');
    writeFileSync(limits, LIMITS);
    const fdDir = join(dir, 'fd');
    mkdirSync(fdDir);
    // 1,801 entries listed = 1,800 open (the sampler's own readdir descriptor is subtracted).
    for (let i = 0; i <= 1800; i++) writeFileSync(join(fdDir, String(i)), '');
    const budgets = new Budgets();
    const p = new FdPressure({ limitsPath: limits, fdDir, budgets });
    assert.equal(p.limit, 2048);
    assert.equal(p.reserve, 204);
    await p.sample();
    assert.equal(p.open, 1800);
    assert.equal(p.headroom(), 44);
    assert.equal(p.admit(40), true);
    assert.equal(p.open, 1840, 'admitted descriptors count until the next sample');
    assert.equal(p.admit(5), false);
    assert.equal(budgets.refused('fd_reserve'), 1);
    p.note(-10);
    assert.equal(p.admit(5), true);
    await p.sample();
    assert.equal(p.open, 1800, 'a sample replaces the estimate');
    p.noteExhausted();
    assert.equal(p.shed(), true, 'EMFILE seen: shed until a sample shows room');
    await p.sample();
    assert.equal(p.shed(), false);
    // A sample that fails for another reason than EMFILE/ENFILE says nothing about pressure.
    rmSync(fdDir, { recursive: true });
    const q = new FdPressure({ limitsPath: limits, fdDir });
    await q.sample(); // ENOENT: not exhaustion, nothing known
    assert.equal(q.shed(), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('fds: unknown limit (no /proc) never sheds on the count; the real process samples cheaply', async () => {
  const p = new FdPressure({ limitsPath: '/nonexistent/limits' });
  assert.equal(p.limit, Infinity);
  await p.sample();
  assert.equal(p.shed(), false);
  const real = new FdPressure();
  real.start();
  await real.sample();
  assert.ok(real.open > 2 && real.open < real.limit, `open ${real.open} of ${real.limit}`);
  real.stop();
});
