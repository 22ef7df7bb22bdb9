// Runs the real edgemesh-agent binary for integration tests: waits for its admin address in the log, hands the admin
// base URL to a check, then SIGTERMs it and asserts the contract's exit code 0.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { resolve } from 'node:path';

export const AGENT_BIN = resolve(import.meta.dirname, '../../packages/agent/bin/edgemesh-agent.js');
export const DEADLINE_MS = 15_000;
const POLL_MS = 50;

/** Polls `fn` until it returns something other than undefined (errors count as undefined), or fails at the deadline. */
export async function poll<T>(what: string, fn: () => Promise<T | undefined>): Promise<T> {
  const end = Date.now() + DEADLINE_MS;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

/**
 * Starts the agent with `--config cfg`, runs `check(adminBaseUrl, pid)`, then stops it: SIGTERM must exit 0. `env`
 * replaces the environment (the production-mode test).
 */
export async function runAgent(cfg: string, check: (base: string, pid: number) => Promise<void>, env?: NodeJS.ProcessEnv): Promise<void> {
  const child = spawn(process.execPath, [AGENT_BIN, '--config', cfg], { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const exited = once(child, 'exit');
  try {
    const admin = await poll('admin address in the log', async () => /"admin":"([^"]+)"/.exec(out)?.[1]);
    await check(`http://${admin}`, child.pid!);
    child.kill('SIGTERM');
    const [code] = await exited;
    assert.equal(code, 0, out);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
}
