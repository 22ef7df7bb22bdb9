// execa, loaded at the first command: it costs ~6 MiB RSS, and the agent runs commands only with iptables
// interception or an address to add to an interface (README, "Memory").
import type { execa as Execa } from 'execa';

export const execa = (async (...args: Parameters<typeof Execa>) => (await import('execa')).execa(...args)) as unknown as typeof Execa;
