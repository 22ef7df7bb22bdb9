import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '@edgemesh/common/log';
import { ClusterModel } from './model.ts';
import { applyState, loadState, StateWriter } from './state.ts';

const svc = (name: string, port: number) => ({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'a' }, spec: { ports: [{ port }] } });
/** One macrotask turn: every promise continuation queued so far (a write the timer started) has run its sync part. */
const turn = () => new Promise((r) => setImmediate(r));

test('state writer: nothing while not live, first write at once, then throttled; atomic; round-trips through applyState', async (t) => {
  // The writer's throttle timer runs on a mocked clock: "not yet" and "now" are decided by tick(), not by sleeping.
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const INTERVAL_MS = 300;
  const dir = join(mkdtempSync(join(tmpdir(), 'em-state-')), 'nested');
  const model = new ClusterModel([]);
  let live = false;
  let reads = 0;
  const w = new StateWriter({ stateDir: dir, log: silentLogger, source: 'test', read: () => { reads++; return model.rawState(); }, live: () => live, intervalMs: INTERVAL_MS });
  model.subscribe(w.onSnapshot);
  model.replace('Service', [svc('one', 1)]);
  model.flush();
  t.mock.timers.tick(0); // the first write is due at once...
  await w.writeNow(); // ...and is serialised before this one: both have run when it resolves
  assert.equal(w.writes, 0, 'not live: no write');
  assert.equal(reads, 0, 'not live: the state is not even read');
  assert.equal(await loadState(dir, silentLogger), undefined);

  live = true;
  model.upsert('Service', svc('two', 2));
  model.flush();
  t.mock.timers.tick(0);
  await w.writeNow(); // unchanged content: a no-op queued behind the timer's write
  assert.equal(w.writes, 1, 'first live state written right away');

  for (let i = 0; i < 5; i++) {
    model.upsert('Service', svc('two', 100 + i));
    model.flush();
  }
  const readsBefore = reads;
  t.mock.timers.tick(INTERVAL_MS - 1);
  await turn();
  assert.equal(reads, readsBefore, 'later changes wait for the interval');
  assert.equal(w.writes, 1);
  t.mock.timers.tick(1);
  await w.writeNow();
  assert.equal(w.writes, 2, 'the trailing write comes once the interval has passed, with the newest state');
  assert.equal(reads, readsBefore + 2, 'five changes, one timer: one write (plus the no-op check above)');

  model.upsert('Service', svc('two', 200));
  model.flush();
  await w.stop(); // writes what is pending without waiting for the interval
  assert.equal(w.writes, 3);
  assert.deepEqual(readdirSync(dir), ['cluster-state.json'], 'no temp files left behind');
  const loaded = await loadState(dir, silentLogger);
  assert.equal(loaded?.source, 'test');
  const m2 = new ClusterModel([]);
  applyState(m2, loaded!.state);
  assert.deepEqual([...m2.flush().services.values()].map((s) => `${s.key}:${s.ports[0].port}`), ['a/one:1', 'a/two:200']);
  await w.writeNow();
  assert.equal(w.writes, 3, 'unchanged content is not rewritten');
});

test('state writer with version (ClusterModel.changes): an unchanged model is not read or serialised again; a change is written', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'em-state-v-'));
  const model = new ClusterModel([]);
  let reads = 0;
  const w = new StateWriter({ stateDir: dir, log: silentLogger, source: 'test', read: () => { reads++; return model.rawState(); }, version: () => model.changes, live: () => true });
  model.replace('Service', [svc('one', 1)]);
  await w.writeNow();
  assert.deepEqual([w.writes, reads], [1, 1]);
  await w.writeNow(); // what start-up did twice: the write once live, then the first snapshot's
  assert.deepEqual([w.writes, reads], [1, 1], 'same version: neither read nor written');
  model.upsert('Service', svc('one', 1)); // accepted again: a new version, the same content
  await w.writeNow();
  assert.deepEqual([w.writes, reads], [1, 2], 'a new version is read; equal content is still not rewritten');
  model.upsert('Service', svc('two', 2));
  await w.writeNow();
  assert.deepEqual([w.writes, reads], [2, 3]);
  model.remove('Service', svc('nope', 1)); // removing what is not there changes nothing
  await w.writeNow();
  assert.deepEqual([w.writes, reads], [2, 3]);
  const loaded = await loadState(dir, silentLogger);
  assert.deepEqual(loaded!.state.services.map((s) => (s.metadata as { name: string }).name), ['one', 'two']);
  // A writer that marks a loaded state written skips it the same way.
  const w2 = new StateWriter({ stateDir: dir, log: silentLogger, source: 'test', read: () => { reads++; return model.rawState(); }, version: () => model.changes, live: () => true });
  w2.markWritten(model.rawState());
  const before = reads;
  await w2.writeNow();
  assert.deepEqual([w2.writes, reads], [0, before]);
  await w.stop();
  await w2.stop();
});

test('state writer: firstWriteDelayMs holds the first write back (the agent: off its start path); stop() still writes it', async (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const DELAY_MS = 5000;
  const dir = mkdtempSync(join(tmpdir(), 'em-state-'));
  const model = new ClusterModel([]);
  let reads = 0;
  const w = new StateWriter({ stateDir: dir, log: silentLogger, source: 'test', read: () => { reads++; return model.rawState(); }, live: () => true, firstWriteDelayMs: DELAY_MS });
  model.subscribe(w.onSnapshot);
  model.replace('Service', [svc('one', 1)]);
  model.flush();
  t.mock.timers.tick(DELAY_MS - 1);
  await turn();
  assert.deepEqual([w.writes, reads], [0, 0], 'not before the delay: the state is not even read');
  t.mock.timers.tick(1);
  await turn();
  await w.writeNow();
  assert.equal(w.writes, 1);
  assert.equal((await loadState(dir, silentLogger))?.state.services.length, 1);

  const w2 = new StateWriter({ stateDir: dir, log: silentLogger, source: 'test', read: () => model.rawState(), version: () => -1, live: () => true, firstWriteDelayMs: DELAY_MS });
  model.upsert('Service', svc('two', 2));
  model.flush();
  w2.changed();
  await w2.stop();
  assert.equal(w2.writes, 1, 'a pending first write is not lost at stop');
  assert.equal((await loadState(dir, silentLogger))?.state.services.length, 2);
});
