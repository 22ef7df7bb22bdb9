// The kubernetes source (cluster/kube.ts over cluster/kubeclient.ts) against an in-process fake API server:
// initial sync, watch events, HTTP 500 on list, 410 Gone (event and HTTP), dropped connections, a silent watch,
// a hanging list (watchdog), an absent then installed DestinationRule CRD, and the offline readiness rule.
// Every fault ends with the model equal to the server's state.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { silentLogger } from '@edgemesh/common/log';
import { ClusterModel } from '../packages/agent/src/cluster/model.ts';
import { KubeSource, loadKubeConfig, type KubeTiming } from '../packages/agent/src/cluster/kube.ts';
import { FakeApiServer, type Obj } from './lib/fakeapi.ts';

const SVC = '/api/v1/services';
const EPS = '/apis/discovery.k8s.io/v1/endpointslices';
const NODES = '/api/v1/nodes';
const DR = '/apis/networking.istio.io/v1/destinationrules';
const DEADLINE_MS = 15_000;

// Short timings so faults resolve in well under a second or two.
const TIMING: Partial<KubeTiming> = { restartMinMs: 50, restartMaxMs: 300, watchIdleMs: 700, watchdogMs: 2500, watchdogTickMs: 100, crdRecheckMs: 400, reconnectMaxMs: 100 };

const svc = (name: string, port = 80, ns = 'default'): Obj => ({ apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: ns }, spec: { clusterIP: '10.96.0.' + (name.length + port % 200), ports: [{ name: 'http', port, targetPort: 8080, protocol: 'TCP' }], selector: { app: name } } });
const slice = (name: string, service: string, ips: string[], ns = 'default'): Obj => ({
  apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name, namespace: ns, labels: { 'kubernetes.io/service-name': service } },
  addressType: 'IPv4', ports: [{ name: 'http', port: 8080, protocol: 'TCP' }], endpoints: ips.map((ip) => ({ addresses: [ip], conditions: { ready: true }, nodeName: 'edge-a' })),
});
const node = (name: string, group: string): Obj => ({ apiVersion: 'v1', kind: 'Node', metadata: { name, labels: { 'apps.kubeedge.io/belonging-to': group } }, status: { addresses: [{ type: 'InternalIP', address: '198.18.0.1' }] } });
const dr = (name: string, host: string): Obj => ({ apiVersion: 'networking.istio.io/v1', kind: 'DestinationRule', metadata: { name, namespace: 'default' }, spec: { host, trafficPolicy: { loadBalancer: { simple: 'RANDOM' } } } });

let api: FakeApiServer;
let kubeconfigFile: string;

