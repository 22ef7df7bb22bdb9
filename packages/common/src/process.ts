// Process lifecycle shared by both binaries: exit 2 for config errors, 0 after cleanup on SIGTERM/SIGINT,
// 1 for a fatal runtime error.
import { ConfigError } from './config.ts';
import type { Logger } from './log.ts';

/** Cleanup is abandoned (exit 1) when it takes longer than this (plus the drain time the caller allows). */
export const SHUTDOWN_TIMEOUT_MS = 10_000;

export function exitOnConfigError(e: unknown): never {
  if (e instanceof ConfigError) {
    process.stderr.write(`${e.message}\n`);
    process.exit(2);
  }
  throw e;
}

/**
 * Runs `stop` once on SIGTERM/SIGINT, then exits 0 (1 if cleanup failed or hung). Fatal errors run it too.
 * `drainMs`: how long `stop` may let connections finish on top of SHUTDOWN_TIMEOUT_MS. Returns the shutdown
 * function, for a process that decides to end by itself (an agent that handed over to its successor).
 */
export function handleSignals(log: Logger, stop: () => Promise<void>, drainMs = 0): (code: number, why: string) => void {
  let stopping = false;
  const shutdown = async (code: number, why: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ why }, 'shutting down');
    const timer = setTimeout(() => {
      log.error('cleanup timed out');
      process.exit(1);
    }, SHUTDOWN_TIMEOUT_MS + drainMs);
    timer.unref();
    try {
      await stop();
    } catch (e) {
      log.error({ err: e }, 'cleanup failed');
      code = 1;
    }
    log.flush?.();
    process.exit(code);
  };
  process.on('SIGTERM', () => void shutdown(0, 'SIGTERM'));
  process.on('SIGINT', () => void shutdown(0, 'SIGINT'));
  process.on('uncaughtException', (e) => {
    log.fatal({ err: e }, 'uncaught exception');
    void shutdown(1, 'fatal');
  });
  process.on('unhandledRejection', (e) => {
    log.fatal({ err: e }, 'unhandled rejection');
    void shutdown(1, 'fatal');
  });
  return (code, why) => void shutdown(code, why);
}

export async function readVersion(): Promise<string> {
  const { readFileSync } = await import('node:fs');
  const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}
