// Proxy benchmark: the agent's userspace proxy vs haproxy (TCP mode, one thread) on loopback, same backends.
//   - bulk:       iperf3 -c through each proxy to an iperf3 server (Gbit/s), client->server and (-R) server->client
//   - keep-alive: wrk (1 thread, 32 connections) HTTP requests/s through each proxy
//   - new conns:  the same with `Connection: close` (one TCP connection per request)
//   - latency:    wrk -c1 (one keep-alive connection, one request at a time: a ping-pong client) to the backend
//                 directly and through each proxy; the added latency is the median through a proxy minus the
//                 median direct
// Pinning (two cores or more, taskset present): both proxies on CPU 0, the backends and load generators on CPU 1, so
// the proxy under test always has a core of its own and the generators never compete with it.
// Backend for HTTP: a haproxy instance answering 200 itself (`http-request return`), so the backend is never the
// bottleneck. Plus: interception rule sync time and agent RSS with 5,000 service ports (iptables-restore inside a
// scratch network namespace — never in the root namespace).
// Flat group (proxy.directCIDRs), unless --no-flat: the same measures with the backends on a second host (a network
// namespace across a veth) as pods of another node dialed directly, through the agent and through haproxy.
// Run as root: node bench/proxy/run.ts [--seconds 5] [--ports 5000] [--only bulk-up,new-conns,...] [--no-sync] [--no-flat]
//   [--runner PATH]  another checkout's test/e2e/helpers/agent-runner.ts (before/after comparisons in one setup)
//   [--out FILE]  with --no-sync: where the rows go (default bench/results/proxy-nosync.json; not a README source)
//   [--agent-node-args '--cpu-prof --cpu-prof-dir=/tmp/prof']  extra node flags for the agent (profiling)
// Writes bench/results/proxy.json (README tables: node bench/readme.ts).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { availableParallelism, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execa } from 'execa';
import { stringify } from 'yaml';
import { node, service, slice } from '../../test/lib/proxyfixtures.ts';
import { resultsDir, writeResult } from '../results.ts';
import type { ProxyData, ProxyRow } from '../shapes.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const strArg = (name: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const arg = (name: string, def: number) => Number(strArg(name) ?? def);
const RUNNER = resolve(strArg('runner') ?? join(ROOT, 'test/e2e/helpers/agent-runner.ts'));
const AGENT_NODE_ARGS = (strArg('agent-node-args') ?? '').split(' ').filter(Boolean);
const SECONDS = arg('seconds', 5);
const SYNC_PORTS = arg('ports', 5000);
const ONLY = strArg('only')?.split(',');
const NO_SYNC = process.argv.includes('--no-sync');
const NO_FLAT = process.argv.includes('--no-flat');
const WRK_CONNS = 32;
/** The proxies' CPU, and the one of everything else (backends, iperf3, wrk). */
const PROXY_CPU = 0;
const LOAD_CPU = 1;

const dir = mkdtempSync(join(tmpdir(), 'embench-'));
const procs: ChildProcess[] = [];
const SCRATCH = `emb${process.pid % 1000}s`;

async function cleanup(): Promise<void> {
  for (const p of procs) p.kill('SIGKILL');
  await execa('ip', ['netns', 'del', SCRATCH], { reject: false });
  await execa('ip', ['netns', 'del', FLAT_NS], { reject: false }); // (its veth goes with it)
  rmSync(dir, { recursive: true, force: true });
}
process.on('SIGINT', () => void cleanup().then(() => process.exit(130)));

