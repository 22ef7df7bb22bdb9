// Cluster bench: the real agent binary with DNS + proxy + tunnel on (a local edgemesh-server, listeners without
// iptables rules), for both cluster sources (a manifests directory; the in-process fake API server of
// test/lib/fakeapi.ts). Per source:
//   - RSS idle (nothing in the cluster), then N Services x E endpoints added to that running agent (RSS after it
//     settled), then 1,000 more (RSS per extra 1,000 Services, in place);
//   - start -> ready (/readyz 200) of a fresh agent (empty stateDir) with N Services already there, and its RSS;
//   - the same with 1,000 Services: (RSS(N) - RSS(1,000)) / (N/1,000 - 1) = RSS per extra 1,000 Services, cold.
// Then, in-process: file change -> model latency, watch event -> model latency.
// The agent and server bins run the built JavaScript (dist/) when it exists, as in production; --source runs the
// TypeScript sources instead (EDGEMESH_SOURCE=1).
// usage: npx node bench/cluster/run.ts [--source] [services=5000] [endpointsPerService=3]
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { once } from 'node:events';
import { silentLogger } from '@edgemesh/common/log';
import { ClusterModel } from '../../packages/agent/src/cluster/model.ts';
import { FileSource, FILE_DEBOUNCE_MS } from '../../packages/agent/src/cluster/file.ts';
import { KubeSource, loadKubeConfig } from '../../packages/agent/src/cluster/kube.ts';
import { FakeApiServer, type Obj } from '../../test/lib/fakeapi.ts';
import { parse } from 'yaml';
import { generate, serviceDoc } from './gen-manifests.ts';

const args = process.argv.slice(2);
const SOURCE = args.includes('--source');
const [svcArg, epArg] = args.filter((a) => !a.startsWith('--'));
const SERVICES = Number(svcArg ?? 5000);
const ENDPOINTS = Number(epArg ?? 3);
const STEP = 1000;
const FILES = 50;
/** After a load, RSS is read once the process had this long to collect garbage and return memory. */
const SETTLE_MS = 3000;
const CHANGE_ROUNDS = 10;
const POLL_MS = 20;
const DEADLINE_MS = 120_000;
const ROOT = resolve(import.meta.dirname, '../..');
const AGENT_BIN = join(ROOT, 'packages/agent/bin/edgemesh-agent.js');
const SERVER_BIN = join(ROOT, 'packages/server/bin/edgemesh-server.js');
const TOKEN = 'bench-token-0123456789abcdef';
const BIN_ENV = { ...process.env, ...(SOURCE ? { EDGEMESH_SOURCE: '1' } : {}) };
delete (BIN_ENV as Record<string, string | undefined>).NODE_OPTIONS;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** RSS and its split (smaps_rollup): anonymous memory (heap, malloc, stacks) and file-backed pages (code). */
function rss(pid: number): { rss: number; anon: number; file: number } {
  const kb = (name: string, text: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN) / 1024;
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return { rss: kb('VmRSS', status), anon: kb('RssAnon', status), file: kb('RssFile', status) + kb('RssShmem', status) };
}
const fmt = (r: { rss: number; anon: number; file: number }) => `${r.rss.toFixed(1)} MiB (anon ${r.anon.toFixed(1)}, file ${r.file.toFixed(1)})`;

async function until<T>(what: string, fn: () => Promise<T | undefined>): Promise<T> {
  const end = Date.now() + DEADLINE_MS;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`bench: timed out waiting for ${what}`);
    await sleep(POLL_MS);
  }
}

async function metric(base: string, name: string): Promise<number | undefined> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

interface Proc { child: ChildProcess; out: () => string; stop(): Promise<void> }

