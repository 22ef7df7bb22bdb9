import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PresenceTable } from './presence.ts';

test('lookup finds the peer that most recently announced a node; removes and dropped links forget it', () => {
  const t = new PresenceTable<string>();
  t.add('s2', ['a', 'b']);
  t.add('s3', ['b']);
  assert.equal(t.lookup('a'), 's2');
  assert.equal(t.lookup('b'), 's3', 'b moved to s3 (s2 has not removed it yet)');
  assert.equal(t.size, 3);
  t.remove('s3', ['b']);
  assert.equal(t.lookup('b'), 's2');
  t.dropLink('s2');
  assert.equal(t.lookup('a'), undefined);
  assert.equal(t.lookup('b'), undefined);
  assert.equal(t.size, 0);
  assert.equal(t.has('s2', 'a'), false);
});

test('bounded per link and in total; repeats cost nothing; refusals are reported', () => {
  const t = new PresenceTable<string>(3, 4);
  assert.deepEqual(t.add('s2', ['a', 'b', 'c', 'd']), { added: 3, refused: 1 });
  assert.deepEqual(t.add('s2', ['a']), { added: 0, refused: 0 });
  assert.deepEqual(t.add('s3', ['x', 'y']), { added: 1, refused: 1 });
  assert.equal(t.size, 4);
  assert.equal(t.sizeOf('s2'), 3);
  t.remove('s2', ['a', 'zzz']);
  assert.deepEqual(t.add('s3', ['y']), { added: 1, refused: 0 });
});
