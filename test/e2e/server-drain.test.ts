// A server drained under load, in namespaces with the real binaries: two servers (sharing one stateDir: one cluster
// CA, one registry), agents behind symmetric NATs (relay only) listing both (without the server mesh a relayed pair
// must share a server), a bounded loop of HTTP requests by DNS name from n1 to n2 through the relay. SIGTERM on the
// relaying server: zero failed requests, it exits 0 within its bound, both agents end up on the other server.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { buildLab, type Lab } from '../lib/netlab.ts';
import { AGENT_IP, Mesh, nodeManifest, serviceManifest, sliceManifest } from '../../packages/lab/src/mesh.ts';

const HTTP_PORT = 8080;
/** Short drain settings so the test stays quick; Mesh.stop SIGKILLs after 12 s, so unready + drain stay under it. */
const DRAIN = { shutdownUnreadySeconds: 1, shutdownDrainSeconds: 8 };
/** Per client loop; CLIENTS loops run at once so requests are in flight whenever the agents move. */
const MAX_REQUESTS = 200;
const CLIENTS = 4;

let lab: Lab;
let mesh: Mesh;
let dir: string;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'edgemesh-drain-'));
  lab = await buildLab({
    publicHosts: ['relay1', 'relay2'],
    sites: [{ name: 'sym-1', nat: 'symmetric', hosts: ['n1'] }, { name: 'sym-2', nat: 'symmetric', hosts: ['n2'] }],
  });
  mesh = new Mesh(lab, dir, randomBytes(32).toString('hex'));
  const ip = (h: string) => lab.host(h).ip;
  mesh.writeManifest('nodes.yaml', [nodeManifest('n1', {}, ip('n1')), nodeManifest('n2', {}, ip('n2'))]);
  mesh.writeManifest('services.yaml', [
    serviceManifest('mesh', 'hello-n2', 80, HTTP_PORT, { clusterIP: '10.96.0.30' }),
    sliceManifest('mesh', 'hello-n2', 'hello-n2-1', HTTP_PORT, [{ ip: ip('n2'), node: 'n2' }]),
  ]);
  await mesh.startServer('relay1', { config: DRAIN });
  await mesh.startServer('relay2', { config: DRAIN });
  await mesh.startBackend('n2', 'n2', HTTP_PORT);
  await mesh.startAgent('n1', 'n1');
  await mesh.startAgent('n2', 'n2');
  lab.setResolvConf('n1', AGENT_IP, ['mesh.svc.cluster.local', 'svc.cluster.local', 'cluster.local']);
});

after(async () => {
  await mesh?.stopAll();
  await lab?.destroy();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function waitUntil(cond: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

test('SIGTERM on the relaying server: its agents move to the other, no request fails, it exits 0', { timeout: 300_000 }, async () => {
  const relay1 = mesh.serverAddress('relay1');
  const relay2 = mesh.serverAddress('relay2');
  const peerVia = async (host: string, peer: string) => (await mesh.agentStatus(host)).peers.find((p) => p.node === peer);
  assert.ok((await mesh.fetch('n1', 'http://hello-n2/')).ok, 'warm-up');
  await waitUntil(async () => (await peerVia('n1', 'n2'))?.remote === relay1, 30_000, 'n1 -> n2 relayed through the first server');
  assert.equal((await peerVia('n1', 'n2'))?.path, 'relay', 'symmetric <-> symmetric: relay only');

  let ok = 0;
  const failures: string[] = [];
  let running = true;
  const loop = Promise.all(Array.from({ length: CLIENTS }, async () => {
    for (let i = 0; i < MAX_REQUESTS && running; i++) {
      const r = await mesh.fetch('n1', 'http://hello-n2/', 10_000);
      if (r.ok) ok++;
      else failures.push(`${r.error}: ${r.message ?? ''}`);
    }
  }));
  await waitUntil(async () => ok >= 8, 60_000, 'requests flowing');
  const t0 = Date.now();
  const code = await mesh.stop('server'); // SIGTERM; SIGKILL after 12 s
  const ms = Date.now() - t0;
  const okAtStop = ok;
  await waitUntil(async () => ok >= okAtStop + 8, 60_000, 'requests flowing after the drain');
  running = false;
  await loop;
  assert.equal(code, 0, `the drained server exits 0 (took ${ms} ms)`);
  assert.deepEqual(failures, [], `no request failed (${ok} succeeded)`);
  for (const h of ['n1', 'n2']) {
    const st = await mesh.agentStatus(h);
    assert.deepEqual(st.servers.map((s) => [s.address, s.connected]), [[relay1, false], [relay2, true]], `${h} is on the other server`);
  }
  await waitUntil(async () => (await peerVia('n1', 'n2'))?.remote === relay2, 30_000, 'the pair relays through the second server');
  const log = mesh.tail('server', 40);
  assert.match(log, /draining: agents told to move/);
  assert.match(log, /"agentsLeft":0/, 'every agent left before the bound');
  console.log(`drain under load: server exited in ${ms} ms, ${ok} requests, 0 failed`);
});
