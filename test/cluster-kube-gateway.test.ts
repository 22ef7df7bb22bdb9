// The kubernetes source with the gateway on (KubeSource option `gateway`): Istio Gateways and VirtualServices (v1,
// falling back to v1beta1; an absent CRD means none and never blocks readiness) and TLS Secrets listed and watched
// with the field selector type=kubernetes.io/tls; the model shows only the Secrets a Gateway references.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '@edgemesh/common/log';
import { ClusterModel } from '../packages/agent/src/cluster/model.ts';
import { KubeSource, loadKubeConfig, type KubeTiming } from '../packages/agent/src/cluster/kube.ts';
import { COLLECTIONS, FakeApiServer, type Obj } from './lib/fakeapi.ts';

const GW1 = '/apis/networking.istio.io/v1beta1/gateways';
const VS1 = '/apis/networking.istio.io/v1/virtualservices';
const SECRETS = '/api/v1/secrets';
const DEADLINE_MS = 15_000;
const TIMING: Partial<KubeTiming> = { restartMinMs: 50, restartMaxMs: 300, watchIdleMs: 700, watchdogMs: 2500, watchdogTickMs: 100, crdRecheckMs: 400, reconnectMaxMs: 100 };

const gateway = (name: string, credentialName: string): Obj => ({
  apiVersion: 'networking.istio.io/v1beta1', kind: 'Gateway', metadata: { name, namespace: 'edge' },
  spec: { selector: {}, servers: [{ port: { number: 443, protocol: 'HTTPS', name: 'https' }, hosts: ['*'], tls: { mode: 'SIMPLE', credentialName } }] },
});
const vservice = (name: string): Obj => ({ apiVersion: 'networking.istio.io/v1', kind: 'VirtualService', metadata: { name, namespace: 'edge' }, spec: { hosts: ['*'], gateways: ['public'], http: [{ route: [{ destination: { host: 'web' } }] }] } });
const secret = (name: string): Obj => ({
  apiVersion: 'v1', kind: 'Secret', type: 'kubernetes.io/tls', metadata: { name, namespace: 'edge' },
  data: { 'tls.crt': Buffer.from('CERT').toString('base64'), 'tls.key': Buffer.from('KEY').toString('base64') },
});

let api: FakeApiServer;
let kubeconfigFile: string;

before(async () => {
  // Gateways only under v1beta1 (an older Istio), VirtualServices under v1.
  api = new FakeApiServer({ ...COLLECTIONS, [GW1]: 'GatewayList', [VS1]: 'VirtualServiceList', [SECRETS]: 'SecretList' });
  await api.start();
  kubeconfigFile = join(mkdtempSync(join(tmpdir(), 'em-kube-gw-')), 'kubeconfig');
  writeFileSync(kubeconfigFile, `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "${api.url}"}}]
users: [{name: u, user: {}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`);
  api.upsert(GW1, gateway('public', 'www-cert'));
  api.upsert(VS1, vservice('web'));
  api.upsert(SECRETS, secret('www-cert'));
  api.upsert(SECRETS, secret('other-cert'));
});
after(async () => {
  await api.close();
});

async function waitFor(what: string, cond: () => boolean): Promise<void> {
  const end = Date.now() + DEADLINE_MS;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

test('gateway kinds: v1beta1 fallback, TLS Secrets by field selector, only referenced Secrets in the snapshot, follows events', async () => {
  const model = new ClusterModel([]);
  const src = new KubeSource({ kubeConfig: loadKubeConfig(kubeconfigFile), log: silentLogger, offlineLoaded: false, timing: TIMING, gateway: true });
  await src.start(model);
  try {
    await waitFor('gateway kinds listed', () => {
      const s = model.flush();
      return src.synced() && !!s.gateways?.has('edge/public') && !!s.virtualServices?.has('edge/web') && !!s.tlsSecrets?.has('edge/www-cert');
    });
    assert.deepEqual([...model.snapshot().tlsSecrets!.keys()], ['edge/www-cert']);
    const secretLists = api.requests.filter((r) => r.url.startsWith(SECRETS));
    assert.ok(secretLists.length > 0 && secretLists.every((r) => new URL(r.url, 'http://x').searchParams.get('fieldSelector') === 'type=kubernetes.io/tls'), JSON.stringify(secretLists));
    api.upsert(GW1, gateway('public', 'other-cert'));
    await waitFor('the new reference', () => [...(model.flush().tlsSecrets?.keys() ?? [])].join() === 'edge/other-cert');
    api.delete(VS1, 'edge/web');
    await waitFor('VirtualService deleted', () => model.flush().virtualServices?.size === 0);
  } finally {
    await src.stop();
  }
});

test('without the gateway option nothing of it is watched', async () => {
  const before = api.requests.length;
  const model = new ClusterModel([]);
  const src = new KubeSource({ kubeConfig: loadKubeConfig(kubeconfigFile), log: silentLogger, offlineLoaded: false, timing: TIMING });
  await src.start(model);
  try {
    await waitFor('sync', () => src.synced());
    const asked = api.requests.slice(before).map((r) => r.url);
    assert.ok(!asked.some((u) => u.includes('secrets') || u.includes('gateways') || u.includes('virtualservices')), asked.join('\n'));
  } finally {
    await src.stop();
  }
});