before(async () => {
  api = new FakeApiServer();
  await api.start();
  const dir = mkdtempSync(join(tmpdir(), 'em-kube-'));
  kubeconfigFile = join(dir, 'kubeconfig');
  // The shape of a kubeconfig for KubeEdge's metaServer: plain http, no credentials.
  writeFileSync(kubeconfigFile, `apiVersion: v1
kind: Config
clusters: [{name: meta, cluster: {server: "${api.url}"}}]
users: [{name: edge, user: {}}]
contexts: [{name: meta, context: {cluster: meta, user: edge}}]
current-context: meta
`);
  api.upsert(SVC, svc('web'));
  api.upsert(SVC, svc('db', 5432));
  api.upsert(EPS, slice('web-1', 'web', ['10.0.0.1', '10.0.0.2']));
  api.upsert(EPS, slice('web-2', 'web', ['10.0.0.3']));
  api.upsert(EPS, slice('db-1', 'db', ['10.0.1.1']));
  api.upsert(NODES, node('edge-a', 'site-1'));
  api.upsert(NODES, node('edge-b', 'site-2'));
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

/** key -> resourceVersion of what the model holds for a kind. */
function modelState(model: ClusterModel, kind: 'services' | 'endpointSlices' | 'nodes' | 'destinationRules'): Map<string, string> {
  return new Map(model.rawState()[kind].map((o) => {
    const md = o.metadata!;
    return [md.namespace ? `${md.namespace}/${md.name}` : md.name!, md.resourceVersion!];
  }));
}

const same = (a: Map<string, string>, b: Map<string, string>) => a.size === b.size && [...a].every(([k, v]) => b.get(k) === v);

function converged(model: ClusterModel): boolean {
  model.flush();
  return same(modelState(model, 'services'), api.state(SVC)) && same(modelState(model, 'endpointSlices'), api.state(EPS)) && same(modelState(model, 'nodes'), api.state(NODES));
}

async function startSource(opts: { timing?: Partial<KubeTiming>; offline?: boolean; kubeconfig?: string } = {}) {
  const model = new ClusterModel(['apps.kubeedge.io/belonging-to']);
  const src = new KubeSource({ kubeConfig: loadKubeConfig(opts.kubeconfig ?? kubeconfigFile), log: silentLogger, offlineLoaded: opts.offline ?? false, timing: { ...TIMING, ...opts.timing } });
  await src.start(model);
  return { model, src };
}

test('initial list, then ADDED/MODIFIED/DELETED watch events reach the model (kubeconfig file, plain http, no auth)', async () => {
  const { model, src } = await startSource();
  try {
    await waitFor('sync', () => src.synced() && converged(model));
    assert.equal(src.live(), true);
    const snap = model.flush();
    assert.deepEqual(snap.endpoints.get('default/web')?.map((e) => e.address), ['10.0.0.1', '10.0.0.2', '10.0.0.3']);
    assert.equal(snap.nodes.get('edge-b')?.group, 'site-2');
    api.upsert(SVC, svc('cache', 6379));
    api.upsert(SVC, svc('web', 8000));
    api.upsert(EPS, slice('web-2', 'web', ['10.0.0.4']));
    await waitFor('events', () => converged(model) && model.snapshot().services.get('default/cache') !== undefined);
    assert.equal(model.snapshot().services.get('default/web')?.ports[0].port, 8000);
    api.delete(SVC, 'default/cache');
    await waitFor('delete', () => converged(model) && !model.snapshot().services.has('default/cache'));
    assert.deepEqual(model.snapshot().endpoints.get('default/web')?.map((e) => e.address), ['10.0.0.1', '10.0.0.2', '10.0.0.4']);
    // A LoadBalancer Service's external destinations arrive whole through a watch event (spec and status).
    const lb = svc('lb', 443);
    Object.assign(lb.spec as Obj, { type: 'LoadBalancer', externalTrafficPolicy: 'Local', externalIPs: ['192.0.2.7'], ports: [{ name: 'https', port: 443, targetPort: 8443, protocol: 'TCP', nodePort: 31443 }] });
    lb.status = { loadBalancer: { ingress: [{ ip: '198.51.100.5' }] } };
    api.upsert(SVC, lb);
    await waitFor('LoadBalancer', () => converged(model) && model.snapshot().services.has('default/lb'));
    const got = model.snapshot().services.get('default/lb')!;
    assert.deepEqual([got.ports[0].nodePort, got.externalTrafficPolicy, got.externalIPs, got.loadBalancerIPs], [31443, 'Local', ['192.0.2.7'], ['198.51.100.5']]);
  } finally {
    await src.stop();
  }
});

test('HTTP 500 on list: the supervisor restarts with backoff until the list succeeds', async () => {
  api.failLists(SVC, 500, 3);
  api.failLists(NODES, 503, 1);
  const { model, src } = await startSource();
  try {
    await waitFor('sync after 500s', () => src.synced() && converged(model));
    assert.ok(src.describe().Service.restarts >= 3, `restarts ${src.describe().Service.restarts}`);
    assert.ok(src.describe().Node.restarts >= 1);
  } finally {
    await src.stop();
  }
});

test('410 Gone as an ERROR event: relist, and changes missed meanwhile (incl. deletes) are applied', async () => {
  const { model, src } = await startSource();
  try {
    await waitFor('sync', () => src.synced() && converged(model));
    api.silence(SVC);
    api.upsert(SVC, svc('late', 81));
    api.delete(SVC, 'default/db');
    api.silence(SVC, false);
    const lists = api.requests.filter((r) => r.url.startsWith(SVC) && !r.url.includes('watch=true')).length;
    api.expireWatches(SVC);
    await waitFor('relist after 410 event', () => converged(model) && model.snapshot().services.has('default/late') && !model.snapshot().services.has('default/db'));
    assert.ok(api.requests.filter((r) => r.url.startsWith(SVC) && !r.url.includes('watch=true')).length > lists, 'relisted');
    api.upsert(SVC, svc('db', 5432));
  } finally {
    await src.stop();
  }
});

test('410 Gone as HTTP status after a dropped connection: relist', async () => {
  const { model, src } = await startSource();
  try {
    await waitFor('sync', () => src.synced() && converged(model));
    api.goneMode = 'http';
    api.silence(EPS);
    api.delete(EPS, 'default/web-1');
    api.upsert(EPS, slice('web-3', 'web', ['10.0.0.9']));
    api.silence(EPS, false);
    api.compact();
    api.dropWatches(EPS);
    await waitFor('relist after HTTP 410', () => converged(model) && modelState(model, 'endpointSlices').has('default/web-3'));
    assert.deepEqual(model.snapshot().endpoints.get('default/web')?.map((e) => e.address).sort(), ['10.0.0.4', '10.0.0.9']);
  } finally {
    api.goneMode = 'event';
    await src.stop();
  }
});

test('dropped connections: every informer resumes and catches up from its resourceVersion', async () => {
  const { model, src } = await startSource();
  try {
    await waitFor('sync', () => src.synced() && converged(model));
    // All three core watches open before they are dropped (waiting for two and counting three flaked under load).
    await waitFor('watches open', () => api.watcherCount(SVC) > 0 && api.watcherCount(EPS) > 0 && api.watcherCount(NODES) > 0);
    assert.ok(api.dropWatches() >= 3);
    api.upsert(NODES, node('edge-c', 'site-1'));
    api.upsert(SVC, svc('web', 8001));
    await waitFor('catch up after drop', () => converged(model) && model.snapshot().nodes.has('edge-c'));
    assert.equal(model.snapshot().services.get('default/web')?.ports[0].port, 8001);
  } finally {
    await src.stop();
  }
});

test('a BOOKMARK moves the resume point: after compaction and a dropped watch the kind resumes without a relist', async () => {
  const { model, src } = await startSource();
  try {
    await waitFor('sync', () => src.synced() && converged(model));
    await waitFor('watch open', () => api.watcherCount(SVC) > 0);
    api.upsert(NODES, node('edge-e', 'site-1')); // moves the global resourceVersion past what the Service watch saw
    api.bookmark(SVC);
    const rv = [...api.state(NODES).values()].map(Number).sort((a, b) => b - a)[0];
    await waitFor('bookmark applied', () => src.describe().Service.resourceVersion === String(rv));
    const lists = api.requests.filter((r) => r.url.startsWith(SVC) && !r.url.includes('watch=true')).length;
    api.compact();
    api.dropWatches(SVC);
    api.upsert(SVC, svc('after-bookmark', 82));
    await waitFor('event after resume', () => converged(model) && model.snapshot().services.has('default/after-bookmark'));
    assert.equal(api.requests.filter((r) => r.url.startsWith(SVC) && !r.url.includes('watch=true')).length, lists, 'no relist');
    api.delete(SVC, 'default/after-bookmark');
    api.delete(NODES, 'edge-e');
  } finally {
    await src.stop();
  }
});

test('a watch that goes silent is reconnected by the inactivity timeout and catches up', async () => {
  const { model, src } = await startSource();
  try {
    await waitFor('sync', () => src.synced() && converged(model));
    await waitFor('watch open', () => api.watcherCount(NODES) > 0);
    api.silence(NODES);
    api.upsert(NODES, node('edge-d', 'site-3'));
    api.silence(NODES, false); // the open (silent) watch stays silent; new watches are normal
    const watches = api.requests.filter((r) => r.url.startsWith(NODES) && r.url.includes('watch=true')).length;
    await waitFor('reconnect after silence', () => converged(model) && model.snapshot().nodes.get('edge-d')?.group === 'site-3');
    assert.ok(api.requests.filter((r) => r.url.startsWith(NODES) && r.url.includes('watch=true')).length > watches, 'a new watch was opened');
  } finally {
    await src.stop();
  }
});

test('a list that hangs forever is caught by the watchdog, which restarts the informer', async () => {
  api.hangLists(NODES);
  const { model, src } = await startSource();
  try {
    await waitFor('services synced', () => src.describe().Service.listed && src.describe().EndpointSlice.listed);
    assert.equal(src.synced(), false, 'not ready while Nodes never listed');
    api.hangLists(NODES, false);
    await waitFor('watchdog restart and sync', () => src.synced() && converged(model));
    assert.ok(src.describe().Node.restarts >= 1);
  } finally {
    api.hangLists(NODES, false);
    await src.stop();
  }
});

test('DestinationRule CRD absent (404) does not block readiness; installed later, its rules arrive', async () => {
  const { model, src } = await startSource();
  try {
    await waitFor('sync', () => src.synced() && converged(model));
    await waitFor('CRD found absent (v1 and v1beta1 404)', () => src.describe().DestinationRule.state === 'absent');
    assert.equal(model.flush().destinationRules.size, 0);
    api.addCollection(DR, 'DestinationRuleList');
    api.upsert(DR, dr('web-lb', 'web.default.svc.cluster.local'));
    await waitFor('rule after CRD install', () => model.flush().destinationRules.has('default/web-lb'));
    assert.equal(model.snapshot().destinationRules.get('default/web-lb')?.simple, 'RANDOM');
    api.delete(DR, 'default/web-lb');
    await waitFor('rule deleted', () => model.flush().destinationRules.size === 0);
  } finally {
    await src.stop();
  }
});

test('offline rule: with a loaded state and an unreachable API the source reports synced but not live', async () => {
  // A port nothing listens on.
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const port = (probe.address() as { port: number }).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const offline = await startSource({ kubeconfig: `http://127.0.0.1:${port}`, offline: true });
  const cold = await startSource({ kubeconfig: `http://127.0.0.1:${port}`, offline: false });
  try {
    offline.model.replace('Service', [svc('kept') as never]);
    await waitFor('offline synced', () => offline.src.synced());
    assert.equal(offline.src.live(), false);
    assert.ok(offline.model.flush().services.has('default/kept'), 'loaded state stays while the API is down');
    await waitFor('cold source failed', () => cold.src.describe().Service.restarts >= 1);
    assert.equal(cold.src.synced(), false, 'without a loaded state an unreachable API is not ready');
  } finally {
    await offline.src.stop();
    await cold.src.stop();
  }
});

test('kubeconfig: a metaServer URL works directly; errors name cluster.kubeconfig', async () => {
  const kc = loadKubeConfig('http://127.0.0.1:10550');
  assert.equal(kc.getCurrentCluster()?.server, 'http://127.0.0.1:10550');
  assert.throws(() => loadKubeConfig('/nonexistent/kubeconfig'), /cluster\.kubeconfig: cannot load kubeconfig/);
  assert.throws(() => loadKubeConfig('', {}), /cluster\.kubeconfig: empty means in-cluster/);
  // A malformed URL is named in the error without the credentials it may carry.
  assert.throws(() => loadKubeConfig('http://admin:s3cret@[bad'), (e: Error) => /cluster\.kubeconfig: not a valid URL/.test(e.message) && !e.message.includes('s3cret'));
  // In-cluster: the service-account environment (the token and CA files are read when a request is made).
  const saved = { host: process.env.KUBERNETES_SERVICE_HOST, port: process.env.KUBERNETES_SERVICE_PORT };
  try {
    process.env.KUBERNETES_SERVICE_HOST = '10.96.0.1';
    process.env.KUBERNETES_SERVICE_PORT = '443';
    const inCluster = loadKubeConfig('');
    assert.equal(inCluster.getCurrentCluster()?.server, 'https://10.96.0.1:443');
    assert.equal(inCluster.getCurrentCluster()?.skipTLSVerify, false, 'https keeps TLS verification');
  } finally {
    for (const [k, v] of [['KUBERNETES_SERVICE_HOST', saved.host], ['KUBERNETES_SERVICE_PORT', saved.port]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
  const { model, src } = await startSource({ kubeconfig: api.url });
  try {
    await waitFor('sync via URL', () => src.synced() && converged(model));
  } finally {
    await src.stop();
  }
});
