import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FairWriter } from './writer.ts';

/** A socket stand-in: holds what was written until drained. */
class FakeSink {
  writableLength = 0;
  order: string[] = [];
  cork(): void {}
  uncork(): void {}
  write(b: Buffer): void {
    this.writableLength += b.length;
    this.order.push(b.toString('latin1', 0, 1));
  }
  drain(): void {
    this.writableLength = 0;
  }
}

test('a fast stream does not starve others: queued DATA is written round-robin under the high-water mark', () => {
  const sink = new FakeSink();
  const w = new FairWriter(sink, 10);
  for (let i = 0; i < 5; i++) w.data(1, Buffer.from('A'.repeat(10)));
  w.data(2, Buffer.from('B'.repeat(10)));
  w.data(3, Buffer.from('C'.repeat(10)));
  assert.deepEqual(sink.order, ['A'], 'the socket took one frame, the rest wait');
  assert.equal(w.queuedBytes, 60);
  for (let i = 0; i < 6; i++) {
    sink.drain();
    w.flush();
  }
  assert.deepEqual(sink.order, ['A', 'A', 'B', 'C', 'A', 'A', 'A']);
  assert.equal(w.queuedBytes, 0);
});

test('a frame given as parts is written back to back and counted whole', () => {
  const sink = new FakeSink();
  const w = new FairWriter(sink, 10);
  w.data(1, Buffer.from('A'.repeat(10)));
  w.data(2, [Buffer.from('H'), Buffer.from('P'.repeat(9))]);
  assert.equal(w.queuedBytes, 10);
  sink.drain();
  w.flush();
  assert.deepEqual(sink.order, ['A', 'H', 'P']);
  assert.equal(w.queuedBytes, 0);
});

test('control frames never wait behind data; a dropped stream gives its queue back', () => {
  const sink = new FakeSink();
  const w = new FairWriter(sink, 10);
  w.data(1, Buffer.from('A'.repeat(10)));
  w.data(1, Buffer.from('A'.repeat(10)));
  w.control(Buffer.from('K'));
  assert.deepEqual(sink.order, ['A', 'K']);
  w.drop(1);
  assert.equal(w.queuedBytes, 0);
  sink.drain();
  w.flush();
  assert.deepEqual(sink.order, ['A', 'K']);
});
