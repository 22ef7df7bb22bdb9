// Where the agent's RSS goes (README, "Memory"). Three parts, each in fresh processes:
//   1. Modules loaded one by one into a bare node (require(), as the bundle loads them), then the agent bundle, then
//      the libuv thread pool's start; plus what Node's type stripping costs (one .ts file).
//   2. The real agent binary (production mode, V8 sized for the chart's limit, bench/cluster/procs.ts) in growing
//      configurations, measured from inside after a full GC by a preloaded probe (--require, on SIGUSR2):
//      V8 heap (committed / used / code), external and ArrayBuffers, the rest of anonymous memory (malloc arenas,
//      thread stacks, libuv), file-backed pages (the node binary's code and data).
//   3. Listeners: N Services with ClusterIP (one proxy listener each) against N headless Services (none), and N bare
//      net.Server listeners in a plain node.
// A breakdown tool: it prints its tables (README "Where the RSS goes" is copied from them) and writes no
// bench/results file; the measured figures the README generates come from bench/cluster/run.ts.
// usage: npx node bench/cluster/memory.ts [--source] [--agents-only] [services=5000]
import { spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseMemory, v8Flags } from '../../packages/common/bin/entry.js';
import { generate } from './gen-manifests.ts';
import { built, chartLimits, ROOT, sleep, startAgent, startServer, waitServices, type BinMode } from './procs.ts';

const args = process.argv.slice(2);
const SOURCE = args.includes('--source');
const SERVICES = Number(args.find((a) => !a.startsWith('--')) ?? 5000);
/** Idle time before a probe: the agent's start-up garbage is collected and V8's memory reducer has run. */
const SETTLE_MS = 4000;
const PROBE_WAIT_MS = 10_000;
const MIB = 1024 * 1024;
const f1 = (x: number) => x.toFixed(1);

/** Measures this process after a full GC: what both the module steps and the agent probe print. */
const MEASURE_JS = `
function measure() {
  globalThis.gc?.(); globalThis.gc?.();
  const fs = require('node:fs'), v8 = require('node:v8');
  const m = process.memoryUsage();
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  const kb = (k) => Number(new RegExp('^' + k + ':\\\\s+(\\\\d+) kB', 'm').exec(status)[1]) * 1024;
  const spaces = Object.fromEntries(v8.getHeapSpaceStatistics().map((s) => [s.space_name, s]));
  const code = ['code_space', 'code_large_object_space'].reduce((a, n) => a + (spaces[n]?.space_used_size ?? 0), 0);
  return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') + kb('RssShmem'), heapTotal: m.heapTotal, heapUsed: m.heapUsed,
    code, external: m.external, arrayBuffers: m.arrayBuffers, threads: Number(/Threads:\\s+(\\d+)/.exec(status)[1]),
    builtins: process.moduleLoadList.length, modules: Object.keys(require.cache).length };
}`;

interface Measure { rss: number; anon: number; file: number; heapTotal: number; heapUsed: number; code: number; external: number; arrayBuffers: number; threads: number; builtins: number; modules: number }

const row = (label: string, m: Measure, prev?: Measure) => {
  const d = prev ? ` (+${f1((m.rss - prev.rss) / MIB)})` : '';
  const native = m.anon - m.heapTotal;
  return `| ${label} | ${f1(m.rss / MIB)}${d} | ${f1(m.file / MIB)} | ${f1(m.heapTotal / MIB)} / ${f1(m.heapUsed / MIB)} | ${f1(m.code / MIB)} | ${f1(m.external / MIB)} / ${f1(m.arrayBuffers / MIB)} | ${f1(native / MIB)} | ${m.threads} |`;
};
const HEAD = '| | RSS MiB | file-backed | V8 heap committed / used | code | external / ArrayBuffers | other anon (malloc, stacks, libuv) | threads |\n|---|---:|---:|---:|---:|---:|---:|---:|';

function runNode(code: string, flags: string[] = []): Measure[] {
  const r = spawnSync(process.execPath, ['--expose-gc', ...flags, '-e', code], { cwd: join(ROOT, 'packages/agent'), encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } });
  if (r.status !== 0) throw new Error(`node -e failed: ${r.stderr}`);
  return r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Measure);
}

function modulesOneByOne(semiFlag: string): void {
  const steps = ['pino', 'prom-client/lib/registry', 'prom-client/lib/defaultMetrics', 'zod', 'js-yaml', 'lru-cache', 'dns-packet', 'sodium-native', 'udx-native', '@hyperswarm/secret-stream'];
  const bundle = join(ROOT, 'packages/agent/dist/edgemesh-agent.cjs');
  const code = `${MEASURE_JS}
const out = (label) => console.log(JSON.stringify({ label, ...measure() }));
out('bare node');
for (const s of ${JSON.stringify(steps)}) { require(s); out(s); }
${existsSync(bundle) && !SOURCE ? `require(${JSON.stringify(bundle)}); out('agent bundle (dist/edgemesh-agent.cjs)');` : ''}
require('node:fs').readFile('/proc/self/stat', () => { setTimeout(() => { out('first fs call (libuv thread pool)'); }, 200); });`;
  const ms = runNode(code, [semiFlag]) as (Measure & { label: string })[];
  console.log(`\n### Modules loaded one by one (node ${process.version}, ${semiFlag}, require() as the bundle does)\n\n${HEAD}`);
  ms.forEach((m, i) => console.log(row(m.label, m, ms[i - 1])));
  // Type stripping: one empty .ts module, against the same as .mjs.
  const dir = mkdtempSync(join(tmpdir(), 'em-mem-ts-'));
  writeFileSync(join(dir, 'x.ts'), 'export const x: number = 1;\n');
  writeFileSync(join(dir, 'x.mjs'), 'export const x = 1;\n');
  const [mjs] = runNode(`${MEASURE_JS}\nimport(${JSON.stringify(join(dir, 'x.mjs'))}).then(() => console.log(JSON.stringify(measure())));`, [semiFlag]);
  const [ts] = runNode(`${MEASURE_JS}\nimport(${JSON.stringify(join(dir, 'x.ts'))}).then(() => console.log(JSON.stringify(measure())));`, [semiFlag]);
  rmSync(dir, { recursive: true, force: true });
  console.log(row('one .mjs module', mjs));
  console.log(row('one .ts module (type stripping)', ts, mjs));
}

