// `npm start` = `edgemesh demo`: runs the real command as a user would and checks what it prints and leaves behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';

const CLI = join(import.meta.dirname, '..', '..', 'packages', 'agent', 'bin', 'edgemesh.js');
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

test('edgemesh demo without root says so and exits 2', { skip: !isRoot && 'needs root to switch to nobody' }, async () => {
  const child = spawn(process.execPath, [CLI, 'demo'], { stdio: ['ignore', 'pipe', 'pipe'], uid: 65534, gid: 65534 });
  let err = '';
  child.stderr.on('data', (d) => { err += d; });
  const [code] = await once(child, 'exit');
  assert.equal(code, 2);
  assert.match(err, /needs root/);
});
