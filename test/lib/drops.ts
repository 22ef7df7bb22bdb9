// Packets a lab namespace's iptables DROP rules have discarded: the positive evidence for a negative check. Once a
// drop counter has counted the datagram under test, it can no longer arrive — no need to wait for silence.
import type { Lab, Target } from '../../packages/lab/src/netlab.ts';

/** A DROP rule line of `iptables -nvxL` for UDP (the protocol column reads `udp`, or `17` with iptables-nft). */
export const UDP_DROP_RULE = /^\s*\d+\s+\d+\s+DROP\s+(udp|17)\s/;

/** Sum of the packet counters of the DROP rules in `chain` of `target`'s filter table whose line matches `match`. */
export async function dropCount(lab: Lab, target: Target, chain: string, match: RegExp = /./): Promise<number> {
  const r = await lab.exec(target, 'iptables', ['-w', '5', '-t', 'filter', '-n', '-v', '-x', '-L', chain], { reject: true });
  let sum = 0;
  for (const line of r.stdout.split('\n').slice(2)) {
    const cols = line.trim().split(/\s+/);
    if (cols[2] === 'DROP' && match.test(line)) sum += Number(cols[0]);
  }
  return sum;
}

/** Polls until `dropCount(...)` exceeds `before`; returns the new count. Throws after `timeoutMs`. */
export async function waitForDrop(lab: Lab, target: Target, chain: string, before: number, timeoutMs: number, match?: RegExp): Promise<number> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const n = await dropCount(lab, target, chain, match);
    if (n > before) return n;
    if (Date.now() > end) throw new Error(`no packet dropped in ${chain} of ${typeof target === 'string' ? target : target.ns} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
