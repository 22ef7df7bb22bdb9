// Where each bench writes its figures: bench/results/<name>.json (or $BENCH_RESULTS_DIR/<name>.json). The README's
// benchmark summary and its per-bench tables are generated from these files by `node bench/readme.ts`, so the
// summary and the sections always come from the same run and can never disagree.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { join, resolve } from 'node:path';

export const BENCH_NAMES = ['dns', 'proxy', 'tunnel', 'cluster', 'soak', 'server'] as const;
export type BenchName = (typeof BENCH_NAMES)[number];

export function resultsDir(): string {
  return resolve(process.env.BENCH_RESULTS_DIR || join(import.meta.dirname, 'results'));
}

export interface HostInfo {
  cpus: number;
  cpuModel: string;
  /** 1-minute load average when the bench started (the machine may be shared). */
  loadavg1: number;
  node: string;
}

export interface BenchResult<T> {
  bench: BenchName;
  /** ISO date-time the bench finished. */
  date: string;
  host: HostInfo;
  /** The command line arguments the bench ran with. */
  argv: string[];
  data: T;
}

/** Captured at import, i.e. when the bench starts. */
const START_LOAD = loadavg()[0];

export function hostInfo(): HostInfo {
  return { cpus: availableParallelism(), cpuModel: cpus()[0]?.model ?? 'unknown', loadavg1: Math.round(START_LOAD * 100) / 100, node: process.version };
}

/** Writes the bench's figures; returns the file. */
export function writeResult<T>(bench: BenchName, data: T): string {
  const dir = resultsDir();
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${bench}.json`);
  const out: BenchResult<T> = { bench, date: new Date().toISOString(), host: hostInfo(), argv: process.argv.slice(2), data };
  writeFileSync(file, JSON.stringify(out, null, 2) + '\n');
  console.log(`\nresults written to ${file} (README: node bench/readme.ts)`);
  return file;
}

export function readResult<T>(dir: string, bench: BenchName): BenchResult<T> | undefined {
  try {
    return JSON.parse(readFileSync(join(dir, `${bench}.json`), 'utf8')) as BenchResult<T>;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}
