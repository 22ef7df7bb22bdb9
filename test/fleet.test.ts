// The fleet on loopback, without root: a real server and three real agents (in-process, file source, tunnel on), two
// groups, traffic between every pair; the reports reach the server, /fleet and `edgemesh fleet` show the nodes, the
// matrix and a strict-empty warning; the /ui page renders it in headless Chromium with no request leaving the host.
// (test/e2e/fleet.test.ts does the same across NATs in network namespaces.)
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { loadAgentConfig } from '@edgemesh/common/config';
import { silentLogger } from '@edgemesh/common/log';
import type { FleetView } from '@edgemesh/common/fleet/view';
import { Agent } from '../packages/agent/src/main.ts';
import { TEST_TOKEN, startServer } from './lib/tunnel-fixture.ts';
import { node, service, slice } from './lib/proxyfixtures.ts';
import { assertFleetSchema } from './lib/fleet-schema.ts';
import { CHROMIUM, probeUi } from './lib/ui-probe.ts';
import type { EdgemeshServer } from '../packages/server/src/main.ts';

const CLI = resolve(import.meta.dirname, '..', 'packages', 'agent', 'bin', 'edgemesh.js');
const GROUP = 'apps.kubeedge.io/belonging-to';
const STRICT = { 'apps.kubeedge.io/service-topology': 'range-nodegroup' };
const DEADLINE_MS = 40_000;
/** Screenshots and samples kept for a look after the run (gitignored). */
const ARTIFACTS = resolve(import.meta.dirname, '..', 'test-artifacts');

let dir: string;
let server: EdgemeshServer;
let admin: string;
const agents = new Map<string, Agent>();
const backends: Server[] = [];

async function backend(name: string): Promise<number> {
  // Replies, then waits for the caller to close first (as HTTP servers do with a keep-alive client).
  const s = createServer((c) => { c.on('error', () => {}); c.once('data', () => c.write(`hello from ${name}`)); c.on('end', () => c.end()); });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  backends.push(s);
  return (s.address() as { port: number }).port;
}

/** One TCP call through `from`'s proxy to a Service; resolves with the reply. */
async function call(from: string, svc: string): Promise<string> {
  const port = agents.get(from)!.proxy!.listenerPort(`default/${svc}`, 80);
  assert.ok(port, `${from} has a listener for ${svc}`);
  return new Promise((res, rej) => {
    const c = connect(port, '127.0.0.1', () => c.write('hi'));
    let body = '';
    c.on('data', (d) => {
      body += d;
      if (body.startsWith('hello from ') && body.length > 12) {
        c.end();
        res(body);
      }
    });
    c.on('error', rej);
  });
}

async function fleet(): Promise<FleetView & Record<string, unknown>> {
  const r = await fetch(`http://${admin}/fleet`);
  assert.equal(r.status, 200);
  return (await r.json()) as FleetView & Record<string, unknown>;
}

