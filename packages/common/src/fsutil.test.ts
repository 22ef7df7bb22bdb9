import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeFileAtomicSync } from './fsutil.ts';

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
