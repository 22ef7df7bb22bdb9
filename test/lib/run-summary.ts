// What test/run.ts counts and lists, from node:test's run() events. A run is green only when no test, suite, hook or
// file failed, at least one test passed or failed, and (under CI) no skip lacks an allowed-in-CI reason (test/lib/skip.ts).
//   - test:fail of a test: a failure (a failing todo test is counted as todo, as node:test does);
//   - test:fail of a suite: a failure unless it only reports failed subtests (those are counted themselves) — a failing
//     before/after hook or a describe body that throws;
//   - test:fail named after the file itself: the file failed outside any test (crashed, exited, a top-level hook
//     failed, or the file watchdog killed it);
//   - test:pass with skip / todo: counted apart from passes; a skipped suite counts as one skip.
import { relative } from 'node:path';
import type { TestEvent } from 'node:test/reporters';
import { allowedReason } from './skip.ts';

type Data<T extends TestEvent['type']> = Extract<TestEvent, { type: T }>['data'];

/** Written by the file watchdog (test/lib/file-watchdog.ts) to a test file's stderr before it kills the file. */
export const WATCHDOG_MARK = 'edgemesh-test-watchdog: file still running after';

export interface Entry {
  /** The test file, relative to the repository root. */
  file: string;
  /** Suite names and the test name, outermost first (empty for the file itself). */
  path: string[];
  kind: 'test' | 'suite' | 'file';
  reason: string;
}

export interface SkipEntry extends Entry {
  /** The allowed-in-CI reason, when the skip declares one. */
  allowed?: string;
}

export class RunSummary {
  passed = 0;
  readonly failures: Entry[] = [];
  readonly skips: SkipEntry[] = [];
  readonly todos: Entry[] = [];
  private readonly root: string;
  private readonly ci: boolean;
  /** file + testId -> name and parent, to name nested tests by their suites. */
  private readonly names = new Map<string, { name: string; parent: number | undefined }>();
  /** Files the watchdog killed, with its message. */
  private readonly timedOut = new Map<string, string>();

  constructor(root: string, ci: boolean) {
    this.root = root;
    this.ci = ci;
  }

  private rel(file: string | undefined): string {
    return file ? relative(this.root, file) : '(unknown file)';
  }

  private pathOf(d: { file?: string; name: string; testId?: number; parentId?: number }): string[] {
    const out = [d.name];
    let parent = d.parentId;
    for (let guard = 0; parent && guard < 100; guard++) {
      const p = this.names.get(`${d.file}#${parent}`);
      if (!p) break;
      out.unshift(p.name);
      parent = p.parent;
    }
    return out;
  }

  start(d: Data<'test:start'>): void {
    if (d.testId !== undefined) this.names.set(`${d.file}#${d.testId}`, { name: d.name, parent: d.parentId || undefined });
  }

  stderr(d: Data<'test:stderr'>): void {
    const i = d.message.indexOf(WATCHDOG_MARK);
    if (i < 0) return;
    const msg = d.message.slice(i).split('\n')[0].replace('edgemesh-test-watchdog: ', '');
    const file = this.rel(d.file);
    this.timedOut.set(file, msg);
    const entry = this.failures.find((f) => f.kind === 'file' && f.file === file);
    if (entry) entry.reason = msg;
    else this.failures.push({ file, path: [], kind: 'file', reason: msg });
  }

  pass(d: Data<'test:pass'>): void {
    const file = this.rel(d.file);
    const kind = d.details.type === 'suite' ? 'suite' : 'test';
    if (d.skip !== undefined) {
      const reason = typeof d.skip === 'string' ? d.skip : '(no reason given)';
      const allowed = allowedReason(d.skip);
      this.skips.push({ file, path: this.pathOf(d), kind, reason: allowed ?? reason, ...(allowed !== undefined ? { allowed } : {}) });
    } else if (d.todo !== undefined) {
      this.todos.push({ file, path: this.pathOf(d), kind, reason: typeof d.todo === 'string' ? d.todo : '' });
    } else if (kind === 'test') {
      this.passed++;
    }
  }

