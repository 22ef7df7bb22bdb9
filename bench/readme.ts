// Regenerates the README's benchmark figures from bench/results/<name>.json: the summary table (## Benchmarks) and
// each bench's detailed table in its section, between marker comments
//   <!-- bench:<block>:begin ... -->  ...generated...  <!-- bench:<block>:end -->
// (block = summary | dns | proxy | tunnel | cluster | soak | server). Summary and sections come from the same files, so they cannot
// disagree. A bench without a results file leaves its block as it is; the summary is written only when all four
// exist. Text outside the markers is never touched.
//   node bench/readme.ts            rewrite README.md
//   node bench/readme.ts --check    exit 1 when a block differs from what its results file gives
// Results are read from $BENCH_RESULTS_DIR or bench/results/.
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { BENCH_NAMES, readResult, resultsDir, type BenchName, type BenchResult } from './results.ts';
import type { ClusterData, DnsData, ProxyData, ProxyRow, ServerBenchData, SoakData, TunnelData } from './shapes.ts';
import { SOAK_FLAT_FDS, SOAK_FLAT_MIB, soakFigures } from './soak/figures.ts';

export const BLOCKS = ['summary', ...BENCH_NAMES] as const;
export type Block = (typeof BLOCKS)[number];

export const GOALS = {
  dnsRatio: 0.35,
  proxyBulkUp: 0.8,
  proxyBulkDown: 0.9,
  proxyKeepAlive: 0.7,
  proxyNewConns: 0.6,
  /** Added latency of a keep-alive request through the proxy, as a multiple of haproxy's. */
  proxyLatency: 1.2,
  proxySyncMs: 1000,
  /** Flat group (proxy.directCIDRs): every measure through the agent vs haproxy between the same two hosts. */
  proxyFlat: 0.8,
  tunnelDirectRaw: 0.5,
  tunnelRelayDirect: 0.8,
  tunnelTtdP95Ms: 1000,
  /** The cluster goals are for this cluster size; a run of another size shows its figures without judging them. */
  clusterServices: 5000,
  clusterEndpoints: 3,
  clusterIdleFileMiB: 70,
  clusterIdleKubeMiB: 90,
  clusterLoadedMiB: 130,
  clusterReadyMs: 1500,
  clusterPerStepMiB: 8,
  /** One server replica (issue 17): agents held, RSS each, CPU of their heartbeats (% of one core). */
  serverAgents: 20_000,
  serverKiBPerAgent: 16,
  serverHeartbeatCpuPct: 10,
} as const;

export interface Results {
  dns?: BenchResult<DnsData>;
  proxy?: BenchResult<ProxyData>;
  tunnel?: BenchResult<TunnelData>;
  cluster?: BenchResult<ClusterData>;
  soak?: BenchResult<SoakData>;
  server?: BenchResult<ServerBenchData>;
}

/** The summary needs these four; soak and server add their rows when present. */
type SummaryResults = Required<Pick<Results, 'dns' | 'proxy' | 'tunnel' | 'cluster'>> & Results;

export function loadResults(dir: string): Results {
  const out: Results = {};
  for (const b of BENCH_NAMES) {
    const r = readResult<never>(dir, b);
    if (r) (out as Record<BenchName, unknown>)[b] = r;
  }
  return out;
}

// --- formatting ---
const num = (n: number, digits = 0) => n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
const ratio = (n: number) => `${n.toFixed(2)}×`;
const ms = (n: number) => (n >= 1000 ? `${(n / 1000).toFixed(1)} s` : `${Math.round(n)} ms`);
const mib = (n: number) => `${Math.round(n)} MiB`;
/** "76–157 ms", "1.2–4.7 s", or "76 ms–1.2 s" across units. */
const msRange = (a: number, b: number) => {
  const [x, y] = [ms(a), ms(b)];
  return x.split(' ')[1] === y.split(' ')[1] ? `${x.split(' ')[0]}–${y}` : `${x}–${y}`;
};
const kqps = (n: number) => `${Math.round(n / 1000)}k`;
const met = (ok: boolean) => (ok ? 'met' : 'missed');
const day = (iso: string) => iso.slice(0, 10);
const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
const pct = (xs: number[], p: number) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]; };
const host = (r: BenchResult<unknown>) => `${r.host.cpus} CPUs (${r.host.cpuModel}), load average ${r.host.loadavg1} at the start, Node ${r.host.node}`;
/** "Measured with `npx node bench/dns/run.ts --seconds 10` on 2026-12-02, 2 CPUs (...)". */
const measured = (r: BenchResult<unknown>) => `Measured with \`${['npx node', `bench/${r.bench}/run.ts`, ...r.argv].join(' ')}\` on ${day(r.date)}, ${host(r)}`;

