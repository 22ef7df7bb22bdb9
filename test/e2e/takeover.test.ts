// Hitless takeover under load (network namespaces, the real agent binary): a client namespace runs a bounded load
// through the agent — a new TCP connection per request, keep-alive requests, UDP request/response (one flow and a
// new source port per request), DNS over UDP and TCP, and TCP through the agent's SOCKS5 listener (a new SOCKS5
// connection per request, and keep-alive ones) — while a successor with the same stateDir takes over three times in a
// row. Zero failed requests and zero failed DNS queries; every old agent exits 0; after the last agent's
// SIGTERM no rule, address or socket file is left.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { join } from 'node:path';
import { node, service, slice } from '../lib/proxyfixtures.ts';
import { stringify } from 'yaml';
import { AGENT_BIN, AGENT_IP, BACKEND_IP, CLIENT_IP, HELPERS, NODE_IP, ROOT, agentConfig, buildNodeLab, collect, type NodeLab } from '../lib/nodelab.ts';

const isRoot = process.getuid?.() === 0;
const SVC_IP = '100.64.0.10';
const TAKEOVERS = 3;
/** Load before the first takeover and after the last (so each phase has traffic through a settled agent). */
const SETTLE_MS = 1500;
const START_DEADLINE_MS = 20_000;
const EXIT_DEADLINE_MS = 40_000;
const SOCKS = `${NODE_IP}:10800`;

let lab: NodeLab | undefined;
let cfg = '';
let stateDir = '';

before(async () => {
  if (!isRoot) return;
  lab = await buildNodeLab('t');
  const ports = [{ name: 'tcp', port: 80, targetPort: 8080 }, { name: 'udp', port: 9000, protocol: 'UDP' as const }];
  const manifests = lab.writeManifests([
    node('n-a'),
    service({ name: 'web', ip: SVC_IP, ports }),
    slice('web', [{ name: 'tcp', port: 8080 }, { name: 'udp', port: 9000, protocol: 'UDP' }], [{ ip: BACKEND_IP, node: 'n-a' }]),
  ]);
  stateDir = join(lab.dir, 'state');
  // An edgemesh-server in the client namespace: a successor is ready only once connected to it, and the old agent
  // must leave the server session to it (one session per node) instead of taking it back.
  const tokenFile = join(lab.dir, 'token');
  writeFileSync(tokenFile, 'takeover-test-token-0123456789\n', { mode: 0o600 });
  const serverCfg = join(lab.dir, 'server.yaml');
  writeFileSync(serverCfg, stringify({ listen: '0.0.0.0:20004', stunAltPort: 20005, tokenFile, stateDir: join(lab.dir, 'server-state'), admin: { listen: '127.0.0.1:10561' }, log: { level: 'warn' } }));
  const server = lab.spawnIn(lab.client, join(ROOT, 'packages/server/bin/edgemesh-server.js'), ['--config', serverCfg]);
  void collect(server);
  cfg = agentConfig(lab, manifests, stateDir, {
    shutdownDrainSeconds: 20,
    tunnel: { enabled: true, servers: [`${CLIENT_IP}:20004`], listenPort: 20006, tokenFile },
    socks5: { enabled: true, listen: SOCKS },
  });
  const backend = lab.spawnIn(lab.node, join(HELPERS, 'line-backend.ts'), [BACKEND_IP, '8080', '9000']);
  await collect(backend).waitFor(/^up$/m, START_DEADLINE_MS);
});

after(async () => { await lab?.cleanup(); });

function startAgent(): { proc: ChildProcess; out: ReturnType<typeof collect> } {
  const proc = lab!.spawnIn(lab!.node, AGENT_BIN, ['--config', cfg]);
  return { proc, out: collect(proc) };
}

async function natSave(): Promise<string> {
  return (await lab!.inNode(['iptables-save', '-t', 'nat'])).stdout;
}

