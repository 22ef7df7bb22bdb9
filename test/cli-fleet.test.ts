// `edgemesh fleet` against a stand-in server admin answering a computed fleet view: exit 0 when healthy and 1 when
// not (tables and --json alike), the big-fleet matrix form, and the error paths (exit codes per INTERFACE.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { fleetView, type FleetEntry } from '../packages/common/src/fleet/view.ts';
import type { FleetReport } from '../packages/common/src/fleet/report.ts';

const CLI = join(import.meta.dirname, '..', 'packages', 'agent', 'bin', 'edgemesh.js');
const NOW = Date.now();

function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 15_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as NodeJS.ErrnoException & { code?: unknown }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

async function serve(body: string, status = 200): Promise<{ server: Server; admin: string }> {
  const server = createServer((req, res) => {
    if (req.url === '/fleet') {
      res.statusCode = status;
      res.end(body);
    } else {
      res.statusCode = 404;
      res.end();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, admin: `127.0.0.1:${(server.address() as { port: number }).port}` };
}

function report(group: string, peers: FleetReport['peers'] = []): FleetReport {
  return { v: 1, version: '0.1.0', group, nat: { type: 'cone', mapped: null }, ready: true, notReady: [], peers, strictEmpty: [], omitted: { peers: 0, strictEmpty: 0 } };
}
const entry = (node: string, r: FleetReport): FleetEntry => ({ node, report: r, state: 'up', receivedAt: NOW, downSince: null });
const withServer = (v: object) => JSON.stringify({ ...v, generatedAt: new Date(NOW).toISOString(), server: { listen: '0.0.0.0:20004', agentsConnected: 2 } });

test('edgemesh fleet: a healthy fleet is exit 0 with tables; --json is the server JSON', async () => {
  const view = fleetView([
    entry('a', report('g1', [{ node: 'b', group: 'g2', path: 'direct', rttMs: 3.25, bytesIn: 2048, bytesOut: 0 }])),
    entry('b', report('g2', [{ node: 'a', group: 'g1', path: 'direct', rttMs: 3.75, bytesIn: 0, bytesOut: 2048 }])),
  ], NOW);
  const body = withServer(view);
  const { server, admin } = await serve(body);
  try {
    const t = await run(['fleet', '--server-admin', admin]);
    assert.equal(t.code, 0, t.stderr);
    assert.match(t.stdout, /^fleet: 2 nodes \(2 ready\) in 2 groups; links 1 direct, 0 relay, 0 mixed, 0 connecting; relay share 0%; healthy$/m);
    assert.match(t.stdout, /^g1\s+-\s+direct 3\.5 ms$/m);
    assert.match(t.stdout, /^a\s+b\s+g1\/g2\s+direct\s+3\.5 ms\s+2\.0 KiB$/m);
    assert.match(t.stdout, /WARNINGS\n\(none\)/);
    const j = await run(['fleet', '--server-admin', admin, '--json']);
    assert.equal(j.code, 0);
    assert.deepEqual(JSON.parse(j.stdout), JSON.parse(body));
  } finally {
    server.close();
  }
});

test('edgemesh fleet: more than ten groups are listed one group pair a line', async () => {
  const entries = Array.from({ length: 12 }, (_, i) => entry(`n${i}`, report(`g${String(i).padStart(2, '0')}`, [{ node: `n${(i + 1) % 12}`, group: `g${String((i + 1) % 12).padStart(2, '0')}`, path: i % 2 ? 'relay' : 'direct', rttMs: 1, bytesIn: 1, bytesOut: 1 }])));
  const { server, admin } = await serve(withServer(fleetView(entries, NOW)));
  try {
    const t = await run(['fleet', '--server-admin', admin]);
    assert.equal(t.code, 0, t.stderr);
    assert.match(t.stdout, /^GROUP A\s+GROUP B\s+PATH\s+LINKS\s+DIRECT\s+RELAY\s+MIXED\s+MEDIAN RTT$/m);
    assert.match(t.stdout, /^g00\s+g01\s+direct\s+1\s+1\s+0\s+0\s+1\.0 ms$/m);
    assert.match(t.stdout, /^g00\s+g11\s+relay\s+1\s+0\s+1\s+0\s+1\.0 ms$/m);
  } finally {
    server.close();
  }
});

test('edgemesh fleet: not a fleet view, an HTTP error, an unreachable server are exit 1; bad arguments exit 2', async () => {
  const html = await serve('<html>hello</html>');
  const other = await serve(JSON.stringify({ schema: 99 }));
  const failing = await serve('boom', 500);
  try {
    const bad = await run(['fleet', '--server-admin', html.admin]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /did not answer \/fleet with a fleet view \(schema 1\)/);
    assert.doesNotMatch(bad.stderr, /at JSON\.parse/);
    assert.equal((await run(['fleet', '--server-admin', other.admin, '--json'])).code, 1);
    const err = await run(['fleet', '--server-admin', failing.admin]);
    assert.equal(err.code, 1);
    assert.match(err.stderr, /HTTP 500: boom/);
  } finally {
    html.server.close();
    other.server.close();
    failing.server.close();
  }
  const gone = await run(['fleet', '--server-admin', html.admin]);
  assert.equal(gone.code, 1);
  assert.match(gone.stderr, /cannot reach the edgemesh-server admin API at 127\.0\.0\.1:\d+: ECONNREFUSED/);
  for (const args of [['fleet', '--server-admin', 'nope'], ['fleet', '--bogus'], ['fleet', '--server-admin']]) {
    const r = await run(args);
    assert.equal(r.code, 2, args.join(' '));
    assert.match(r.stderr, /edgemesh fleet: /);
  }
  const help = await run(['--help']);
  assert.match(help.stdout, /edgemesh fleet \[--server-admin HOST:PORT\] \[--json\]/);
});
