// The server's admin port when it is not loopback (the chart opens it on the pod address for probes and Prometheus):
// /status, /fleet and /ui need the admin token as a bearer credential (401), or are refused without one configured
// (403), counted; /healthz, /readyz and /metrics stay open. `edgemesh fleet` sends the token. And /metrics of the server
// and of an agent (tunnel connected, a DNS query forwarded) hold no addresses in their labels.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Resolver } from 'node:dns/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { ConfigError, loadAgentConfig, serverSchema } from '@edgemesh/common/config';
import { adminAccess, isLoopbackHost } from '@edgemesh/common/admin';
import { silentLogger } from '@edgemesh/common/log';
import { Agent } from '../packages/agent/src/main.ts';
import { readAdminToken, type EdgemeshServer } from '../packages/server/src/main.ts';
import { ENDPOINT_NO_HOSTNAME, endpointMetricLabel } from '../packages/agent/src/proxy/metrics.ts';
import { TEST_TOKEN, startServer } from './lib/tunnel-fixture.ts';
import { startUpstream, type TestUpstream } from './lib/dnsupstream.ts';

const CLI = resolve(import.meta.dirname, '..', 'packages', 'agent', 'bin', 'edgemesh.js');
const ADMIN_TOKEN = 'f3a9c1d27b4e8f60a5d1c3b7e9f20486b1d3c5e7f9a0b2c4d6e8f1a3b5c7d9e0';
const DEADLINE_MS = 30_000;

let dir: string;
let guarded: EdgemeshServer, open: EdgemeshServer, loopback: EdgemeshServer;
let relayPort: number;
let up: TestUpstream;
let agent: Agent;

const adminUrl = (s: EdgemeshServer, path: string) => `http://127.0.0.1:${s.admin.address()!.port}${path}`;
const get = async (s: EdgemeshServer, path: string, token?: string) => {
  const r = await fetch(adminUrl(s, path), { headers: token ? { authorization: `Bearer ${token}` } : {} });
  return { status: r.status, body: await r.text(), auth: r.headers.get('www-authenticate') };
};

