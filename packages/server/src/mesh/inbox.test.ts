import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Frame } from '@edgemesh/common/tunnel/frame';
import { M } from './frames.ts';
import { isMeshControl, MESH_CONTROL_BURST, MESH_CONTROL_PER_SEC, MeshInbox } from './inbox.ts';

function rig() {
  let now = 0;
  const timers: { at: number; fn: () => void }[] = [];
  const seen: number[] = [];
  const ev = { paused: 0, resumed: 0, refused: 0 };
  let stopAfter = Infinity;
  const inbox = new MeshInbox({
    handle: (f) => { seen.push(f.type); return seen.length < stopAfter; },
    pause: () => { ev.paused++; },
    resume: () => { ev.resumed++; },
    refused: () => { ev.refused++; },
    now: () => now,
    setTimer: (fn, ms) => { const t = { at: now + ms, fn }; timers.push(t); return t; },
    clearTimer: (t) => { timers.splice(timers.indexOf(t as never), 1); },
  });
  const advance = (ms: number) => {
    now += ms;
    for (const t of timers.filter((x) => x.at <= now)) { timers.splice(timers.indexOf(t), 1); t.fn(); }
  };
  return { inbox, seen, ev, advance, timers, stop: (n: number) => { stopAfter = n; } };
}

const frame = (type: number): Frame => ({ type, payload: Buffer.alloc(0) });
const many = (type: number, n: number) => Array.from({ length: n }, () => frame(type));

test('control frames beyond the burst pause the link until the bucket refills; nothing is dropped, order is kept', () => {
  const r = rig();
  r.inbox.push([...many(M.PING, MESH_CONTROL_BURST + 50), frame(M.DATA), frame(M.PRESENCE_ADD)]);
  assert.equal(r.seen.length, MESH_CONTROL_BURST);
  assert.equal(r.ev.paused, 1);
  assert.equal(r.ev.refused, 1);
  assert.equal(r.inbox.waiting, 52);
  // 50 more PINGs take 5 ms at MESH_CONTROL_PER_SEC; the DATA behind them waits its turn, then the PRESENCE_ADD.
  for (let i = 0; i < 100 && r.inbox.waiting; i++) r.advance(1);
  assert.equal(r.inbox.waiting, 0);
  assert.equal(r.seen.length, MESH_CONTROL_BURST + 52);
  assert.deepEqual(r.seen.slice(-2), [M.DATA, M.PRESENCE_ADD]);
  assert.equal(r.ev.paused, 1, 'paused once, for as long as the budget was short');
  assert.equal(r.ev.resumed, 1);
  assert.ok(r.ev.refused >= 2, 'the 52 frames were more than the bucket refilled in the first wait');
});

test('the sustained rate is MESH_CONTROL_PER_SEC', () => {
  const r = rig();
  r.inbox.push(many(M.OPEN, MESH_CONTROL_BURST)); // the burst is used up
  const before = r.seen.length;
  r.inbox.push(many(M.RENDEZVOUS, 3 * MESH_CONTROL_PER_SEC));
  for (let ms = 0; ms < 1000; ms++) r.advance(1);
  const handled = r.seen.length - before;
  assert.ok(handled >= MESH_CONTROL_PER_SEC * 0.95 && handled <= MESH_CONTROL_PER_SEC + 1, `handled ${handled} in 1 s`);
});

test('stream frames and revocation lists take no tokens', () => {
  const r = rig();
  for (const t of [M.DATA, M.CREDIT, M.END, M.RESET, M.REVOCATIONS, M.HELLO]) assert.equal(isMeshControl(t), false);
  r.inbox.push(many(M.DATA, MESH_CONTROL_BURST * 2));
  assert.equal(r.seen.length, MESH_CONTROL_BURST * 2);
  assert.equal(r.ev.paused, 0);
});

test('a handler that closes the link drops the rest; close() cancels a pending wait', () => {
  const r = rig();
  r.stop(3);
  r.inbox.push(many(M.DATA, 10));
  assert.equal(r.seen.length, 3);
  r.inbox.push(many(M.DATA, 10));
  assert.equal(r.seen.length, 3, 'a closed inbox takes nothing');

  const q = rig();
  q.inbox.push(many(M.PING, MESH_CONTROL_BURST + 1));
  assert.equal(q.timers.length, 1);
  q.inbox.close();
  assert.equal(q.timers.length, 0);
  q.advance(1000);
  assert.equal(q.seen.length, MESH_CONTROL_BURST);
  assert.equal(q.ev.resumed, 0);
});