function spawnBin(bin: string, argv: string[]): Proc {
  const child = spawn(process.execPath, [bin, ...argv], { stdio: ['ignore', 'pipe', 'pipe'], env: BIN_ENV });
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
      const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** A local edgemesh-server (relay + STUN on loopback, ephemeral ports) for the agents' tunnel. */
async function startServer(root: string): Promise<Proc & { address: string }> {
  const tokenFile = join(root, 'token');
  writeFileSync(tokenFile, TOKEN + '\n', { mode: 0o600 });
  const cfg = join(root, 'server.yaml');
  writeFileSync(cfg, `listen: "127.0.0.1:0"\nstunAltPort: 0\ntokenFile: ${tokenFile}\nadmin: {listen: "127.0.0.1:0"}\nlog: {level: warn}\n`);
  // log.level warn hides 'server listening'; ask for info on the command line and read the address from it.
  const p = spawnBin(SERVER_BIN, ['--config', cfg, '--log.level', 'info']);
  const address = await until('server address', async () => /"listen":"([^"]+)","stun"/.exec(p.out())?.[1]);
  return { ...p, address };
}

interface Agent extends Proc { base: string; readyMs: number }

/** Starts the agent (DNS + proxy + tunnel on); resolves at /readyz 200 with the time from spawn. */
async function startAgent(root: string, name: string, cluster: string, server: string): Promise<Agent> {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  const cfg = join(dir, 'agent.yaml');
  writeFileSync(cfg, `nodeName: edge-0
stateDir: ${join(dir, 'state')}
cluster: ${cluster}
dns: {listen: "127.0.0.1:0", upstream: ["127.0.0.1:9"]}
proxy: {intercept: none, bindAddress: 127.0.0.1}
tunnel: {servers: ["${server}"], listenPort: 0, tokenFile: ${join(root, 'token')}}
admin: {listen: "127.0.0.1:0"}
log: {level: info}
`);
  const t0 = performance.now();
  const p = spawnBin(AGENT_BIN, ['--config', cfg]);
  const admin = await until('agent admin address', async () => {
    if (p.child.exitCode !== null) throw new Error(`agent exited ${p.child.exitCode}: ${p.out()}`);
    return /"admin":"([^"]+)"/.exec(p.out())?.[1];
  });
  const base = `http://${admin}`;
  await until('agent /readyz 200', async () => ((await fetch(`${base}/readyz`)).status === 200 ? true : undefined));
  const readyMs = performance.now() - t0;
  await until('tunnel connected to the server', async () => ((await metric(base, 'edgemesh_tunnel_servers_connected')) === 1 ? true : undefined));
  return { ...p, base, readyMs };
}

async function waitServices(a: Agent, n: number): Promise<void> {
  await until(`${n} Services in the model`, async () => ((await metric(a.base, 'edgemesh_cluster_services')) === n ? true : undefined));
}

/** How a source is fed: what the agent config says, and how to make the cluster hold `n` Services. */
interface Feed { name: string; cluster: string; set(n: number): void; close(): Promise<void> }

function fileFeed(root: string, name: string): Feed {
  const dir = join(root, `${name}-manifests`);
  mkdirSync(dir, { recursive: true });
  return {
    name: 'file',
    cluster: `{source: file, manifestsDir: ${dir}}`,
    set: (n) => generate(dir, n, ENDPOINTS, FILES),
    async close() {},
  };
}

/** Objects the manifest generator writes, as the fake API server holds them. */
const objectsOf = (i: number): Obj[] => serviceDoc(i, ENDPOINTS).split('---\n').map((d) => parse(d) as Obj);

async function kubeFeed(): Promise<Feed> {
  const api = new FakeApiServer();
  const url = await api.start();
  for (let n = 0; n < 50; n++) api.upsert('/api/v1/nodes', { apiVersion: 'v1', kind: 'Node', metadata: { name: `edge-${n}`, labels: { 'apps.kubeedge.io/belonging-to': `site-${n % 5}` } } });
  let have = 0;
  return {
    name: 'kubernetes',
    cluster: `{source: kubernetes, kubeconfig: "${url}"}`,
    set(n) {
      for (; have < n; have++) {
        const [svc, slice] = objectsOf(have);
        api.upsert('/api/v1/services', svc);
        api.upsert('/apis/discovery.k8s.io/v1/endpointslices', slice);
      }
    },
    close: () => api.close(),
  };
}

interface Result { idle: number; inPlace: number; inPlaceMs: number; perStepInPlace: number; readyMs: number; cold: number; coldStep: number; perStepCold: number }

