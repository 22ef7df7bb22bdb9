// bench/server: how many agents one edgemesh-server replica holds. N simulated agents (bench/server/agents.ts: real
// TLS 1.3, real bootstrap enrollment, PONG to every PING) against one real server process on loopback:
//   - registration rate: N agents signing in (a bounded number at once per client process), agents/s;
//   - RSS per agent: the server's RSS with all N signed in minus its RSS before, / N (after a settle time);
//   - heartbeat CPU: the server's CPU time over a window in which the agents only answer its PINGs (every 10 s).
// Then the same N connections against the reference (tls-ref.ts: a bare node:tls server with the same certificate,
// pinging alike): what Node and OpenSSL alone cost per idle TLS connection and heartbeat, for the ratios.
// Goal (issue 17): >= 20,000 agents per replica at <= 16 KiB RSS each, heartbeat CPU <= 10 % of a core.
// Loopback needs several source addresses (127.0.0.2...: every source has its own ephemeral ports and its own
// unauthenticated-connection budget) and a raised descriptor limit for the server (prlimit; run as root).
//   npx node bench/server/run.ts [--agents 20000] [--window 30] [--settle 10] [--procs N] [--sources 8] [--port 21004]
// Writes bench/results/server.json (BENCH_RESULTS_DIR for trial runs).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { writeResult } from '../results.ts';
import type { ServerBenchData } from '../shapes.ts';

const SERVER_BIN = resolve(import.meta.dirname, '../../packages/server/bin/edgemesh-server.js');
const AGENTS = resolve(import.meta.dirname, 'agents.ts');
/** Default TCP port of the server (the reference uses the next one); --port for another. */
const DEFAULT_PORT = 21004;
/** Agents per client process (a process's own TLS work and memory stay moderate). */
const AGENTS_PER_PROC = 5_000;
/** Sign-ins in flight per client process: below the server's 128 unauthenticated connections per source. */
const CONCURRENCY = 64;
/** The server's descriptor limit: every agent is one socket, plus headroom (the hard limit caps it: without
 *  CAP_SYS_RESOURCE, as in some containers, the run is capped at what fits under it and says so). */
const NOFILE = 100_000;
/** Descriptors the server holds besides agents (listeners, admin, stateDir, the event loop), with headroom. */
const FD_RESERVE = 200;
/** The server pings every agent every 10 s (relay.ts PING_INTERVAL_MS): a window holds several rounds. */
const PING_INTERVAL_S = 10;
/** The server runs with V8 sized as under this container memory limit (entry.js), as the chart's server would need
 *  for 20,000 agents (charts/edgemesh values server.resources). */
const MEMORY_LIMIT = '1Gi';

const { values: a } = parseArgs({ options: {
  agents: { type: 'string', default: '20000' },
  window: { type: 'string', default: '30' },
  settle: { type: 'string', default: '10' },
  procs: { type: 'string' },
  sources: { type: 'string', default: '8' },
  port: { type: 'string', default: String(DEFAULT_PORT) },
} });
const PORT = Number(a.port);
const HARD_NOFILE = Number(spawnSync('bash', ['-c', 'ulimit -Hn'], { encoding: 'utf8' }).stdout.trim()) || NOFILE;
const FD_LIMIT = Math.min(NOFILE, HARD_NOFILE);
const REQUESTED = Number(a.agents);
const N = Math.min(REQUESTED, FD_LIMIT - FD_RESERVE);
if (N < REQUESTED) console.log(`descriptor hard limit ${HARD_NOFILE} (not raisable here): ${N} agents instead of ${REQUESTED}`);
const WINDOW_S = Number(a.window);
const SETTLE_S = Number(a.settle);
const PROCS = Number(a.procs ?? Math.max(1, Math.ceil(N / AGENTS_PER_PROC)));
const SOURCES = Array.from({ length: Number(a.sources) }, (_, i) => `127.0.0.${i + 2}`);
if (!(N > 0) || !(WINDOW_S >= PING_INTERVAL_S) || !(PROCS > 0)) throw new Error('usage: --agents N>0 --window S>=10 --procs P>0');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
const rssKiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
/** utime + stime of the process, seconds. */
const cpuS = (pid: number) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
};

/** The stateDir on tmpfs when there is one: the first enrollment's pin write is synchronous with fdatasync (~3 ms on
 *  this machine's disk), which would make phase 1 a disk bench; phase 2 (what is measured) only reads pins. */
