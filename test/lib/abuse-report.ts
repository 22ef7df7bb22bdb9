// Runs the abuse suite's attacks (test/lib/abuse-lab.ts) against the binaries of any checkout and prints what happened
// as a table, without asserting — e.g. the "before" column from a checkout of main:
//   npx node test/lib/abuse-report.ts [--root DIR] [--nofile 2048] [--only NAME,...]
// Needs root (network namespaces).
import { resolve } from 'node:path';
import { AbuseLab, attacks, type AttackResult } from './abuse-lab.ts';

const arg = (k: string) => { const i = process.argv.indexOf(k); return i > 0 ? process.argv[i + 1] : undefined; };
const root = resolve(arg('--root') ?? resolve(import.meta.dirname, '../..'));
const nofile = Number(arg('--nofile') ?? 2048);
const only = arg('--only')?.split(',');

const al = await AbuseLab.start(root, nofile);
const results: AttackResult[] = [];
try {
  for (const a of attacks(al)) {
    if (only && !only.includes(a.name)) continue;
    try {
      const r = await al.attack(a.name, a.host, a.cfg);
      results.push(r);
      console.log(JSON.stringify(r));
    } catch (e) {
      console.log(JSON.stringify({ attack: a.name, error: (e as Error).message.slice(0, 400), agentLog: al.tail(al.agent, 5), serverLog: al.tail(al.server, 5) }));
      await al.reviveVictims().catch(() => {});
    }
  }
} finally {
  await al.destroy();
}
console.log(`\nroot ${root}, RLIMIT_NOFILE ${nofile}\n`);
console.log('| attack | legit rounds failed | recovered | alive agent/server | fds agent before/peak/after | fds server before/peak/after | attacker |');
console.log('|---|---|---|---|---|---|---|');
for (const r of results) {
  const f = (x: { before: number; peak: number; after: number }) => `${x.before}/${x.peak}/${x.after}`;
  console.log(`| ${r.attack} | ${r.during.failed}/${r.during.rounds}${r.during.failures.length ? ` (${r.during.failures.slice(0, 3).join('; ')})` : ''} | ${r.recoveredMs >= 0 ? `${r.recoveredMs} ms` : 'no'} | ${r.alive.agent}/${r.alive.server} | ${f(r.fds.agent)} | ${f(r.fds.server)} | ${JSON.stringify(r.attacker)} |`);
}
