// The production path: `npm run build` (scripts/build.ts, also npm ci's prepare and the image build), then the agent
// and server bins under NODE_ENV=production with type stripping disabled, so any TypeScript file they loaded would
// fail: the built agent (file source, DNS, proxy, tunnel to the built server) gets ready, sized V8 for its memory
// limit in the same process, and `edgemesh status` from the built CLI reads it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { poll, runAgent } from './lib/agentproc.ts';

const ROOT = resolve(import.meta.dirname, '..');
const TOKEN = 'dist-test-token-0123456789';

test('built agent and server (NODE_ENV=production, no TypeScript loader): /readyz 200, V8 sized, status via the built CLI', async (t) => {
  const build = spawnSync(process.execPath, [join(ROOT, 'scripts/build.ts')], { encoding: 'utf8' });
  assert.equal(build.status, 0, build.stderr);
  const root = mkdtempSync(join(tmpdir(), 'em-dist-'));
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_ENV: 'production', NODE_OPTIONS: '--no-experimental-strip-types', EDGEMESH_MEMORY_LIMIT: '256Mi' };
  delete env.EDGEMESH_SOURCE;
  writeFileSync(join(root, 'token'), TOKEN + '\n', { mode: 0o600 });
  writeFileSync(join(root, 'server.yaml'), `listen: "127.0.0.1:0"\nstunAltPort: 0\ntokenFile: ${join(root, 'token')}\nstateDir: ${join(root, 'server-state')}\nadmin: {listen: "127.0.0.1:0"}\n`);
  const server = spawn(process.execPath, [join(ROOT, 'packages/server/bin/edgemesh-server.js'), '--config', join(root, 'server.yaml')], { stdio: ['ignore', 'pipe', 'pipe'], env });
  t.after(() => { if (server.exitCode === null) server.kill('SIGKILL'); });
  let serverOut = '';
  server.stdout.on('data', (d) => { serverOut += d; });
  server.stderr.on('data', (d) => { serverOut += d; });
  const serverAddr = await poll('server address', async () => /"listen":"([^"]+)","stun"/.exec(serverOut)?.[1]);
  const manifests = join(root, 'manifests');
  mkdirSync(manifests);
  writeFileSync(join(manifests, 'web.json'), JSON.stringify({
    apiVersion: 'v1', kind: 'List', items: [
      { apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'demo' }, spec: { clusterIP: '10.96.0.10', ports: [{ name: 'http', port: 80, targetPort: 8080 }] } },
      { apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: 'web-1', namespace: 'demo', labels: { 'kubernetes.io/service-name': 'web' } }, addressType: 'IPv4', ports: [{ name: 'http', port: 8080 }], endpoints: [{ addresses: ['10.0.0.1'], nodeName: 'edge-b' }] },
    ],
  }));
  const cfg = join(root, 'agent.yaml');
  writeFileSync(cfg, `nodeName: edge-a
stateDir: ${join(root, 'state')}
cluster: {source: file, manifestsDir: ${manifests}}
dns: {listen: "127.0.0.1:0", upstream: ["127.0.0.1:9"]}
proxy: {intercept: none, bindAddress: 127.0.0.1}
tunnel: {servers: ["${serverAddr}"], listenPort: 0, tokenFile: ${join(root, 'token')}}
admin: {listen: "127.0.0.1:0"}
`);
  await runAgent(cfg, async (base, pid) => {
    await poll('/readyz 200', async () => ((await fetch(`${base}/readyz`)).status === 200 ? true : undefined));
    await poll('tunnel connected', async () => (/^edgemesh_tunnel_servers_connected 1$/m.test(await (await fetch(`${base}/metrics`)).text()) ? true : undefined));
    // Same PID (process.execve), now with V8 flags for 256 MiB and the malloc settings.
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    assert.ok(argv.includes('--max-semi-space-size=1') && argv.includes('--max-old-space-size=192'), argv.join(' '));
    assert.match(readFileSync(`/proc/${pid}/environ`, 'utf8'), /(^|\0)MALLOC_ARENA_MAX=2(\0|$)/);
    const cli = spawn(process.execPath, [join(ROOT, 'packages/agent/bin/edgemesh.js'), 'status', '--admin', base.replace('http://', '')], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let out = '';
    cli.stdout.on('data', (d) => { out += d; });
    cli.stderr.on('data', (d) => { out += d; });
    const [code] = await once(cli, 'exit');
    assert.equal(code, 0, out);
    assert.match(out, /demo\/web/);
  }, env);
  server.kill('SIGTERM');
  const [code] = await once(server, 'exit');
  assert.equal(code, 0, serverOut);
});

test('built server with cluster.source file: starts listening (the first sync holds the event loop open)', async (t) => {
  const build = spawnSync(process.execPath, [join(ROOT, 'scripts/build.ts')], { encoding: 'utf8' });
  assert.equal(build.status, 0, build.stderr);
  const root = mkdtempSync(join(tmpdir(), 'em-dist-'));
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_ENV: 'production', NODE_OPTIONS: '--no-experimental-strip-types' };
  delete env.EDGEMESH_SOURCE;
  const manifests = join(root, 'manifests');
  mkdirSync(manifests);
  writeFileSync(join(manifests, 'nodes.yaml'), 'apiVersion: v1\nkind: Node\nmetadata:\n  name: edge-a\n');
  writeFileSync(join(root, 'server.yaml'), `listen: "127.0.0.1:0"\nstunAltPort: 0\nstateDir: ${join(root, 'server-state')}\ncluster: {source: file, manifestsDir: ${manifests}}\nenrollment: {bootstrapToken: false}\nadmin: {listen: "127.0.0.1:0"}\n`);
  const server = spawn(process.execPath, [join(ROOT, 'packages/server/bin/edgemesh-server.js'), '--config', join(root, 'server.yaml')], { stdio: ['ignore', 'pipe', 'pipe'], env });
  t.after(() => { if (server.exitCode === null) server.kill('SIGKILL'); });
  let out = '';
  server.stdout.on('data', (d) => { out += d; });
  server.stderr.on('data', (d) => { out += d; });
  await poll('server listening', async () => {
    if (server.exitCode !== null) throw new Error(`server exited ${server.exitCode}: ${out}`);
    return out.includes('"msg":"server listening"') || undefined;
  });
  server.kill('SIGTERM');
  const [code] = await once(server, 'exit');
  assert.equal(code, 0, out);
});
