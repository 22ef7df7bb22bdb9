// The agent and server binaries as the cluster benches run them: production mode (NODE_ENV=production: the built
// JavaScript in dist/ when it exists), V8 sized for the chart's memory limits (EDGEMESH_MEMORY_LIMIT, read from
// charts/edgemesh/values.yaml), DNS + proxy (listeners, no iptables) + tunnel on against a local edgemesh-server.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { once } from 'node:events';
import { parse } from 'yaml';

export const ROOT = resolve(import.meta.dirname, '../..');
export const AGENT_BIN = join(ROOT, 'packages/agent/bin/edgemesh-agent.js');
export const SERVER_BIN = join(ROOT, 'packages/server/bin/edgemesh-server.js');
export const TOKEN = 'bench-token-0123456789abcdef';
const POLL_MS = 20;
const DEADLINE_MS = 120_000;
const STOP_GRACE_MS = 15_000;

/** Set in the bench process re-run inside its scratch network namespace (inScratchNetns). */
const NETNS_ENV = 'EDGEMESH_BENCH_NETNS';

/**
 * Runs this bench script again inside a scratch network namespace of its own (loopback only) and exits with its
 * status; returns at once inside it, or with `--host-netns` (then the agents share the host's loopback). Why: each
 * agent binds one listener per service port on port 0, and bind(0) walks the ephemeral port range past every port
 * held by other processes' sockets: with ~60,000 TIME_WAIT sockets on the shared machine's loopback (another
 * bench's `Connection: close` runs) 5,000 binds took 3.2 s instead of 0.17 s in a clean namespace, which made
 * start -> ready a measure of the neighbours. Needs root and iproute2 (as the proxy bench).
 */
export async function inScratchNetns(argv: string[]): Promise<void> {
  if (process.env[NETNS_ENV] || argv.includes('--host-netns')) return;
  const ns = `em-bench-${process.pid}`;
  const ip = (...a: string[]) => {
    const r = spawnSync('ip', a, { stdio: ['ignore', 'inherit', 'inherit'] });
    if (r.status !== 0) throw new Error(`bench: ip ${a.join(' ')} failed (root and iproute2 needed; --host-netns runs without)`);
  };
  ip('netns', 'add', ns);
  let status = 1;
  try {
    ip('netns', 'exec', ns, 'ip', 'link', 'set', 'dev', 'lo', 'up');
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, ...process.execArgv, ...process.argv.slice(1)], { stdio: 'inherit', env: { ...process.env, [NETNS_ENV]: ns } });
    // Ctrl-C or a SIGTERM stops the run inside, and the namespace is still removed below.
    const forward = (sig: NodeJS.Signals) => child.kill(sig);
    process.on('SIGINT', forward);
    process.on('SIGTERM', forward);
    const [code] = (await once(child, 'exit')) as [number | null];
    status = code ?? 1;
  } finally {
    spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
  }
  process.exit(status);
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** resources.limits.memory of the chart's agent and server (what the bins size V8 for in production). */
export function chartLimits(): { agent: string; server: string } {
  const v = parse(readFileSync(join(ROOT, 'charts/edgemesh/values.yaml'), 'utf8')) as { agent: { resources: { limits: { memory: string } } }; server: { resources: { limits: { memory: string } } } };
  return { agent: v.agent.resources.limits.memory, server: v.server.resources.limits.memory };
}

export interface BinMode { source: boolean; extraEnv?: Record<string, string> }

export function binEnv(mode: BinMode, memoryLimit: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_ENV: 'production', EDGEMESH_MEMORY_LIMIT: memoryLimit, ...mode.extraEnv };
  if (mode.source) env.EDGEMESH_SOURCE = '1';
  if (!mode.extraEnv?.NODE_OPTIONS) delete env.NODE_OPTIONS;
  return env;
}

