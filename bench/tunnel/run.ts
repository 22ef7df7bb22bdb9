// Tunnel benchmark in network namespaces (root; installs iperf3 when missing):
//   node bench/tunnel/run.ts [--mb 100] [--repeats 3] [--ttd-runs 10] [--only lan]
// (--only lan: just the same-LAN pair, raw iperf3 and the tunnel between them; printed, no result file written)
// 1. throughput of one stream over the direct path (port-restricted <-> port-restricted), over the relay
//    (symmetric <-> symmetric, same topology shape), and iperf3 raw TCP over the same namespaces (a port forward on
//    the far NAT router, so the bytes cross both routers like the direct path); and a same-LAN pair (two hosts of one
//    segment behind the same router): one stream over the tunnel's direct path between them (the TCP transport when
//    it works: the transport /status names is reported) and iperf3 raw between them; every path reported as a ratio
//    to the raw iperf3 of its hosts, measured in the same run (goal for the same-LAN pair: >= 0.3x raw);
// 2. time to direct for each NAT pair, p50/p95 over every run: fresh peers (both forget each other, and the NAT
//    state between the two — conntrack entries, the restricted cone's address list — is deleted on both routers, as
//    for two nodes that never talked; their mappings to the server stay), from the first dial until a direct link is
//    up. A run that never gets there within TTD_TIMEOUT_MS counts as that timeout in the percentiles (and as a miss);
// 3. ratios against the goals: direct >= 0.5x raw, relay >= 0.8x direct, time-to-direct p95 < 1 s for cone pairs.
// Writes bench/results/tunnel.json (README tables: node bench/readme.ts).
import { execFileSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { buildLab, type Lab } from '../../test/lib/netlab.ts';
import { NAT_MATRIX_SITES, TunnelLab, waitUntil } from '../../test/lib/tunnel-lab.ts';
import { writeResult } from '../results.ts';
import type { TunnelData, TunnelTtd } from '../shapes.ts';

const { values } = parseArgs({ options: { mb: { type: 'string', default: '100' }, 'ttd-runs': { type: 'string', default: '10' }, repeats: { type: 'string', default: '3' }, only: { type: 'string' } } });
if (values.only !== undefined && values.only !== 'lan') {
  console.error('--only takes lan (the same-LAN pair)');
  process.exit(2);
}
const ONLY_LAN = values.only === 'lan';
const MB = 1024 * 1024;
const BYTES = Number(values.mb) * MB;
const TTD_RUNS = Number(values['ttd-runs']);
const REPEATS = Number(values.repeats);
const IPERF_PORT = 5201;
const IPERF_SECONDS = 5;
/** A fresh pair that has no direct link after this long is a miss, counted as this value in p50/p95. */
const TTD_TIMEOUT_MS = 20_000;
/** The same-LAN pair's TCP link is waited for this long (a TCP dial is 3 s at most) before its streams are measured. */
const LAN_TCP_WAIT_MS = 10_000;

const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
const pct = (xs: number[], p: number) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]; };