test('three takeovers in a row under load: no failed request or DNS query, old agents exit 0, nothing left behind', { skip: !isRoot && 'needs root', timeout: 240_000 }, async () => {
  const l = lab!;
  let cur = startAgent();
  await cur.out.waitFor(/"msg":"agent started"/, START_DEADLINE_MS);
  // Ready: the first request must already be intercepted (readiness tells the truth, see readiness.test.ts).
  await l.inClient(['curl', '-sf', '--retry', '50', '--retry-delay', '0', '--retry-all-errors', '--max-time', '1', `http://198.18.40.1:10560/readyz`]);
  const rulesBefore = (await natSave()).split('\n').filter((x) => x.startsWith('-A EDGEMESH-SERVICES')).sort();
  assert.equal(rulesBefore.length, 2, 'one rule per service port');

  const load = l.spawnIn(l.client, join(HELPERS, 'load-client.ts'), [JSON.stringify({ ip: SVC_IP, tcpPort: 80, udpPort: 9000, dns: `${AGENT_IP}:53`, name: 'web.default.svc.cluster.local', answer: SVC_IP, socks: SOCKS })]);
  const loadOut = collect(load);
  await loadOut.waitFor(/^started$/m, START_DEADLINE_MS);
  await new Promise((r) => setTimeout(r, SETTLE_MS));

  const handovers: { tookOverMs: number; drainMs: number }[] = [];
  /** Wall-clock windows from a successor's start to its predecessor's exit. */
  const windows: [number, number][] = [];
  for (let i = 0; i < TAKEOVERS; i++) {
    const old = cur;
    const t0 = performance.now();
    const w0 = Date.now();
    const oldExit = once(old.proc, 'exit');
    cur = startAgent();
    await cur.out.waitFor(/"msg":"took over from the running agent"/, START_DEADLINE_MS);
    const tookOverMs = performance.now() - t0;
    const [code] = await Promise.race([oldExit, new Promise<never>((_, rej) => setTimeout(() => rej(new Error(`old agent still running:\n${old.out.text().slice(-3000)}`)), EXIT_DEADLINE_MS))]);
    assert.equal(code, 0, `old agent exit code; output:\n${old.out.text().slice(-3000)}`);
    assert.match(old.out.text(), /"msg":"drain done"/);
    handovers.push({ tookOverMs: Math.round(tookOverMs), drainMs: Math.round(performance.now() - t0 - tookOverMs) });
    windows.push([w0, Date.now()]);
    const rules = (await natSave()).split('\n').filter((x) => x.startsWith('-A EDGEMESH-SERVICES')).sort();
    assert.deepEqual(rules, rulesBefore, 'the same rules (same listener ports) after each takeover');
  }
  await new Promise((r) => setTimeout(r, SETTLE_MS));
  load.stdin!.write('stop\n');
  const line = await loadOut.waitFor(/^\{.*\}$/m, 30_000);
  const res = JSON.parse(line) as { seconds: number; counts: Record<string, number>; failureCount: number; failures: unknown[]; longest: { kind: string; ms: number }[]; maxMsByWall100: Record<string, number> };
  const total = Object.values(res.counts).reduce((a, b) => a + b, 0);
  let duringMs = 0;
  let outsideMs = 0;
  for (const [b, ms] of Object.entries(res.maxMsByWall100)) {
    const t = Number(b) * 100;
    if (windows.some(([a, z]) => t + 100 >= a && t <= z)) duringMs = Math.max(duringMs, ms);
    else outsideMs = Math.max(outsideMs, ms);
  }
  // The figures for the record (issue 12): requests, failures, longest request during and outside the takeovers.
  const { maxMsByWall100: _, ...figures } = res;
  console.log(`takeover under load: ${JSON.stringify({ total, longestDuringTakeoverMs: duringMs, longestOtherwiseMs: outsideMs, ...figures, handovers })}`);
  for (const k of ['tcp-new', 'tcp-keep', 'udp-flow', 'udp-new', 'dns-udp', 'dns-tcp', 'socks-new', 'socks-keep']) assert.ok((res.counts[k] ?? 0) > 10, `${k} ran`);
  assert.equal(res.failureCount, 0, `failures: ${JSON.stringify(res.failures)}`);

  // The last agent stops for good: everything goes.
  const lastExit = once(cur.proc, 'exit');
  cur.proc.kill('SIGTERM');
  const [code] = await lastExit;
  assert.equal(code, 0, cur.out.text().slice(-3000));
  const nat = await natSave();
  assert.doesNotMatch(nat, /EDGEMESH/, 'no chain, rule or jump left');
  const addrs = (await l.inNode(['ip', '-o', 'addr', 'show'])).stdout;
  assert.doesNotMatch(addrs, new RegExp(AGENT_IP.replaceAll('.', '\\.')), 'the agent address is gone');
  assert.equal(existsSync(join(stateDir, 'agent.sock')), false, 'no handoff socket left');
  assert.equal(existsSync(join(stateDir, 'listener-ports.json')), true, 'the listener port table stays for the next start');
  // Each agent signed in to the server once: no agent took the node's session back from its successor.
  const m = (await l.inClient(['curl', '-sf', 'http://127.0.0.1:10561/metrics'])).stdout;
  assert.match(m, /edgemesh_server_auth_total\{outcome="ok"\} 4\n/, m.split('\n').filter((x) => x.includes('auth')).join('\n'));
});