function listenersBare(n: number): void {
  const code = `${MEASURE_JS}
const net = require('node:net');
const before = measure(); console.log(JSON.stringify(before));
let left = ${n}; const servers = [];
for (let i = 0; i < ${n}; i++) { const s = net.createServer(); servers.push(s); s.listen(0, '127.0.0.1', () => { if (--left === 0) { console.log(JSON.stringify(measure())); process.exit(0); } }); }`;
  const [a, b] = runNode(code);
  console.log(`\n${n} bare net.Server listeners in a plain node: +${f1((b.rss - a.rss) / MIB)} MiB RSS (heap +${f1((b.heapUsed - a.heapUsed) / MIB)}, other anon +${f1((b.anon - b.heapTotal - (a.anon - a.heapTotal)) / MIB)}) = ${f1((b.rss - a.rss) / n / 1024)} KiB per listener`);
}

async function agents(): Promise<void> {
  const mode: BinMode = { source: SOURCE };
  const root = mkdtempSync(join(tmpdir(), 'em-mem-'));
  const probe = join(root, 'probe.cjs');
  writeFileSync(probe, `${MEASURE_JS}
process.on('SIGUSR2', () => require('node:fs').writeFileSync(process.env.EDGEMESH_PROBE_OUT, JSON.stringify(measure())));\n`);
  const server = await startServer(root, mode);
  const measureAgent = async (name: string, cluster: string, o: { dns?: boolean; tunnel?: boolean }, services = 0): Promise<Measure> => {
    const out = join(root, `${name}.json`);
    const a = await startAgent(root, name, cluster, server.address, { ...mode, extraEnv: { NODE_OPTIONS: `--expose-gc --require ${probe}`, EDGEMESH_PROBE_OUT: out } }, o);
    try {
      if (services) await waitServices(a, services);
      await sleep(SETTLE_MS);
      a.child.kill('SIGUSR2');
      const end = Date.now() + PROBE_WAIT_MS;
      while (!existsSync(out) && Date.now() < end) await sleep(50);
      return JSON.parse(readFileSync(out, 'utf8')) as Measure;
    } finally {
      await a.stop();
    }
  };
  const dir = (n: string, services = 0, headless = false) => {
    const d = join(root, `m-${n}`);
    mkdirSync(d);
    if (services) generate(d, services, 3, 50, headless);
    return `{source: file, manifestsDir: ${d}}`;
  };
  try {
    console.log(`\n### The agent binary (${built() && !SOURCE ? 'dist/' : 'sources'}, V8 sized for ${chartLimits().agent}), measured inside after a full GC\n\n${HEAD}`);
    const rows: [string, Measure][] = [];
    rows.push(['file source + proxy (DNS and tunnel off), empty', await measureAgent('proxy', dir('proxy'), { dns: false, tunnel: false })]);
    rows.push(['+ DNS', await measureAgent('dns', dir('dns'), { tunnel: false })]);
    rows.push(['+ tunnel (connected to a server) = idle', await measureAgent('idle', dir('idle'), {})]);
    const loaded = await measureAgent('loaded', dir('loaded', SERVICES), {}, SERVICES);
    rows.push([`${SERVICES} Services × 3 endpoints (one listener each)`, loaded]);
    const headless = await measureAgent('headless', dir('headless', SERVICES, true), {}, SERVICES);
    rows.push([`${SERVICES} headless Services × 3 endpoints (no listeners)`, headless]);
    rows.forEach(([l, m], i) => console.log(row(l, m, i > 0 && i < 4 ? rows[i - 1][1] : undefined)));
    console.log(`\nlisteners in the agent: ${SERVICES} ClusterIP minus ${SERVICES} headless Services = ${f1((loaded.rss - headless.rss) / MIB)} MiB RSS (heap used ${f1((loaded.heapUsed - headless.heapUsed) / MIB)}) = ${f1((loaded.rss - headless.rss) / SERVICES / 1024)} KiB per listener`);
  } finally {
    await server.stop();
    rmSync(root, { recursive: true, force: true });
  }
}

const semi = v8Flags(parseMemory(chartLimits().agent))[0];
if (!args.includes("--agents-only")) modulesOneByOne(semi);
listenersBare(SERVICES);
await agents();
