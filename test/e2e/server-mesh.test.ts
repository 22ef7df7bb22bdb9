// The server mesh in network namespaces, through the whole product (DNS name -> iptables -> proxy -> tunnel -> far
// agent -> backend): n1 and n2 behind symmetric NATs (only the relay works between them), n1 only on server 1, n2 only
// on server 2; the two servers meshed by mesh.peers. Then a third server joins (with n3 on it, and n2 listing it as
// its second server), and server 2 leaves: pairs whose servers remain keep working, and n1 <-> n2 moves to the path
// through server 3 (a paced transfer running across the departure keeps every byte).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { buildLab, type Lab } from '../lib/netlab.ts';
import { AGENT_IP, Mesh, SERVER_ADMIN_PORT, nodeManifest, serviceManifest, sliceManifest } from '../../packages/lab/src/mesh.ts';

const GROUP = 'apps.kubeedge.io/belonging-to';
const TRANSFER = resolve(import.meta.dirname, '../../packages/lab/src/transfer.ts');
const SINK_PORT = 9000;
const HTTP_PORT = 8080;
const SEARCH = ['mesh.svc.cluster.local', 'svc.cluster.local', 'cluster.local'];

let lab: Lab;
let mesh: Mesh;
let dir: string;

/** A paced transfer from `host` to a Service by DNS name; the sink answers the sha256 of what it got (checked). */
function transfer(host: string, svc: string, bytes: number, seconds: number) {
  const p = lab.spawn(host, process.execPath, [TRANSFER, `${svc}.mesh.svc.cluster.local`, String(SINK_PORT), String(bytes), String(seconds)]);
  let last: Record<string, unknown> | undefined;
  let stderr = '';
  let progress = 0;
  p.stderr!.on('data', (c: Buffer) => { stderr += c.toString(); });
  const result = new Promise<Record<string, unknown>>((res) => {
    createInterface({ input: p.stdout! }).on('line', (l) => {
      const m = JSON.parse(l) as Record<string, unknown>;
      if (m.progress) progress = m.t as number;
      else last = m;
    });
    p.on('exit', () => res(last ?? { ok: false, error: 'no result', stderr }));
  });
  return { result, ran: () => progress };
}

async function serverMetric(host: string, re: RegExp): Promise<number> {
  const r = await mesh.adminGet(host, `127.0.0.1:${SERVER_ADMIN_PORT}`, '/metrics');
  let sum = 0;
  for (const line of r.body.split('\n')) if (re.test(line)) sum += Number(line.split(' ').pop());
  return sum;
}

async function serverStatus(host: string): Promise<{ mesh: { peers: { id: string; synced: boolean; agents: number }[] } }> {
  return JSON.parse((await mesh.adminGet(host, `127.0.0.1:${SERVER_ADMIN_PORT}`, '/status')).body) as never;
}

async function until(cond: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond().catch(() => false))) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

const syncedPeers = async (host: string) => (await serverStatus(host)).mesh.peers.filter((p) => p.synced).length;

