// Whole-mesh end-to-end test: three nodes in two groups behind NATs, the real server and agents (file source, fake IPs,
// iptables interception, tunnel), clients calling Services by DNS name from inside the nodes' namespaces.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { buildLab, type Lab } from '../lib/netlab.ts';
import { AGENT_IP, Mesh, nodeManifest, serviceManifest, sliceManifest } from '../../packages/lab/src/mesh.ts';

const GROUP = 'apps.kubeedge.io/belonging-to';
const PORT = 8080;
const STRICT = { 'apps.kubeedge.io/service-topology': 'range-nodegroup' };
const url = (svc: string) => `http://${svc}.mesh.svc.cluster.local/`;

let lab: Lab;
let mesh: Mesh;
let dir: string;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'edgemesh-e2e-'));
  lab = await buildLab({
    publicHosts: ['relay'],
    sites: [{ name: 'site-1', nat: 'port-restricted', hosts: ['n1', 'n2'] }, { name: 'site-2', nat: 'port-restricted', hosts: ['n3'] }],
  });
  mesh = new Mesh(lab, dir, randomBytes(32).toString('hex'));
  const [n1, n2, n3] = ['n1', 'n2', 'n3'].map((h) => lab.host(h));
  mesh.writeManifest('nodes.yaml', [
    nodeManifest('n1', { [GROUP]: 'g1' }, n1.ip),
    nodeManifest('n2', { [GROUP]: 'g1' }, n2.ip),
    nodeManifest('n3', { [GROUP]: 'g2' }, n3.ip),
  ]);
  const both = [{ ip: n2.ip, node: 'n2' }, { ip: n3.ip, node: 'n3' }];
  const farOnly = [{ ip: n3.ip, node: 'n3' }];
  mesh.writeManifest('services.yaml', [
    serviceManifest('mesh', 'strict', 80, PORT, { annotations: STRICT, clusterIP: '10.96.0.10' }),
    sliceManifest('mesh', 'strict', 'strict-1', PORT, both),
    serviceManifest('mesh', 'strict-far', 80, PORT, { annotations: STRICT, clusterIP: '10.96.0.11' }),
    sliceManifest('mesh', 'strict-far', 'strict-far-1', PORT, farOnly),
    serviceManifest('mesh', 'prefer-far', 80, PORT, { spec: { trafficDistribution: 'PreferClose' }, clusterIP: '10.96.0.12' }),
    sliceManifest('mesh', 'prefer-far', 'prefer-far-1', PORT, farOnly),
    serviceManifest('mesh', 'plain', 80, PORT, { clusterIP: '10.96.0.13' }),
    sliceManifest('mesh', 'plain', 'plain-1', PORT, both),
  ]);
  await mesh.startServer('relay');
  await mesh.startBackend('n2', 'n2', PORT);
  await mesh.startBackend('n3', 'n3', PORT);
  for (const n of ['n1', 'n2', 'n3']) await mesh.startAgent(n, n);
  lab.setResolvConf('n1', AGENT_IP, ['mesh.svc.cluster.local', 'svc.cluster.local', 'cluster.local']);
});