export function built(): boolean {
  return existsSync(join(ROOT, 'packages/agent/dist/edgemesh-agent.cjs')) && existsSync(join(ROOT, 'packages/server/dist/edgemesh-server.cjs'));
}

/** RSS and its split (/proc/PID/status): anonymous memory (heap, malloc, stacks) and file-backed pages (code). */
export function rss(pid: number): { rss: number; anon: number; file: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) / 1024;
  return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') + kb('RssShmem') };
}
/** The node flags a process runs with (/proc/PID/cmdline before its script): after the bins' V8 sizing re-exec. */
export function nodeFlags(pid: number): string[] {
  const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(1);
  const out: string[] = [];
  for (const a of argv) {
    if (!a.startsWith('-')) break;
    out.push(a);
  }
  return out;
}
/** settledRss: RSS sampled this often once the minimum wait is over. */
const SETTLE_SAMPLE_MS = 500;
/** Settled: the samples of the last SETTLE_WINDOW_MS span less than SETTLE_SPREAD_MIB... */
const SETTLE_WINDOW_MS = 3000;
const SETTLE_SPREAD_MIB = 1;
/** ...or this long after the minimum wait, whatever it does (then the last sample). */
const SETTLE_MAX_MS = 12_000;

/**
 * RSS once it settled: after `minMs`, sampled every SETTLE_SAMPLE_MS until the last SETTLE_WINDOW_MS of samples span
 * less than SETTLE_SPREAD_MIB (at most SETTLE_MAX_MS more). After a load V8 collects and returns memory at its own
 * pace, and on a loaded machine a single reading after a fixed wait landed before or after a major GC: one run read
 * +26 MiB for 1,000 Services added in place, another +8.8 for the same.
 */
export async function settledRss(pid: number, minMs: number): Promise<ReturnType<typeof rss>> {
  await sleep(minMs);
  const samples: { at: number; r: ReturnType<typeof rss> }[] = [];
  const end = performance.now() + SETTLE_MAX_MS;
  for (;;) {
    const now = performance.now();
    samples.push({ at: now, r: rss(pid) });
    while (samples.length && samples[0].at < now - SETTLE_WINDOW_MS) samples.shift();
    const v = samples.map((x) => x.r.rss);
    const full = now - samples[0].at >= SETTLE_WINDOW_MS - SETTLE_SAMPLE_MS;
    if ((full && Math.max(...v) - Math.min(...v) < SETTLE_SPREAD_MIB) || now > end) return samples[samples.length - 1].r;
    await sleep(SETTLE_SAMPLE_MS);
  }
}

export const fmt = (r: { rss: number; anon: number; file: number }) => `${r.rss.toFixed(1)} MiB (anon ${r.anon.toFixed(1)}, file ${r.file.toFixed(1)})`;

export async function until<T>(what: string, fn: () => Promise<T | undefined>): Promise<T> {
  const end = Date.now() + DEADLINE_MS;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`bench: timed out waiting for ${what}`);
    await sleep(POLL_MS);
  }
}

export async function metricsText(base: string): Promise<string> {
  return (await fetch(`${base}/metrics`)).text();
}
export async function metric(base: string, name: string): Promise<number | undefined> {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(await metricsText(base));
  return m ? Number(m[1]) : undefined;
}

export interface Proc { child: ChildProcess; out: () => string; stop(): Promise<void> }

export function spawnBin(bin: string, argv: string[], env: NodeJS.ProcessEnv): Proc {
  const child = spawn(process.execPath, [bin, ...argv], { stdio: ['ignore', 'pipe', 'pipe'], env });
  let out = '';
  child.stdout!.on('data', (d) => { out += d; if (out.length > 1 << 20) out = out.slice(-(1 << 19)); });
  child.stderr!.on('data', (d) => { process.stderr.write(d); });
  return {
    child,
    out: () => out,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
      await exited;
      clearTimeout(t);
    },
  };
}

