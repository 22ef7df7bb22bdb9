// test/run.ts itself, run in a child process against the fixtures in test/fixtures/runner/ (never matched by the
// normal globs): its exit code and what it lists for failing hooks, throwing describes, skips under CI=true, crashing
// and hanging files, and a clean file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..');
const FIXTURES = 'test/fixtures/runner';
/** Generous: each case is a whole nested run (a node process per fixture file) on a busy machine. */
const RUN_TIMEOUT_MS = 120_000;

function runner(args: string[], ci: boolean): Promise<{ code: number | null; out: string }> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.NODE_TEST_CONTEXT; // else the nested run() reports to this test process instead of running
  delete env.CI;
  if (ci) env.CI = 'true';
  return new Promise((res) => {
    execFile(process.execPath, [resolve(ROOT, 'test/run.ts'), ...args], { cwd: ROOT, env, timeout: RUN_TIMEOUT_MS, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: unknown }).code as number | null) : 0;
      res({ code: typeof code === 'number' ? code : null, out: stdout + stderr });
    });
  });
}

const fixture = (name: string) => `${FIXTURES}/${name}.fixture.ts`;
const closing = (out: string) => out.trimEnd().split('\n').pop();

test('a clean file: exit 0, passes and the todo counted apart', async () => {
  const { code, out } = await runner([fixture('clean')], true);
  assert.equal(code, 0, out);
  assert.equal(closing(out), '2 passed, 0 failed, 0 skipped, 1 todo');
  assert.match(out, /todo \(1\):\n {2}- test\/fixtures\/runner\/clean\.fixture\.ts › clean: a todo — not written yet/);
  assert.doesNotMatch(out, /failed \(/);
});

test('a failing after hook in a describe fails the run and names the suite', async () => {
  const { code, out } = await runner([fixture('after-hook')], false);
  assert.equal(code, 1, out);
  assert.equal(closing(out), '1 passed, 1 failed, 0 skipped, 0 todo');
  assert.match(out, /failed \(1\):\n {2}- suite test\/fixtures\/runner\/after-hook\.fixture\.ts › suite with a failing after hook — a hook failed: leftover namespaces: em1234-wan/);
});

test('a describe body that throws fails the run and names the suite', async () => {
  const { code, out } = await runner([fixture('throwing-describe')], false);
  assert.equal(code, 1, out);
  assert.equal(closing(out), '1 passed, 1 failed, 0 skipped, 0 todo');
  assert.match(out, /- suite test\/fixtures\/runner\/throwing-describe\.fixture\.ts › suite whose body throws — the describe body threw: describe body blew up/);
});

test('a skip without an allowed reason: counted apart from passes; green locally, red under CI=true', async () => {
  const local = await runner([fixture('skip')], false);
  assert.equal(local.code, 0, local.out);
  assert.equal(closing(local.out), '1 passed, 0 failed, 1 skipped, 0 todo');
  assert.match(local.out, /skip: needs root — needs root \[would fail under CI=true\]/);
  const ci = await runner([fixture('skip')], true);
  assert.equal(ci.code, 1, ci.out);
  assert.equal(closing(ci.out), '1 passed, 0 failed, 1 skipped, 0 todo');
  assert.match(ci.out, /skip: needs root — needs root \[NOT ALLOWED IN CI\]/);
  assert.match(ci.out, /CI=true: 1 skip without an allowed-in-CI reason/);
});

test('allowed-in-CI skips (a suite and a run-time skip) keep a CI run green and are listed with their reasons', async () => {
  const { code, out } = await runner([fixture('allowed-skip')], true);
  assert.equal(code, 0, out);
  assert.equal(closing(out), '1 passed, 0 failed, 2 skipped, 0 todo');
  assert.match(out, /- suite test\/fixtures\/runner\/allowed-skip\.fixture\.ts › allowed-skip: helm suite — no helm binary \[allowed in CI\]/);
  assert.match(out, /allowed-skip: skips at run time — no tool here \[allowed in CI\]/);
});

test('a file that crashes mid-test fails the run and is named', async () => {
  const { code, out } = await runner([fixture('crash')], false);
  assert.equal(code, 1, out);
  assert.match(out, /- file test\/fixtures\/runner\/crash\.fixture\.ts — the file's process exited with code 3/);
  assert.match(closing(out) ?? '', /^\d+ passed, [1-9]\d* failed, 0 skipped, 0 todo$/);
});

test('a file that never ends is killed by the file watchdog, fails the run and is named', async () => {
  const { code, out } = await runner(['--file-timeout', '3000', fixture('hang')], false);
  assert.equal(code, 1, out);
  assert.match(out, /- file test\/fixtures\/runner\/hang\.fixture\.ts — file still running after 3000 ms: killed/);
});

test('a run where everything skipped is not green', async () => {
  const { code, out } = await runner([fixture('all-skipped')], false);
  assert.equal(code, 1, out);
  assert.match(out.trimEnd(), /no tests ran\n\n0 passed, 0 failed, 2 skipped, 0 todo$/);
});

test('several files in one run: every failure is listed, the counts add up', async () => {
  const { code, out } = await runner([fixture('clean'), fixture('after-hook'), fixture('throwing-describe'), fixture('skip')], true);
  assert.equal(code, 1, out);
  assert.equal(closing(out), '5 passed, 2 failed, 1 skipped, 1 todo');
  assert.match(out, /failed \(2\):/);
  assert.match(out, /NOT ALLOWED IN CI/);
});
