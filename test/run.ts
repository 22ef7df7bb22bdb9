// Runs every test file with node:test: unit and integration files concurrently, then network-namespace end-to-end
// files (test/e2e/) one at a time. The run fails when a test, a suite (a before/after hook, a describe body that
// throws), or a file (a crash, a non-zero exit outside any test, a timeout) fails, when zero tests ran, and, with
// CI=true, when anything skips without an allowed-in-CI reason (test/lib/skip.ts). Skips and todos are counted apart
// from passes and listed at the end with every failure; the closing line is `N passed, N failed, N skipped, N todo`.
//   node test/run.ts [--file-timeout MS] [--test-timeout MS] [files or globs...]
import { run } from 'node:test';
import { spec } from 'node:test/reporters';
import { globSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { RunSummary } from './lib/run-summary.ts';

/** One test may take this long (the longest e2e steps build labs and wait for tunnels). */
const TEST_TIMEOUT_MS = 10 * 60_000;
/** A whole file may take this long before the watchdog kills it (the e2e files run several minutes). */
const FILE_TIMEOUT_MS = 30 * 60_000;

const root = resolve(import.meta.dirname, '..');
const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { 'file-timeout': { type: 'string' }, 'test-timeout': { type: 'string' } },
});
const fileTimeoutMs = Number(values['file-timeout'] ?? FILE_TIMEOUT_MS);
const testTimeoutMs = Number(values['test-timeout'] ?? TEST_TIMEOUT_MS);
if (!(fileTimeoutMs > 0) || !(testTimeoutMs > 0)) {
  console.error('--file-timeout and --test-timeout take a number of milliseconds');
  process.exit(2);
}
const ci = process.env.CI === 'true';

const all = (positionals.length ? positionals : ['packages/*/src/**/*.test.ts', 'test/**/*.test.ts'])
  .flatMap((g) => globSync(g, { cwd: root }))
  .filter((f) => !f.includes('node_modules'))
  .map((f) => resolve(root, f))
  .sort();
if (!all.length) {
  console.error(`no test files match ${positionals.join(' ') || 'the default globs'}`);
  process.exit(1);
}
const e2e = all.filter((f) => f.includes('/test/e2e/'));
const rest = all.filter((f) => !e2e.includes(f));

const summary = new RunSummary(root, ci);
const watchdog = pathToFileURL(resolve(import.meta.dirname, 'lib/file-watchdog.ts')).href;

async function runFiles(files: string[], concurrency: number): Promise<void> {
  if (!files.length) return;
  // NODE_TEST_CONTEXT would make a nested run (the runner's own tests) report to its parent instead of running.
  const env: NodeJS.ProcessEnv = { ...process.env, EDGEMESH_TEST_FILE_TIMEOUT_MS: String(fileTimeoutMs) };
  delete env.NODE_TEST_CONTEXT;
  const stream = run({ files, concurrency, timeout: testTimeoutMs, execArgv: ['--import', watchdog], env });
  stream.on('test:start', (d) => summary.start(d));
  stream.on('test:pass', (d) => summary.pass(d));
  stream.on('test:fail', (d) => summary.fail(d));
  stream.on('test:stderr', (d) => summary.stderr(d));
  await new Promise<void>((res, rej) => {
    stream.compose(spec).on('end', res).on('error', rej).pipe(process.stdout, { end: false });
  });
}

await runFiles(rest, Math.max(2, availableParallelism()));
await runFiles(e2e, 1);
console.log(summary.report());
process.exit(summary.ok() ? 0 : 1);