after(async () => {
  await mesh?.stopAll();
  await lab?.destroy();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function callMany(svc: string, times: number): Promise<string[]> {
  const bodies: string[] = [];
  for (let i = 0; i < times; i++) {
    const r = await mesh.fetch('n1', url(svc));
    assert.ok(r.ok, `${svc}: ${r.error} ${r.message ?? ''}\n${mesh.tail('n1')}`);
    bodies.push(r.body!.trim());
  }
  return bodies;
}

/** Generous wait for a path change (the first stream rides the relay at once; punching upgrades the peer). */
const PATH_WAIT_MS = 30_000;

/** Waits for `host`'s /status to show `peer` on `path`; returns that peer entry. */
async function peerOn(host: string, peer: string, path: string): Promise<{ node: string; path: string; remote: string | null }> {
  const end = Date.now() + PATH_WAIT_MS;
  let last: unknown;
  for (;;) {
    const p = (await mesh.agentStatus(host)).peers.find((x) => x.node === peer);
    if (p?.path === path) return p;
    last = p;
    if (Date.now() > end) assert.fail(`${host} -> ${peer}: not ${path} after ${PATH_WAIT_MS} ms (last: ${JSON.stringify(last)})\n${mesh.tail(host)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

test('strict group: a caller in g1 is only ever served by g1 (n2), across the tunnel on the same LAN', async () => {
  const bodies = await callMany('strict', 6);
  assert.deepEqual(new Set(bodies), new Set(['hello from n2']));
  // Across the tunnel: n1 has a tunnel peer n2, and on the same LAN it ends on the direct path to n2's LAN address.
  const p = await peerOn('n1', 'n2', 'direct');
  assert.equal(p.remote?.split(':')[0], lab.host('n2').ip, `n1 -> n2 should use n2's LAN address, got ${p.remote}`);
  assert.deepEqual(new Set(await callMany('strict', 2)), new Set(['hello from n2']));
});

test('strict group with no backend in the caller group refuses at once (reset, not a hang)', async () => {
  const r = await mesh.fetch('n1', url('strict-far'), 8000);
  assert.equal(r.ok, false);
  assert.match(String(r.error), /ECONNRESET|ECONNREFUSED|socket hang up/, `expected a reset, got ${r.error} ${r.message}`);
});

test('prefer spills over to the other group through the NATs when the caller group has no backend', async () => {
  const bodies = await callMany('prefer-far', 3);
  assert.deepEqual(new Set(bodies), new Set(['hello from n3']));
  // Two port-restricted NATs allow hole punching: the tunnel to n3 ends direct, to site-2's public address.
  const p = await peerOn('n1', 'n3', 'direct');
  assert.equal(p.remote?.split(':')[0], lab.router('site-2').publicIp, `n1 -> n3 should go to site-2's NAT, got ${p.remote}`);
});

test('a Service that says nothing follows routing.default (prefer): the caller group is used first', async () => {
  const bodies = await callMany('plain', 6);
  assert.deepEqual(new Set(bodies), new Set(['hello from n2']));
});

test('edgemesh status shows the peers and their paths', async () => {
  const cli = join(import.meta.dirname, '..', '..', 'packages', 'agent', 'bin', 'edgemesh.js');
  const table = await lab.exec('n1', process.execPath, [cli, 'status']);
  assert.equal(table.exitCode, 0, table.stderr);
  assert.match(table.stdout, /PEERS/);
  assert.match(table.stdout, /n3\s+direct\b/);
  assert.match(table.stdout, /mesh\/prefer-far\s+9\.251\./);
  const json = JSON.parse((await lab.exec('n1', process.execPath, [cli, 'status', '--json'])).stdout);
  assert.equal(json.node, 'n1');
  assert.equal(json.group, 'g1');
  assert.ok(json.servers.some((s: { connected: boolean }) => s.connected));
  assert.ok(json.peers.some((p: { node: string; path: string }) => p.node === 'n3' && p.path === 'direct'), JSON.stringify(json.peers));
});

test("a backend node's agent restart is survived: fake IPs unchanged, new connections work again", async () => {
  const ipsBefore = new Map((await mesh.agentStatus('n3')).services.map((s) => [s.name, s.ip]));
  const n1Before = new Map((await mesh.agentStatus('n1')).services.map((s) => [s.name, s.ip]));
  assert.equal(await mesh.stop('n3'), 0, 'agent exits 0 on SIGTERM');
  await mesh.startAgent('n3', 'n3');
  const ipsAfter = new Map((await mesh.agentStatus('n3')).services.map((s) => [s.name, s.ip]));
  assert.deepEqual(ipsAfter, ipsBefore, 'fake IPs are stable across the restart');
  assert.deepEqual(new Map((await mesh.agentStatus('n1')).services.map((s) => [s.name, s.ip])), n1Before);
  // The caller re-establishes its link to the restarted node (new key exchange through the server).
  const deadline = Date.now() + 20_000;
  let last = '';
  while (Date.now() < deadline) {
    const r = await mesh.fetch('n1', url('prefer-far'));
    if (r.ok) {
      assert.equal(r.body!.trim(), 'hello from n3');
      return;
    }
    last = `${r.error} ${r.message ?? ''}`;
    await new Promise((res) => setTimeout(res, 500));
  }
  assert.fail(`no connection to n3 after its agent restarted: ${last}`);
});
