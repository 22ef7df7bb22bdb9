// `npm start` = `edgemesh demo`: runs the real command as a user would and checks what it prints and leaves behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, copyFileSync, cpSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, sep } from 'node:path';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'packages', 'agent', 'bin', 'edgemesh.js');
/** Not needed to run the CLI: Node itself (copied on its own below), the type checker and type definitions. */
const NOT_COPIED = ['node', 'typescript', '@types'].map((d) => join(ROOT, 'node_modules', d));
const DEMO_TIMEOUT_MS = 90_000;
const isRoot = process.getuid?.() === 0;

function netns(): string[] {
  try { return readdirSync('/run/netns'); } catch { return []; }
}

function runDemo(): Promise<{ code: number | null; out: string }> {
  const child = spawn(process.execPath, [CLI, 'demo'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const timer = setTimeout(() => child.kill('SIGKILL'), DEMO_TIMEOUT_MS);
  return once(child, 'exit').then(([code]) => { clearTimeout(timer); return { code: code as number | null, out }; });
}

test('edgemesh demo fetches hello.demo by DNS name across two NATs, reports the path, and leaves nothing behind', { skip: !isRoot && 'needs root' }, async () => {
  const { code, out } = await runDemo();
  assert.equal(code, 0, out);
  assert.match(out, /reply: {3}"hello from edge-b" \(HTTP 200, 9\.251\.\d+\.\d+ is hello's fake IP\)/);
  // The first request may still ride the relay; the port-restricted <-> port-restricted pair must then end direct
  // (hole punching works for it), and the second request goes over that path.
  assert.match(out, /path: {4}edge-a -> edge-b (direct|relay)/);
  assert.match(out, /path: {4}edge-a -> edge-b direct to 203\.0\.113\.\d+:\d+/, 'the demo never reached the direct path');
  assert.doesNotMatch(out, /path: {4}still /);
  assert.match(out, /again: {3}"hello from edge-b", dns /);
  assert.match(out, /timings: dns [\d.]+ ms, connect [\d.]+ ms, first byte [\d.]+ ms, total [\d.]+ ms/);
  for (let i = 1; i <= 8; i++) assert.match(out, new RegExp(`\\[${i}/8\\] `), `progress line ${i}`);
  assert.deepEqual(netns().filter((n) => n.startsWith('emdemo')), [], 'no demo namespace is left');
});

/**
 * What `edgemesh demo` needs to start — Node, the packages, their dependencies — copied where an unprivileged user can
 * read it: the checkout itself may sit in a directory only its owner can enter (a clone in a `mktemp -d` directory).
 */
function readableCopy(): { dir: string; node: string; cli: string } {
  const dir = mkdtempSync(join(tmpdir(), 'em-demo-nobody-'));
  for (const p of ['package.json', 'packages', 'node_modules']) {
    cpSync(join(ROOT, p), join(dir, p), { recursive: true, verbatimSymlinks: true, filter: (src) => !NOT_COPIED.some((n) => src === n || src.startsWith(n + sep)) });
  }
  const node = join(dir, 'node');
  copyFileSync(process.execPath, node);
  const r = spawnSync('chmod', ['-R', 'a+rX', dir]);
  assert.equal(r.status, 0, String(r.stderr));
  chmodSync(node, 0o755);
  return { dir, node, cli: join(dir, 'packages', 'agent', 'bin', 'edgemesh.js') };
}

test('edgemesh demo without root says so and exits 2', { skip: !isRoot && 'needs root to switch to nobody' }, async () => {
  const copy = readableCopy();
  try {
    const child = spawn(copy.node, [copy.cli, 'demo'], { cwd: copy.dir, stdio: ['ignore', 'pipe', 'pipe'], uid: 65534, gid: 65534 });
    let err = '';
    child.stderr.on('data', (d) => { err += d; });
    const [code] = await once(child, 'exit');
    assert.equal(code, 2, err);
    assert.match(err, /needs root/);
  } finally {
    rmSync(copy.dir, { recursive: true, force: true });
  }
});