const STATE_ON_TMPFS = existsSync('/dev/shm');
const dir = mkdtempSync(join(STATE_ON_TMPFS ? '/dev/shm' : tmpdir(), 'em-bench-server-'));
const token = randomBytes(24).toString('hex');
const tokenFile = join(dir, 'token');
writeFileSync(tokenFile, token + '\n', { mode: 0o600 });
const cfgFile = join(dir, 'server.yaml');
// Its own stateDir; bootstrap enrollment (the simplest real sign-in: one ENROLL, a certificate issued and pinned).
writeFileSync(cfgFile, [
  `listen: 127.0.0.1:${PORT}`, 'stunAltPort: 0', `stateDir: ${join(dir, 'state')}`, `tokenFile: ${tokenFile}`,
  'enrollment:', '  bootstrapToken: true', 'admin:', '  listen: 127.0.0.1:0', 'log:', '  level: warn',
  'shutdownUnreadySeconds: 0', 'shutdownDrainSeconds: 0',
].join('\n') + '\n');

const children: ChildProcess[] = [];
let server: ChildProcess | undefined;
const cleanup = () => {
  for (const c of children) c.kill('SIGKILL');
  server?.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
};
process.on('exit', cleanup);

async function startServer(): Promise<ChildProcess> {
  const env = { ...process.env, EDGEMESH_MEMORY_LIMIT: MEMORY_LIMIT };
  const p = spawn('prlimit', [`--nofile=${FD_LIMIT}:${FD_LIMIT}`, '--', process.execPath, SERVER_BIN, '--config', cfgFile], { stdio: ['ignore', 'pipe', 'pipe'], env });
  let log = '';
  p.stdout!.on('data', (c: Buffer) => { log = (log + c.toString()).slice(-20_000); });
  p.stderr!.on('data', (c: Buffer) => { log = (log + c.toString()).slice(-20_000); });
  const end = Date.now() + 30_000;
  // Listening once the port accepts (log level warn prints nothing on a good start).
  while (spawnSync('bash', ['-c', `exec 3<>/dev/tcp/127.0.0.1/${PORT}`]).status !== 0) {
    if (Date.now() > end || p.exitCode !== null) throw new Error(`server did not start: ${log}`);
    await sleep(100);
  }
  return p;
}

