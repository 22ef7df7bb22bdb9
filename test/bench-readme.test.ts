// bench/readme.ts: the README's benchmark summary and per-bench tables are generated from bench/results/*.json, so
// they cannot disagree. Checked here: the markers exist; the committed README agrees with the committed results; with
// a full set of results (test/fixtures/bench/, short real runs) every block is generated, the summary shows the same
// figures as the sections, text outside the markers is untouched, and a time-to-direct miss counts as the timeout.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { BLOCKS, blockText, loadResults, renderBlock, renderReadme, type Results } from '../bench/readme.ts';
import type { ClusterData, TunnelData } from '../bench/shapes.ts';

const ROOT = resolve(import.meta.dirname, '..');
const README = readFileSync(join(ROOT, 'README.md'), 'utf8');
const fixtures = () => loadResults(join(ROOT, 'test/fixtures/bench'));

/** The README with every block emptied: what the generator must never change. */
const outside = (text: string) => BLOCKS.reduce((t, b) => { const x = blockText(t, b); return t.slice(0, x.start) + t.slice(x.end); }, text);

test('the README has begin/end markers for the summary and every bench', () => {
  for (const b of BLOCKS) assert.doesNotThrow(() => blockText(README, b), b);
});

test('the committed README agrees with the committed bench/results (node bench/readme.ts --check)', () => {
  const { changed } = renderReadme(README, loadResults(join(ROOT, 'bench/results')));
  assert.deepEqual(changed, [], 'run the benches, then node bench/readme.ts');
});

test('with results for every bench, all blocks are generated; nothing outside the markers changes; idempotent', () => {
  const r = fixtures();
  const once = renderReadme(README, r);
  assert.deepEqual(once.missing, []);
  assert.equal(outside(once.text), outside(README));
  assert.deepEqual(renderReadme(once.text, r).changed, [], 'a second run changes nothing');
});

test('the summary shows the same figures as the sections it summarises', () => {
  const r = fixtures();
  const summary = renderBlock('summary', r)!;
  const row = (cmd: string) => summary.split('\n').find((l) => l.startsWith(`| \`npx node bench/${cmd}/run.ts\``))!;
  // DNS: each ratio of the section's table appears in the summary row.
  const dnsRatios = [...renderBlock('dns', r)!.matchAll(/^\| [^|]+ \| [\d,]+ \| [\d,]+ \| ([\d.]+×) \|$/gm)].map((m) => m[1]);
  assert.equal(dnsRatios.length, 2);
  for (const x of dnsRatios) assert.ok(row('dns').includes(`**${x}**`), `${x} not in ${row('dns')}`);
  // Proxy: the bulk upload ratio.
  const up = /\| bulk upload[^|]*\|[^|]*\|[^|]*\| ([\d.]+) \(/.exec(renderBlock('proxy', r)!)![1];
  assert.ok(row('proxy').includes(`bulk up **${up}×**`), row('proxy'));
  // Tunnel: direct/raw and the cone pairs' p95 range.
  const tun = renderBlock('tunnel', r)!;
  const directRaw = /direct\/raw ([\d.]+)/.exec(tun)![1];
  assert.ok(row('tunnel').includes(`**${directRaw}×** raw`), row('tunnel'));
  // Cluster: idle RSS of both sources and the file source's start -> ready.
  const cluster = renderBlock('cluster', r)!;
  const [, idleFile, idleKube] = /^\| RSS idle \| (\d+ MiB) \| (\d+ MiB) \|/m.exec(cluster)!;
  assert.ok(row('cluster').includes(`RSS idle **${idleFile}** file / **${idleKube}** kubernetes`), row('cluster'));
  const readyFile = /^\| start → ready with [\d,]+ Services, wall \(CPU\) \| ([\d.]+ m?s) \(/m.exec(cluster)![1];
  assert.ok(row('cluster').includes(`start → ready **${readyFile}** file`), row('cluster'));
});

test('cluster goals: judged from the data for a run of the goals\' size, not judged for another size', () => {
  const r = fixtures();
  const small = renderBlock('cluster', r)!;
  const size = `a ${r.cluster!.data.services.toLocaleString('en-US')} × ${r.cluster!.data.endpoints} run`;
  assert.match(small, new RegExp(`≤ 130 MiB — not judged: ${size}`));
  assert.match(small, /\| RSS idle \|[^\n]*≤ 70 MiB file — (met|missed); ≤ 90 MiB kubernetes — (met|missed) \|/);
  const c = structuredClone(r.cluster!) as NonNullable<Results['cluster']>;
  const d: ClusterData = c.data;
  d.services = 5000;
  d.endpoints = 3;
  const at = (rss: number) => ({ rss, anon: rss / 2, file: rss / 2 });
  Object.assign(d.file, { idle: at(69), cold: at(120), inPlace: at(131), readyMs: 1400, perStepColdMiB: 7, perStepInPlaceMiB: 7.5 });
  Object.assign(d.kubernetes, { idle: at(91), cold: at(125), inPlace: at(126), readyMs: 1600, perStepColdMiB: 6, perStepInPlaceMiB: 2 });
  const text = renderBlock('cluster', { ...r, cluster: c })!;
  assert.match(text, /\| RSS idle \| 69 MiB \| 91 MiB \| ≤ 70 MiB file — met; ≤ 90 MiB kubernetes — missed \|/);
  assert.match(text, /\| RSS with 5,000 Services × 3 endpoints, fresh start \/ added in place \| 120 \/ 131 MiB \| 125 \/ 126 MiB \| ≤ 130 MiB — missed \|/);
  assert.match(text, /\| start → ready with 5,000 Services, wall \(CPU\) \| 1\.4 s \([^)]*\) \| 1\.6 s \([^)]*\) \| ≤ 1\.5 s — missed \|/);
  assert.match(text, /\| RSS per extra 1,000 Services, fresh starts 1,000 → 5,000 \/ \+1,000 in place \| 7\.0 \/ 7\.5 MiB \| 6\.0 \/ 2\.0 MiB \| ≤ 8 MiB — met \|/);
  const summary = renderBlock('summary', { ...r, cluster: c })!;
  assert.match(summary, /idle ≤ 70 \(file: met\) \/ ≤ 90 MiB \(kubernetes: missed\); ≤ 130 MiB \(missed\), ≤ 1\.5 s \(missed\), ≤ 8 MiB \(met\)/);
});