// --- derived figures, shared by the summary and the sections ---
function dnsFigures(d: DnsData) {
  const rows = d.rows.map((r) => ({ ...r, ratio: r.agentQps / r.unboundQps }));
  return { rows, ok: rows.every((r) => r.ratio >= GOALS.dnsRatio) };
}

/** Each row's best run per side, their ratio and the spread of the alternating pairs' ratios. */
function rowFigures(rs: ProxyRow[]) {
  return rs.map((r) => {
    const agent = Math.max(...r.agentRuns);
    const haproxy = Math.max(...r.haproxyRuns);
    const pairs = r.agentRuns.map((a, i) => a / r.haproxyRuns[i]);
    return { ...r, agent, haproxy, ratio: agent / haproxy, lo: Math.min(...pairs), hi: Math.max(...pairs) };
  });
}

/** Added latency (wrk -c1 median minus the direct median; each side's least disturbed run). */
function addedLatency(l: NonNullable<ProxyData['latency']>) {
  const best = (xs: { p50: number }[]) => Math.min(...xs.map((x) => x.p50));
  const direct = best(l.direct);
  return { direct, agent: best(l.agent) - direct, haproxy: best(l.haproxy) - direct };
}

function proxyFigures(d: ProxyData) {
  const rows = rowFigures(d.rows);
  const flatRows = d.flat ? rowFigures(d.flat.rows) : [];
  const flatOk = flatRows.length > 0 && flatRows.every((x) => x.ratio >= GOALS.proxyFlat);
  const row = (k: ProxyRow['key']) => rows.find((r) => r.key === k)!;
  const bulkOk = row('bulk-up').ratio >= GOALS.proxyBulkUp && row('bulk-down').ratio >= GOALS.proxyBulkDown;
  const latency = d.latency && addedLatency(d.latency);
  const latencyRatio = latency && latency.agent / latency.haproxy;
  const flatLatency = d.flat?.latency && addedLatency(d.flat.latency);
  return { rows, row, bulkOk, keepAliveOk: row('keep-alive').ratio >= GOALS.proxyKeepAlive, syncOk: d.sync.agentSyncMsAvg <= GOALS.proxySyncMs, latency, latencyRatio, flatRows, flatOk, flatLatency };
}

function tunnelFigures(d: TunnelData) {
  const raw = median(d.rawMbps);
  const direct = median(d.directMbps);
  const relay = median(d.relayMbps);
  // The same-LAN pair, when the results have it (written before it was added: absent).
  const lan = d.lanMbps?.length && d.lanRawMbps?.length ? { mbps: median(d.lanMbps), raw: median(d.lanRawMbps), runs: d.lanMbps, rawRuns: d.lanRawMbps } : undefined;
  const ttd = d.ttd.map((t) => {
    const all = t.ms.map((x) => x ?? d.ttdTimeoutMs); // a miss counts as the timeout
    return { ...t, p50: median(all), p95: pct(all, 95), misses: t.ms.filter((x) => x === null).length, first: median(t.firstStreamMs) };
  });
  const cone = ttd.filter((t) => t.goal);
  const other = ttd.filter((t) => !t.goal);
  return {
    raw, direct, relay, lan, ttd, cone, other,
    directOk: direct / raw >= GOALS.tunnelDirectRaw, relayOk: relay / direct >= GOALS.tunnelRelayDirect,
    ttdOk: cone.every((t) => t.p95 < GOALS.tunnelTtdP95Ms),
  };
}

function clusterFigures(d: ClusterData) {
  const both = [d.file, d.kubernetes];
  const loaded = both.flatMap((p) => [p.cold.rss, p.inPlace.rss]);
  const perStep = both.flatMap((p) => [p.perStepColdMiB, p.perStepInPlaceMiB]);
  const full = d.services === GOALS.clusterServices && d.endpoints === GOALS.clusterEndpoints;
  /** met/missed for a goal that depends on the cluster's size: only for a run of the goals' size. */
  const sized = (ok: boolean) => (full ? met(ok) : `not judged: a ${num(d.services)} × ${d.endpoints} run`);
  return {
    loaded, perStep, sized,
    idleFileOk: d.file.idle.rss <= GOALS.clusterIdleFileMiB,
    idleKubeOk: d.kubernetes.idle.rss <= GOALS.clusterIdleKubeMiB,
    // Every figure of the row must meet its goal: fresh start and in place, both sources.
    loadedOk: Math.max(...loaded) <= GOALS.clusterLoadedMiB,
    readyOk: Math.max(...both.map((p) => p.readyMs)) <= GOALS.clusterReadyMs,
    perStepOk: Math.max(...perStep) <= GOALS.clusterPerStepMiB,
  };
}
const codeLabel = (d: ClusterData) => (d.code === 'dist' ? 'built JavaScript, dist/' : 'TypeScript sources');
/** "76–78 MiB", or "76 MiB" when both ends round alike; `digits` decimals. */
const mibSpan = (xs: number[], digits = 0) => {
  const [lo, hi] = [Math.min(...xs).toFixed(digits), Math.max(...xs).toFixed(digits)];
  return lo === hi ? `${lo} MiB` : `${lo}–${hi} MiB`;
};