type Phase = { registered: number; failed: number; ms: number };
function startClients(tlsOnly = false, port = PORT): { enrolled: Promise<Phase[]>; signIn: () => Promise<Phase[]>; alive: () => Promise<number> } {
  const results: Promise<Phase>[] = [];
  const lines: ((l: Record<string, number>) => void)[][] = [];
  for (let k = 0; k < PROCS; k++) {
    const first = Math.floor((k * N) / PROCS);
    const count = Math.floor(((k + 1) * N) / PROCS) - first;
    const env = { ...process.env, EM_SIM: JSON.stringify({ host: '127.0.0.1', port, token, count, first, sources: SOURCES, concurrency: CONCURRENCY, tlsOnly }) };
    const c = spawn(process.execPath, [AGENTS], { env, stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(c);
    const waiting: ((l: Record<string, number>) => void)[] = [];
    lines.push(waiting);
    createInterface({ input: c.stdout! }).on('line', (l) => waiting.shift()?.(JSON.parse(l) as Record<string, number>));
    results.push(new Promise((r) => waiting.push(r as never)));
  }
  const ask = <R>(cmd: string, pick: (l: Record<string, number>) => R) => Promise.all(children.map((c, i) => new Promise<R>((r) => {
    lines[i].push((l) => r(pick(l)));
    c.stdin!.write(cmd + '\n');
  })));
  return {
    enrolled: Promise.all(results),
    signIn: () => ask('go', (l) => l as unknown as Phase),
    alive: async () => {
      const counts = await Promise.all(children.map((c, i) => new Promise<number>((r) => {
        lines[i].push((l) => r(l.alive));
        c.stdin!.write('alive\n');
      })));
      return counts.reduce((x, y) => x + y, 0);
    },
  };
}

/** The reference: the same connections and heartbeats against a bare node:tls server (tls-ref.ts). */
async function measureReference(): Promise<ServerBenchData['reference']> {
  const refPort = PORT + 1;
  const state = join(dir, 'state');
  const p = spawn('prlimit', [`--nofile=${FD_LIMIT}:${FD_LIMIT}`, '--', process.execPath, resolve(import.meta.dirname, 'tls-ref.ts'), String(refPort), join(state, 'ca.key'), join(state, 'ca.crt')], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(p);
  await new Promise<void>((r) => p.stdout!.once('data', () => r()));
  await sleep(2_000);
  const r0 = rssKiB(p.pid!);
  const t0 = performance.now();
  const cl = startClients(true, refPort);
  const res = await cl.enrolled;
  const connectMs = performance.now() - t0;
  const connected = res.reduce((n, x) => n + x.registered, 0);
  await sleep(SETTLE_S * 1000);
  const r1 = rssKiB(p.pid!);
  const c0 = cpuS(p.pid!);
  const w0 = performance.now();
  await sleep(WINDOW_S * 1000);
  const cpu = cpuS(p.pid!) - c0;
  const wall = (performance.now() - w0) / 1000;
  const out = { connected, connectMs: Math.round(connectMs), rssIdleKiB: r0, rssLoadedKiB: r1, kibPerConn: Math.round(((r1 - r0) / connected) * 10) / 10, heartbeatCpuPct: Math.round((1000 * cpu) / wall) / 10 };
  console.log(`reference (bare node:tls): ${connected} connections, +${((r1 - r0) / 1024).toFixed(1)} MiB = ${out.kibPerConn} KiB each; heartbeat ${out.heartbeatCpuPct} % of a core`);
  for (const c of children.splice(0)) c.kill('SIGKILL');
  return out;
}

server = await startServer();
const pid = server.pid!;
console.log(`server pid ${pid}; ${N} agents from ${PROCS} processes, ${SOURCES.length} source addresses; stateDir ${STATE_ON_TMPFS ? 'on tmpfs' : 'on disk'}`);
const e0 = performance.now();
const clients = startClients();
const enr = await clients.enrolled;
const enrollMs = performance.now() - e0;
const enrolled = enr.reduce((n, r) => n + r.registered, 0);
console.log(`enrolled ${enrolled} (${enr.reduce((n, r) => n + r.failed, 0)} failed) in ${(enrollMs / 1000).toFixed(1)} s = ${Math.round(enrolled / (enrollMs / 1000))} agents/s (bootstrap: certificate issued and pinned)`);
// Wait until the enrollment connections are gone and the heap settled: the baseline is a server with no agent on it.
await sleep(SETTLE_S * 1000);
const rss0 = rssKiB(pid);
console.log(`RSS ${(rss0 / 1024).toFixed(1)} MiB with no agent connected`);
const cpuReg0 = cpuS(pid);
const t0 = performance.now();
const reg = await clients.signIn();
const regMs = performance.now() - t0;
const cpuRegS = cpuS(pid) - cpuReg0;
const registered = reg.reduce((n, r) => n + r.registered, 0);
const failed = reg.reduce((n, r) => n + r.failed, 0);
console.log(`signed in ${registered} (${failed} failed, ENROLL renew) in ${(regMs / 1000).toFixed(1)} s = ${Math.round(registered / (regMs / 1000))} agents/s; server CPU ${cpuRegS.toFixed(1)} s`);
await sleep(SETTLE_S * 1000);
const rss1 = rssKiB(pid);
console.log(`RSS ${(rss1 / 1024).toFixed(1)} MiB with ${registered} agents: +${((rss1 - rss0) / 1024).toFixed(1)} MiB = ${((rss1 - rss0) / registered).toFixed(1)} KiB per agent`);
const c0 = cpuS(pid);
const w0 = performance.now();
await sleep(WINDOW_S * 1000);
const hbCpuS = cpuS(pid) - c0;
const hbWallS = (performance.now() - w0) / 1000;
const rss2 = rssKiB(pid);
const alive = await clients.alive();
console.log(`heartbeat: server CPU ${hbCpuS.toFixed(2)} s over ${hbWallS.toFixed(1)} s = ${((100 * hbCpuS) / hbWallS).toFixed(1)} % of a core; ${alive} agents still connected; RSS ${(rss2 / 1024).toFixed(1)} MiB`);

for (const c of children.splice(0)) c.kill('SIGKILL');
const ref = await measureReference();

const data: ServerBenchData = {
  agents: N, agentsRequested: REQUESTED, fdLimit: FD_LIMIT, stateOnTmpfs: STATE_ON_TMPFS, memoryLimit: MEMORY_LIMIT,
  enrolled, enrollMs: Math.round(enrollMs), registered, failed, procs: PROCS, sources: SOURCES.length,
  registerMs: Math.round(regMs), registerPerSec: Math.round(registered / (regMs / 1000)), registerCpuS: Math.round(cpuRegS * 10) / 10,
  rssIdleKiB: rss0, rssLoadedKiB: rss1, rssAfterWindowKiB: rss2, kibPerAgent: Math.round(((rss1 - rss0) / registered) * 10) / 10, settleS: SETTLE_S,
  reference: ref,
  heartbeatWindowS: Math.round(hbWallS * 10) / 10, heartbeatCpuS: Math.round(hbCpuS * 100) / 100, heartbeatCpuPct: Math.round((1000 * hbCpuS) / hbWallS) / 10, aliveAfterWindow: alive,
};
writeResult<ServerBenchData>('server', data);
process.exit(0);