/** A local edgemesh-server (relay + STUN on loopback, ephemeral ports) for the agents' tunnel. */
export async function startServer(root: string, mode: BinMode): Promise<Proc & { address: string }> {
  const tokenFile = join(root, 'token');
  writeFileSync(tokenFile, TOKEN + '\n', { mode: 0o600 });
  const cfg = join(root, 'server.yaml');
  writeFileSync(cfg, `listen: "127.0.0.1:0"\nstunAltPort: 0\ntokenFile: ${tokenFile}\nstateDir: ${join(root, 'server-state')}\nadmin: {listen: "127.0.0.1:0"}\nlog: {level: info}\n`);
  const p = spawnBin(SERVER_BIN, ['--config', cfg], binEnv(mode, chartLimits().server));
  const address = await until('server address', async () => {
    if (p.child.exitCode !== null) throw new Error(`server exited ${p.child.exitCode}: ${p.out()}`);
    return /"listen":"([^"]+)","stun"/.exec(p.out())?.[1];
  });
  return { ...p, address };
}

export interface AgentProc extends Proc { base: string; readyMs: number; readyCpuMs: number }

/** CPU time (user + system) a process used so far, in ms: start -> ready without the shared machine's noise. */
export function cpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / CLOCK_TICKS;
}
/** USER_HZ: 100 on every Linux this runs on. */
const CLOCK_TICKS = 100;

export interface AgentOptions {
  dns?: boolean;
  tunnel?: boolean;
}

/**
 * Node names of the agents a bench starts against one server, one per agent (edge-0, edge-1, ...: nodes of the kube
 * feed's cluster, 50 of them): a fresh stateDir means a fresh node key, and the server pins a node name to the first
 * key that enrolled it (a second agent as edge-0 with another key is refused: `name-pinned`).
 */
let agentsStarted = 0;
const BENCH_NODES = 50;

/** Starts the agent (DNS + proxy + tunnel on unless told); resolves at /readyz 200 with the time from spawn. */
export async function startAgent(root: string, name: string, cluster: string, server: string, mode: BinMode, o: AgentOptions = {}): Promise<AgentProc> {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  const cfg = join(dir, 'agent.yaml');
  const tunnel = o.tunnel ?? true;
  writeFileSync(cfg, `nodeName: edge-${agentsStarted++ % BENCH_NODES}
stateDir: ${join(dir, 'state')}
cluster: ${cluster}
dns: {enabled: ${o.dns ?? true}, listen: "127.0.0.1:0", upstream: ["127.0.0.1:9"]}
proxy: {intercept: none, bindAddress: 127.0.0.1}
tunnel: {enabled: ${tunnel}, servers: ["${server}"], listenPort: 0, tokenFile: ${join(root, 'token')}}
admin: {listen: "127.0.0.1:0"}
log: {level: info}
`);
  const t0 = performance.now();
  const p = spawnBin(AGENT_BIN, ['--config', cfg], binEnv(mode, chartLimits().agent));
  try {
    const admin = await until('agent admin address', async () => {
      if (p.child.exitCode !== null) throw new Error(`agent exited ${p.child.exitCode}: ${p.out()}`);
      return /"admin":"([^"]+)"/.exec(p.out())?.[1];
    });
    const base = `http://${admin}`;
    await until('agent /readyz 200', async () => ((await fetch(`${base}/readyz`)).status === 200 ? true : undefined));
    const readyMs = performance.now() - t0;
    const readyCpuMs = cpuMs(p.child.pid!);
    if (tunnel) await until('tunnel connected to the server', async () => ((await metric(base, 'edgemesh_tunnel_servers_connected')) === 1 ? true : undefined));
    return { ...p, base, readyMs, readyCpuMs };
  } catch (e) {
    await p.stop();
    throw e;
  }
}

export async function waitServices(a: AgentProc, n: number): Promise<void> {
  await until(`${n} Services in the model`, async () => ((await metric(a.base, 'edgemesh_cluster_services')) === n ? true : undefined));
}
