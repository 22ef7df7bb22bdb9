// The SOCKS5 entry point on loopback with real clients: `curl --socks5-hostname` to Services by every name form and by
// Service IP, node access through a NodeDialer double that plays the far agent (its own nodeAccess rule, then its
// loopback) with curl and `nc -X 5` (what ssh's ProxyCommand runs), the refusals with their reply codes, RFC 1929
// logins, malformed and slow handshakes (the agent lives), and the real agent binary with socks5 on.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { connect, createServer, type Server } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { stringify } from 'yaml';
import { loadAgentConfig } from '@edgemesh/common/config';
import { silentLogger } from '@edgemesh/common/log';
import { Agent } from '../packages/agent/src/main.ts';
import { admitNodeAccess, dialLoopback, type NodeDialer } from '../packages/agent/src/nodeaccess/access.ts';
import { DialError } from '../packages/agent/src/proxy/dialer.ts';
import { node, service, slice } from './lib/proxyfixtures.ts';
import { poll, runAgent } from './lib/agentproc.ts';

const DEADLINE_MS = 15_000;
let dir: string;
let agent: Agent;
let socksPort: number;
let webPort: number;
let farHttpPort: number;
let farSshPort: number;
let closedPort: number;
const servers: (Server | HttpServer)[] = [];
/** What the NodeDialer double was asked (node:port). */
const dialed: string[] = [];

interface Run { code: number | null; stdout: string; stderr: string }
function run(cmd: string, args: string[], input?: string): Promise<Run> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { timeout: DEADLINE_MS, encoding: 'utf8' }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: unknown }).code as number) ?? 1 : 0, stdout, stderr });
    });
    if (input !== undefined) child.stdin!.end(input);
  });
}

async function listen<S extends Server | HttpServer>(s: S, host = '127.0.0.1'): Promise<number> {
  await new Promise<void>((r) => s.listen(0, host, () => r()));
  servers.push(s);
  return (s.address() as { port: number }).port;
}

/** The far agent (edge-b) as the tunnel runs it (tunnel/nodeaccess-serve.ts; end to end: test/e2e/nodeaccess.test.ts): its own nodeAccess rule decides, then it dials its loopback. */
function farAgent(allowedPorts: () => number[]): NodeDialer {
  return {
    async dialNode(nodeName, port, signal) {
      dialed.push(`${nodeName}:${port}`);
      if (nodeName !== 'edge-b') throw new DialError('no-route', `no link to ${nodeName}`);
      const d = admitNodeAccess({ allowedPorts: allowedPorts(), allowedGroups: [], allowedNodes: [] }, { node: 'edge-a', authenticated: true }, port, agent.snapshot().nodes);
      if (!d.ok) throw new DialError('forbidden', d.reason);
      return dialLoopback(port, signal);
    },
  };
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'em-socks5-'));
  webPort = await listen(createHttpServer((req, res) => res.end(`web says hi to ${req.headers.host}\n`)));
  farHttpPort = await listen(createHttpServer((_req, res) => res.end('edge-b node port\n')));
  farSshPort = await listen(createServer((s) => { s.on('error', () => {}); s.write('SSH-2.0-edgemesh-test\r\n'); s.pipe(s); }));
  closedPort = await listen(createServer());
  servers.pop()!.close();
  const manifests = join(dir, 'manifests');
  const { mkdirSync } = await import('node:fs');
  mkdirSync(manifests);
  const docs = [
    node('edge-a'), node('edge-b'),
    service({ name: 'web', namespace: 'demo', ip: '10.96.0.10', ports: [{ name: 'http', port: 80, targetPort: webPort }] }),
    slice('web', [{ name: 'http', port: webPort }], [{ ip: '127.0.0.1', node: 'edge-a' }], 'demo'),
    service({ name: 'empty', namespace: 'demo', ip: '10.96.0.11', ports: [{ port: 80 }] }),
  ];
  writeFileSync(join(manifests, 'all.yaml'), docs.map((d) => stringify(d)).join('---\n'));
  const cfg = loadAgentConfig({
    env: {},
    text: stringify({
      nodeName: 'edge-a', stateDir: join(dir, 'state'),
      cluster: { source: 'file', manifestsDir: manifests },
      dns: { enabled: false }, tunnel: { enabled: false },
      proxy: { intercept: 'none', bindAddress: '127.0.0.1' },
      socks5: { enabled: true, listen: '127.0.0.1:0', maxPerSource: 64 },
      nodeAccess: { allowedPorts: [farSshPort] },
      admin: { listen: '127.0.0.1:0' },
    }),
  });
  agent = new Agent(cfg, silentLogger);
  agent.nodeDialer = farAgent(() => [farHttpPort, farSshPort, closedPort]);
  await agent.start();
  socksPort = agent.socks5!.address()!.port;
  await poll('web listener', async () => agent.proxy?.listenerPort('demo/web', 80));
});