  fail(d: Data<'test:fail'>): void {
    const file = this.rel(d.file);
    const err = d.details.error as Error & { failureType?: string; cause?: unknown; exitCode?: number | null; signal?: string | null };
    const cause = err.cause instanceof Error ? err.cause.message : typeof err.cause === 'string' ? err.cause : err.message;
    const firstLine = String(cause).split('\n')[0];
    if (d.todo !== undefined) {
      this.todos.push({ file, path: this.pathOf(d), kind: 'test', reason: `${typeof d.todo === 'string' ? d.todo : ''} (failing: ${firstLine})`.trim() });
      return;
    }
    if (d.nesting === 0 && d.file !== undefined && d.name === d.file) {
      // The file itself: a crash, a non-zero exit, a top-level hook, or the watchdog.
      let reason: string;
      if (this.timedOut.has(file)) reason = this.timedOut.get(file)!;
      else if (err.failureType === 'hookFailed') reason = `a top-level hook failed: ${firstLine}`;
      else if (err.signal) reason = `the file was killed by ${err.signal}`;
      else if (typeof err.exitCode === 'number') reason = `the file's process exited with code ${err.exitCode}`;
      else reason = firstLine;
      if (!this.failures.some((f) => f.kind === 'file' && f.file === file)) this.failures.push({ file, path: [], kind: 'file', reason });
      return;
    }
    if (d.details.type === 'suite') {
      if (err.failureType === 'subtestsFailed') return; // its failing tests are counted themselves
      const what = err.failureType === 'hookFailed' ? 'a hook failed' : err.failureType === 'testCodeFailure' ? 'the describe body threw' : (err.failureType ?? 'failed');
      this.failures.push({ file, path: this.pathOf(d), kind: 'suite', reason: `${what}: ${firstLine}` });
      return;
    }
    this.failures.push({ file, path: this.pathOf(d), kind: 'test', reason: `${err.failureType ?? 'failed'}: ${firstLine}` });
  }

  /** Skips that fail a CI run: those without an allowed-in-CI reason. */
  disallowedSkips(): SkipEntry[] {
    return this.ci ? this.skips.filter((s) => s.allowed === undefined) : [];
  }

  /** Tests that ran to an outcome (skips and todos are not runs). */
  ran(): number {
    return this.passed + this.failures.filter((f) => f.kind === 'test').length;
  }

  ok(): boolean {
    return this.failures.length === 0 && this.disallowedSkips().length === 0 && this.ran() > 0;
  }

  /** The closing line: `N passed, N failed, N skipped, N todo`. */
  closingLine(): string {
    return `${this.passed} passed, ${this.failures.length} failed, ${this.skips.length} skipped, ${this.todos.length} todo`;
  }

  report(): string {
    const name = (e: Entry) => [e.file, ...e.path].join(' › ');
    const lines: string[] = [''];
    if (this.skips.length) {
      lines.push(`skipped (${this.skips.length}):`);
      for (const s of this.skips) {
        const tag = s.allowed !== undefined ? 'allowed in CI' : this.ci ? 'NOT ALLOWED IN CI' : 'would fail under CI=true';
        lines.push(`  - ${s.kind === 'suite' ? 'suite ' : ''}${name(s)} — ${s.reason} [${tag}]`);
      }
    }
    if (this.todos.length) {
      lines.push(`todo (${this.todos.length}):`);
      for (const t of this.todos) lines.push(`  - ${name(t)}${t.reason ? ` — ${t.reason}` : ''}`);
    }
    if (this.failures.length) {
      lines.push(`failed (${this.failures.length}):`);
      for (const f of this.failures) lines.push(`  - ${f.kind} ${name(f)} — ${f.reason}`);
    }
    const bad = this.disallowedSkips();
    if (bad.length) lines.push(`CI=true: ${bad.length} skip${bad.length === 1 ? '' : 's'} without an allowed-in-CI reason (test/lib/skip.ts): the run fails`);
    if (this.ran() === 0) lines.push('no tests ran');
    lines.push('', this.closingLine());
    return lines.join('\n');
  }
}