test('time to direct: a miss counts as the timeout in p50/p95 and as a miss', () => {
  const r = fixtures();
  const t = structuredClone(r.tunnel!) as NonNullable<Results['tunnel']>;
  const d: TunnelData = t.data;
  d.ttd = [{ name: 'port-restricted <-> port-restricted', goal: true, ms: [10, null, 20], firstStreamMs: [5, 5, 5], natEntriesDeleted: [0, 2, 2] }];
  const text = renderBlock('tunnel', { ...r, tunnel: t })!;
  assert.match(text, /\| port-restricted ↔ port-restricted \| 20 ms \| 20\.0 s \| 1 \| 5 ms \|/);
  assert.match(text, /goal p95 < 1\.0 s for the cone pairs: missed/);
});

test('tunnel: every path as a ratio to raw iperf3 of its hosts; results without the same-LAN pair still render', () => {
  const r = fixtures();
  const d = r.tunnel!.data;
  const x = (n: number, m: number) => `${(n / m).toFixed(2)}×`;
  const text = renderBlock('tunnel', r)!;
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const raw = med(d.rawMbps), lanRaw = med(d.lanRawMbps!);
  assert.match(text, new RegExp(`^\\| tunnel direct [^\\n]*\\| ${x(med(d.directMbps), raw)} \\|`, 'm'));
  assert.match(text, new RegExp(`^\\| tunnel relay [^\\n]*\\| ${x(med(d.relayMbps), raw)} \\|`, 'm'));
  assert.match(text, new RegExp(`^\\| tunnel same LAN [^\\n]*\\| ${x(med(d.lanMbps!), lanRaw)} \\|`, 'm'));
  assert.match(text, /^\| iperf3 raw TCP between two hosts of one LAN/m);
  assert.ok(renderBlock('summary', r)!.includes(`same LAN`), 'summary names the same-LAN pair');
  // Results written before the pair existed: no same-LAN rows, everything else as before.
  const old = structuredClone(r.tunnel!) as NonNullable<Results['tunnel']>;
  delete old.data.lanMbps;
  delete old.data.lanRawMbps;
  const oldText = renderBlock('tunnel', { ...r, tunnel: old })!;
  assert.doesNotMatch(oldText, /same LAN \(direct|one LAN/);
  assert.match(oldText, /direct\/raw [\d.]+ \(goal ≥ 0\.5: (met|missed)\), relay\/direct [\d.]+ [^\n]*relay\/raw [\d.]+\.$/m);
  assert.doesNotMatch(renderBlock('summary', { ...r, tunnel: old })!, /same LAN/);
});

test('a bench without results leaves its block, and the summary, as they are', () => {
  const r = fixtures();
  delete r.proxy;
  const out = renderReadme(README, r);
  assert.deepEqual(out.missing, ['summary', 'proxy']);
  assert.equal(blockText(out.text, 'proxy').text, blockText(README, 'proxy').text);
  assert.equal(blockText(out.text, 'summary').text, blockText(README, 'summary').text);
  assert.notEqual(blockText(out.text, 'dns').text, blockText(README, 'dns').text);
});

test('server: the summary row shows the section\'s RSS per agent and heartbeat CPU, judged against the goals', () => {
  const r = fixtures();
  const section = renderBlock('server', r)!;
  const kib = /\*\*([\d.]+) KiB per agent\*\*/.exec(section)![1];
  const cpu = /\*\*([\d.]+) %\*\* of a core/.exec(section)![1];
  const row = renderBlock('summary', r)!.split('\n').find((l) => l.startsWith('| `npx node bench/server/run.ts`'))!;
  assert.ok(row.includes(`**${kib} KiB** RSS per agent`) && row.includes(`**${cpu} %** of a core`), row);
  // The fixture is a 300-agent run: the 20,000-agent goal is missed, whatever the rest says.
  assert.match(row, /≥ 20,000 agents \(missed\)/);
  const { server: _, ...rest } = r;
  assert.equal(renderBlock('summary', rest)!.includes('bench/server/run.ts'), false, 'no server results: no row');
});