async function profile(root: string, server: string, feedFor: (name: string) => Promise<Feed>): Promise<Result> {
  // 1. Idle, then N Services added to the running agent, then STEP more.
  let feed = await feedFor('idle');
  let a = await startAgent(root, `${feed.name}-idle`, feed.cluster, server);
  let idle, inPlace, inPlaceMs, step;
  try {
    await sleep(SETTLE_MS);
    idle = rss(a.child.pid!);
    const t0 = performance.now();
    feed.set(SERVICES);
    await waitServices(a, SERVICES);
    inPlaceMs = performance.now() - t0;
    await sleep(SETTLE_MS);
    inPlace = rss(a.child.pid!);
    feed.set(SERVICES + STEP);
    await waitServices(a, SERVICES + STEP);
    await sleep(SETTLE_MS);
    step = rss(a.child.pid!);
  } finally {
    await a.stop();
    await feed.close();
  }
  console.log(`${feed.name}: idle ${fmt(idle)}; +${SERVICES} Services x ${ENDPOINTS} endpoints in place: ${fmt(inPlace)} (all in the model ${inPlaceMs.toFixed(0)} ms after the change); +${STEP} more: ${fmt(step)}`);

  // 2. Cold starts with N and with STEP Services already in the cluster.
  const cold: Record<number, { r: ReturnType<typeof rss>; readyMs: number }> = {};
  for (const n of [SERVICES, STEP]) {
    feed = await feedFor(`cold-${n}`);
    feed.set(n);
    a = await startAgent(root, `${feed.name}-cold-${n}`, feed.cluster, server);
    try {
      await waitServices(a, n);
      await sleep(SETTLE_MS);
      cold[n] = { r: rss(a.child.pid!), readyMs: a.readyMs };
    } finally {
      await a.stop();
      await feed.close();
    }
    console.log(`${feed.name}: fresh agent with ${n} Services: start -> /readyz ${cold[n].readyMs.toFixed(0)} ms; RSS ${fmt(cold[n].r)}`);
  }
  return {
    idle: idle.rss, inPlace: inPlace.rss, inPlaceMs, perStepInPlace: step.rss - inPlace.rss,
    readyMs: cold[SERVICES].readyMs, cold: cold[SERVICES].r.rss, coldStep: cold[STEP].r.rss,
    perStepCold: (cold[SERVICES].r.rss - cold[STEP].r.rss) / (SERVICES / STEP - 1),
  };
}

/** File change -> model snapshot, in-process with the default debounce (FILE_DEBOUNCE_MS). */
async function changeLatency(services: number): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'em-bench-chg-'));
  generate(dir, services, ENDPOINTS, FILES);
  const model = new ClusterModel([]);
  const src = new FileSource({ dir, log: silentLogger });
  const t0 = performance.now();
  await src.start(model);
  model.flush();
  const loadMs = performance.now() - t0;
  const samples: number[] = [];
  for (let r = 0; r < CHANGE_ROUNDS; r++) {
    const port = 1000 + r;
    // Rewrite file 0 with its first Service on a new port.
    const docs: string[] = [];
    for (let i = 0; i < services; i += FILES) docs.push(serviceDoc(i, ENDPOINTS, i === 0 ? port : 80));
    const seen = new Promise<number>((res) => {
      const off = model.subscribe((s) => {
        if (s.services.get('ns0/svc-0')?.ports[0].port === port) { off(); res(performance.now()); }
      });
    });
    const t0 = performance.now();
    writeFileSync(join(dir, '.svc-0.tmp'), docs.join('---\n'));
    renameSync(join(dir, '.svc-0.tmp'), join(dir, 'svc-0.yaml'));
    samples.push((await seen) - t0);
    await sleep(100);
  }
  await src.stop();
  rmSync(dir, { recursive: true, force: true });
  samples.sort((a, b) => a - b);
  const med = samples[Math.floor(samples.length / 2)];
  console.log(`initial read of ${services} Services x ${ENDPOINTS} endpoints (${FILES} files) in-process: ${loadMs.toFixed(0)} ms`);
  console.log(`file change -> model update with ${services} Services loaded (one file of ${Math.ceil(services / FILES)} rewritten): median ${med.toFixed(0)} ms, min ${samples[0].toFixed(0)}, max ${samples[samples.length - 1].toFixed(0)} (includes the ${FILE_DEBOUNCE_MS} ms debounce; ${CHANGE_ROUNDS} rounds)`);
}

