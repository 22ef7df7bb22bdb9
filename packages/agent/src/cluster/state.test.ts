import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '@edgemesh/common/log';
import { ClusterModel } from './model.ts';
import { applyState, loadState, StateWriter } from './state.ts';

const svc = (name: string, port: number) => ({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'a' }, spec: { ports: [{ port }] } });

test('state writer: nothing while not live, first write at once, then throttled; atomic; round-trips through applyState', async () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'em-state-')), 'nested');
  const model = new ClusterModel([]);
  let live = false;
  const w = new StateWriter({ stateDir: dir, log: silentLogger, source: 'test', read: () => model.rawState(), live: () => live, intervalMs: 300 });
  model.subscribe(w.onSnapshot);
  model.replace('Service', [svc('one', 1)]);
  model.flush();
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(w.writes, 0, 'not live: no write');
  assert.equal(await loadState(dir, silentLogger), undefined);
  live = true;
  model.upsert('Service', svc('two', 2));
  model.flush();
  const deadline = Date.now() + 5000;
  while (w.writes < 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.equal(w.writes, 1, 'first live state written right away');
  for (let i = 0; i < 5; i++) {
    model.upsert('Service', svc('two', 100 + i));
    model.flush();
  }
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(w.writes, 1, 'later changes wait for the interval');
  await w.stop(); // writes what is pending
  assert.equal(w.writes, 2);
  assert.deepEqual(readdirSync(dir), ['cluster-state.json'], 'no temp files left behind');
  const loaded = await loadState(dir, silentLogger);
  assert.equal(loaded?.source, 'test');
  const m2 = new ClusterModel([]);
  applyState(m2, loaded!.state);
  assert.deepEqual([...m2.flush().services.values()].map((s) => `${s.key}:${s.ports[0].port}`), ['a/one:1', 'a/two:104']);
  await w.writeNow();
  assert.equal(w.writes, 2, 'unchanged content is not rewritten');
});
