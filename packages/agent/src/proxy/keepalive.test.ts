import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Socket } from 'node:net';
import { TCP_KEEPALIVE_MS } from './direct.ts';
import { cancelKeepAlive, keepAliveLater, keepAliveWaiting, sweepKeepAlive } from './keepalive.ts';

/** A socket double that records setKeepAlive calls. */
const fakeSocket = (destroyed = false) => {
  const calls: [boolean, number | undefined][] = [];
  const s = { destroyed, setKeepAlive: (on: boolean, ms?: number) => { calls.push([on, ms]); return s; } };
  return { sock: s as unknown as Socket, calls };
};

test('keepalive: the sweep turns it on once for the connections still open, both legs; closed ones are skipped', () => {
  const client = fakeSocket();
  const upstream = fakeSocket();
  const gone = fakeSocket(true);
  const closedEarly = fakeSocket();
  const open = { keepAliveSockets: () => [client.sock, upstream.sock, undefined] };
  const half = { keepAliveSockets: () => [gone.sock] };
  const early = { keepAliveSockets: () => [closedEarly.sock] };
  keepAliveLater(open);
  keepAliveLater(half);
  keepAliveLater(early);
  cancelKeepAlive(early); // closed before the sweep: never pays for the options
  assert.equal(keepAliveWaiting(), 2);
  sweepKeepAlive();
  assert.deepEqual(client.calls, [[true, TCP_KEEPALIVE_MS]]);
  assert.deepEqual(upstream.calls, [[true, TCP_KEEPALIVE_MS]]);
  assert.deepEqual(gone.calls, []);
  assert.deepEqual(closedEarly.calls, []);
  assert.equal(keepAliveWaiting(), 0);
  sweepKeepAlive(); // once each
  assert.equal(client.calls.length, 1);
});
