// Runs the relay abuse suite's attacks (test/lib/relay-abuse-lab.ts) against the server of any checkout and prints
// what happened as JSON lines and a table, without asserting — e.g. the "before" column from a checkout of main:
//   npx node test/lib/relay-abuse-report.ts [--root DIR] [--nofile 2048] [--only NAME,...] [--duration MS]
// Needs root (network namespaces).
import { resolve } from 'node:path';
import { RelayAbuseLab, relayAttacks, type RelayAttackResult } from './relay-abuse-lab.ts';

const arg = (k: string) => { const i = process.argv.indexOf(k); return i > 0 ? process.argv[i + 1] : undefined; };
const root = resolve(arg('--root') ?? resolve(import.meta.dirname, '../..'));
const nofile = Number(arg('--nofile') ?? 2048);
const only = arg('--only')?.split(',');
const duration = Number(arg('--duration') ?? 20_000);

const al = await RelayAbuseLab.start(root, nofile);
const results: RelayAttackResult[] = [];
try {
  for (const a of relayAttacks(al, duration)) {
    if (only && !only.includes(a.name)) continue;
    try {
      const r = await al.attack(a.name, a.cfg);
      results.push(r);
      console.log(JSON.stringify(r));
    } catch (e) {
      console.log(JSON.stringify({ attack: a.name, error: (e as Error).message.slice(0, 600), serverLog: al.tail(6) }));
    }
  }
} finally {
  await al.destroy();
}
console.log(`\nroot ${root}, RLIMIT_NOFILE ${nofile}\n`);
console.log('| attack | legit rounds failed | slowest call | recovered | server alive | server fds before/peak/after | server RSS MiB before/peak/after | victim warnings | attacker |');
console.log('|---|---|---|---|---|---|---|---|---|');
const mib = (k: number) => (k / 1024).toFixed(0);
for (const r of results) {
  const s = r.server;
  console.log(`| ${r.attack} | ${r.during.failed}/${r.during.rounds}${r.during.failures.length ? ` (${r.during.failures.slice(0, 2).join('; ')})` : ''} | ${r.during.webMsMax} ms | ${r.recoveredMs >= 0 ? `${r.recoveredMs} ms` : 'no'} | ${r.alive} | ${s.before.fds}/${s.peak.fds}/${s.after.fds} | ${mib(s.before.rssKiB)}/${mib(s.peak.rssKiB)}/${mib(s.after.rssKiB)} | ${r.victimWarnings} | ${JSON.stringify(r.attacker)} |`);
}
