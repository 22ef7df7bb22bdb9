// Runs the tunnel abuse attacks (test/lib/tunnel-abuse-lab.ts) against the agent binary of any checkout and prints
// what happened as a table, without asserting — e.g. the "before" column from a checkout of an older branch:
//   npx node test/lib/tunnel-abuse-report.ts [--root DIR] [--nofile 2048]
// Needs root (network namespaces). The attackers (tunnel-node.ts) come from this checkout; the wire is the same.
import { resolve } from 'node:path';
import { TunnelAbuseLab, tunnelAttacks, type TunnelAttackResult } from './tunnel-abuse-lab.ts';

const arg = (k: string) => { const i = process.argv.indexOf(k); return i > 0 ? process.argv[i + 1] : undefined; };
const root = resolve(arg('--root') ?? resolve(import.meta.dirname, '../..'));
const nofile = Number(arg('--nofile') ?? 2048);

const t = await TunnelAbuseLab.start(root, nofile);
const results: TunnelAttackResult[] = [];
try {
  for (const a of tunnelAttacks(t)) {
    try {
      const r = await t.attack(a.name, a.run, a.cleanup);
      results.push(r);
      console.log(JSON.stringify(r));
      if (!r.alive) console.log(`agent died:\n${t.tail(8)}`);
    } catch (e) {
      console.log(JSON.stringify({ attack: a.name, error: (e as Error).message.slice(0, 400), agentLog: t.tail(5) }));
    }
  }
} finally {
  await t.destroy();
}
console.log(`\nroot ${root}, RLIMIT_NOFILE ${nofile}\n`);
console.log('| attack | legit rounds failed | recovered | alive | fds before/peak/after | attacker |');
console.log('|---|---|---|---|---|---|');
for (const r of results) {
  console.log(`| ${r.attack} | ${r.during.failed}/${r.during.rounds}${r.during.failures.length ? ` (${r.during.failures.slice(0, 2).join('; ')})` : ''} | ${r.recoveredMs >= 0 ? `${r.recoveredMs} ms` : 'no'} | ${r.alive} | ${r.fds.before}/${r.fds.peak}/${r.fds.after} | ${JSON.stringify(r.attacker)} |`);
}
