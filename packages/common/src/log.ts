// pino JSON logger. Never log secrets; never log per packet at info.
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string, name: string, bindings: Record<string, unknown> = {}): Logger {
  return pino({ level, name, base: { pid: process.pid, ...bindings }, redact: { paths: ['token', '*.token', 'secret', '*.secret'], censor: '[redacted]' } });
}

/** A logger that writes nothing: for tests and pure modules that take a logger. */
export const silentLogger: Logger = pino({ level: 'silent' });