/** Short names of the proxy measures (summary). */
const MEASURE_SHORT: Record<ProxyRow['key'], string> = { 'bulk-up': 'bulk up', 'bulk-down': 'bulk down', 'keep-alive': 'keep-alive', 'new-conns': 'new connections' };

// --- the summary table ---
function summaryRows(r: SummaryResults): string[] {
  const dns = dnsFigures(r.dns.data);
  const [cl, fw] = dns.rows;
  const p = proxyFigures(r.proxy.data);
  const t = tunnelFigures(r.tunnel.data);
  const c = r.cluster.data;
  const cf = clusterFigures(c);
  const coneP95 = t.cone.map((x) => x.p95);
  const misses = t.ttd.reduce((n, x) => n + x.misses, 0);
  const sv = r.server && serverFigures(r.server.data);
  return [
    `| \`npx node bench/dns/run.ts\` | dnsperf against the agent and unbound serving the same names | ${cl.what} ${kqps(cl.agentQps)} vs ${kqps(cl.unboundQps)} qps = **${ratio(cl.ratio)}**; ${fw.what} **${ratio(fw.ratio)}** | ≥ ${GOALS.dnsRatio}× (${met(dns.ok)}) |`,
    `| \`npx node bench/proxy/run.ts\` | iperf3 and wrk through the agent's proxy and ${r.proxy.data.haproxy} (1 thread) | bulk up **${ratio(p.row('bulk-up').ratio)}**, bulk down **${ratio(p.row('bulk-down').ratio)}**, keep-alive **${ratio(p.row('keep-alive').ratio)}**, new connections ${ratio(p.row('new-conns').ratio)}${p.latencyRatio !== undefined ? `, added latency ${ratio(p.latencyRatio)}` : ''}${p.flatRows.length ? `; flat group (another node's pods dialed directly) ${p.flatRows.map((x) => `${MEASURE_SHORT[x.key]} ${ratio(x.ratio)}`).join(', ')}` : ''}; ${num(r.proxy.data.sync.ports)}-port rule sync **${ms(r.proxy.data.sync.agentSyncMsAvg)}**; RSS ${mib(r.proxy.data.sync.rssMiB)} | bulk ≥ ${GOALS.proxyBulkUp}× up / ≥ ${GOALS.proxyBulkDown}× down (${met(p.bulkOk)}), new connections ≥ ${GOALS.proxyNewConns}× (${met(p.row('new-conns').ratio >= GOALS.proxyNewConns)}),${p.latencyRatio !== undefined ? ` added latency ≤ ${GOALS.proxyLatency}× (${met(p.latencyRatio <= GOALS.proxyLatency)}),` : ''} keep-alive ≥ ${GOALS.proxyKeepAlive}× (${met(p.keepAliveOk)}), sync ≤ ${ms(GOALS.proxySyncMs)} (${met(p.syncOk)})${p.flatRows.length ? `, flat group ≥ ${GOALS.proxyFlat}× each (${p.flatOk ? 'met' : `missed: ${p.flatRows.filter((x) => x.ratio < GOALS.proxyFlat).map((x) => MEASURE_SHORT[x.key]).join(', ')}`})` : ''} |`,
    `| \`npx node bench/tunnel/run.ts\` | one stream direct (UDX + Noise), relayed and between two hosts of one LAN, iperf3 raw over the same namespaces; time to direct per NAT pair | direct ${num(t.direct)} Mb/s = **${ratio(t.direct / t.raw)}** raw (${num(t.raw)} Mb/s); relay ${num(t.relay)} Mb/s = **${ratio(t.relay / t.direct)}** direct (${ratio(t.relay / t.raw)} raw)${t.lan ? `; same LAN ${num(t.lan.mbps)} Mb/s = **${ratio(t.lan.mbps / t.lan.raw)}** its raw (${num(t.lan.raw)} Mb/s)` : ''}; time to direct p95 **${msRange(Math.min(...coneP95), Math.max(...coneP95))}** for cone pairs${t.other.map((x) => `, ${ms(x.p95)} ${x.name.includes('birthday') ? 'for birthday' : `for ${x.name}`}`).join('')}${misses ? ` (${misses} miss${misses === 1 ? '' : 'es'} counted as ${ms(r.tunnel.data.ttdTimeoutMs)})` : ''} | direct ≥ ${GOALS.tunnelDirectRaw}× raw (${met(t.directOk)}), relay ≥ ${GOALS.tunnelRelayDirect}× direct (${met(t.relayOk)}), p95 < ${ms(GOALS.tunnelTtdP95Ms)} (${met(t.ttdOk)}) |`,
    `| \`npx node bench/cluster/run.ts\` | the agent binary (${codeLabel(c)}, V8 sized for ${c.agentV8.memoryLimit}; DNS + proxy + tunnel on) with ${num(c.services)} Services × ${c.endpoints} endpoints, both sources | RSS idle **${mib(c.file.idle.rss)}** file / **${mib(c.kubernetes.idle.rss)}** kubernetes; ${num(c.services)} Services **${mibSpan(cf.loaded)}**; start → ready **${ms(c.file.readyMs)}** file / **${ms(c.kubernetes.readyMs)}** kubernetes; +${num(c.step)} Services ${mibSpan(cf.perStep, 1)} | idle ≤ ${GOALS.clusterIdleFileMiB} (file: ${met(cf.idleFileOk)}) / ≤ ${GOALS.clusterIdleKubeMiB} MiB (kubernetes: ${met(cf.idleKubeOk)}); ≤ ${GOALS.clusterLoadedMiB} MiB (${cf.sized(cf.loadedOk)}), ≤ ${ms(GOALS.clusterReadyMs)} (${cf.sized(cf.readyOk)}), ≤ ${GOALS.clusterPerStepMiB} MiB (${cf.sized(cf.perStepOk)}) |`,
    ...(sv ? [`| \`npx node bench/server/run.ts\` | ${num(sv.d.registered)} simulated agents (TLS 1.3, enrollment, renew sign-in, PONGs) against one edgemesh-server | **${sv.d.kibPerAgent.toFixed(1)} KiB** RSS per agent; heartbeat CPU **${sv.d.heartbeatCpuPct.toFixed(1)} %** of a core; sign-in ${num(sv.d.registerPerSec)} agents/s | ≥ ${num(GOALS.serverAgents)} agents (${met(sv.agentsOk)}) at ≤ ${GOALS.serverKiBPerAgent} KiB each (${met(sv.rssOk)}), heartbeat ≤ ${GOALS.serverHeartbeatCpuPct} % (${met(sv.cpuOk)}) |`] : []),
  ];
}

function renderSummary(r: SummaryResults): string {
  const dates = BENCH_NAMES.flatMap((b) => { const x = r[b]; return x ? [`${b} ${day(x.date)}`] : []; }).join(', ');
  return [
    `Figures from one run of each bench (\`bench/results/*.json\`: ${dates}) on ${host(r.dns)}; a shared machine, so take`,
    'the ratios, not the absolutes. The sections below give the details, from the same files.',
    '',
    '| command | what | result | goal |',
    '|---|---|---|---|',
    ...summaryRows(r),
  ].join('\n');
}

// --- the sections ---
function renderDns(r: BenchResult<DnsData>): string {
  const d = r.data;
  const f = dnsFigures(d);
  return [
    `${measured(r)} (ratios matter more than absolute figures): ${d.seconds} s runs after a ${d.warmupS} s warm-up, ${d.clients} clients × ${d.outstanding} outstanding queries${d.pinned ? ', servers on CPU 0 and dnsperf on CPU 1' : ''}:`,
    '',
    '| names | agent qps | unbound qps | agent/unbound |',
    '|---|---:|---:|---:|',
    ...f.rows.map((x) => `| ${x.what} | ${num(x.agentQps)} | ${num(x.unboundQps)} | ${ratio(x.ratio)} |`),
    '',
    `Lost queries and response codes: ${f.rows.map((x) => `${x.what}: agent ${x.agentOutcome}; unbound ${x.unboundOutcome}`).join('. ')}. Upstream queries during the bench: UDP ${num(d.upstreamQueries.udp)}, TCP ${num(d.upstreamQueries.tcp)} (for ${num(d.forwardedNames)} names, both servers).`,
  ].join('\n');
}

function renderProxy(r: BenchResult<ProxyData>): string {
  const d = r.data;
  const p = proxyFigures(d);
  const label: Record<ProxyRow['key'], string> = {
    'bulk-up': 'bulk upload, client → endpoint (iperf3)',
    'bulk-down': 'bulk download, endpoint → client (iperf3 -R)',
    'keep-alive': `keep-alive requests (wrk -c${d.wrkConns})`,
    'new-conns': 'new connections (wrk, `Connection: close`)',
  };
  const min: Record<ProxyRow['key'], number> = { 'bulk-up': GOALS.proxyBulkUp, 'bulk-down': GOALS.proxyBulkDown, 'keep-alive': GOALS.proxyKeepAlive, 'new-conns': GOALS.proxyNewConns };
  const goal = (k: ProxyRow['key']) => `≥ ${min[k]} — ${met(p.row(k).ratio >= min[k])}`;
  const us = (v: number) => `${v.toFixed(0)} µs`;
  const val = (x: { unit: string }, v: number) => (x.unit === 'req/s' ? `${num(v)} req/s` : `${v.toFixed(2)} ${x.unit}`);
  return [
    `${measured(r)} (ratios only), as root: ${d.seconds} s runs, best of two alternating runs each (the range is the ratio of each alternating pair):`,
    '',
    `| measure | agent | ${d.haproxy} | agent/haproxy | goal |`,
    '|---|---|---|---|---|',
    ...p.rows.map((x) => `| ${label[x.key]} | ${val(x, x.agent)} | ${val(x, x.haproxy)} | ${x.ratio.toFixed(2)} (${x.lo.toFixed(2)}–${x.hi.toFixed(2)} over runs) | ${goal(x.key)} |`),
    ...(p.latency && p.latencyRatio !== undefined ? [`| added latency of a keep-alive request (wrk -c1, median; direct ${us(p.latency.direct)}) | +${us(p.latency.agent)} | +${us(p.latency.haproxy)} | ${p.latencyRatio.toFixed(2)} | ≤ ${GOALS.proxyLatency} — ${met(p.latencyRatio <= GOALS.proxyLatency)} |`] : []),
    `| rule sync, ${num(d.sync.ports)} service ports | ${ms(d.sync.agentSyncMsAvg)} (${d.sync.syncs === 1 ? 'one `iptables-restore` batch' : `average of ${d.sync.syncs} \`iptables-restore\` batches`}; the bare restore of the same batch takes ${ms(d.sync.restoreMs)}) | | | ≤ ${ms(GOALS.proxySyncMs)} — ${met(p.syncOk)} |`,
    `| agent RSS with ${num(d.sync.ports)} service ports (${num(d.sync.listeners)} listeners, file source) | ${mib(d.sync.rssMiB)} | | | |`,
    '',
    `${num(d.sync.rules)} rules applied; agent start to ready ${ms(d.sync.startMs)}; rules left after SIGTERM: ${d.sync.rulesLeftAfterStop ? '**yes**' : 'none'}.`,
    ...(d.flat ? [
      '',
      `Flat group (\`proxy.directCIDRs\`): the same measures with the backends on a second host (${d.flat.link}) as pods of another node, dialed directly by the agent (the flat path, with a tunnel to fall back to: ${d.flat.tunnelDials} dials fell back) and forwarded by haproxy between the same two hosts:`,
      '',
      `| measure | agent | ${d.haproxy} | agent/haproxy | goal |`,
      '|---|---|---|---|---|',
      ...p.flatRows.map((x) => `| ${label[x.key]} | ${val(x, x.agent)} | ${val(x, x.haproxy)} | ${x.ratio.toFixed(2)} (${x.lo.toFixed(2)}–${x.hi.toFixed(2)} over runs) | ≥ ${GOALS.proxyFlat} — ${met(x.ratio >= GOALS.proxyFlat)} |`),
      ...(p.flatLatency ? [`| added latency of a keep-alive request (wrk -c1, median; direct ${us(p.flatLatency.direct)}) | +${us(p.flatLatency.agent)} | +${us(p.flatLatency.haproxy)} | ${(p.flatLatency.agent / p.flatLatency.haproxy).toFixed(2)} | ≤ ${GOALS.proxyLatency} — ${met(p.flatLatency.agent / p.flatLatency.haproxy <= GOALS.proxyLatency)} |`] : []),
    ] : []),
  ].join('\n');
}

