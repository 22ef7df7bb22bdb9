import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeFrame, FrameDecoder } from '@edgemesh/common/tunnel/frame';
import { decodeControl, encodeControl, T } from '@edgemesh/common/tunnel/protocol';
import { PingFrames, pongTime } from './heartbeat.ts';

test('PingFrames: the frame of a millisecond is built once and is the PING an agent would get encoded on its own', () => {
  const p = new PingFrames();
  const a = p.at(1_700_000_000_123);
  assert.deepEqual(a, encodeFrame(T.PING, encodeControl(T.PING, { t: 1_700_000_000_123 })));
  assert.equal(p.at(1_700_000_000_123), a, 'same millisecond: the same buffer, not a new encoding');
  const b = p.at(1_700_000_000_124);
  assert.notEqual(b, a);
  const [f] = new FrameDecoder().push(b);
  assert.equal(f.type, T.PING);
  assert.deepEqual(decodeControl(T.PING, f.payload), { t: 1_700_000_000_124 }, 'each millisecond carries its own t');
  assert.deepEqual(new FrameDecoder().push(a)[0].payload.toString(), '{"t":1700000000123}', 'the earlier frame is unchanged');
});

test('pongTime accepts and rejects exactly what decodeControl(T.PONG) does, with the same t', () => {
  const bodies = [
    '{"t":0}', '{"t":1700000000123}', '{"t":9007199254740991}', '{"t":9999999999999999}', '{"t":12345678901234567}',
    '{ "t": 5 }', '{"t":5,"x":1}', '{"t":-3}', '{"t":1.5}', '{"t":1e3}', '{"t":"5"}', '{"t":05}', '{"t":}', '{}', '',
    '[5]', 'null', '{"t":5}\n', '{"t":5}}', '{"t":5', '{"u":5}', '{"t":null}', '{"t":\u00e95}',
  ];
  for (const s of bodies) {
    const body = Buffer.from(s);
    assert.deepEqual(pongTime(body), decodeControl(T.PONG, body)?.t, JSON.stringify(s));
  }
  const bytes = Buffer.from('{"t":5}');
  bytes[5] = 0xb5; // not ASCII: never read as a digit
  assert.equal(pongTime(bytes), undefined);
  assert.equal(pongTime(Buffer.from('{"t":1700000000123}')), 1_700_000_000_123);
});