after(async () => {
  await agent?.stop();
  for (const s of servers) s.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const curl = (url: string, ...extra: string[]) => run('curl', ['-sS', '--max-time', '10', '--socks5-hostname', `127.0.0.1:${socksPort}`, ...extra, url]);

test('curl --socks5-hostname reaches a Service by every name form and by its Service IP', async () => {
  for (const host of ['web.demo.svc.cluster.local', 'web.demo.svc', 'web.demo', '10.96.0.10']) {
    const r = await curl(`http://${host}/`);
    assert.equal(r.code, 0, `${host}: ${r.stderr}`);
    assert.equal(r.stdout, `web says hi to ${host}\n`);
  }
  // curl --socks5 (the client resolves): an IP literal arrives as address type IPv4.
  const r = await run('curl', ['-sS', '--max-time', '10', '--socks5', `127.0.0.1:${socksPort}`, 'http://10.96.0.10/']);
  assert.equal(r.code, 0, r.stderr);
  const m = await agent.registry.getSingleMetricAsString('edgemesh_proxy_connections_total');
  assert.match(m, /service="demo\/web",protocol="tcp"[^}]*tier="node"} [5-9]/, 'counted as proxied connections of the Service');
});

test('node access: an allowed port of another node through the NodeDialer (curl and nc -X 5, as ssh ProxyCommand)', async () => {
  const r = await curl(`http://edge-b:${farHttpPort}/`);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, 'edge-b node port\n');
  const nc = await run('nc', ['-X', '5', '-x', `127.0.0.1:${socksPort}`, '-q', '1', 'edge-b', String(farSshPort)], 'ping\n');
  assert.equal(nc.code, 0, nc.stderr);
  assert.equal(nc.stdout, 'SSH-2.0-edgemesh-test\r\nping\n', 'banner, then the echo: a byte stream both ways');
  // This node itself: its own nodeAccess.allowedPorts apply.
  const self = await run('nc', ['-X', '5', '-x', `127.0.0.1:${socksPort}`, '-q', '1', 'edge-a', String(farSshPort)], '');
  assert.equal(self.stdout, 'SSH-2.0-edgemesh-test\r\n');
});

test('refusals carry the right reply code: disallowed port 0x02, unknown node 0x04, refused 0x05, no endpoint 0x04, no open proxy 0x02', async () => {
  const code = async (url: string) => {
    const r = await curl(url);
    assert.notEqual(r.code, 0, url);
    return /\((\d+)\)\s*$/.exec(r.stderr)?.[1] ?? r.stderr; // curl: (97) Can't complete SOCKS5 connection to X. (REP)
  };
  dialed.length = 0;
  assert.equal(await code(`http://edge-b:2222/`), '2', 'a port edge-b does not allow: refused by edge-b');
  assert.deepEqual(dialed, ['edge-b:2222'], 'the far side decided');
  assert.equal(await code(`http://edge-a:${farHttpPort}/`), '2', 'this node: not in its own allowedPorts');
  assert.equal(await code(`http://edge-c:22/`), '4', 'unknown node');
  assert.equal(await code(`http://edge-b:${closedPort}/`), '5', 'nothing listens there');
  assert.equal(await code(`http://empty.demo/`), '4', 'a Service without endpoints');
  assert.equal(await code(`http://web.demo:81/`), '5', 'not a port of the Service');
  assert.equal(await code(`http://www.example.com/`), '4', 'outside the cluster');
  assert.equal(await code(`http://192.0.2.1/`), '2', 'an IP that is no Service IP');
  assert.equal(await code(`http://127.0.0.1:${webPort}/`), '2', 'the agent\'s own loopback by IP');
  const m = await agent.registry.getSingleMetricAsString('edgemesh_socks5_requests_total');
  assert.match(m, /target="node",reply="not_allowed"} 2/);
  assert.match(m, /target="none",reply="host_unreachable"} 2/);
});

