import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serverSchema } from '@edgemesh/common/config';
import { silentLogger } from '@edgemesh/common/log';
import { startClusterNodes } from './nodes.ts';

const node = (name: string) => `apiVersion: v1\nkind: Node\nmetadata:\n  name: ${name}\n`;

test('file source: the server knows the Nodes of a manifests directory, and follows changes', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'em-srvnodes-'));
  writeFileSync(join(dir, 'nodes.yaml'), `${node('edge-a')}---\n${node('edge-b')}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\nspec:\n  ports: [{port: 80}]\n`);
  const cluster = await startClusterNodes(serverSchema.parse({ cluster: { source: 'file', manifestsDir: dir } }), silentLogger);
  try {
    const until = Date.now() + 15_000;
    while (!cluster.synced() && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    const v = cluster.view();
    assert.ok(v.kind === 'nodes');
    assert.deepEqual([...v.names].sort(), ['edge-a', 'edge-b']);
    writeFileSync(join(dir, 'nodes.yaml'), node('edge-a'));
    const until2 = Date.now() + 15_000;
    while ((cluster.view() as { names: ReadonlySet<string> }).names.has('edge-b') && Date.now() < until2) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual([...(cluster.view() as { names: ReadonlySet<string> }).names], ['edge-a'], 'a Node removed from the directory can no longer enroll');
  } finally {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('none: every name, warned at start', async () => {
  const warnings: string[] = [];
  const log = { ...silentLogger, warn: (m: string) => { warnings.push(m); } } as unknown as typeof silentLogger;
  const cluster = await startClusterNodes(serverSchema.parse({}), log);
  assert.deepEqual(cluster.view(), { kind: 'any' });
  assert.equal(cluster.synced(), true);
  assert.match(warnings[0], /cluster\.source is none/);
});