describe('server mesh', { timeout: 600_000 }, () => {
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'edgemesh-srvmesh-'));
    lab = await buildLab({
      publicHosts: ['srv1', 'srv2', 'srv3'],
      sites: [
        { name: 'sym1', nat: 'symmetric', hosts: ['n1'] },
        { name: 'sym2', nat: 'symmetric', hosts: ['n2'] },
        { name: 'sym3', nat: 'symmetric', hosts: ['n3'] },
      ],
    });
    mesh = new Mesh(lab, dir, randomBytes(32).toString('hex'));
    const ip = (h: string) => lab.host(h).ip;
    mesh.writeManifest('nodes.yaml', ['n1', 'n2', 'n3'].map((n, i) => nodeManifest(n, { [GROUP]: `g${i + 1}` }, ip(n))));
    mesh.writeManifest('services.yaml', ['n1', 'n2', 'n3'].flatMap((n, i) => [
      serviceManifest('mesh', `sink-${n}`, SINK_PORT, SINK_PORT, { clusterIP: `10.96.0.${20 + i}` }),
      sliceManifest('mesh', `sink-${n}`, `sink-${n}-1`, SINK_PORT, [{ ip: ip(n), node: n }]),
    ]));
    // The Mesh helper gives every server the same stateDir (one CA, one registry), as one replica set with a shared
    // CA Secret would have. Server 1 and 2 list each other.
    await mesh.startServer('srv1', { config: { mesh: { peers: [mesh.serverAddress('srv2')] } } });
    await mesh.startServer('srv2', { config: { mesh: { peers: [mesh.serverAddress('srv1')] } } });
    await until(async () => (await syncedPeers('srv1')) === 1 && (await syncedPeers('srv2')) === 1, 30_000, 'srv1 <-> srv2 meshed');
    for (const n of ['n1', 'n2', 'n3']) await mesh.startBackend(n, n, HTTP_PORT, { sinkPort: SINK_PORT });
    await mesh.startAgent('n1', 'n1', { config: { tunnel: { servers: [mesh.serverAddress('srv1')] } } });
    // n2's second entry is server 3, which does not exist yet (its connection retries until it does).
    await mesh.startAgent('n2', 'n2', { config: { tunnel: { servers: [mesh.serverAddress('srv2'), `${lab.host('srv3').ip}:20004`] } } });
    for (const h of ['n1', 'n2', 'n3']) lab.setResolvConf(h, AGENT_IP, SEARCH);
  });

  after(async () => {
    await mesh?.stopAll();
    await lab?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('n1 (server 1 only) -> n2 (server 2 only), symmetric <-> symmetric: a transfer by DNS name relays across the mesh', async () => {
    const bytes = 8 * 1024 * 1024;
    const r = await transfer('n1', 'sink-n2', bytes, 2).result;
    assert.equal(r.ok, true, `transfer: ${JSON.stringify(r)}`);
    assert.equal(r.sent, bytes);
    const st = await mesh.agentStatus('n1');
    const p = st.peers.find((x) => x.node === 'n2');
    assert.equal(p?.path, 'relay', JSON.stringify(p));
    assert.ok((await serverMetric('srv1', /^edgemesh_server_mesh_forwarded_bytes_total\{dir="out"\}/)) >= bytes, 'server 1 forwarded the bytes to server 2');
    assert.ok((await serverMetric('srv2', /^edgemesh_server_mesh_forwarded_bytes_total\{dir="in"\}/)) >= bytes);
    // The reverse direction too (n2 dials n1).
    const back = await transfer('n2', 'sink-n1', 1024 * 1024, 1).result;
    assert.equal(back.ok, true, `reverse transfer: ${JSON.stringify(back)}`);
  });

  test('a third server joins (listing both); an agent on it reaches agents on the other two', async () => {
    await mesh.startServer('srv3', { config: { mesh: { peers: [mesh.serverAddress('srv1'), mesh.serverAddress('srv2')] } } });
    await until(async () => (await syncedPeers('srv3')) === 2 && (await syncedPeers('srv1')) === 2 && (await syncedPeers('srv2')) === 2, 30_000, 'srv3 meshed with both');
    await mesh.startAgent('n3', 'n3', { config: { tunnel: { servers: [mesh.serverAddress('srv3')] } } });
    for (const [from, to] of [['n3', 'sink-n1'], ['n1', 'sink-n3'], ['n3', 'sink-n2']] as const) {
      const r = await transfer(from, to, 2 * 1024 * 1024, 1).result;
      assert.equal(r.ok, true, `${from} -> ${to}: ${JSON.stringify(r)}`);
    }
    // n2 listed server 3 as its second server: it is connected there now too.
    await until(async () => (await mesh.agentStatus("n2")).servers.every((s) => s.connected), 30_000, 'n2 on both of its servers');
  });

  test('server 2 leaves mid-transfer: n1 -> n2 moves through server 3 without losing a byte; n1 <-> n3 is untouched', async () => {
    const bytes = 30 * 1024 * 1024;
    const x = transfer('n1', 'sink-n2', bytes, 30);
    const via2 = await serverMetric('srv2', /^edgemesh_server_mesh_forwarded_bytes_total\{dir="in"\}/);
    const via3 = await serverMetric('srv3', /^edgemesh_server_mesh_forwarded_bytes_total\{dir="in"\}/);
    await until(async () => x.ran() >= 8_000, 30_000, 'the transfer is running');
    // The session's relay link is the one of the first test: through server 2.
    assert.ok((await serverMetric('srv2', /^edgemesh_server_mesh_forwarded_bytes_total\{dir="in"\}/)) - via2 > 1024 * 1024, 'the transfer goes through server 2');
    assert.equal(await mesh.stop(mesh.serverName('srv2')), 0, 'server 2 stops cleanly');
    const r = await x.result;
    assert.equal(r.ok, true, `transfer across the departure: ${JSON.stringify(r)}`);
    assert.equal(r.sent, bytes);
    console.log(`longest write stall while server 2 left: ${r.maxGapMs} ms`);
    assert.ok((await serverMetric('srv3', /^edgemesh_server_mesh_forwarded_bytes_total\{dir="in"\}/)) - via3 > 1024 * 1024, 'the rest went through server 3');
    await until(async () => (await syncedPeers('srv1')) === 1, 30_000, 'srv1 sees srv2 gone');
    for (const [from, to] of [['n1', 'sink-n3'], ['n3', 'sink-n1'], ['n1', 'sink-n2']] as const) {
      const t = await transfer(from, to, 2 * 1024 * 1024, 1).result;
      assert.equal(t.ok, true, `${from} -> ${to} after server 2 left: ${JSON.stringify(t)}`);
    }
  });
});