/** Opens a raw connection, sends `bytes`, returns what came back until the agent closed it (or 3 s). */
function raw(bytes: Buffer, wait = 3000): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const s = connect(socksPort, '127.0.0.1', () => s.write(bytes));
    const t = setTimeout(() => s.destroy(), wait);
    s.on('data', (c) => chunks.push(c));
    s.on('error', () => {});
    s.on('close', () => { clearTimeout(t); resolve(Buffer.concat(chunks)); });
  });
}

test('BIND and UDP ASSOCIATE get 0x07, an unknown address type 0x08, a bad version no reply', async () => {
  const hello = Buffer.from([5, 1, 0]);
  assert.deepEqual(await raw(Buffer.concat([hello, Buffer.from([5, 2, 0, 1, 127, 0, 0, 1, 0, 22])])), Buffer.from([5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]));
  assert.deepEqual(await raw(Buffer.concat([hello, Buffer.from([5, 3, 0, 1, 0, 0, 0, 0, 0, 0])])), Buffer.from([5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]));
  assert.deepEqual(await raw(Buffer.concat([hello, Buffer.from([5, 1, 0, 7, 1, 2, 3])])), Buffer.from([5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]));
  assert.deepEqual(await raw(Buffer.from([4, 1, 0, 80, 127, 0, 0, 1, 0])), Buffer.alloc(0), 'SOCKS4: closed without a reply');
  assert.deepEqual(await raw(Buffer.from([5, 1, 2])), Buffer.from([5, 0xff]), 'only user/pass offered without users: no acceptable method');
});

test('hostile handshakes: 300 random greetings, oversize and stalled handshakes; the agent serves throughout', async () => {
  let seed = 7;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x80000000);
  const jobs: Promise<Buffer>[] = [];
  for (let i = 0; i < 300; i++) {
    const len = 1 + Math.floor(rnd() * 80);
    const b = Buffer.alloc(len);
    for (let k = 0; k < len; k++) b[k] = Math.floor(rnd() * 256);
    if (i % 3 === 0) b[0] = 5;
    jobs.push(raw(b, 500));
    if (jobs.length >= 60) await Promise.all(jobs.splice(0));
  }
  await Promise.all(jobs);
  // 255 junk methods: no acceptable method, whatever follows.
  assert.deepEqual(await raw(Buffer.concat([Buffer.from([5, 255]), Buffer.alloc(255, 0x80), Buffer.alloc(2000, 1)])), Buffer.from([5, 0xff]));
  // 100 KiB right behind a request: more than the early data kept for the destination; general failure.
  const flood = await raw(Buffer.concat([Buffer.from([5, 1, 0, 5, 1, 0, 3, 8]), Buffer.from('web.demo'), Buffer.from([0, 80]), Buffer.alloc(100 * 1024, 0x41)]));
  assert.deepEqual(flood, Buffer.from([5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0]));
  const refusedBefore = agent.budgets.refused('socks5_deadline');
  // A stalled handshake (one byte, then nothing) is not left open past the deadline: see the budget counter.
  const stalled = connect(socksPort, '127.0.0.1', () => stalled.write(Buffer.from([5])));
  stalled.on('error', () => {});
  const [closedAfter] = await Promise.all([
    new Promise<number>((resolve) => { const t0 = Date.now(); stalled.on('close', () => resolve(Date.now() - t0)); }),
  ]);
  assert.ok(closedAfter > 0);
  assert.equal(agent.budgets.refused('socks5_deadline'), refusedBefore + 1);
  const r = await curl('http://web.demo/');
  assert.equal(r.code, 0, r.stderr);
  const h = await agent.registry.getSingleMetricAsString('edgemesh_socks5_handshakes_total');
  assert.match(h, /outcome="malformed"} \d+/);
  assert.match(h, /outcome="timeout"} [1-9]/);
  assert.match(h, /outcome="too_many_bytes"} [1-9]/);
});