async function ensureTools(): Promise<void> {
  const missing: string[] = [];
  for (const [bin, pkg] of [['iperf3', 'iperf3'], ['haproxy', 'haproxy'], ['wrk', 'wrk']]) {
    if ((await execa('sh', ['-c', `command -v ${bin}`], { reject: false })).exitCode !== 0) missing.push(pkg);
  }
  if (!missing.length) return;
  console.log(`installing ${missing.join(' ')} ...`);
  await execa('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { env: { DEBIAN_FRONTEND: 'noninteractive' } });
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const p = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return p;
}

let pin = false;
const pinned = (cpu: number, cmd: string, args: string[]): [string, string[]] => (pin ? ['taskset', ['-c', String(cpu), cmd, ...args]] : [cmd, args]);

function start(cpu: number, cmd0: string, args0: string[], readyLine?: string): Promise<{ p: ChildProcess; line: string }> {
  const [cmd, args] = pinned(cpu, cmd0, args0);
  const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(p);
  if (!readyLine) return Promise.resolve({ p, line: '' });
  return new Promise((res, rej) => {
    let buf = '';
    const t = setTimeout(() => rej(new Error(`${cmd}: no ${readyLine} in 60 s: ${buf}`)), 60_000);
    p.stdout!.on('data', (d: Buffer) => {
      buf += d;
      const line = buf.split('\n').slice(0, -1).find((l) => l.startsWith(readyLine)); // complete lines only
      if (line) { clearTimeout(t); res({ p, line }); }
    });
    p.stderr!.on('data', (d: Buffer) => { buf += d; });
    p.once('exit', (c) => { clearTimeout(t); rej(new Error(`${cmd} exited ${c}: ${buf}`)); });
  });
}

async function waitPort(port: number): Promise<void> {
  const end = Date.now() + 10_000;
  while (Date.now() < end) {
    const ok = await new Promise<boolean>((r) => {
      const s = connect(port, '127.0.0.1', () => { s.destroy(); r(true); });
      s.once('error', () => r(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`port ${port} never opened`);
}

async function iperf(port: number, reverse = false): Promise<number> {
  // iperf3's server takes one test at a time and can be briefly busy after the previous one: retry a little.
  let last = '';
  for (let i = 0; i < 5; i++) {
    const r = await execa(...pinned(LOAD_CPU, 'iperf3', ['-c', '127.0.0.1', '-p', String(port), '-t', String(SECONDS), '-J', ...(reverse ? ['-R'] : [])]), { reject: false });
    const j = JSON.parse(r.stdout || '{}') as { error?: string; end?: { sum_received?: { bits_per_second: number } } };
    if (j.end?.sum_received) return j.end.sum_received.bits_per_second / 1e9;
    last = j.error ?? r.stderr;
    await new Promise((res) => setTimeout(res, 1000));
  }
  throw new Error(`iperf3 failed: ${last}`);
}

async function wrk(port: number, close: boolean): Promise<number> {
  const args = ['-t1', `-c${WRK_CONNS}`, `-d${SECONDS}s`, ...(close ? ['-H', 'Connection: close'] : []), `http://127.0.0.1:${port}/`];
  const r = await execa(...pinned(LOAD_CPU, 'wrk', args));
  const m = /Requests\/sec:\s+([\d.]+)/.exec(r.stdout);
  if (!m) throw new Error(`wrk output: ${r.stdout}`);
  const errs = /Non-2xx|Socket errors: (.*)/.exec(r.stdout);
  if (errs) console.log(`   wrk (${close ? 'close' : 'keep-alive'}) on ${port}: ${errs[0]}`);
  return Number(m[1]);
}

/** wrk's latency unit to microseconds. */
const US: Record<string, number> = { us: 1, ms: 1000, s: 1e6 };

/** Median and p99 request latency (µs) over one keep-alive connection, one request at a time. */
async function pingPong(port: number, host = '127.0.0.1'): Promise<{ p50: number; p99: number }> {
  const r = await execa(...pinned(LOAD_CPU, 'wrk', ['-t1', '-c1', `-d${SECONDS}s`, '--latency', `http://${host}:${port}/`]));
  const at = (p: string) => {
    const m = new RegExp(`^\\s*${p}%\\s+([\\d.]+)(us|ms|s)\\s*$`, 'm').exec(r.stdout);
    if (!m) throw new Error(`wrk latency output: ${r.stdout}`);
    return Number(m[1]) * US[m[2]];
  };
  return { p50: at('50'), p99: at('99') };
}

/** CPU seconds (user + system) a process has used so far, from /proc (clock ticks of 10 ms). */
function cpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100; // fields 14 and 15 (utime, stime), counted after the name
  } catch {
    return NaN;
  }
}

type CpuPerUnit = Record<string, { agent: number[]; haproxy: number[] }>;

/** Measures one row: agent, haproxy, agent, haproxy (alternating, so drift hits both), with each one's CPU per unit. */
function measurer(rows: ProxyRow[], cpuPerUnit: CpuPerUnit, agentPid: number | undefined, haPid: number | undefined) {
  return async (key: ProxyRow['key'], name: string, unit: string, fn: (port: number) => Promise<number>, a: number, h: number) => {
    if (ONLY && !ONLY.includes(key)) return;
    const cpu = (cpuPerUnit[key] = { agent: [] as number[], haproxy: [] as number[] });
    const run = async (port: number, pid: number | undefined, into: number[]) => {
      const c0 = cpuSeconds(pid);
      const v = await fn(port);
      into.push((cpuSeconds(pid) - c0) / (v * SECONDS) * (unit === 'req/s' ? 1e6 : 1e3));
      return v;
    };
    const ag = await run(a, agentPid, cpu.agent);
    const ha = await run(h, haPid, cpu.haproxy);
    const ag2 = await run(a, agentPid, cpu.agent);
    const ha2 = await run(h, haPid, cpu.haproxy);
    const agBest = Math.max(ag, ag2);
    const haBest = Math.max(ha, ha2);
    rows.push({ key, name, unit, agentRuns: [ag, ag2], haproxyRuns: [ha, ha2] });
    const cu = unit === 'req/s' ? 'µs/req' : 'ms/Gbit';
    const [ac, hc] = [Math.min(...cpu.agent), Math.min(...cpu.haproxy)];
    console.log(`${name.padEnd(26)} agent ${agBest.toFixed(2).padStart(10)} ${unit}   haproxy ${haBest.toFixed(2).padStart(10)} ${unit}   ratio ${(agBest / haBest).toFixed(2)}   CPU ${ac.toFixed(1)} vs ${hc.toFixed(1)} ${cu} (haproxy/agent ${(hc / ac).toFixed(2)})`);
  };
}

/** Keep-alive latency, two rounds of: the backend directly, through the agent, through haproxy. */
async function latencyRuns(direct: { port: number; host: string }, agentPort: number, haPort: number): Promise<ProxyData['latency']> {
  if (ONLY && !ONLY.includes('latency')) return undefined;
  const runs = { direct: [] as { p50: number; p99: number }[], agent: [] as { p50: number; p99: number }[], haproxy: [] as { p50: number; p99: number }[] };
  for (let i = 0; i < 2; i++) {
    runs.direct.push(await pingPong(direct.port, direct.host));
    runs.agent.push(await pingPong(agentPort));
    runs.haproxy.push(await pingPong(haPort));
  }
  const best = (xs: { p50: number }[]) => Math.min(...xs.map((x) => x.p50));
  const [d, a, h] = [best(runs.direct), best(runs.agent), best(runs.haproxy)];
  console.log(`${'added latency (wrk -c1 p50)'.padEnd(26)} agent ${(a - d).toFixed(1).padStart(10)} µs       haproxy ${(h - d).toFixed(1).padStart(10)} µs       ratio ${((a - d) / (h - d)).toFixed(2)}   (direct ${d.toFixed(1)} µs)`);
  return runs;
}

const haCfg = (lines: string[]) => ['global', '  nbthread 1', '  maxconn 4000', 'defaults', '  timeout connect 5s', '  timeout client 60s', '  timeout server 60s', ...lines].join('\n') + '\n';
const agentCfg = (intercept: string, bind: string, manifests: string, directCIDRs: string[] = []) => stringify({
  nodeName: 'bench', stateDir: join(dir, `state-${manifests.split('/').pop()}`), cluster: { source: 'file', manifestsDir: manifests },
  dns: { enabled: false }, tunnel: { enabled: false }, proxy: { intercept, bindAddress: bind, ...(directCIDRs.length ? { directCIDRs } : {}) },
  routing: { default: 'cluster' }, admin: { listen: '127.0.0.1:0' }, log: { level: 'warn' },
});

function writeManifests(name: string, objects: object[]): string {
  const d = join(dir, name);
  mkdirSync(d);
  writeFileSync(join(d, 'objects.yaml'), objects.map((o) => stringify(o)).join('---\n'));
  return d;
}

/** The second host of the flat phase: a namespace across a veth (198.19.255.0/30 of the benchmarking range). */
const FLAT_NS = `emb${process.pid % 1000}f`;
const FLAT_VETH = `embf${process.pid % 1000}`;
const FLAT_HERE = '198.19.255.1';
const FLAT_THERE = '198.19.255.2';
const FLAT_CIDR = '198.19.255.0/30';
const FLAT_IPERF_PORT = 5201;
const FLAT_HTTP_PORT = 8080;

/**
 * Flat group (proxy.directCIDRs): the backends run on a second host, as pods of node `far` whose IPs are routable
 * from here; the agent (with a tunnel stand-in, so the flat path is the one taken: agent-runner.ts) and haproxy both
 * forward to them across the veth. Same measures as on loopback; fails when any dial fell back to the tunnel.
 */
async function flatPhase(): Promise<NonNullable<ProxyData['flat']>> {
  const ns = (args: string[]) => execa('ip', ['netns', 'exec', FLAT_NS, ...args]);
  await execa('ip', ['netns', 'add', FLAT_NS]);
  await ns(['ip', 'link', 'set', 'dev', 'lo', 'up']);
  await execa('ip', ['link', 'add', FLAT_VETH, 'type', 'veth', 'peer', 'name', `${FLAT_VETH}b`, 'netns', FLAT_NS]);
  await execa('ip', ['addr', 'add', `${FLAT_HERE}/30`, 'dev', FLAT_VETH]);
  await execa('ip', ['link', 'set', 'dev', FLAT_VETH, 'up']);
  await ns(['ip', 'addr', 'add', `${FLAT_THERE}/30`, 'dev', `${FLAT_VETH}b`]);
  await ns(['ip', 'link', 'set', 'dev', `${FLAT_VETH}b`, 'up']);
  await start(LOAD_CPU, 'ip', ['netns', 'exec', FLAT_NS, 'iperf3', '-s', '-B', FLAT_THERE, '-p', String(FLAT_IPERF_PORT)]);
  writeFileSync(join(dir, 'flat-backend.cfg'), haCfg(['frontend be', '  mode http', `  bind ${FLAT_THERE}:${FLAT_HTTP_PORT}`, '  http-request return status 200 content-type text/plain string "hello from the backend\\n"']));
  await start(LOAD_CPU, 'ip', ['netns', 'exec', FLAT_NS, 'haproxy', '-f', join(dir, 'flat-backend.cfg'), '-db']);
  const [haBulk, haHttp] = await Promise.all([freePort(), freePort()]);
  writeFileSync(join(dir, 'flat-proxy.cfg'), haCfg([
    'listen bulk', '  mode tcp', `  bind 127.0.0.1:${haBulk}`, `  server s1 ${FLAT_THERE}:${FLAT_IPERF_PORT}`,
    'listen http', '  mode tcp', `  bind 127.0.0.1:${haHttp}`, `  server s1 ${FLAT_THERE}:${FLAT_HTTP_PORT}`,
  ]));
  const haProxy = await start(PROXY_CPU, 'haproxy', ['-f', join(dir, 'flat-proxy.cfg'), '-db']);
  const objects = [
    node('bench'), node('far'),
    service({ name: 'bulk', ip: '10.96.0.1', ports: [{ port: 5201, targetPort: FLAT_IPERF_PORT }] }),
    slice('bulk', [{ port: FLAT_IPERF_PORT }], [{ ip: FLAT_THERE, node: 'far' }]),
    service({ name: 'http', ip: '10.96.0.2', ports: [{ port: 80, targetPort: FLAT_HTTP_PORT }] }),
    slice('http', [{ port: FLAT_HTTP_PORT }], [{ ip: FLAT_THERE, node: 'far' }]),
  ];
  writeFileSync(join(dir, 'flat-agent.yaml'), agentCfg('none', '127.0.0.1', writeManifests('m-flat', objects), [FLAT_CIDR]));
  writeFileSync(join(dir, 'flat-objects.json'), JSON.stringify(objects));
  process.env.AGENT_RUNNER_TUNNEL_STANDIN = '1';
  const agent = await start(PROXY_CPU, process.execPath, [...AGENT_NODE_ARGS, RUNNER, join(dir, 'flat-agent.yaml'), join(dir, 'flat-objects.json')], 'READY');
  delete process.env.AGENT_RUNNER_TUNNEL_STANDIN;
  const ports = JSON.parse(agent.line.slice('READY '.length)).ports as Record<string, number>;
  const [agBulk, agHttp] = [ports['default/bulk:5201/TCP'], ports['default/http:80/TCP']];
  await Promise.all([haBulk, haHttp].map(waitPort));
  const rows: ProxyRow[] = [];
  const measure = measurer(rows, {}, agent.p.pid, haProxy.p.pid);
  console.log(`# flat group: backends on a second host (${FLAT_THERE}, a namespace across a veth), pods of another node inside proxy.directCIDRs`);
  await measure('bulk-up', 'flat: bulk upload', 'Gbit/s', (p) => iperf(p), agBulk, haBulk);
  await measure('bulk-down', 'flat: bulk download', 'Gbit/s', (p) => iperf(p, true), agBulk, haBulk);
  await measure('keep-alive', 'flat: keep-alive', 'req/s', (p) => wrk(p, false), agHttp, haHttp);
  await measure('new-conns', 'flat: new connections', 'req/s', (p) => wrk(p, true), agHttp, haHttp);
  const latency = await latencyRuns({ port: FLAT_HTTP_PORT, host: FLAT_THERE }, agHttp, haHttp);
  let stopped = '';
  agent.p.stdout!.on('data', (d: Buffer) => { stopped += d; });
  const exit = new Promise((r) => agent.p.once('exit', r));
  agent.p.kill('SIGTERM');
  await exit;
  haProxy.p.kill('SIGTERM');
  const m = /^STOPPED (.*)$/m.exec(stopped);
  if (!m) throw new Error('flat phase: the agent printed no STOPPED line');
  const tunnelDials = (JSON.parse(m[1]) as { tunnelDials: number }).tunnelDials;
  if (tunnelDials) throw new Error(`flat phase: ${tunnelDials} dials fell back to the tunnel (the direct dial failed)`);
  return { link: `veth between two network namespaces, ${FLAT_CIDR}`, rows, latency, tunnelDials };
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('run as root (network namespace for the sync measurement; apt-get)');
  await ensureTools();
  pin = availableParallelism() >= 2 && (await execa('sh', ['-c', 'command -v taskset'], { reject: false })).exitCode === 0;
  const [iperfPort, httpPort, haBulk, haHttp] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);

  // Backends.
  await start(LOAD_CPU, 'iperf3', ['-s', '-B', '127.0.0.1', '-p', String(iperfPort)]);
  writeFileSync(join(dir, 'backend.cfg'), haCfg(['frontend be', '  mode http', `  bind 127.0.0.1:${httpPort}`, '  http-request return status 200 content-type text/plain string "hello from the backend\\n"']));
  await start(LOAD_CPU, 'haproxy', ['-f', join(dir, 'backend.cfg'), '-db']);
  // haproxy as the proxy under comparison: L4 (mode tcp), one thread, like the agent's single event loop.
  writeFileSync(join(dir, 'proxy.cfg'), haCfg([
    'listen bulk', '  mode tcp', `  bind 127.0.0.1:${haBulk}`, `  server s1 127.0.0.1:${iperfPort}`,
    'listen http', '  mode tcp', `  bind 127.0.0.1:${haHttp}`, `  server s1 127.0.0.1:${httpPort}`,
  ]));
  const haProxy = await start(PROXY_CPU, 'haproxy', ['-f', join(dir, 'proxy.cfg'), '-db']);

  // The agent: real Agent, intercept none, listeners on 127.0.0.1, Services pointing at the same backends.
  const objects = [
    node('bench'),
    service({ name: 'bulk', ip: '10.96.0.1', ports: [{ port: 5201, targetPort: iperfPort }] }),
    slice('bulk', [{ port: iperfPort }], [{ ip: '127.0.0.1', node: 'bench' }]),
    service({ name: 'http', ip: '10.96.0.2', ports: [{ port: 80, targetPort: httpPort }] }),
    slice('http', [{ port: httpPort }], [{ ip: '127.0.0.1', node: 'bench' }]),
  ];
  // The runner feeds the model from a JSON file; the agent's file source reads the same objects as manifests.
  writeFileSync(join(dir, 'agent.yaml'), agentCfg('none', '127.0.0.1', writeManifests('m1', objects)));
  writeFileSync(join(dir, 'objects.json'), JSON.stringify(objects));
  const agent = await start(PROXY_CPU, process.execPath, [...AGENT_NODE_ARGS, RUNNER, join(dir, 'agent.yaml'), join(dir, 'objects.json')], 'READY');
  const ports = JSON.parse(agent.line.slice('READY '.length)).ports as Record<string, number>;
  const agBulk = ports['default/bulk:5201/TCP'];
  const agHttp = ports['default/http:80/TCP'];
  // (Not the iperf3 port itself: a probe connection confuses its one-test-at-a-time server.)
  await Promise.all([httpPort, haBulk, haHttp].map(waitPort));
  await new Promise((r) => setTimeout(r, 500));

  const rows: ProxyRow[] = [];
  // CPU time of each proxy per unit of work (µs per request, ms per Gbit), per run: a throughput ratio on a shared
  // machine depends on how much of its core each proxy got during its run; its CPU per unit of work much less so.
  const cpuPerUnit: CpuPerUnit = {};
  const measure = measurer(rows, cpuPerUnit, agent.p.pid, haProxy.p.pid);
  const haproxyVersion = (await execa('haproxy', ['-v'])).stdout.split('\n')[0].split(' ').slice(0, 3).join(' ');
  console.log(`# loopback, ${SECONDS} s per run, best of 2 alternating runs each; wrk -t1 -c${WRK_CONNS}; haproxy ${haproxyVersion} nbthread 1, mode tcp; ${pin ? `proxies on CPU ${PROXY_CPU}, the rest on CPU ${LOAD_CPU}` : 'not pinned'}`);
  await measure('bulk-up', 'bulk upload (iperf3)', 'Gbit/s', (p) => iperf(p), agBulk, haBulk);
  await measure('bulk-down', 'bulk download (iperf3 -R)', 'Gbit/s', (p) => iperf(p, true), agBulk, haBulk);
  await measure('keep-alive', 'keep-alive (wrk)', 'req/s', (p) => wrk(p, false), agHttp, haHttp);
  await measure('new-conns', 'new connections (wrk close)', 'req/s', (p) => wrk(p, true), agHttp, haHttp);
  // Added latency: direct, agent, haproxy, twice in turn; each side's smaller median (the less disturbed run).
  const latency = await latencyRuns({ port: httpPort, host: '127.0.0.1' }, agHttp, haHttp);
  const agentExit = new Promise((r) => agent.p.once('exit', r));
  agent.p.kill('SIGTERM');
  await agentExit; // (a --cpu-prof profile is written on exit)
  const flat = NO_FLAT ? undefined : await flatPhase();
  if (NO_SYNC) {
    for (const r of rows) console.log(`| ${r.name} | ${Math.max(...r.agentRuns).toFixed(2)} ${r.unit} | ${Math.max(...r.haproxyRuns).toFixed(2)} ${r.unit} | ${(Math.max(...r.agentRuns) / Math.max(...r.haproxyRuns)).toFixed(2)} |`);
    const out = resolve(strArg('out') ?? join(resultsDir(), 'proxy-nosync.json'));
    mkdirSync(resolve(out, '..'), { recursive: true });
    writeFileSync(out, JSON.stringify({ date: new Date().toISOString(), runner: RUNNER, rows, latency, cpuPerUnit, flat }, null, 2) + '\n');
    return;
  }

  // Rule sync and RSS with many service ports: the real agent with iptables interception in a scratch namespace.
  await execa('ip', ['netns', 'add', SCRATCH]);
  await execa('ip', ['netns', 'exec', SCRATCH, 'ip', 'link', 'set', 'dev', 'lo', 'up']);
  await execa('ip', ['netns', 'exec', SCRATCH, 'ip', 'addr', 'add', '169.254.96.16/32', 'dev', 'lo']);
  const many = [node('bench')];
  for (let i = 0; i < SYNC_PORTS; i++) {
    const name = `s${i}`;
    many.push(service({ name, ip: `100.64.${i >> 8}.${i & 255}`, ports: [{ port: 80, targetPort: 8080 }] }));
    many.push(slice(name, [{ port: 8080 }], [{ ip: `198.18.${i >> 8}.${i & 255}`, node: 'bench' }]));
  }
  writeFileSync(join(dir, 'many.json'), JSON.stringify(many));
  writeFileSync(join(dir, 'agent-ipt.yaml'), agentCfg('iptables', '169.254.96.16', writeManifests('m2', many)));
  const t0 = performance.now();
  const big = await start(PROXY_CPU, 'ip', ['netns', 'exec', SCRATCH, process.execPath, RUNNER, join(dir, 'agent-ipt.yaml'), join(dir, 'many.json')], 'READY');
  const startMs = performance.now() - t0;
  const info = JSON.parse(big.line.slice('READY '.length)) as { ports: Record<string, number>; syncMsAvg: number; syncs: number; rssBytes: number };
  const rules = (await execa('ip', ['netns', 'exec', SCRATCH, 'iptables-save', '-t', 'nat'])).stdout.split('\n').filter((l) => l.startsWith('-A EDGEMESH-SERVICES')).length;
  // A second, full re-sync of all rules (as the 30 s re-assert does), timed from outside: iptables-restore of the
  // same batch the agent renders.
  const rendered = (await execa('ip', ['netns', 'exec', SCRATCH, 'iptables-save', '-t', 'nat'])).stdout;
  const batch = ['*nat', ':EDGEMESH-SERVICES - [0:0]', ...rendered.split('\n').filter((l) => l.startsWith('-A EDGEMESH-SERVICES')), 'COMMIT', ''].join('\n');
  const t1 = performance.now();
  await execa('ip', ['netns', 'exec', SCRATCH, 'iptables-restore', '-w', '5', '--noflush'], { input: batch });
  const resyncMs = performance.now() - t1;
  const exit = new Promise((r) => big.p.once('exit', r));
  big.p.kill('SIGTERM');
  await exit;
  const left = (await execa('ip', ['netns', 'exec', SCRATCH, 'iptables-save', '-t', 'nat'])).stdout.includes('EDGEMESH');
  console.log(`rule sync, ${SYNC_PORTS} service ports: agent sync ${info.syncMsAvg.toFixed(0)} ms (avg of ${info.syncs}), plain iptables-restore of the batch ${resyncMs.toFixed(0)} ms; ${rules} rules applied; ${Object.keys(info.ports).length} listeners; agent start to ready ${startMs.toFixed(0)} ms; rules left after SIGTERM: ${left ? 'YES' : 'none'}`);
  console.log(`agent RSS with ${SYNC_PORTS} service ports: ${(info.rssBytes / 2 ** 20).toFixed(1)} MiB`);
  console.log('\n| measure | agent | haproxy | agent/haproxy |\n|---|---|---|---|');
  for (const r of rows) {
    const a = Math.max(...r.agentRuns);
    const h = Math.max(...r.haproxyRuns);
    console.log(`| ${r.name} | ${a.toFixed(2)} ${r.unit} | ${h.toFixed(2)} ${r.unit} | ${(a / h).toFixed(2)} |`);
  }
  writeResult<ProxyData>('proxy', {
    seconds: SECONDS, wrkConns: WRK_CONNS, haproxy: haproxyVersion, rows, latency, flat,
    sync: {
      ports: SYNC_PORTS, agentSyncMsAvg: info.syncMsAvg, syncs: info.syncs, restoreMs: resyncMs, rules, listeners: Object.keys(info.ports).length,
      startMs, rulesLeftAfterStop: left, rssMiB: info.rssBytes / 2 ** 20,
    },
  });
}

try {
  await main();
} finally {
  await cleanup();
}
