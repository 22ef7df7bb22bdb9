// The fleet view across NATs (network namespaces, the mesh launcher of test/e2e/mesh.test.ts): the real server on the
// public network and three agents in two groups, each behind its own NAT so that every kind of path shows up:
//   n1 (group g1) behind a symmetric NAT, n2 (g1) behind a full-cone NAT, n3 (g2) behind a symmetric NAT
//   n1 <-> n2 and n2 <-> n3 are punched (peer-reflexive), n1 <-> n3 stays on the relay (symmetric <-> symmetric).
// `edgemesh fleet` on the server host shows the matrix (g1/g1 direct, g1/g2 mixed) and the strict-empty warning of a
// strict Service whose only endpoint is in g2; the /ui page renders the lab in headless Chromium inside the server's
// namespace, where nothing but the lab exists, and every request it makes is checked to go to the admin host.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { buildLab, type Lab } from '../lib/netlab.ts';
import { AGENT_IP, Mesh, SERVER_ADMIN_PORT, nodeManifest, serviceManifest, sliceManifest } from '../../packages/lab/src/mesh.ts';
import type { FleetView } from '../../packages/common/src/fleet/view.ts';
import { assertFleetSchema } from '../lib/fleet-schema.ts';
import { CHROMIUM, type UiProbe } from '../lib/ui-probe.ts';

const GROUP = 'apps.kubeedge.io/belonging-to';
const PORT = 8080;
const STRICT = { 'apps.kubeedge.io/service-topology': 'range-nodegroup' };
const ROOT = resolve(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'packages', 'agent', 'bin', 'edgemesh.js');
const UI_PROBE = join(ROOT, 'test', 'lib', 'ui-probe.ts');
const ARTIFACTS = join(ROOT, 'test-artifacts');
const SERVER_ADMIN = `127.0.0.1:${SERVER_ADMIN_PORT}`;
/** Agents report on change within 2 s and refresh every 15 s (RTTs): generous for the 2-core machine. */
const FLEET_DEADLINE_MS = 60_000;
const url = (svc: string) => `http://${svc}.mesh.svc.cluster.local/`;

let lab: Lab;
let mesh: Mesh;
let dir: string;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'edgemesh-e2e-fleet-'));
  lab = await buildLab({
    publicHosts: ['relay'],
    sites: [
      { name: 'site-1', nat: 'symmetric', hosts: ['n1'] },
      { name: 'site-2', nat: 'full-cone', hosts: ['n2'] },
      { name: 'site-3', nat: 'symmetric', hosts: ['n3'] },
    ],
  });
  mesh = new Mesh(lab, dir, randomBytes(32).toString('hex'));
  const [n1, n2, n3] = ['n1', 'n2', 'n3'].map((h) => lab.host(h));
  mesh.writeManifest('nodes.yaml', [
    nodeManifest('n1', { [GROUP]: 'g1' }, n1.ip),
    nodeManifest('n2', { [GROUP]: 'g1' }, n2.ip),
    nodeManifest('n3', { [GROUP]: 'g2' }, n3.ip),
  ]);
  mesh.writeManifest('services.yaml', [
    serviceManifest('mesh', 'on-n2', 80, PORT, { clusterIP: '10.96.0.20' }),
    sliceManifest('mesh', 'on-n2', 'on-n2-1', PORT, [{ ip: n2.ip, node: 'n2' }]),
    serviceManifest('mesh', 'on-n3', 80, PORT, { clusterIP: '10.96.0.21' }),
    sliceManifest('mesh', 'on-n3', 'on-n3-1', PORT, [{ ip: n3.ip, node: 'n3' }]),
    serviceManifest('mesh', 'strict-far', 80, PORT, { annotations: STRICT, clusterIP: '10.96.0.22' }),
    sliceManifest('mesh', 'strict-far', 'strict-far-1', PORT, [{ ip: n3.ip, node: 'n3' }]),
  ]);
  await mesh.startServer('relay');
  await mesh.startBackend('n2', 'n2', PORT);
  await mesh.startBackend('n3', 'n3', PORT);
  for (const n of ['n1', 'n2', 'n3']) await mesh.startAgent(n, n);
  for (const n of ['n1', 'n2']) lab.setResolvConf(n, AGENT_IP, ['mesh.svc.cluster.local', 'svc.cluster.local', 'cluster.local']);
  mkdirSync(ARTIFACTS, { recursive: true });
});