function renderTunnel(r: BenchResult<TunnelData>): string {
  const d = r.data;
  const t = tunnelFigures(d);
  return [
    `${measured(r)} (namespaces + veth, noisy): one stream of ${d.mb} MB, medians of ${d.repeats}:`,
    '',
    '| | Mb/s | × raw iperf3 of the same hosts | runs |',
    '|---|---:|---:|---|',
    `| iperf3 raw TCP through both NAT routers (port forward on the far router) | ${num(t.raw)} | 1 | ${d.rawMbps.map((x) => num(x)).join(', ')} |`,
    `| tunnel direct (UDX + Noise, port-restricted ↔ port-restricted) | ${num(t.direct)} | ${ratio(t.direct / t.raw)} | ${d.directMbps.map((x) => num(x)).join(', ')} |`,
    `| tunnel relay (TCP through the server + Noise, symmetric ↔ symmetric) | ${num(t.relay)} | ${ratio(t.relay / t.raw)} | ${d.relayMbps.map((x) => num(x)).join(', ')} |`,
    ...(t.lan ? [
      `| iperf3 raw TCP between two hosts of one LAN (same router) | ${num(t.lan.raw)} | 1 | ${t.lan.rawRuns.map((x) => num(x)).join(', ')} |`,
      `| tunnel same LAN (direct path between those two hosts) | ${num(t.lan.mbps)} | ${ratio(t.lan.mbps / t.lan.raw)} | ${t.lan.runs.map((x) => num(x)).join(', ')} |`,
    ] : []),
    '',
    `direct/raw ${(t.direct / t.raw).toFixed(2)} (goal ≥ ${GOALS.tunnelDirectRaw}: ${met(t.directOk)}), relay/direct ${(t.relay / t.direct).toFixed(2)} (goal ≥ ${GOALS.tunnelRelayDirect}: ${met(t.relayOk)}), relay/raw ${(t.relay / t.raw).toFixed(2)}${t.lan ? `, same LAN/its raw ${(t.lan.mbps / t.lan.raw).toFixed(2)}` : ''}.`,
    '',
    `Time to direct for fresh peers (both forget each other and the NAT state between them is deleted on both routers; from the first dial, which goes on the relay at once, until the direct link is up), ${d.ttdRuns} runs per pair, a run without a direct link after ${ms(d.ttdTimeoutMs)} counted as ${ms(d.ttdTimeoutMs)} (and as a miss); goal p95 < ${ms(GOALS.tunnelTtdP95Ms)} for the cone pairs: ${met(t.ttdOk)}.`,
    '',
    '| NAT pair | p50 | p95 | misses | first stream on the relay, p50 |',
    '|---|---:|---:|---:|---:|',
    ...t.ttd.map((x) => `| ${x.name.replaceAll('<->', '↔')} | ${ms(x.p50)} | ${ms(x.p95)} | ${x.misses} | ${ms(x.first)} |`),
  ].join('\n');
}