function ensureTools(): void {
  if (process.getuid?.() !== 0) {
    console.error('bench/tunnel needs root (network namespaces, iptables, conntrack; apt-get for iperf3)');
    process.exit(2);
  }
  const has = (bin: string) => { try { execFileSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' }); return true; } catch { return false; } };
  const missing = [['iperf3', 'iperf3'], ['conntrack', 'conntrack']].filter(([bin]) => !has(bin)).map(([, pkg]) => pkg);
  if (!missing.length) return;
  console.log(`installing ${missing.join(' ')} ...`);
  execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
}

/**
 * Deletes the NAT state between nodes `a` and `b` on both their routers: conntrack entries to or from the other
 * side's address (public, or LAN address on the same site) and, on a restricted cone, the other side in the list of
 * addresses its host contacted. Mappings to the server are kept. Fresh peers are then really fresh.
 */
async function forgetNatState(lab: Lab, a: string, b: string): Promise<number> {
  let deleted = 0;
  const ha = lab.host(`h${a}`);
  const hb = lab.host(`h${b}`);
  const sameSite = ha.site === hb.site;
  for (const [me, other] of [[ha, hb], [hb, ha]]) {
    const router = lab.router(me.site!);
    const otherAddr = sameSite ? other.ip : lab.router(other.site!).publicIp;
    for (const dir of ['--orig-src', '--orig-dst']) {
      const r = await lab.exec(router, 'conntrack', ['-D', '-p', 'udp', dir, otherAddr]);
      // Exit code 1 = nothing matched: fine.
      if (r.exitCode !== 0 && r.exitCode !== 1) throw new Error(`conntrack -D on ${router.site}: ${r.stderr}`);
      deleted += Number(/(\d+) flow entries have been deleted/.exec(r.stderr)?.[1] ?? 0);
    }
    if (router.nat === 'restricted-cone') await lab.exec(router, 'sh', ['-c', `echo -${otherAddr} > /proc/net/xt_recent/seen`], { reject: true });
  }
  return deleted;
}

/** iperf3 raw TCP from hp1 to hp2 through a port forward on pr2's router (the bytes cross both NAT routers). */
async function wanRaw(): Promise<number[]> {
  const r2 = lab.router('pr2');
  const hp2 = lab.host('hp2').ip;
  await lab.exec('pr2', 'iptables', ['-t', 'nat', '-A', 'PREROUTING', '-i', 'wan0', '-p', 'tcp', '--dport', String(IPERF_PORT), '-j', 'DNAT', '--to-destination', hp2], { reject: true });
  await lab.exec('pr2', 'iptables', ['-I', 'FORWARD', '1', '-i', 'wan0', '-o', 'lan0', '-p', 'tcp', '-d', hp2, '--dport', String(IPERF_PORT), '-j', 'ACCEPT'], { reject: true });
  const iperfSrv = lab.spawn('hp2', 'iperf3', ['-s', '-B', hp2, '-p', String(IPERF_PORT)]);
  // Wait until the server accepts (iperf3 -c fails at once while it is not listening yet).
  await waitUntil(async () => (await lab.exec('hp2', 'sh', ['-c', `ss -ltn | grep -q ':${IPERF_PORT} '`])).exitCode === 0, 10_000, 'iperf3 server');
  const runs: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    const out = await lab.exec('hp1', 'iperf3', ['-c', r2.publicIp, '-p', String(IPERF_PORT), '-t', String(IPERF_SECONDS), '-J'], { reject: true, timeoutMs: 30_000 });
    runs.push((JSON.parse(out.stdout).end.sum_received.bits_per_second as number) / 1e6);
  }
  iperfSrv.kill('SIGTERM');
  return runs;
}

/** REPEATS streams of BYTES from `a` to `b`'s sink, each sha256-checked and on `path`. */
async function streamRuns(a: string, b: string, path: 'direct' | 'relay'): Promise<number[]> {
  if (path === 'direct') {
    await tl.transfer(a, b, MB);
    await waitUntil(async () => (await tl.node(a).path(b)) === 'direct', 20_000, `${a}-${b} direct`);
  }
  const runs: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    const r = await tl.transfer(a, b, BYTES);
    if (!r.ok || r.path !== path) throw new Error(`${a} -> ${b} run: ${JSON.stringify(r)}`);
    runs.push(r.mbps as number);
  }
  return runs;
}