after(async () => {
  await mesh?.stopAll();
  await lab?.destroy();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function fleetJson(): Promise<FleetView & Record<string, unknown>> {
  const r = await mesh.adminGet('relay', SERVER_ADMIN, '/fleet');
  assert.equal(r.status, 200, r.body);
  return JSON.parse(r.body) as FleetView & Record<string, unknown>;
}

async function until<T>(what: string, ms: number, fn: () => Promise<T | undefined>): Promise<T> {
  const end = Date.now() + ms;
  let last = '';
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (e) {
      last = (e as Error).message;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} ${last}\n${mesh.tail('server')}`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

const linkPath = (v: FleetView, a: string, b: string) => v.links.find((l) => l.a === a && l.b === b)?.path;

test('calls between every pair of nodes make them peers; the fleet view has the three links on their expected paths', async () => {
  for (const [from, svc, who] of [['n1', 'on-n2', 'n2'], ['n1', 'on-n3', 'n3'], ['n2', 'on-n3', 'n3']]) {
    const r = await until(`${from} -> ${svc}`, 20_000, async () => {
      const res = await mesh.fetch(from, url(svc));
      if (!res.ok) throw new Error(`${res.error} ${res.message ?? ''}`);
      return res;
    });
    assert.equal(r.body!.trim(), `hello from ${who}`);
  }
  // Direct paths come up within a second of the first call; then a report carries them (with RTTs) within 2-15 s.
  const v = await until('n1-n2 and n2-n3 direct, n1-n3 relay, with RTTs', FLEET_DEADLINE_MS, async () => {
    for (const [from, svc] of [['n1', 'on-n2'], ['n1', 'on-n3'], ['n2', 'on-n3']]) await mesh.fetch(from, url(svc));
    const f = await fleetJson();
    const ok = linkPath(f, 'n1', 'n2') === 'direct' && linkPath(f, 'n2', 'n3') === 'direct' && linkPath(f, 'n1', 'n3') === 'relay'
      && f.links.length === 3 && f.links.every((l) => l.rttMs !== null && l.reportedBy.length === 2) && f.nodes.every((n) => n.ready);
    return ok ? f : undefined;
  });
  assertFleetSchema(v);
  writeFileSync(join(ARTIFACTS, 'fleet-lab.json'), JSON.stringify(v, null, 2) + '\n');
  assert.deepEqual(v.groups, [{ name: 'g1', nodes: ['n1', 'n2'] }, { name: 'g2', nodes: ['n3'] }]);
  assert.deepEqual(v.nodes.map((n) => [n.node, n.group, n.nat, n.state, n.ready]), [
    ['n1', 'g1', 'symmetric', 'up', true], ['n2', 'g1', 'cone', 'up', true], ['n3', 'g2', 'symmetric', 'up', true],
  ]);
  assert.deepEqual(v.matrix.map((c) => [c.a, c.b, c.path, c.links, c.direct, c.relay]), [['g1', 'g1', 'direct', 1, 1, 0], ['g1', 'g2', 'mixed', 2, 1, 1]]);
  assert.ok(v.matrix.every((c) => typeof c.medianRttMs === 'number' && c.medianRttMs > 0));
  assert.equal(v.summary.relayShare, 0.333);
  const strict = v.warnings.filter((w) => w.kind === 'strict-empty');
  assert.deepEqual(strict.map((w) => [w.service, w.group, w.nodes]), [['mesh/strict-far', 'g1', ['n1', 'n2']]]);
  assert.ok(v.warnings.some((w) => w.kind === 'relay-symmetric' && w.node === 'n1' && w.peer === 'n3'), JSON.stringify(v.warnings));
  assert.equal(v.healthy, false);
});

test('edgemesh fleet on the server host: the matrix and the strict-empty warning, exit 1; --json keeps the schema', async () => {
  const t = await lab.exec('relay', process.execPath, [CLI, 'fleet']);
  writeFileSync(join(ARTIFACTS, 'fleet-lab.txt'), t.stdout);
  assert.equal(t.exitCode, 1, t.stderr);
  assert.match(t.stdout, /^fleet: 3 nodes \(3 ready\) in 2 groups; links 2 direct, 1 relay, 0 mixed, 0 connecting; relay share 33%; UNHEALTHY$/m);
  assert.match(t.stdout, /^g1\s+n1\s+up\s+yes\s+symmetric\s/m);
  assert.match(t.stdout, /^g1\s+n2\s+up\s+yes\s+cone\s/m);
  assert.match(t.stdout, /^g2\s+n3\s+up\s+yes\s+symmetric\s/m);
  assert.match(t.stdout, /^g1\s+direct [\d.]+ ms\s+mixed [\d.]+ ms$/m);
  assert.match(t.stdout, /^g2\s+mixed [\d.]+ ms\s+-$/m);
  assert.match(t.stdout, /^n1\s+n3\s+g1\/g2\s+relay\s/m);
  assert.match(t.stdout, /^error\s+strict Service mesh\/strict-far has no endpoint in group g1 \(every call from 2 nodes there is reset\)$/m);
  assert.match(t.stdout, /^info\s+n1 <-> n3 use the relay: both are behind symmetric NATs/m);
  const j = await lab.exec('relay', process.execPath, [CLI, 'fleet', '--server-admin', SERVER_ADMIN, '--json']);
  assert.equal(j.exitCode, 1);
  const parsed = JSON.parse(j.stdout) as Record<string, unknown>;
  assertFleetSchema(parsed);
  assert.deepEqual((parsed.matrix as { path: string }[]).map((c) => c.path), ['direct', 'mixed']);
});

const noChromium = !existsSync(CHROMIUM) && !process.env.CI ? `no ${CHROMIUM} (apt-get install chromium)` : false;
test('the /ui page in headless Chromium in the server namespace: the lab nodes, links by path, matrix, warnings; no request leaves', { skip: noChromium }, async () => {
  const shot = join(ARTIFACTS, 'fleet-ui.png');
  const r = await lab.exec('relay', process.execPath, [UI_PROBE, `http://${SERVER_ADMIN}/ui`, '3', '3', shot], { timeoutMs: 120_000 });
  let p: UiProbe & { error?: string };
  try {
    p = JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as UiProbe & { error?: string };
  } catch {
    assert.fail(`ui probe crashed: ${r.stderr.slice(-2000)}`);
  }
  assert.equal(p.error, undefined, p.error);
  assert.deepEqual(p.offHost, [], 'every request goes to the admin host');
  assert.ok(p.requests.every((u) => new URL(u).host === SERVER_ADMIN), p.requests.join(' '));
  assert.deepEqual(p.cspViolations, []);
  assert.deepEqual(p.consoleErrors, []);
  assert.deepEqual(p.nodes.map((n) => [n.node, n.group]).sort(), [['n1', 'g1'], ['n2', 'g1'], ['n3', 'g2']]);
  assert.deepEqual(p.clusters.sort(), ['g1', 'g2']);
  assert.deepEqual(p.links.map((l) => `${l.a}-${l.b}:${l.path}`).sort(), ['n1-n2:direct', 'n1-n3:relay', 'n2-n3:direct']);
  assert.deepEqual(p.matrix.map((c) => `${c.a}/${c.b}:${c.path}`), ['g1/g1:direct', 'g1/g2:mixed', 'g1/g2:mixed', 'g2/g2:none']);
  assert.ok(p.warnings.some((w) => w.kind === 'strict-empty' && w.text.includes('mesh/strict-far has no endpoint in group g1')));
  assert.ok(p.warnings.some((w) => w.kind === 'relay-symmetric'));
  assert.match(p.linkTooltip, /<-> .*\nrtt [\d.]+ ms, /);
  assert.ok(existsSync(shot));
});

test('an agent that stops is shown down (unhealthy) while its last report is kept', async () => {
  assert.equal(await mesh.stop('n3'), 0);
  const v = await until('n3 down', 20_000, async () => {
    const f = await fleetJson();
    return f.nodes.find((n) => n.node === 'n3')?.state === 'down' ? f : undefined;
  });
  assert.ok(v.warnings.some((w) => w.kind === 'agent-down' && w.node === 'n3' && w.severity === 'error'));
  assert.equal(v.nodes.find((n) => n.node === 'n3')!.group, 'g2', 'the last report is kept');
  const t = await lab.exec('relay', process.execPath, [CLI, 'fleet']);
  assert.equal(t.exitCode, 1);
  assert.match(t.stdout, /^g2\s+n3\s+down\s/m);
  assert.match(t.stdout, /^error\s+agent n3 \(group g2\) is disconnected/m);
});