/** API change -> model snapshot through the watch, in-process, with N Services already listed. */
async function kubeLatency(services: number): Promise<void> {
  const api = new FakeApiServer();
  const url = await api.start();
  for (let i = 0; i < services; i++) {
    const [svc, slice] = objectsOf(i);
    api.upsert('/api/v1/services', svc);
    api.upsert('/apis/discovery.k8s.io/v1/endpointslices', slice);
  }
  const model = new ClusterModel([]);
  const src = new KubeSource({ kubeConfig: loadKubeConfig(url), log: silentLogger, offlineLoaded: false });
  const t0 = performance.now();
  await src.start(model);
  while (!src.synced()) await sleep(5);
  const listMs = performance.now() - t0;
  while (api.watcherCount('/api/v1/services') === 0) await sleep(5);
  const samples: number[] = [];
  for (let r = 0; r < CHANGE_ROUNDS; r++) {
    const port = 2000 + r;
    const seen = new Promise<number>((res) => {
      const off = model.subscribe((s) => {
        if (s.services.get('ns0/svc-0')?.ports[0].port === port) { off(); res(performance.now()); }
      });
    });
    const t = performance.now();
    api.upsert('/api/v1/services', parse(serviceDoc(0, ENDPOINTS, port).split('---\n')[0]) as Obj);
    samples.push((await seen) - t);
    await sleep(50);
  }
  await src.stop();
  await api.close();
  samples.sort((a, b) => a - b);
  console.log(`kubernetes source: initial list of ${services} Services x ${ENDPOINTS} endpoints ${listMs.toFixed(0)} ms; watch event -> model update median ${samples[Math.floor(samples.length / 2)].toFixed(1)} ms (min ${samples[0].toFixed(1)}, max ${samples[samples.length - 1].toFixed(1)})`);
}

const built = existsSync(join(ROOT, 'packages/agent/dist')) && !SOURCE;
console.log(`node ${process.version}; agent and server run ${built ? 'the built JavaScript (dist/)' : 'the TypeScript sources'}; DNS + proxy (listeners, no iptables) + tunnel on; ${SERVICES} Services x ${ENDPOINTS} endpoints (${FILES} manifest files)`);
const root = mkdtempSync(join(tmpdir(), 'em-bench-'));
const server = await startServer(root);
const results: Record<string, Result> = {};
try {
  const serverIdle = rss(server.child.pid!);
  results.file = await profile(root, server.address, async (name) => fileFeed(root, name));
  results.kubernetes = await profile(root, server.address, () => kubeFeed());
  console.log(`server RSS: idle ${fmt(serverIdle)}; after the agents came and went ${fmt(rss(server.child.pid!))}`);
} finally {
  await server.stop();
  rmSync(root, { recursive: true, force: true });
}

const mib = (x: number) => `${x.toFixed(0)} MiB`;
console.log(`\n| | file | kubernetes | goal |\n|---|---:|---:|---|`);
const row = (label: string, f: (r: Result) => string, goal: string) => console.log(`| ${label} | ${f(results.file)} | ${f(results.kubernetes)} | ${goal} |`);
row('RSS idle', (r) => mib(r.idle), '≤ 70 MiB (file), ≤ 90 MiB (kubernetes)');
row(`RSS with ${SERVICES} Services × ${ENDPOINTS} endpoints (fresh start / added in place)`, (r) => `${mib(r.cold)} / ${mib(r.inPlace)}`, '≤ 130 MiB');
row(`start → ready with ${SERVICES} Services`, (r) => `${(r.readyMs / 1000).toFixed(2)} s`, '≤ 1.5 s');
row(`RSS per extra ${STEP} Services (fresh starts ${STEP}→${SERVICES} / +${STEP} in place)`, (r) => `${r.perStepCold.toFixed(1)} / ${r.perStepInPlace.toFixed(1)} MiB`, '≤ 8 MiB');

// FileSource's watcher and rescan timer do not hold the process open; the in-process latency runs need this.
const keepAlive = setInterval(() => {}, 1000);
await changeLatency(100);
await changeLatency(SERVICES);
await kubeLatency(SERVICES);
clearInterval(keepAlive);