function renderCluster(r: BenchResult<ClusterData>): string {
  const c = r.data;
  const f = clusterFigures(c);
  const n = num(c.services);
  const step = num(c.step);
  const row = (label: string, cell: (p: ClusterData['file']) => string, goal = '') => `| ${label} | ${cell(c.file)} | ${cell(c.kubernetes)} | ${goal} |`;
  const flags = (v: ClusterData['agentV8']) => (v.flags.length ? `\`${v.flags.join(' ')}\`` : 'no flags');
  const sp = (s: { median: number; min: number; max: number; rounds: number }) => `median ${ms(s.median)} (${msRange(s.min, s.max)})`;
  const l = c.latency;
  return [
    `${measured(r)} (noisy; RSS read once settled, after at least ${ms(c.settleMs)} idle): the agent binary (${codeLabel(c)}; V8 sized for ${c.agentV8.memoryLimit}: ${flags(c.agentV8)}) with DNS + proxy (listeners, no iptables) + tunnel on, against a local edgemesh-server (sized for ${c.serverV8.memoryLimit}: ${flags(c.serverV8)}); ${n} Services × ${c.endpoints} endpoints, in ${c.files} manifest files for the file source, in the in-process fake API server for the kubernetes source:`,
    '',
    '| | file | kubernetes | goal |',
    '|---|---:|---:|---|',
    row('RSS idle', (p) => mib(p.idle.rss), `≤ ${GOALS.clusterIdleFileMiB} MiB file — ${met(f.idleFileOk)}; ≤ ${GOALS.clusterIdleKubeMiB} MiB kubernetes — ${met(f.idleKubeOk)}`),
    row(`RSS with ${n} Services × ${c.endpoints} endpoints, fresh start / added in place`, (p) => `${Math.round(p.cold.rss)} / ${mib(p.inPlace.rss)}`, `≤ ${GOALS.clusterLoadedMiB} MiB — ${f.sized(f.loadedOk)}`),
    row(`start → ready with ${n} Services, wall (CPU)`, (p) => `${ms(p.readyMs)} (${ms(p.readyCpuMs)})`, `≤ ${ms(GOALS.clusterReadyMs)} — ${f.sized(f.readyOk)}`),
    row(`RSS per extra ${step} Services, fresh starts ${step} → ${n} / +${step} in place`, (p) => `${p.perStepColdMiB.toFixed(1)} / ${p.perStepInPlaceMiB.toFixed(1)} MiB`, `≤ ${GOALS.clusterPerStepMiB} MiB — ${f.sized(f.perStepOk)}`),
    row(`start → ready with ${step} Services, wall (CPU); RSS`, (p) => `${ms(p.coldStepReadyMs)} (${ms(p.coldStepReadyCpuMs)}); ${mib(p.coldStep.rss)}`),
    row(`${n} Services added to the running agent: all in the model after`, (p) => ms(p.inPlaceMs)),
    '',
    `edgemesh-server RSS: idle ${mib(c.server.idle.rss)}, ${mib(c.server.after.rss)} after the agents came and went. Change → model update, in-process (the sources alone, ${l.file.rounds} rounds each): file source, one of ${c.files} files rewritten, ${sp(l.file)} with ${n} Services loaded (initial read ${ms(l.file.loadMs)}), ${sp(l.fileSmall)} with ${num(l.fileSmall.services)} (both include the ${l.debounceMs} ms debounce); kubernetes source, one Service changed, ${sp(l.kube)} per watch event (initial list of ${n} Services ${ms(l.kube.listMs)}).`,
  ].join('\n');
}