ensureTools();
// The matrix's sites but the UDP-blocked one (no pair of the bench uses it).
const lab = await buildLab({ publicHosts: ['srv'], sites: NAT_MATRIX_SITES.filter((s) => s.nat !== 'udp-blocked' && (!ONLY_LAN || s.name === 'lan')) });
const tl = new TunnelLab(lab);
try {
  const names = ONLY_LAN ? ['l1', 'l2'] : ['p1', 'p2', 'f1', 'r1', 's1', 's2', 'l1', 'l2'];
  tl.planEndpoints(names.map((n) => ({ name: n, host: `h${n}` })));
  await tl.startServer('srv', undefined, '', { clusterNodes: names });
  for (const n of names) await tl.startNode(n, `h${n}`, { logLevel: 'warn' });
  await waitUntil(async () => (await Promise.all(names.map(async (n) => (await tl.node(n).status()).servers[0].connected))).every(Boolean), 20_000, 'connected');

  // --- raw: iperf3 from hp1 to hp2 through a port forward on pr2's router ---
  const rawRuns = ONLY_LAN ? [] : await wanRaw();

  // --- raw on one LAN: iperf3 from hl1 to hl2, two hosts of one segment behind the same router ---
  const hl2 = lab.host('hl2').ip;
  const lanIperf = lab.spawn('hl2', 'iperf3', ['-s', '-B', hl2, '-p', String(IPERF_PORT)]);
  await waitUntil(async () => (await lab.exec('hl2', 'sh', ['-c', `ss -ltn | grep -q ':${IPERF_PORT} '`])).exitCode === 0, 10_000, 'iperf3 server on hl2');
  const lanRawRuns: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    const out = await lab.exec('hl1', 'iperf3', ['-c', hl2, '-p', String(IPERF_PORT), '-t', String(IPERF_SECONDS), '-J'], { reject: true, timeoutMs: 30_000 });
    lanRawRuns.push((JSON.parse(out.stdout).end.sum_received.bits_per_second as number) / 1e6);
  }
  lanIperf.kill('SIGTERM');

  // --- direct and relay streams ---
  const directRuns = ONLY_LAN ? [] : await streamRuns('p1', 'p2', 'direct');
  await tl.transfer('l1', 'l2', MB);
  await waitUntil(async () => (await tl.node('l1').path('l2')) === 'direct', 20_000, 'l1-l2 direct');
  // The TCP transport comes up beside the punched path within a dial's time; a pair without it stays on UDX.
  await waitUntil(async () => (await tl.node('l1').transport('l2')) === 'tcp', LAN_TCP_WAIT_MS, 'l1-l2 on tcp').catch(() => {});
  const lanTransport = (await tl.node('l1').transport('l2')) ?? 'none';
  const lanRuns = await streamRuns('l1', 'l2', 'direct');
  const relayRuns = ONLY_LAN ? [] : await streamRuns('s1', 's2', 'relay');

  // --- time to direct per NAT pair ---
  const pairs: [string, string, string, boolean][] = [
    ['port-restricted <-> port-restricted', 'p1', 'p2', true],
    ['full cone <-> symmetric', 'f1', 's1', true],
    ['restricted cone <-> symmetric', 'r1', 's1', true],
    ['port-restricted <-> symmetric (birthday)', 'p2', 's2', false],
    ['same LAN', 'l1', 'l2', true],
  ];
  const ttd: TunnelTtd[] = [];
  for (const [name, a, b, goal] of ONLY_LAN ? [] : pairs) {
    const ms: (number | null)[] = [];
    const first: number[] = [];
    const deleted: number[] = [];
    for (let i = 0; i < TTD_RUNS; i++) {
      const r = await tl.timeToDirect(a, b, { timeoutMs: TTD_TIMEOUT_MS, between: async () => { deleted.push(await forgetNatState(lab, a, b)); } });
      first.push(r.relayMs);
      ms.push(r.directMs);
    }
    ttd.push({ name, goal, ms, firstStreamMs: first, natEntriesDeleted: deleted });
  }

  const lanRaw = median(lanRawRuns), lan = median(lanRuns);
  const x = (n: number, d: number) => `${(n / d).toFixed(2)}x raw`;
  console.log(`\nTunnel benchmark (${values.mb} MB per stream run, ${REPEATS} runs, medians; namespaces + veth)`);
  if (!ONLY_LAN) {
    const raw = median(rawRuns), direct = median(directRuns), relay = median(relayRuns);
    console.log(`  iperf3 raw TCP hp1 -> hp2 (through both NAT routers) ${raw.toFixed(0).padStart(6)} Mb/s   runs ${rawRuns.map((x) => x.toFixed(0)).join(' ')}`);
    console.log(`  tunnel direct  (UDX + Noise, pr <-> pr)              ${direct.toFixed(0).padStart(6)} Mb/s   runs ${directRuns.map((x) => x.toFixed(0)).join(' ')}`);
    console.log(`  tunnel relay   (TCP via server + Noise, sym <-> sym) ${relay.toFixed(0).padStart(6)} Mb/s   runs ${relayRuns.map((x) => x.toFixed(0)).join(' ')}`);
    console.log(`  ratios to raw iperf3 of the same hosts: direct ${x(direct, raw)}, relay ${x(relay, raw)}`);
    console.log(`  goals: direct/raw ${(direct / raw).toFixed(2)} (goal >= 0.5)   relay/direct ${(relay / direct).toFixed(2)} (goal >= 0.8)`);
  }
  console.log(`  iperf3 raw TCP hl1 -> hl2 (one LAN, same router)     ${lanRaw.toFixed(0).padStart(6)} Mb/s   runs ${lanRawRuns.map((x) => x.toFixed(0)).join(' ')}`);
  console.log(`  tunnel same LAN (transport ${lanTransport.padEnd(4)}, hl1 <-> hl2)     ${lan.toFixed(0).padStart(6)} Mb/s   runs ${lanRuns.map((x) => x.toFixed(0)).join(' ')}`);
  console.log(`  same LAN: ${x(lan, lanRaw)} (goal >= 0.3x raw over the TCP transport)`);
  if (!ONLY_LAN) {
    console.log(`\nTime to direct (fresh peers, first dial -> direct link), ${TTD_RUNS} runs each, a miss counted as ${TTD_TIMEOUT_MS} ms:`);
    for (const t of ttd) {
      const all = t.ms.map((x) => x ?? TTD_TIMEOUT_MS);
      const misses = t.ms.filter((x) => x === null).length;
      console.log(`  ${t.name.padEnd(40)} p50 ${median(all).toFixed(0).padStart(5)} ms  p95 ${pct(all, 95).toFixed(0).padStart(5)} ms  misses ${misses}   first stream (relay) p50 ${median(t.firstStreamMs).toFixed(0)} ms   NAT entries deleted before each run: ${t.natEntriesDeleted.join(' ')}`);
    }
    writeResult<TunnelData>('tunnel', {
      mb: Number(values.mb), repeats: REPEATS, ttdRuns: TTD_RUNS, ttdTimeoutMs: TTD_TIMEOUT_MS,
      rawMbps: rawRuns, directMbps: directRuns, relayMbps: relayRuns, lanRawMbps: lanRawRuns, lanMbps: lanRuns, lanTransport, ttd,
    });
  }
} finally {
  await tl.destroy();
}
