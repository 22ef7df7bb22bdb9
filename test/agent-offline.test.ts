// Offline autonomy end to end: the real agent with the kubernetes source syncs from a (fake) API server and persists
// the last good state; restarted while the API server is gone, it loads that state, reports ready and serves it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FakeApiServer } from './lib/fakeapi.ts';
import { poll, runAgent } from './lib/agentproc.ts';

type Status = { services: { name: string; endpoints: number }[] };

test('agent restarted while the API server is unreachable serves the last good state and is ready', async () => {
  const api = new FakeApiServer();
  const url = await api.start();
  api.upsert('/api/v1/services', { apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'shop' }, spec: { clusterIP: '10.96.0.10', ports: [{ name: 'http', port: 80 }] } });
  api.upsert('/apis/discovery.k8s.io/v1/endpointslices', {
    apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'web-1', namespace: 'shop', labels: { 'kubernetes.io/service-name': 'web' } },
    addressType: 'IPv4', ports: [{ name: 'http', port: 8080 }], endpoints: [{ addresses: ['10.0.0.1'] }, { addresses: ['10.0.0.2'] }],
  });
  api.upsert('/api/v1/nodes', { apiVersion: 'v1', kind: 'Node', metadata: { name: 'edge-a' } });
  const root = mkdtempSync(join(tmpdir(), 'em-offline-'));
  const stateDir = join(root, 'state');
  const cfg = join(root, 'agent.yaml');
  writeFileSync(cfg, `nodeName: edge-a\nstateDir: ${stateDir}\ncluster: {source: kubernetes, kubeconfig: "${url}"}\ndns: {enabled: false}\nproxy: {intercept: none}\ntunnel: {enabled: false}\nadmin: {listen: "127.0.0.1:0"}\n`);
  const services = async (base: string) => ((await (await fetch(`${base}/status`)).json()) as Status).services.map((s) => `${s.name}:${s.endpoints}`);
  try {
    await runAgent(cfg, async (base) => {
      await poll('ready with the API', async () => ((await fetch(`${base}/readyz`)).status === 200 ? true : undefined));
      assert.deepEqual(await services(base), ['shop/web:2']);
      await poll('state file written', async () => (existsSync(join(stateDir, 'cluster-state.json')) ? true : undefined));
    });
  } finally {
    await api.close();
  }
  // The API server is gone now.
  await runAgent(cfg, async (base) => {
    await poll('ready from the offline state', async () => ((await fetch(`${base}/readyz`)).status === 200 ? true : undefined));
    assert.deepEqual(await services(base), ['shop/web:2']);
  });
});
