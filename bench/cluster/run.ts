// Cluster bench: RSS of the real agent (file source, dns/proxy/tunnel off) idle and with N Services x E endpoints
// loaded from manifests, and the time from a manifest file change to the model update (in-process, default debounce).
// The same for the kubernetes source against the in-process fake API server (test/lib/fakeapi.ts).
// usage: npx node bench/cluster/run.ts [services=5000] [endpointsPerService=3]
// Writes bench/results/cluster.json (README tables: node bench/readme.ts).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
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
import { writeResult } from '../results.ts';
import type { ClusterData, Spread } from '../shapes.ts';

const SERVICES = Number(process.argv[2] ?? 5000);
const ENDPOINTS = Number(process.argv[3] ?? 3);
const FILES = 50;
const SETTLE_MS = 3000;
const CHANGE_ROUNDS = 10;
const BIN = resolve(import.meta.dirname, '../../packages/agent/bin/edgemesh-agent.js');

const rssMiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const spread = (sorted: number[]): Spread => ({ median: sorted[Math.floor(sorted.length / 2)], min: sorted[0], max: sorted[sorted.length - 1], rounds: sorted.length });

async function metric(base: string, name: string): Promise<number | undefined> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

/** Starts the agent binary with `cfgText` as its config; resolves once the cluster source reports synced. */
async function startAgent(root: string, cfgText: string): Promise<{ child: ChildProcess; base: string }> {
  const cfg = join(root, 'agent.yaml');
  writeFileSync(cfg, cfgText);
  const child = spawn(process.execPath, [BIN, '--config', cfg], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.on('data', (d) => { out += d; });
  let admin: string | undefined;
  while (!(admin = /"admin":"([^"]+)"/.exec(out)?.[1])) await sleep(20);
  const base = `http://${admin}`;
  while ((await metric(base, 'edgemesh_cluster_synced')) !== 1) await sleep(20);
  return { child, base };
}

async function agentRss(): Promise<Omit<ClusterData['file'], 'loadMs' | 'change' | 'changeSmall'>> {
  const root = mkdtempSync(join(tmpdir(), 'em-bench-'));
  const manifests = join(root, 'm');
  mkdirSync(manifests);
  const { child, base } = await startAgent(root, `nodeName: bench\nstateDir: ${join(root, 'state')}\ncluster: {source: file, manifestsDir: ${manifests}}\ndns: {enabled: false}\nproxy: {intercept: none}\ntunnel: {enabled: false}\nadmin: {listen: "127.0.0.1:0"}\nlog: {level: info}\n`);
  try {
    await sleep(SETTLE_MS);
    const idle = rssMiB(child.pid!);
    const t0 = performance.now();
    generate(manifests, SERVICES, ENDPOINTS, FILES);
    const tGen = performance.now() - t0;
    while ((await metric(base, 'edgemesh_cluster_services')) !== SERVICES) await sleep(20);
    const tLoad = performance.now() - t0;
    const loadedNow = rssMiB(child.pid!);
    await sleep(SETTLE_MS);
    const loaded = rssMiB(child.pid!);
    const eps = await metric(base, 'edgemesh_cluster_endpoints');
    console.log(`agent RSS idle (empty manifests dir): ${idle.toFixed(1)} MiB`);
    console.log(`agent RSS with ${SERVICES} Services x ${ENDPOINTS} endpoints (${eps} endpoints in the model): ${loaded.toFixed(1)} MiB (${loadedNow.toFixed(1)} MiB right after loading)`);
    console.log(`  writing ${FILES} files took ${tGen.toFixed(0)} ms; all ${SERVICES} Services visible in /metrics ${tLoad.toFixed(0)} ms after the first write`);
    const state = readFileSync(join(root, 'state', 'cluster-state.json'));
    console.log(`  offline state file: ${(state.length / 1024 / 1024).toFixed(1)} MiB`);
    child.kill('SIGTERM');
    const [code] = await once(child, 'exit');
    if (code !== 0) console.log(`  agent exit code ${code}`);
    return { rssIdleMiB: idle, rssLoadedMiB: loaded, rssRightAfterMiB: loadedNow, endpointsInModel: eps ?? null, writeMs: tGen, visibleMs: tLoad, stateFileMiB: state.length / 1024 / 1024 };
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    rmSync(root, { recursive: true, force: true });
  }
}

/** File change -> model snapshot, in-process with the default debounce (FILE_DEBOUNCE_MS). */
async function changeLatency(services: number): Promise<{ loadMs: number; change: Spread }> {
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
  return { loadMs, change: spread(samples) };
}

/** Populates a fake API server with the same objects the manifest generator writes. */
function objects(services: number): Obj[][] {
  return Array.from({ length: services }, (_, i) => serviceDoc(i, ENDPOINTS).split('---\n').map((d) => parse(d) as Obj));
}
function populate(api: FakeApiServer, services: number, objs = objects(services)): void {
  for (const [svc, slice] of objs) {
    api.upsert('/api/v1/services', svc);
    api.upsert('/apis/discovery.k8s.io/v1/endpointslices', slice);
  }
  for (let n = 0; n < 50; n++) api.upsert('/api/v1/nodes', { apiVersion: 'v1', kind: 'Node', metadata: { name: `edge-${n}`, labels: { 'apps.kubeedge.io/belonging-to': `site-${n % 5}` } } });
}

async function kubeAgentRss(): Promise<Pick<ClusterData['kube'], 'rssIdleMiB' | 'rssLoadedMiB' | 'visibleMs' | 'events'>> {
  const api = new FakeApiServer();
  const url = await api.start();
  const root = mkdtempSync(join(tmpdir(), 'em-bench-kube-'));
  const { child, base } = await startAgent(root, `nodeName: bench\nstateDir: ${join(root, 'state')}\ncluster: {source: kubernetes, kubeconfig: "${url}"}\ndns: {enabled: false}\nproxy: {intercept: none}\ntunnel: {enabled: false}\nadmin: {listen: "127.0.0.1:0"}\nlog: {level: info}\n`);
  try {
    await sleep(SETTLE_MS);
    const idle = rssMiB(child.pid!);
    const objs = objects(SERVICES);
    populate(api, SERVICES, objs);
    const t0 = performance.now(); // events are written synchronously above; they leave the bench process from here
    while ((await metric(base, 'edgemesh_cluster_services')) !== SERVICES) await sleep(20);
    const tLoad = performance.now() - t0;
    await sleep(SETTLE_MS);
    const loaded = rssMiB(child.pid!);
    console.log(`kubernetes source: agent RSS idle (empty API) ${idle.toFixed(1)} MiB; with ${SERVICES} Services x ${ENDPOINTS} endpoints streamed as watch events: ${loaded.toFixed(1)} MiB (all visible ${tLoad.toFixed(0)} ms after the server queued the ${2 * SERVICES + 50} events)`);
    child.kill('SIGTERM');
    await once(child, 'exit');
    return { rssIdleMiB: idle, rssLoadedMiB: loaded, visibleMs: tLoad, events: 2 * SERVICES + 50 };
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    await api.close();
    rmSync(root, { recursive: true, force: true });
  }
}

/** API change -> model snapshot through the real client-node watch, in-process, with N Services already listed. */
async function kubeLatency(services: number): Promise<{ listMs: number; watch: Spread }> {
  const api = new FakeApiServer();
  const url = await api.start();
  populate(api, services);
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
  console.log(`kubernetes source: initial list of ${services} Services x ${ENDPOINTS} endpoints + 50 Nodes ${listMs.toFixed(0)} ms; watch event -> model update median ${samples[Math.floor(samples.length / 2)].toFixed(1)} ms (min ${samples[0].toFixed(1)}, max ${samples[samples.length - 1].toFixed(1)})`);
  return { listMs, watch: spread(samples) };
}

// FileSource's watcher and rescan timer do not hold the process open (the agent's admin server does); the bench must.
const keepAlive = setInterval(() => {}, 1000);
console.log(`node ${process.version}, ${SERVICES} Services x ${ENDPOINTS} endpoints in ${FILES} files`);
const rss = await agentRss();
const small = await changeLatency(100);
const big = await changeLatency(SERVICES);
const kubeRss = await kubeAgentRss();
const kubeLat = await kubeLatency(SERVICES);
clearInterval(keepAlive);
writeResult<ClusterData>('cluster', {
  services: SERVICES, endpoints: ENDPOINTS, files: FILES, debounceMs: FILE_DEBOUNCE_MS,
  file: { ...rss, loadMs: big.loadMs, change: big.change, changeSmall: { ...small.change, services: 100 } },
  kube: { ...kubeRss, ...kubeLat },
});