function serverFigures(d: ServerBenchData) {
  return {
    d,
    agentsOk: d.registered >= GOALS.serverAgents && d.failed === 0,
    rssOk: d.kibPerAgent <= GOALS.serverKiBPerAgent,
    cpuOk: d.heartbeatCpuPct <= GOALS.serverHeartbeatCpuPct,
  };
}

function renderServer(r: BenchResult<ServerBenchData>): string {
  const f = serverFigures(r.data);
  const d = r.data;
  const kib = (x: number) => `${num(x / 1024, 1)} MiB`;
  const capped = d.agents < d.agentsRequested ? ` (${num(d.agentsRequested)} asked; the descriptor hard limit ${num(d.fdLimit)} of this machine holds ${num(d.agents)})` : '';
  return [
    `${measured(r)}: ${num(d.agents)} simulated agents${capped} from ${d.procs} client processes and ${d.sources} loopback source addresses, each a real TLS 1.3 connection that enrolled once (bootstrap ENROLL), then signs in with ENROLL renew and answers the server's PINGs (every 10 s), against one edgemesh-server process (its own stateDir):`,
    '',
    '| measure | result | goal |',
    '|---|---|---|',
    `| agents signed in | ${num(d.registered)} (${num(d.failed)} failed) | ≥ ${num(GOALS.serverAgents)} — ${met(f.agentsOk)} |`,
    `| server RSS: idle → all signed in (after ${d.settleS} s) | ${kib(d.rssIdleKiB)} → ${kib(d.rssLoadedKiB)} = **${d.kibPerAgent.toFixed(1)} KiB per agent** | ≤ ${GOALS.serverKiBPerAgent} KiB — ${met(f.rssOk)} |`,
    `| heartbeat CPU: server CPU time over ${d.heartbeatWindowS} s of PING/PONG only | ${d.heartbeatCpuS.toFixed(2)} s = **${d.heartbeatCpuPct.toFixed(1)} %** of a core (${num(d.aliveAfterWindow)} agents still connected) | ≤ ${GOALS.serverHeartbeatCpuPct} % — ${met(f.cpuOk)} |`,
    `| sign-in of all agents (ENROLL renew, what every reconnect is) | ${ms(d.registerMs)} = ${num(d.registerPerSec)} agents/s (server CPU ${d.registerCpuS.toFixed(1)} s) | |`,
    ...(d.reference ? [
      `| reference: bare node:tls server, the same ${num(d.reference.connected)} connections and pings (\`bench/server/tls-ref.ts\`) | ${d.reference.kibPerConn.toFixed(1)} KiB per connection, heartbeat ${d.reference.heartbeatCpuPct.toFixed(1)} % of a core | |`,
      `| edgemesh-server / bare node:tls | RSS per agent **${ratio(d.kibPerAgent / d.reference.kibPerConn)}**, heartbeat CPU **${ratio(d.heartbeatCpuPct / Math.max(0.1, d.reference.heartbeatCpuPct))}** | |`,
    ] : []),
    '',
    `First enrollment (bootstrap: certificate issued and pinned, then the connection closed): ${num(d.enrolled)} in ${ms(d.enrollMs)} = ${num(Math.round(d.enrolled / (d.enrollMs / 1000)))} agents/s.`,
  ].join('\n');
}

