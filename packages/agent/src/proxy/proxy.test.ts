import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseDialer } from './choose.ts';
import { endpointKey, headerFromRequestHead } from './portstate.ts';

test('dialer choice: same or unknown node direct, other node via the tunnel when there is one, else direct', () => {
  assert.equal(chooseDialer(undefined, 'a', true), 'direct');
  assert.equal(chooseDialer('', 'a', true), 'direct');
  assert.equal(chooseDialer('a', 'a', true), 'direct');
  assert.equal(chooseDialer('b', 'a', true), 'tunnel');
  assert.equal(chooseDialer('b', 'a', false), 'direct');
});

test('hashed header is read from the first request head, case-insensitively; absent or partial heads', () => {
  const head = Buffer.from('GET /x HTTP/1.1\r\nHost: a\r\nX-User:  alice \r\nx-other: 1\r\n\r\nbody: no');
  assert.equal(headerFromRequestHead(head, 'x-user'), 'alice');
  assert.equal(headerFromRequestHead(head, 'body'), undefined);
  assert.equal(headerFromRequestHead(Buffer.from('GET / HTTP/1.1\r\nX-User: bo'), 'x-user'), 'bo');
  assert.equal(headerFromRequestHead(Buffer.from('\x16\x03\x01binary'), 'x-user'), undefined);
  assert.equal(endpointKey('10.0.0.1', 80), '10.0.0.1:80');
  assert.equal(endpointKey('fd00::1', 80), '[fd00::1]:80');
});
