// Runs every test file with node:test: unit and integration files concurrently, then network-namespace end-to-end
// files (test/e2e/) one at a time. Fails when any test fails or when zero tests ran.
import { run } from 'node:test';
import { spec } from 'node:test/reporters';
import { globSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { resolve } from 'node:path';

const root = resolve(import.meta.dirname, '..');
const only = process.argv.slice(2);
const all = (only.length ? only : ['packages/*/src/**/*.test.ts', 'test/**/*.test.ts'])
  .flatMap((g) => globSync(g, { cwd: root }))
  .filter((f) => !f.includes('node_modules'))
  .map((f) => resolve(root, f))
  .sort();
const e2e = all.filter((f) => f.includes('/test/e2e/'));
const rest = all.filter((f) => !e2e.includes(f));

let pass = 0;
let fail = 0;
async function runFiles(files: string[], concurrency: number): Promise<void> {
  if (!files.length) return;
  const stream = run({ files, concurrency, timeout: 10 * 60_000 });
  stream.on('test:pass', (t) => { if (t.details.type !== 'suite') pass++; });
  stream.on('test:fail', (t) => { if (t.details.type !== 'suite') fail++; });
  await new Promise<void>((res, rej) => {
    stream.compose(spec).on('end', res).on('error', rej).pipe(process.stdout, { end: false });
  });
}

await runFiles(rest, Math.max(2, availableParallelism()));
await runFiles(e2e, 1);
console.log(`\n${pass} passed, ${fail} failed`);
if (pass + fail === 0) {
  console.error('no tests ran');
  process.exit(1);
}
process.exit(fail ? 1 : 0);
