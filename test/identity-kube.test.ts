// Kubernetes enrollment end to end in-process: the server's Node names come from the agent's KubeSource (Nodes only)
// and the agent's projected ServiceAccount token is checked with a real TokenReview (the thin kube client) against
// the fake API server. A pod's token enrolls only its own node; other service accounts, audiences, nodes and names
// that are not Nodes are refused.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureStateDir } from '@edgemesh/common/fsutil';
import { silentLogger } from '@edgemesh/common/log';
import { serverSchema } from '@edgemesh/common/config';
import { verifyNodeCert } from '@edgemesh/common/identity/cert';
import { testCa } from '@edgemesh/common/identity/testca';
import { loadKubeConfig } from '../packages/agent/src/cluster/kube.ts';
import { Enroller } from '../packages/server/src/identity/enroller.ts';
import { startClusterNodes, type ClusterNodes } from '../packages/server/src/identity/nodes.ts';
import { KubeTokenReviewer } from '../packages/server/src/identity/tokenreview.ts';
import { newBinding, testNode } from '../packages/server/src/identity/testutil.ts';
import { FakeApiServer } from './lib/fakeapi.ts';

const NODES = '/api/v1/nodes';
const AGENT_SA = 'system:serviceaccount:kube-system:edgemesh-agent';
const DEADLINE_MS = 15_000;
let api: FakeApiServer;
let dir: string;
let kubeconfig: string;
let cluster: ClusterNodes;

const sa = (username: string, node: string, audiences = ['edgemesh']) => ({ username, audiences, extra: { 'authentication.kubernetes.io/node-name': [node], 'authentication.kubernetes.io/pod-name': ['p'] } });

before(async () => {
  api = new FakeApiServer();
  await api.start();
  dir = mkdtempSync(join(tmpdir(), 'em-idkube-'));
  kubeconfig = join(dir, 'kubeconfig');
  writeFileSync(kubeconfig, `apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: "${api.url}"}}]\nusers: [{name: u, user: {}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n`);
  api.upsert(NODES, { apiVersion: 'v1', kind: 'Node', metadata: { name: 'edge-a' } });
  api.upsert(NODES, { apiVersion: 'v1', kind: 'Node', metadata: { name: 'edge-b' } });
  api.tokens.set('token-of-agent-on-a', sa(AGENT_SA, 'edge-a'));
  api.tokens.set('token-of-agent-on-b', sa(AGENT_SA, 'edge-b'));
  api.tokens.set('token-of-app-on-a', sa('system:serviceaccount:default:app', 'edge-a'));
  api.tokens.set('apiserver-audience-token', sa(AGENT_SA, 'edge-a', ['https://kubernetes.default.svc']));
  api.tokens.set('token-for-ghost', sa(AGENT_SA, 'ghost'));
  const cfg = serverSchema.parse({ cluster: { source: 'kubernetes', kubeconfig }, enrollment: { serviceAccounts: ['kube-system/edgemesh-agent'] } });
  cluster = await startClusterNodes(cfg, silentLogger);
  const until = Date.now() + DEADLINE_MS;
  while (!cluster.synced() && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  assert.ok(cluster.synced(), 'the Node list synced');
});
after(async () => {
  await cluster?.stop();
  await api.close();
  rmSync(dir, { recursive: true, force: true });
});

test('the server watches only Nodes', () => {
  const paths = new Set(api.requests.map((r) => new URL(r.url, 'http://x').pathname));
  assert.ok(paths.has(NODES));
  assert.ok(![...paths].some((p) => p.includes('services') || p.includes('endpointslices') || p.includes('destinationrules')), [...paths].join(' '));
});

test('a ServiceAccount token enrolls exactly the node its pod runs on', async () => {
  const stateDir = join(dir, 'state');
  ensureStateDir(stateDir);
  const ca = await testCa(Date.now());
  const e = new Enroller({
    stateDir, ca, cluster, log: silentLogger, reviewer: new KubeTokenReviewer(loadKubeConfig(kubeconfig)),
    policy: { bootstrapToken: false, serviceAccounts: ['kube-system/edgemesh-agent'] },
  });
  let n = 10;
  const attempt = async (who: string, token: string) => {
    const b = newBinding();
    // One source each: this test is about the decisions, not the failure limiter.
    const r = await e.enroll(testNode(who).request('kubernetes', token, b), `10.0.1.${n++}`, b);
    return r.ok ? 'issued' : r.detail;
  };
  const a = testNode('edge-a');
  const b = newBinding();
  const ok = await e.enroll(a.request('kubernetes', 'token-of-agent-on-a', b), '10.0.0.1', b);
  assert.ok(ok.ok);
  assert.equal(verifyNodeCert(ok.cert.raw, { ca, now: Date.now(), name: 'edge-a', publicKey: a.publicKey }).ok, true);
  assert.deepEqual(api.reviews.at(-1), { token: 'token-of-agent-on-a', audiences: ['edgemesh'] }, 'the review asks for audience edgemesh');
  assert.equal(await attempt('edge-b', 'token-of-agent-on-a'), 'token-wrong-node', 'node A\'s token cannot enroll B');
  assert.equal(await attempt('edge-a', 'token-of-app-on-a'), 'service-account-not-allowed', 'another workload on A cannot enroll A');
  assert.equal(await attempt('edge-a', 'apiserver-audience-token'), 'not-authenticated', 'a token for another audience');
  assert.equal(await attempt('edge-a', 'forged'), 'not-authenticated');
  assert.equal(await attempt('ghost', 'token-for-ghost'), 'not-a-node', 'a node claim for a name that is not a Node');
  // The API server failing: retry later, not unauthorized.
  api.reviewFaults.push(500);
  const b2 = newBinding();
  const failed = await e.enroll(testNode('edge-b').request('kubernetes', 'token-of-agent-on-b', b2), '10.0.0.2', b2);
  assert.deepEqual(failed.ok ? 'issued' : [failed.reason, failed.detail], ['retry-later', 'review-failed']);
  // A Node deleted from the cluster can no longer enroll or renew.
  api.delete(NODES, 'edge-a');
  const until = Date.now() + DEADLINE_MS;
  while (cluster.view().kind === 'nodes' && (cluster.view() as { names: ReadonlySet<string> }).names.has('edge-a') && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  const b3 = newBinding();
  const renew = await e.enroll(a.request('renew', '', b3), '10.0.0.3', b3);
  assert.deepEqual(renew.ok ? 'issued' : renew.detail, 'not-a-node');
});