/** The generated text of one block, or undefined when its results are missing. */
function renderSoak(r: BenchResult<SoakData>): string {
  const d = r.data;
  const f = soakFigures(d);
  const l = d.legit;
  const kinds = ['dns', 'tcp', 'udp'] as const;
  const short = d.durationS < 600 ? ` — a shorter run than the 10 minutes the goal asks for` : '';
  const attacks = Object.entries(d.attacks).map(([n, a]) => `${n} ×${a.runs}`).join(', ');
  return [
    `${measured(r)}: ${ms(d.durationS * 1000)} (${num(d.durationS / 60, 1)} min)${short}, server under RLIMIT_NOFILE ${num(d.nofile)}; attacks in rotation (${d.attackS} s each, ${d.restS} s rest): ${attacks}${d.serverDied ? '; **the server died**' : ''}.`,
    '',
    '| process | RSS first → last third (peak) | RSS slope | descriptors first → last third (peak) | descriptor slope | flat |',
    '|---|---|---|---|---|---|',
    ...f.rows.map((p) => `| ${p.name === 'server' ? 'edgemesh-server' : `agent ${p.name}`} | ${p.rssFirst} → ${p.rssLast} MiB (${p.rssPeak}) | ${p.rssSlopePerHour} MiB/h | ${p.fdsFirst} → ${p.fdsLast} (${p.fdsPeak}) | ${p.fdsSlopePerHour}/h | ${p.flat ? 'yes' : '**no**'} |`),
    '',
    `Legitimate calls from a pod on n1 to the Service on n2 (through the relay), each with a 2 s deadline: ${kinds.map((k) => `${k.toUpperCase()} ${num(l.ok[k])} answered / ${num(l.failed[k])} failed (slowest ${ms(l.maxMs[k])})`).join('; ')}. Quiet samples (after each rest) from the second rotation on (the first ${f.warmup - 1} attacks are warm-up: V8 grows to its working size); flat = at most ${SOAK_FLAT_MIB} MiB and ${SOAK_FLAT_FDS} descriptors more in their last third than in their first: **${f.flat ? 'flat' : 'not flat'}**.${d.memoryLimits ? ` V8 sized as the chart's limits: server ${d.memoryLimits.server}, agents ${d.memoryLimits.agent}.` : ' V8 with its defaults (no memory limit).'}`,
  ].join('\n');
}