async function until<T>(what: string, fn: () => Promise<T | undefined>): Promise<T> {
  const end = Date.now() + DEADLINE_MS;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 20_000 }, (err, stdout, stderr) => {
      res({ code: err ? Number((err as NodeJS.ErrnoException & { code?: unknown }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'em-fleet-'));
  let relayPort: number;
  ({ server, port: relayPort } = await startServer());
  const a = server.admin.address()!;
  admin = `127.0.0.1:${a.port}`;
  const manifests = join(dir, 'manifests');
  mkdirSync(manifests);
  const p2 = await backend('n2');
  const p3 = await backend('n3');
  const docs = [
    node('n1', { [GROUP]: 'g1' }), node('n2', { [GROUP]: 'g1' }), node('n3', { [GROUP]: 'g2' }),
    service({ name: 'on-n2', ip: '10.96.0.2', ports: [{ port: 80, targetPort: p2 }] }),
    slice('on-n2', [{ port: p2 }], [{ ip: '127.0.0.1', node: 'n2' }]),
    service({ name: 'on-n3', ip: '10.96.0.3', ports: [{ port: 80, targetPort: p3 }] }),
    slice('on-n3', [{ port: p3 }], [{ ip: '127.0.0.1', node: 'n3' }]),
    service({ name: 'strict-far', ip: '10.96.0.4', ports: [{ port: 80, targetPort: p3 }], annotations: STRICT }),
    slice('strict-far', [{ port: p3 }], [{ ip: '127.0.0.1', node: 'n3' }]),
  ];
  writeFileSync(join(manifests, 'all.yaml'), docs.map((d) => stringify(d)).join('---\n'));
  writeFileSync(join(dir, 'token'), TEST_TOKEN, { mode: 0o600 });
  for (const n of ['n1', 'n2', 'n3']) {
    const cfg = loadAgentConfig({
      env: {},
      text: stringify({
        nodeName: n, stateDir: join(dir, `state-${n}`),
        cluster: { source: 'file', manifestsDir: manifests },
        dns: { enabled: false },
        proxy: { intercept: 'none', bindAddress: '127.0.0.1' },
        tunnel: { enabled: true, servers: [`127.0.0.1:${relayPort}`], listenPort: 0, tokenFile: join(dir, 'token') },
        admin: { listen: '127.0.0.1:0' },
      }),
    });
    const agent = new Agent(cfg, silentLogger);
    agent.tunnelTuning.allowLoopbackEndpoints = true; // every node's backend is on 127.0.0.1
    agents.set(n, agent);
    await agent.start();
  }
});

after(async () => {
  for (const a of agents.values()) await a.stop();
  await server?.stop();
  for (const b of backends) b.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('every agent reports; /fleet has the nodes by group, a link per pair, the matrix and the strict-empty warning', async () => {
  // Traffic between every pair makes them peers.
  assert.equal(await until('n1 -> n2', () => call('n1', 'on-n2')), 'hello from n2');
  assert.equal(await until('n1 -> n3', () => call('n1', 'on-n3')), 'hello from n3');
  assert.equal(await until('n2 -> n3', () => call('n2', 'on-n3')), 'hello from n3');
  const v = await until('three settled links in the fleet view', async () => {
    const f = await fleet();
    const settled = f.links.length === 3 && f.links.every((l) => l.path !== 'connecting' && l.reportedBy.length === 2 && l.rttMs !== null);
    return settled && f.nodes.every((n) => n.ready) ? f : undefined;
  });
  assertFleetSchema(v);
  assert.deepEqual(v.groups, [{ name: 'g1', nodes: ['n1', 'n2'] }, { name: 'g2', nodes: ['n3'] }]);
  assert.deepEqual(v.nodes.map((n) => [n.node, n.group, n.state, n.ready, n.nat, n.version]), [
    ['n1', 'g1', 'up', true, 'cone', '0.1.0'], ['n2', 'g1', 'up', true, 'cone', '0.1.0'], ['n3', 'g2', 'up', true, 'cone', '0.1.0'],
  ]);
  assert.deepEqual(v.links.map((l) => [l.a, l.b, l.groups.join('/')]), [['n1', 'n2', 'g1/g1'], ['n1', 'n3', 'g1/g2'], ['n2', 'n3', 'g1/g2']]);
  assert.ok(v.links.every((l) => l.bytes > 0), 'bytes counted');
  assert.deepEqual(v.matrix.map((c) => [c.a, c.b, c.links]), [['g1', 'g1', 1], ['g1', 'g2', 2]]);
  const strict = v.warnings.filter((w) => w.kind === 'strict-empty');
  assert.deepEqual(strict.map((w) => [w.message, w.nodes]), [['strict Service default/strict-far has no endpoint in group g1 (every call from 2 nodes there is reset)', ['n1', 'n2']]]);
  assert.equal(v.healthy, false);
  assert.deepEqual(v.server, { listen: '127.0.0.1:0', agentsConnected: 3 });
});

test('edgemesh fleet: tables, --json with the documented schema, exit 1 while unhealthy', async () => {
  const t = await run(['fleet', '--server-admin', admin]);
  assert.equal(t.code, 1, t.stderr);
  assert.match(t.stdout, /^fleet: 3 nodes \(3 ready\) in 2 groups; .*UNHEALTHY$/m);
  assert.match(t.stdout, /^g1\s+n1\s+up\s+yes\s+cone\s+0\.1\.0\s+2\s/m);
  assert.match(t.stdout, /^g2\s+n3\s+up\s+yes\s+cone\s+0\.1\.0\s+2\s/m);
  assert.match(t.stdout, /PATHS BETWEEN GROUPS[^\n]*\n\s+g1\s+g2\n(g1\s+\w+ [\d.]+ ms\s+\w+ [\d.]+ ms)\n(g2\s+\w+ [\d.]+ ms\s+-)/);
  assert.match(t.stdout, /^error\s+strict Service default\/strict-far has no endpoint in group g1/m);
  const j = await run(['fleet', `--server-admin=${admin}`, '--json']);
  assert.equal(j.code, 1);
  const parsed = JSON.parse(j.stdout) as Record<string, unknown>;
  assertFleetSchema(parsed);
  assert.equal(parsed.healthy, false);
});

test('the server admin serves /ui and its assets with their content types and a strict CSP; unknown paths 404', async () => {
  for (const [path, type] of [['/ui', 'text/html'], ['/ui/app.js', 'text/javascript'], ['/ui/style.css', 'text/css'], ['/ui/vendor/d3-force.min.js', 'text/javascript']]) {
    const r = await fetch(`http://${admin}${path}`);
    assert.equal(r.status, 200, path);
    assert.match(r.headers.get('content-type') ?? '', new RegExp(`^${type}`), path);
    assert.match(r.headers.get('content-security-policy') ?? '', /default-src 'none'; script-src 'self'/);
    assert.equal(r.headers.get('x-content-type-options'), 'nosniff');
    assert.ok((await r.text()).length > 100);
  }
  assert.equal((await fetch(`http://${admin}/ui/../status`)).status, 200, 'fetch normalises the path to /status');
  assert.equal((await fetch(`http://${admin}/ui/vendor/other.js`)).status, 404);
  assert.equal((await fetch(`http://${admin}/fleet`, { method: 'POST' })).status, 405);
});

const noChromium = !existsSync(CHROMIUM) && !process.env.CI ? `no ${CHROMIUM} (apt-get install chromium)` : false;
test('the /ui page in headless Chromium: the three nodes in two clusters, their links by path, the matrix and warnings', { skip: noChromium }, async () => {
  const url = `http://${admin}/ui`;
  mkdirSync(ARTIFACTS, { recursive: true });
  const p = await probeUi(url, { nodes: 3, links: 3 }, join(ARTIFACTS, 'fleet-ui-loopback.png'));
  assert.deepEqual(p.offHost, [], 'no request leaves the admin host');
  assert.ok(p.requests.length >= 6 && p.requests.every((u) => new URL(u).host === admin), p.requests.join(' '));
  assert.deepEqual(p.cspViolations, []);
  assert.deepEqual(p.consoleErrors, []);
  assert.equal(p.mode, 'nodes');
  assert.deepEqual(p.nodes.map((n) => [n.node, n.group]).sort(), [['n1', 'g1'], ['n2', 'g1'], ['n3', 'g2']]);
  assert.ok(p.nodes.every((n) => /\bready\b/.test(n.cls)));
  assert.deepEqual(p.clusters.sort(), ['g1', 'g2']);
  assert.deepEqual(p.links.map((l) => `${l.a}-${l.b}`).sort(), ['n1-n2', 'n1-n3', 'n2-n3']);
  assert.ok(p.links.every((l) => ['direct', 'relay', 'mixed'].includes(l.path)));
  // The square matrix: g1/g1, g1/g2 twice (both triangles), g2/g2 empty.
  assert.deepEqual(p.matrix.map((c) => `${c.a}/${c.b}:${c.path === 'none' ? 'none' : 'path'}`), ['g1/g1:path', 'g1/g2:path', 'g1/g2:path', 'g2/g2:none']);
  assert.ok(p.warnings.some((w) => w.kind === 'strict-empty' && /default\/strict-far has no endpoint in group g1/.test(w.text)));
  assert.equal(p.health, 'unhealthy');
  assert.match(p.nodeTooltip, /NAT cone/);
  assert.match(p.linkTooltip, /rtt/);
  assert.match(p.responseTypes['/ui/vendor/d3-force.min.js'], /^text\/javascript/);
});
