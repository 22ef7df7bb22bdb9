// `edgemesh status` against a stand-in admin API: tables, --json, and the error paths (exit codes per INTERFACE.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { execFile } from 'node:child_process';
import { join } from 'node:path';

const CLI = join(import.meta.dirname, '..', 'packages', 'agent', 'bin', 'edgemesh.js');
const STATUS = {
  node: 'edge-a', group: 'site-1',
  servers: [{ address: '203.0.113.10:20004', connected: true }],
  nat: { type: 'cone', mapped: '203.0.113.101:20006' },
  peers: [{ node: 'edge-b', path: 'direct', remote: '203.0.113.102:20006', rttMs: 0.8 }],
  services: [{ name: 'demo/hello', ip: '9.251.1.2', ports: [80], endpoints: 1, routing: 'prefer-group' }],
};

function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 15_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as NodeJS.ErrnoException & { code?: unknown }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

async function serve(body: string): Promise<{ server: Server; admin: string }> {
  const server = createServer((req, res) => {
    if (req.url === '/status') res.end(body);
    else { res.statusCode = 404; res.end(); }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const addr = server.address() as { port: number };
  return { server, admin: `127.0.0.1:${addr.port}` };
}

test('edgemesh status prints tables, --json prints the admin JSON', async () => {
  const { server, admin } = await serve(JSON.stringify(STATUS));
  try {
    const t = await run(['status', '--admin', admin]);
    assert.equal(t.code, 0, t.stderr);
    assert.match(t.stdout, /node edge-a {2}group site-1 {2}nat cone/);
    assert.match(t.stdout, /edge-b\s+direct\s+203\.0\.113\.102:20006\s+0\.8 ms/);
    assert.match(t.stdout, /demo\/hello\s+9\.251\.1\.2\s+80\s+1\s+prefer-group/);
    const j = await run(['status', `--admin=${admin}`, '--json']);
    assert.equal(j.code, 0, j.stderr);
    assert.deepEqual(JSON.parse(j.stdout), STATUS);
  } finally {
    server.close();
  }
});

test('edgemesh status: a reply that is not JSON, an unreachable agent, bad arguments', async () => {
  const { server, admin } = await serve('<html>not an agent</html>');
  try {
    const bad = await run(['status', '--admin', admin]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /did not answer \/status with JSON/);
    assert.doesNotMatch(bad.stderr, /at JSON\.parse/, 'no stack trace');
  } finally {
    server.close();
  }
  const gone = await run(['status', '--admin', admin]);
  assert.equal(gone.code, 1);
  assert.match(gone.stderr, /cannot reach the agent at 127\.0\.0\.1:\d+/);
  assert.equal((await run(['status', '--admin', 'nope'])).code, 2);
  assert.equal((await run(['status', '--bogus'])).code, 2);
  assert.equal((await run(['frobnicate'])).code, 2);
});