export function renderBlock(block: Block, r: Results): string | undefined {
  switch (block) {
    case 'summary': return r.dns && r.proxy && r.tunnel && r.cluster ? renderSummary(r as SummaryResults) : undefined;
    case 'dns': return r.dns && renderDns(r.dns);
    case 'proxy': return r.proxy && renderProxy(r.proxy);
    case 'tunnel': return r.tunnel && renderTunnel(r.tunnel);
    case 'cluster': return r.cluster && renderCluster(r.cluster);
    case 'soak': return r.soak && renderSoak(r.soak);
    case 'server': return r.server && renderServer(r.server);
  }
}

const BEGIN = (b: Block) => new RegExp(`<!-- bench:${b}:begin[^>]*-->\\n`);
const END = (b: Block) => `<!-- bench:${b}:end -->`;

/** The current text between a block's markers; throws when the markers are missing or out of order. */
export function blockText(readme: string, block: Block): { start: number; end: number; text: string } {
  const m = BEGIN(block).exec(readme);
  const end = readme.indexOf(END(block));
  if (!m || end < 0 || end < m.index) throw new Error(`README: markers for bench block "${block}" missing or out of order`);
  const start = m.index + m[0].length;
  return { start, end, text: readme.slice(start, end) };
}

/** README text with every block that has results regenerated; which blocks changed and which had no results. */
export function renderReadme(readme: string, r: Results): { text: string; changed: Block[]; missing: Block[] } {
  let text = readme;
  const changed: Block[] = [];
  const missing: Block[] = [];
  for (const b of BLOCKS) {
    const cur = blockText(text, b);
    const gen = renderBlock(b, r);
    if (gen === undefined) {
      missing.push(b);
      continue;
    }
    const body = `${gen}\n`;
    if (body !== cur.text) {
      changed.push(b);
      text = text.slice(0, cur.start) + body + text.slice(cur.end);
    }
  }
  return { text, changed, missing };
}

if (import.meta.main) {
  const { values } = parseArgs({ options: { check: { type: 'boolean', default: false }, readme: { type: 'string' } } });
  const file = resolve(values.readme ?? join(import.meta.dirname, '..', 'README.md'));
  const dir = resultsDir();
  const before = readFileSync(file, 'utf8');
  const { text, changed, missing } = renderReadme(before, loadResults(dir));
  if (missing.length) console.log(`no results for ${missing.join(', ')} in ${dir}: ${missing.includes('summary') ? 'the summary and ' : ''}those blocks are left as they are`);
  if (values.check) {
    if (changed.length) {
      console.error(`README is out of date with ${dir} for: ${changed.join(', ')} (run node bench/readme.ts)`);
      process.exit(1);
    }
    console.log('README agrees with the bench results');
  } else if (changed.length) {
    writeFileSync(file, text);
    console.log(`README: regenerated ${changed.join(', ')} from ${dir}`);
  } else {
    console.log('README already agrees with the bench results');
  }
}
