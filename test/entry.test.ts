// The bins' start (packages/common/bin/entry.js): V8 flags from the memory limit, which code runs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseCode, memoryLimit, parseMemory, v8Flags } from '../packages/common/bin/entry.js';

const MiB = 1024 * 1024;

test('parseMemory: bytes and Ki/Mi/Gi (or K/M/G) suffixes; anything else is refused naming the variable', () => {
  assert.equal(parseMemory('268435456'), 256 * MiB);
  assert.equal(parseMemory('256Mi'), 256 * MiB);
  assert.equal(parseMemory('1.5Gi'), 1536 * MiB);
  assert.equal(parseMemory('512M'), 512 * MiB);
  assert.throws(() => parseMemory('lots'), /EDGEMESH_MEMORY_LIMIT: expected bytes or a size such as 256Mi/);
});

test('memoryLimit: EDGEMESH_MEMORY_LIMIT wins, then a cgroup limit below physical memory, else none', () => {
  const total = 8192 * MiB;
  assert.equal(memoryLimit({ EDGEMESH_MEMORY_LIMIT: '128Mi' }, 512 * MiB, total), 128 * MiB);
  assert.equal(memoryLimit({}, 512 * MiB, total), 512 * MiB);
  assert.equal(memoryLimit({}, 0, total), undefined); // no cgroup
  assert.equal(memoryLimit({}, 2 ** 63, total), undefined); // cgroup v1 "unlimited"
});

test('v8Flags: semi-space and old space follow the limit; flags already given are kept; never above V8\'s own heap limit', () => {
  assert.deepEqual(v8Flags(256 * MiB), ['--max-semi-space-size=1', '--max-old-space-size=192']);
  assert.deepEqual(v8Flags(128 * MiB), ['--max-semi-space-size=1', '--max-old-space-size=64']);
  assert.deepEqual(v8Flags(64 * MiB), ['--max-semi-space-size=1', '--max-old-space-size=32']);
  assert.deepEqual(v8Flags(1024 * MiB), ['--max-semi-space-size=4', '--max-old-space-size=768']);
  assert.deepEqual(v8Flags(64 * 1024 * MiB, '', 4144), ['--max-semi-space-size=16', '--max-old-space-size=4144']);
  assert.deepEqual(v8Flags(256 * MiB, '--max-old-space-size=100'), ['--max-semi-space-size=1']);
  assert.deepEqual(v8Flags(256 * MiB, '--foo --max_semi_space_size=8'), ['--max-old-space-size=192']);
});

test('chooseCode: dist only in production and when built; EDGEMESH_SOURCE forces the sources', () => {
  assert.equal(chooseCode({ NODE_ENV: 'production' }, true), 'dist');
  assert.equal(chooseCode({ NODE_ENV: 'production' }, false), 'src');
  assert.equal(chooseCode({}, true), 'src');
  assert.equal(chooseCode({ NODE_ENV: 'production', EDGEMESH_SOURCE: '1' }, true), 'src');
  assert.equal(chooseCode({ NODE_ENV: 'production', EDGEMESH_SOURCE: '0' }, true), 'dist');
});
