// Soak: the real server and two agents (the relay abuse lab, test/lib/relay-abuse-lab.ts: two UDP-blocked sites, so
// every cross-node call rides the server's relay; the server under RLIMIT_NOFILE --nofile) run for --duration seconds
// while a pod on n1 keeps calling a Service on n2 (DNS over UDP to its agent, HTTP over TCP and UDP datagrams through
// the mesh) and the server's attacks run in rotation (relay-stream flood, parked partial frames, unauthenticated
// connection flood; --attack seconds each, --rest seconds between). RSS and descriptors of the server and both agents
// are sampled every --sample seconds; after each rest (the quiet point of a cycle) one more sample is kept apart, and
// the figures are: the least-squares slope of the quiet samples (MiB/h, descriptors/h) and the growth from the first
// third of the run to the last (flat = within SOAK_FLAT_MIB / SOAK_FLAT_FDS). Needs root.
//   npx node bench/soak/run.ts [--duration 600] [--attack 20] [--rest 10] [--sample 5] [--nofile 2048]
//                              [--server-memory 512Mi|none] [--agent-memory 256Mi]
// Writes bench/results/soak.json; `node bench/readme.ts` renders the README block.
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { RelayAbuseLab, procStats, relayAttacks, WEB_PORT } from '../../test/lib/relay-abuse-lab.ts';
import { AGENT_IP } from '../../packages/lab/src/mesh.ts';
import { writeResult } from '../results.ts';
import type { SoakData, SoakProcess, SoakSample } from '../shapes.ts';
import { SOAK_FLAT_FDS, SOAK_FLAT_MIB, soakFigures } from './figures.ts';

const { values } = parseArgs({
  options: {
    duration: { type: 'string', default: '600' }, attack: { type: 'string', default: '20' }, rest: { type: 'string', default: '10' },
    sample: { type: 'string', default: '5' }, nofile: { type: 'string', default: '2048' },
    // The chart's memory limits (charts/edgemesh/values.yaml): V8 is sized from them as in a pod. 'none': V8 defaults.
    'server-memory': { type: 'string', default: '512Mi' }, 'agent-memory': { type: 'string', default: '256Mi' },
  },
});
const durationS = Number(values.duration);
const attackS = Number(values.attack);
const restS = Number(values.rest);
const sampleS = Number(values.sample);
const nofile = Number(values.nofile);
for (const [k, v] of Object.entries({ durationS, attackS, restS, sampleS, nofile })) {
  if (!(v > 0)) {
    console.error(`bad --${k.replace(/S$/, '')}: expected a positive number`);
    process.exit(2);
  }
}
const CLIENT = resolve(import.meta.dirname, 'client.ts');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mib = (kib: number) => Math.round((kib / 1024) * 10) / 10;

const memoryLimits = values['server-memory'] === 'none' ? undefined : { server: values['server-memory']!, agent: values['agent-memory']! };
const al = await RelayAbuseLab.start(resolve(import.meta.dirname, '../..'), nofile, { memoryLimits });
const t0 = Date.now();
const sec = () => Math.round((Date.now() - t0) / 100) / 10;
const names = ['server', 'n1', 'n2'] as const;
const pid = (n: (typeof names)[number]) => (n === 'server' ? al.server.proc.pid : al.mesh.procs.get(n)?.proc.pid);
const procs: Record<string, SoakProcess> = Object.fromEntries(names.map((n) => [n, { samples: [], quiet: [] }]));
const sampleNow = (): Record<string, SoakSample> => Object.fromEntries(names.map((n) => {
  const s = procStats(pid(n));
  return [n, { t: sec(), rssMiB: mib(s.rssKiB), fds: s.fds }];
}));
const legit = { ok: { dns: 0, tcp: 0, udp: 0 }, failed: { dns: 0, tcp: 0, udp: 0 }, maxMs: { dns: 0, tcp: 0, udp: 0 }, errors: [] as string[] };
const attackRuns: Record<string, { runs: number; attacker: Record<string, unknown>[] }> = {};
let serverDied = false;

try {
  // The legitimate client, for the whole run.
  const client = al.lab.spawn('n1', process.execPath, [CLIENT, JSON.stringify({
    dns: AGENT_IP, name: 'web.mesh.svc.cluster.local', port: 80, durationMs: durationS * 1000, intervalMs: 250, timeoutMs: 2000, reportMs: 5000,
  })]);
  let buf = '';
  client.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        const r = JSON.parse(line) as typeof legit;
        for (const k of ['dns', 'tcp', 'udp'] as const) {
          legit.ok[k] += r.ok[k];
          legit.failed[k] += r.failed[k];
          legit.maxMs[k] = Math.max(legit.maxMs[k], r.maxMs[k]);
        }
        for (const e of r.errors) if (legit.errors.length < 20) legit.errors.push(`${sec()} s ${e}`);
      } catch {
        // not a report line
      }
    }
  });
  const clientDone = new Promise<void>((r) => client.once('exit', () => r()));
  const sampler = setInterval(() => {
    const s = sampleNow();
    for (const n of names) procs[n].samples.push(s[n]);
  }, sampleS * 1000);
  for (const n of names) procs[n].quiet.push(sampleNow()[n]);
  const attacks = relayAttacks(al, attackS * 1000);
  let i = 0;
  while (Date.now() - t0 + (attackS + restS) * 1000 <= durationS * 1000) {
    const a = attacks[i++ % attacks.length];
    const tool = al.runTool(a.cfg);
    const r = await tool.done.catch((e: Error) => ({ error: e.message.slice(0, 200) }));
    (attackRuns[a.name] ??= { runs: 0, attacker: [] }).runs++;
    if (attackRuns[a.name].attacker.length < 3) attackRuns[a.name].attacker.push({ ...r, ev: undefined, mode: undefined });
    await sleep(restS * 1000);
    if (!al.alive()) {
      serverDied = true;
      console.log(`${sec()} s: the server died:\n${al.tail()}`);
      break;
    }
    const q = sampleNow();
    for (const n of names) procs[n].quiet.push(q[n]);
    console.log(`${sec()} s: ${a.name} done; quiet: ${names.map((n) => `${n} ${q[n].rssMiB} MiB ${q[n].fds} fds`).join(', ')}; legit ok ${JSON.stringify(legit.ok)} failed ${JSON.stringify(legit.failed)}`);
  }
  await clientDone;
  clearInterval(sampler);
} finally {
  await al.destroy();
}

const data: SoakData = {
  durationS: Math.round((Date.now() - t0) / 1000), requestedS: durationS, attackS, restS, sampleS, nofile, memoryLimits, serverDied,
  legit, attacks: attackRuns, processes: procs,
};
const f = soakFigures(data);
console.log(`\nflat: ${f.flat} (RSS within ${SOAK_FLAT_MIB} MiB, descriptors within ${SOAK_FLAT_FDS}, first third → last third of the quiet samples after the first ${f.warmup})`);
for (const p of f.rows) console.log(`${p.name}: RSS ${p.rssFirst} → ${p.rssLast} MiB (slope ${p.rssSlopePerHour} MiB/h, peak ${p.rssPeak}), fds ${p.fdsFirst} → ${p.fdsLast} (slope ${p.fdsSlopePerHour}/h, peak ${p.fdsPeak}): ${p.flat ? 'flat' : 'NOT flat'}`);
writeResult('soak', data);
