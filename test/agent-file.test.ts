// The real edgemesh-agent binary with the file source and dns/proxy/tunnel disabled: /readyz 200, /status lists the
// Services from the manifests (and follows a manifest change), SIGTERM exits 0.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';

import { AGENT_BIN as BIN, poll, runAgent } from './lib/agentproc.ts';

const manifest = (name: string, ip: string, eps: string[]) => `apiVersion: v1
kind: Service
metadata: {name: ${name}, namespace: demo}
spec: {clusterIP: ${ip}, ports: [{name: http, port: 80, targetPort: 8080}], selector: {app: ${name}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ${name}-1, namespace: demo, labels: {kubernetes.io/service-name: ${name}}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [${eps.map((a) => `{addresses: [${a}], nodeName: edge-a}`).join(', ')}]
`;

test('edgemesh-agent --config (file source): ready, /status lists the manifests, follows changes, SIGTERM exits 0', async () => {
  const root = mkdtempSync(join(tmpdir(), 'em-agent-'));
  const manifests = join(root, 'manifests');
  mkdirSync(manifests);
  writeFileSync(join(manifests, 'web.yaml'), manifest('web', '10.96.0.10', ['10.0.0.1', '10.0.0.2', '10.0.0.3']));
  writeFileSync(join(manifests, 'api.yaml'), manifest('api', '10.96.0.11', ['10.0.1.1']));
  const cfg = join(root, 'agent.yaml');
  writeFileSync(cfg, `nodeName: edge-a
stateDir: ${join(root, 'state')}
cluster: {source: file, manifestsDir: ${manifests}}
dns: {enabled: false}
proxy: {intercept: none}
tunnel: {enabled: false}
admin: {listen: "127.0.0.1:0"}
log: {level: info}
`);
  await runAgent(cfg, async (base) => {
    await poll('/readyz 200', async () => ((await fetch(`${base}/readyz`)).status === 200 ? true : undefined));
    const status = (await (await fetch(`${base}/status`)).json()) as { node: string; services: { name: string; ip: string; ports: number[]; endpoints: number }[] };
    assert.equal(status.node, 'edge-a');
    assert.deepEqual(status.services.map((s) => [s.name, s.ip, s.ports, s.endpoints]).sort(), [['demo/api', '10.96.0.11', [80], 1], ['demo/web', '10.96.0.10', [80], 3]]);
    writeFileSync(join(manifests, 'web.yaml'), manifest('web', '10.96.0.10', ['10.0.0.1']));
    await poll('manifest change visible in /status', async () => {
      const s = (await (await fetch(`${base}/status`)).json()) as typeof status;
      return s.services.find((x) => x.name === 'demo/web')?.endpoints === 1 ? true : undefined;
    });
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(metrics, /^edgemesh_cluster_services 2$/m);
    assert.match(metrics, /^edgemesh_cluster_synced 1$/m);
  });
});

test('edgemesh-agent: a bad config exits 2 naming the key', async () => {
  const child = spawn(process.execPath, [BIN, '--cluster.source', 'file', '--admin.listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => { err += d; });
  const [code] = await once(child, 'exit');
  assert.equal(code, 2);
  assert.match(err, /config: cluster\.manifestsDir: required when cluster\.source is file/);
});

test('edgemesh-agent: an unreadable kubeconfig exits 2 naming cluster.kubeconfig', async () => {
  const stateDir = mkdtempSync(join(tmpdir(), 'em-agent-kc-'));
  const child = spawn(process.execPath, [BIN, '--cluster.kubeconfig', '/nonexistent/kubeconfig', '--admin.listen', '127.0.0.1:0', '--stateDir', stateDir], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => { err += d; });
  const [code] = await once(child, 'exit');
  assert.equal(code, 2);
  assert.match(err, /config: cluster\.kubeconfig: cannot load kubeconfig \/nonexistent\/kubeconfig/);
});