test('the real agent binary: socks5 with username/password (RFC 1929), /status and /readyz; a bad users file exits 2', async () => {
  const root = mkdtempSync(join(tmpdir(), 'em-socks5-bin-'));
  try {
    const manifests = join(root, 'manifests');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(manifests);
    writeFileSync(join(manifests, 'web.yaml'), [
      node('edge-a'),
      service({ name: 'web', namespace: 'demo', ip: '10.96.0.10', ports: [{ port: 80, targetPort: webPort }] }),
      slice('web', [{ port: webPort }], [{ ip: '127.0.0.1', node: 'edge-a' }], 'demo'),
    ].map((d) => stringify(d)).join('---\n'));
    writeFileSync(join(root, 'users'), '# socks5 users\nalice:correct horse\n', { mode: 0o600 });
    const probe = createServer();
    const port = await new Promise<number>((r) => probe.listen(0, '127.0.0.1', () => r((probe.address() as { port: number }).port)));
    await new Promise<void>((r) => probe.close(() => r()));
    const cfgFile = join(root, 'agent.yaml');
    writeFileSync(cfgFile, stringify({
      nodeName: 'edge-a', stateDir: join(root, 'state'), cluster: { source: 'file', manifestsDir: manifests },
      dns: { enabled: false }, tunnel: { enabled: false }, proxy: { intercept: 'none' },
      socks5: { enabled: true, listen: `127.0.0.1:${port}`, usersFile: join(root, 'users') },
      admin: { listen: '127.0.0.1:0' },
    }));
    await runAgent(cfgFile, async (base) => {
      await poll('/readyz 200', async () => ((await fetch(`${base}/readyz`)).status === 200 ? true : undefined));
      const status = (await (await fetch(`${base}/status`)).json()) as { socks5: { listen: string; auth: boolean; nodeAccess: string } };
      assert.deepEqual({ ...status.socks5, connections: 0, relaying: 0 }, { listen: `127.0.0.1:${port}`, auth: true, connections: 0, relaying: 0, nodeAccess: 'this-node-only' });
      const ok = await poll('curl through socks5h with a login', async () => {
        const r = await run('curl', ['-sS', '--max-time', '10', '-x', `socks5h://alice:correct%20horse@127.0.0.1:${port}`, 'http://web.demo.svc.cluster.local/']);
        return r.code === 0 ? r.stdout : undefined;
      });
      assert.equal(ok, 'web says hi to web.demo.svc.cluster.local\n');
      const bad = await run('curl', ['-sS', '--max-time', '10', '-x', `socks5h://alice:wrong@127.0.0.1:${port}`, 'http://web.demo/']);
      assert.notEqual(bad.code, 0);
      const none = await run('curl', ['-sS', '--max-time', '10', '--socks5-hostname', `127.0.0.1:${port}`, 'http://web.demo/']);
      assert.notEqual(none.code, 0, 'no credentials, no entry');
      const metrics = await (await fetch(`${base}/metrics`)).text();
      assert.match(metrics, /edgemesh_socks5_handshakes_total\{outcome="auth_failed"\} 1/);
      assert.match(metrics, /edgemesh_socks5_handshakes_total\{outcome="no_acceptable_method"\} 1/);
    });
    writeFileSync(join(root, 'users'), 'no-colon-here\n');
    const child = spawn(process.execPath, [join(import.meta.dirname, '../packages/agent/bin/edgemesh-agent.js'), '--config', cfgFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => { err += d; });
    const [code] = await once(child, 'exit');
    assert.equal(code, 2);
    assert.match(err, /config: socks5\.usersFile: line 1: expected user:password/);
    assert.ok(!err.includes('no-colon-here'), 'the line itself is not shown');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
