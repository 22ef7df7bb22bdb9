// Cluster bench: the real agent binary with DNS + proxy + tunnel on (a local edgemesh-server, listeners without
// iptables rules), for both cluster sources (a manifests directory; the in-process fake API server of
// test/lib/fakeapi.ts). Per source:
//   - RSS idle (nothing in the cluster), then N Services x E endpoints added to that running agent (RSS after it
//     settled), then 1,000 more (RSS per extra 1,000 Services, in place);
//   - start -> ready (/readyz 200) of a fresh agent (empty stateDir) with N Services already there, and its RSS;
//   - the same with 1,000 Services: (RSS(N) - RSS(1,000)) / (N/1,000 - 1) = RSS per extra 1,000 Services, cold.
// Then, in-process: file change -> model latency, watch event -> model latency.
// The bins run as in production (bench/cluster/procs.ts): NODE_ENV=production, so the built JavaScript (dist/, `npm run
// build`) when it exists, and V8 sized for the chart's memory limits; --source runs the TypeScript sources instead.
// Writes bench/results/cluster.json (README tables: node bench/readme.ts); bench/cluster/memory.ts is the separate
// breakdown of where the RSS goes and writes no results.
// Runs in a scratch network namespace of its own (procs.ts inScratchNetns: other processes' sockets on the shared
// machine's loopback made the agents' bind()s slow); --host-netns runs in the host's.
// usage: npx node bench/cluster/run.ts [--source] [--host-netns] [services=5000] [endpointsPerService=3]   (services > 1,000)
import { mkdtempSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '@edgemesh/common/log';
import { ClusterModel } from '../../packages/agent/src/cluster/model.ts';
import { FileSource, FILE_DEBOUNCE_MS } from '../../packages/agent/src/cluster/file.ts';
import { KubeSource, loadKubeConfig } from '../../packages/agent/src/cluster/kube.ts';
import { FakeApiServer, type Obj } from '../../test/lib/fakeapi.ts';
import { parse } from 'yaml';
import { generate, serviceDoc } from './gen-manifests.ts';
import { built, chartLimits, fmt, inScratchNetns, nodeFlags, rss, settledRss, sleep, startAgent, startServer, waitServices, type BinMode } from './procs.ts';
import { writeResult } from '../results.ts';
import type { ClusterData, ClusterProfile, Spread, V8Sizing } from '../shapes.ts';

const USAGE = 'usage: npx node bench/cluster/run.ts [--source] [--host-netns] [services=5000 (> 1000)] [endpointsPerService=3]';
const args = process.argv.slice(2);
const MODE: BinMode = { source: args.includes('--source') };
const unknown = args.filter((a) => a.startsWith('--') && a !== '--source' && a !== '--host-netns');
const [svcArg, epArg, ...extra] = args.filter((a) => !a.startsWith('--'));
const SERVICES = Number(svcArg ?? 5000);
const ENDPOINTS = Number(epArg ?? 3);
/** The "extra Services" step of the RSS-per-1,000-Services figures; fresh starts with STEP and SERVICES Services. */
const STEP = 1000;
if (unknown.length || extra.length || !Number.isInteger(SERVICES) || SERVICES <= STEP || !Number.isInteger(ENDPOINTS) || ENDPOINTS < 1) {
  console.error(USAGE);
  process.exit(2);
}
await inScratchNetns(args);
/** The small cluster of the second file change -> model latency run. */
const SMALL_SERVICES = 100;
const FILES = 50;
/** After a load, RSS is read once the process had at least this long to collect garbage and return memory, then once it stopped changing (procs.ts settledRss). */
const SETTLE_MS = 3000;
const CHANGE_ROUNDS = 10;

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

/** The agent's V8 sizing, read from its command line once (every agent of a run is sized alike). */
let agentFlags: string[] | undefined;

async function profile(root: string, server: string, feedFor: (name: string) => Promise<Feed>): Promise<ClusterProfile> {
  // 1. Idle, then N Services added to the running agent, then STEP more.
  let feed = await feedFor('idle');
  let a = await startAgent(root, `${feed.name}-idle`, feed.cluster, server, MODE);
  let idle, inPlace, inPlaceMs, step;
  try {
    agentFlags ??= nodeFlags(a.child.pid!);
    idle = await settledRss(a.child.pid!, SETTLE_MS);
    const t0 = performance.now();
    feed.set(SERVICES);
    await waitServices(a, SERVICES);
    inPlaceMs = performance.now() - t0;
    inPlace = await settledRss(a.child.pid!, SETTLE_MS);
    feed.set(SERVICES + STEP);
    await waitServices(a, SERVICES + STEP);
    step = await settledRss(a.child.pid!, SETTLE_MS);
  } finally {
    await a.stop();
    await feed.close();
  }
  console.log(`${feed.name}: idle ${fmt(idle)}; +${SERVICES} Services x ${ENDPOINTS} endpoints in place: ${fmt(inPlace)} (all in the model ${inPlaceMs.toFixed(0)} ms after the change); +${STEP} more: ${fmt(step)}`);

  // 2. Cold starts with N and with STEP Services already in the cluster.
  const cold: Record<number, { r: ReturnType<typeof rss>; readyMs: number; readyCpuMs: number }> = {};
  for (const n of [SERVICES, STEP]) {
    feed = await feedFor(`cold-${n}`);
    feed.set(n);
    a = await startAgent(root, `${feed.name}-cold-${n}`, feed.cluster, server, MODE);
    try {
      await waitServices(a, n);
      cold[n] = { r: await settledRss(a.child.pid!, SETTLE_MS), readyMs: a.readyMs, readyCpuMs: a.readyCpuMs };
    } finally {
      await a.stop();
      await feed.close();
    }
    console.log(`${feed.name}: fresh agent with ${n} Services: start -> /readyz ${cold[n].readyMs.toFixed(0)} ms (CPU ${cold[n].readyCpuMs.toFixed(0)} ms); RSS ${fmt(cold[n].r)}`);
  }
  return {
    idle, inPlace, inPlaceMs, inPlaceStep: step,
    readyMs: cold[SERVICES].readyMs, readyCpuMs: cold[SERVICES].readyCpuMs, cold: cold[SERVICES].r,
    coldStepReadyMs: cold[STEP].readyMs, coldStepReadyCpuMs: cold[STEP].readyCpuMs, coldStep: cold[STEP].r,
    perStepColdMiB: (cold[SERVICES].r.rss - cold[STEP].r.rss) / (SERVICES / STEP - 1),
    perStepInPlaceMiB: step.rss - inPlace.rss,
  };
}

/** Median, min and max of latency samples. */
function spread(samples: number[]): Spread {
  const s = [...samples].sort((a, b) => a - b);
  return { median: s[Math.floor(s.length / 2)], min: s[0], max: s[s.length - 1], rounds: s.length };
}

/** File change -> model snapshot, in-process with the default debounce (FILE_DEBOUNCE_MS). */
async function changeLatency(services: number): Promise<Spread & { loadMs: number }> {
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
  const s = spread(samples);
  console.log(`initial read of ${services} Services x ${ENDPOINTS} endpoints (${FILES} files) in-process: ${loadMs.toFixed(0)} ms`);
  console.log(`file change -> model update with ${services} Services loaded (one file of ${Math.ceil(services / FILES)} rewritten): median ${s.median.toFixed(0)} ms, min ${s.min.toFixed(0)}, max ${s.max.toFixed(0)} (includes the ${FILE_DEBOUNCE_MS} ms debounce; ${CHANGE_ROUNDS} rounds)`);
  return { ...s, loadMs };
}

/** API change -> model snapshot through the watch, in-process, with N Services already listed. */
async function kubeLatency(services: number): Promise<Spread & { listMs: number }> {
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
  const s = spread(samples);
  console.log(`kubernetes source: initial list of ${services} Services x ${ENDPOINTS} endpoints ${listMs.toFixed(0)} ms; watch event -> model update median ${s.median.toFixed(1)} ms (min ${s.min.toFixed(1)}, max ${s.max.toFixed(1)})`);
  return { ...s, listMs };
}

const limits = chartLimits();
const CODE: ClusterData['code'] = built() && !MODE.source ? 'dist' : 'src';
console.log(`node ${process.version}; agent and server run ${CODE === 'dist' ? 'the built JavaScript (dist/)' : 'the TypeScript sources'}, V8 sized for the chart's limits (agent ${limits.agent}, server ${limits.server}); DNS + proxy (listeners, no iptables) + tunnel on; ${SERVICES} Services x ${ENDPOINTS} endpoints (${FILES} manifest files)`);
const root = mkdtempSync(join(tmpdir(), 'em-bench-'));
const server = await startServer(root, MODE);
let file: ClusterProfile, kubernetes: ClusterProfile, serverIdle: ReturnType<typeof rss>, serverAfter: ReturnType<typeof rss>, serverFlags: string[];
try {
  serverFlags = nodeFlags(server.child.pid!);
  serverIdle = rss(server.child.pid!);
  file = await profile(root, server.address, async (name) => fileFeed(root, name));
  kubernetes = await profile(root, server.address, () => kubeFeed());
  serverAfter = rss(server.child.pid!);
  console.log(`server RSS: idle ${fmt(serverIdle)}; after the agents came and went ${fmt(serverAfter)}`);
} finally {
  await server.stop();
  rmSync(root, { recursive: true, force: true });
}

const mib = (x: number) => `${x.toFixed(0)} MiB`;
console.log(`\n| | file | kubernetes | goal |\n|---|---:|---:|---|`);
const row = (label: string, f: (r: ClusterProfile) => string, goal: string) => console.log(`| ${label} | ${f(file)} | ${f(kubernetes)} | ${goal} |`);
row('RSS idle', (r) => mib(r.idle.rss), '≤ 70 MiB (file), ≤ 90 MiB (kubernetes)');
row(`RSS with ${SERVICES} Services × ${ENDPOINTS} endpoints (fresh start / added in place)`, (r) => `${mib(r.cold.rss)} / ${mib(r.inPlace.rss)}`, '≤ 130 MiB');
row(`start → ready with ${SERVICES} Services (wall; CPU)`, (r) => `${(r.readyMs / 1000).toFixed(2)} s; ${(r.readyCpuMs / 1000).toFixed(2)} s`, '≤ 1.5 s');
row(`RSS per extra ${STEP} Services (fresh starts ${STEP}→${SERVICES} / +${STEP} in place)`, (r) => `${r.perStepColdMiB.toFixed(1)} / ${r.perStepInPlaceMiB.toFixed(1)} MiB`, '≤ 8 MiB');

// FileSource's watcher and rescan timer do not hold the process open; the in-process latency runs need this.
const keepAlive = setInterval(() => {}, 1000);
const fileSmall = await changeLatency(SMALL_SERVICES);
const fileLoaded = await changeLatency(SERVICES);
const kube = await kubeLatency(SERVICES);
clearInterval(keepAlive);

const sizing = (memoryLimit: string, flags: string[] | undefined): V8Sizing => ({ memoryLimit, flags: flags ?? [] });
writeResult<ClusterData>('cluster', {
  services: SERVICES, endpoints: ENDPOINTS, files: FILES, step: STEP, settleMs: SETTLE_MS, code: CODE,
  agentV8: sizing(limits.agent, agentFlags), serverV8: sizing(limits.server, serverFlags!),
  file: file!, kubernetes: kubernetes!, server: { idle: serverIdle!, after: serverAfter! },
  latency: { debounceMs: FILE_DEBOUNCE_MS, file: fileLoaded, fileSmall: { ...fileSmall, services: SMALL_SERVICES }, kube },
});