function run(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 20_000, env: { ...process.env, EDGEMESH_ADMIN_TOKEN: '', ...env } }, (err, stdout, stderr) => {
      res({ code: err ? Number((err as NodeJS.ErrnoException & { code?: unknown }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

async function until(what: string, cond: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + DEADLINE_MS;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'em-admin-'));
  const tokenFile = join(dir, 'admin-token');
  writeFileSync(tokenFile, ADMIN_TOKEN + '\n', { mode: 0o600 });
  ({ server: guarded, port: relayPort } = await startServer(undefined, { admin: { listen: '0.0.0.0:0', tokenFile } }));
  ({ server: open } = await startServer(undefined, { admin: { listen: '0.0.0.0:0' } }));
  ({ server: loopback } = await startServer());
  up = await startUpstream({ records: { 'www.example.test': [{ name: 'www.example.test', type: 'A', ttl: 60, data: '192.0.2.10' }] } });
  writeFileSync(join(dir, 'token'), TEST_TOKEN, { mode: 0o600 });
  const cfg = loadAgentConfig({
    env: {},
    text: stringify({
      nodeName: 'n1', stateDir: join(dir, 'state-n1'),
      cluster: { source: 'file', manifestsDir: join(dir, 'manifests') },
      dns: { listen: '127.0.0.1:0', upstream: [`127.0.0.1:${up.port}`] },
      proxy: { intercept: 'none', bindAddress: '127.0.0.1' },
      tunnel: { enabled: true, servers: [`127.0.0.1:${relayPort}`], listenPort: 0, tokenFile: join(dir, 'token') },
      admin: { listen: '127.0.0.1:0' },
      log: { level: 'silent' },
    }),
  });
  agent = new Agent(cfg, silentLogger);
  await agent.start();
});

after(async () => {
  await agent?.stop();
  await up?.close();
  for (const s of [guarded, open, loopback]) await s?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test('admin access decision: loopback open; elsewhere the bearer token, or nobody without one', () => {
  assert.equal(adminAccess({ loopback: true, token: undefined, authorization: undefined }), 'ok');
  assert.equal(adminAccess({ loopback: false, token: undefined, authorization: `Bearer ${ADMIN_TOKEN}` }), 'forbidden');
  assert.equal(adminAccess({ loopback: false, token: ADMIN_TOKEN, authorization: undefined }), 'unauthorized');
  assert.equal(adminAccess({ loopback: false, token: ADMIN_TOKEN, authorization: `Bearer ${ADMIN_TOKEN.slice(0, -1)}` }), 'unauthorized');
  assert.equal(adminAccess({ loopback: false, token: ADMIN_TOKEN, authorization: `Basic ${ADMIN_TOKEN}` }), 'unauthorized');
  assert.equal(adminAccess({ loopback: false, token: ADMIN_TOKEN, authorization: `Bearer ${ADMIN_TOKEN}` }), 'ok');
  assert.equal(adminAccess({ loopback: false, token: ADMIN_TOKEN, authorization: `bearer  ${ADMIN_TOKEN} ` }), 'ok');
  for (const h of ['127.0.0.1', '127.1.2.3', '::1', '[::1]', 'localhost']) assert.ok(isLoopbackHost(h), h);
  for (const h of ['0.0.0.0', '', '::', '10.0.0.5', '128.0.0.1']) assert.ok(!isLoopbackHost(h), h);
});

test('admin.tokenFile: read at start; a short or unreadable token is a config error naming the key', () => {
  const weak = join(dir, 'weak');
  writeFileSync(weak, 'admin-secret\n', { mode: 0o600 });
  const cfg = (tokenFile: string) => serverSchema.parse({ admin: { listen: '0.0.0.0:10561', tokenFile } });
  assert.throws(() => readAdminToken(cfg(weak)), (e: unknown) => e instanceof ConfigError && /admin\.tokenFile/.test(e.message) && /128/.test(e.message));
  assert.throws(() => readAdminToken(cfg(join(dir, 'missing'))), (e: unknown) => e instanceof ConfigError && /admin\.tokenFile/.test(e.message));
  assert.equal(readAdminToken(cfg(join(dir, 'admin-token'))), ADMIN_TOKEN);
  assert.equal(readAdminToken(cfg('')), undefined);
});

test('non-loopback admin with a token: /status, /fleet, /ui need it (401, counted); probes and /metrics stay open', async () => {
  for (const path of ['/status', '/fleet', '/ui', '/ui/app.js']) {
    const none = await get(guarded, path);
    assert.equal(none.status, 401, `${path} without a token`);
    assert.match(none.auth ?? '', /^Bearer /);
    assert.doesNotMatch(none.body, /caHash|agents|<html/i, 'nothing of the route in the refusal');
    assert.equal((await get(guarded, path, 'wrong-' + ADMIN_TOKEN)).status, 401, `${path} with a wrong token`);
    assert.equal((await get(guarded, path, ADMIN_TOKEN)).status, 200, `${path} with the token`);
  }
  assert.match((await get(guarded, '/status', ADMIN_TOKEN)).body, /"caHash"/);
  for (const path of ['/healthz', '/readyz', '/metrics']) assert.equal((await get(guarded, path)).status, 200, `${path} open`);
  const m = (await get(guarded, '/metrics')).body;
  assert.match(m, /edgemesh_server_budget_refusals_total\{budget="admin_unauthorized"\} 8/);
});

test('non-loopback admin without a token: /status, /fleet, /ui refused (403, counted) whatever is sent; probes open', async () => {
  for (const path of ['/status', '/fleet', '/ui']) {
    assert.equal((await get(open, path)).status, 403, path);
    assert.equal((await get(open, path, ADMIN_TOKEN)).status, 403, `${path} with some token`);
  }
  for (const path of ['/healthz', '/readyz', '/metrics']) assert.equal((await get(open, path)).status, 200, path);
  assert.match((await get(open, '/metrics')).body, /edgemesh_server_budget_refusals_total\{budget="admin_forbidden"\} 6/);
});

test('loopback admin: everything open without a token (the default)', async () => {
  for (const path of ['/status', '/fleet', '/ui', '/metrics']) assert.equal((await get(loopback, path)).status, 200, path);
});

test('edgemesh fleet sends the admin token: --token-file, or env EDGEMESH_ADMIN_TOKEN; without it a clear exit 1', async () => {
  const admin = `127.0.0.1:${guarded.admin.address()!.port}`;
  const without = await run(['fleet', '--server-admin', admin, '--json']);
  assert.equal(without.code, 1);
  assert.match(without.stderr, /HTTP 401.*--token-file/);
  const withFile = await run(['fleet', '--server-admin', admin, '--json', '--token-file', join(dir, 'admin-token')]);
  assert.match(withFile.stdout, /"schema"/, withFile.stderr);
  const withEnv = await run(['fleet', '--server-admin', admin, '--json'], { EDGEMESH_ADMIN_TOKEN: ADMIN_TOKEN });
  assert.match(withEnv.stdout, /"schema"/, withEnv.stderr);
  const forbidden = await run(['fleet', '--server-admin', `127.0.0.1:${open.admin.address()!.port}`]);
  assert.equal(forbidden.code, 1);
  assert.match(forbidden.stderr, /HTTP 403.*no admin\.tokenFile/);
});

/** Label sets of a Prometheus text exposition that look like an address: an IPv4 address, or host:port. */
function addressLabels(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const labels = /\{(.*)\}/.exec(line)?.[1];
    if (labels && (/\b\d{1,3}(\.\d{1,3}){3}\b/.test(labels) || /="[^"]*[\w\]]:\d{1,5}"/.test(labels))) out.push(line);
  }
  return out;
}

test('/metrics of the server and of an agent hold no addresses in their labels', async () => {
  await until('agent connected to the server', async () => /edgemesh_tunnel_servers_connected 1/.test(await agent.registry.metrics()));
  const resolver = new Resolver();
  resolver.setServers([`127.0.0.1:${agent.dns!.address.port}`]);
  assert.deepEqual(await resolver.resolve4('www.example.test'), ['192.0.2.10']);
  const agentMetrics = await agent.registry.metrics();
  assert.match(agentMetrics, /edgemesh_dns_upstream_duration_seconds_count\{upstream="0",outcome="ok"\} 1/, 'the upstream by its position');
  const serverMetrics = (await get(guarded, '/metrics')).body;
  assert.match(serverMetrics, /edgemesh_server_enrollments_total\{method="bootstrap",outcome="issued"\} 1/, 'the enrollment metric is exported');
  assert.deepEqual(addressLabels(agentMetrics), []);
  assert.deepEqual(addressLabels(serverMetrics), []);
  // Headless endpoints behind mesh IPs are counted by hostname; one known only by its address is not named by it.
  assert.equal(endpointMetricLabel('web-0'), 'web-0');
  assert.equal(endpointMetricLabel('10-244-1-5'), ENDPOINT_NO_HOSTNAME);
  // The detector itself finds what it looks for.
  assert.equal(addressLabels('x{upstream="10.96.0.10:53"} 1\ny{a="b"} 2\nz{peer="[fd00::1]:20004"} 3').length, 2);
});
