import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureStateDir, writeFileAtomicSync, writeFileExclusiveSync } from './fsutil.ts';

test('writeFileAtomicSync creates the directory, replaces the content, leaves no temp file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'em-fsutil-'));
  try {
    const file = join(dir, 'sub', 'table.json');
    writeFileAtomicSync(file, 'one');
    writeFileAtomicSync(file, 'two', 0o600);
    assert.equal(readFileSync(file, 'utf8'), 'two');
    assert.deepEqual(readdirSync(join(dir, 'sub')), ['table.json']);
    assert.equal(statSync(file).mode & 0o777, 0o600);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('ensureStateDir creates 0700 and tightens an existing directory; files default to 0600', () => {
  const dir = mkdtempSync(join(tmpdir(), 'em-fsutil-'));
  try {
    const state = join(dir, 'a', 'state');
    ensureStateDir(state);
    assert.equal(statSync(state).mode & 0o777, 0o700);
    chmodSync(state, 0o755);
    ensureStateDir(state);
    assert.equal(statSync(state).mode & 0o777, 0o700);
    writeFileAtomicSync(join(state, 'f'), 'x');
    assert.equal(statSync(join(state, 'f')).mode & 0o777, 0o600);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('writeFileExclusiveSync: the first writer wins, the loser sees false and the winner\'s content stays', () => {
  const dir = mkdtempSync(join(tmpdir(), 'em-fsutil-'));
  try {
    const file = join(dir, 'pin.json');
    assert.equal(writeFileExclusiveSync(file, 'first'), true);
    assert.equal(writeFileExclusiveSync(file, 'second'), false);
    assert.equal(readFileSync(file, 'utf8'), 'first');
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.deepEqual(readdirSync(dir), ['pin.json']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
