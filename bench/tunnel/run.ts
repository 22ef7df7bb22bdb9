// Tunnel benchmark in network namespaces (needs root, iperf3):
//   node bench/tunnel/run.ts [--mb 100] [--ttd-runs 10]
// 1. throughput of one stream over the direct path (port-restricted <-> port-restricted), over the relay
//    (symmetric <-> symmetric, same topology shape), and iperf3 raw TCP over the same namespaces (a port forward on
//    the far NAT router, so the bytes cross both routers like the direct path);
// 2. time to direct for each NAT pair (fresh peers: from the first dial until a direct link is up), p50/p95;
// 3. ratios against the goals: direct >= 0.5x raw, relay >= 0.8x direct, time-to-direct p95 < 1 s for cone pairs.
import { parseArgs } from 'node:util';
import { buildLab } from '../../test/lib/netlab.ts';
import { NAT_MATRIX_SITES, TunnelLab, waitUntil } from '../../test/lib/tunnel-lab.ts';

const { values } = parseArgs({ options: { mb: { type: 'string', default: '100' }, 'ttd-runs': { type: 'string', default: '10' }, repeats: { type: 'string', default: '3' } } });
const MB = 1024 * 1024;
const BYTES = Number(values.mb) * MB;
const TTD_RUNS = Number(values['ttd-runs']);
const REPEATS = Number(values.repeats);
const IPERF_PORT = 5201;
const IPERF_SECONDS = 5;

const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
const pct = (xs: number[], p: number) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]; };

// The matrix's sites but the UDP-blocked one (no pair of the bench uses it).
const lab = await buildLab({ publicHosts: ['srv'], sites: NAT_MATRIX_SITES.filter((s) => s.nat !== 'udp-blocked') });
const tl = new TunnelLab(lab);
try {
  const names = ['p1', 'p2', 'f1', 'r1', 's1', 's2', 'l1', 'l2'];
  tl.planEndpoints(names.map((n) => ({ name: n, host: `h${n}` })));
  await tl.startServer('srv');
  for (const n of names) await tl.startNode(n, `h${n}`, { logLevel: 'warn' });
  await waitUntil(async () => (await Promise.all(names.map(async (n) => (await tl.node(n).status()).servers[0].connected))).every(Boolean), 20_000, 'connected');

  // --- raw: iperf3 from hp1 to hp2 through a port forward on pr2's router ---
  const r2 = lab.router('pr2');
  const hp2 = lab.host('hp2').ip;
  await lab.exec('pr2', 'iptables', ['-t', 'nat', '-A', 'PREROUTING', '-i', 'wan0', '-p', 'tcp', '--dport', String(IPERF_PORT), '-j', 'DNAT', '--to-destination', hp2], { reject: true });
  await lab.exec('pr2', 'iptables', ['-I', 'FORWARD', '1', '-i', 'wan0', '-o', 'lan0', '-p', 'tcp', '-d', hp2, '--dport', String(IPERF_PORT), '-j', 'ACCEPT'], { reject: true });
  const iperfSrv = lab.spawn('hp2', 'iperf3', ['-s', '-B', hp2, '-p', String(IPERF_PORT)]);
  await new Promise((r) => setTimeout(r, 500));
  const rawRuns: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    const out = await lab.exec('hp1', 'iperf3', ['-c', r2.publicIp, '-p', String(IPERF_PORT), '-t', String(IPERF_SECONDS), '-J'], { reject: true, timeoutMs: 30_000 });
    rawRuns.push((JSON.parse(out.stdout).end.sum_received.bits_per_second as number) / 1e6);
  }
  iperfSrv.kill('SIGTERM');

  // --- direct and relay streams ---
  await tl.transfer('p1', 'p2', MB);
  await waitUntil(async () => (await tl.node('p1').path('p2')) === 'direct', 20_000, 'p1-p2 direct');
  const directRuns: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    const r = await tl.transfer('p1', 'p2', BYTES);
    if (!r.ok || r.path !== 'direct') throw new Error(`direct run: ${JSON.stringify(r)}`);
    directRuns.push(r.mbps as number);
  }
  const relayRuns: number[] = [];
  for (let i = 0; i < REPEATS; i++) {
    const r = await tl.transfer('s1', 's2', BYTES);
    if (!r.ok || r.path !== 'relay') throw new Error(`relay run: ${JSON.stringify(r)}`);
    relayRuns.push(r.mbps as number);
  }

  // --- time to direct per NAT pair ---
  const pairs: [string, string, string][] = [
    ['port-restricted <-> port-restricted', 'p1', 'p2'],
    ['full cone <-> symmetric', 'f1', 's1'],
    ['restricted cone <-> symmetric', 'r1', 's1'],
    ['port-restricted <-> symmetric (birthday)', 'p2', 's2'],
    ['same LAN', 'l1', 'l2'],
  ];
  const ttd: { name: string; ms: number[]; misses: number; firstStreamMs: number[] }[] = [];
  for (const [name, a, b] of pairs) {
    const ms: number[] = [];
    const first: number[] = [];
    let misses = 0;
    for (let i = 0; i < TTD_RUNS; i++) {
      const r = await tl.timeToDirect(a, b);
      // Birthday attempts leave NAT mappings behind; let them age a little between runs.
      if (name.includes('birthday')) await new Promise((res) => setTimeout(res, 500));
      first.push(r.relayMs);
      if (r.directMs === null) misses++;
      else ms.push(r.directMs);
    }
    ttd.push({ name, ms, misses, firstStreamMs: first });
  }

  const raw = median(rawRuns), direct = median(directRuns), relay = median(relayRuns);
  console.log(`\nTunnel benchmark (${values.mb} MB per stream run, ${REPEATS} runs, medians; 2-core shared machine, namespaces + veth)`);
  console.log(`  iperf3 raw TCP hp1 -> hp2 (through both NAT routers) ${raw.toFixed(0).padStart(6)} Mb/s   runs ${rawRuns.map((x) => x.toFixed(0)).join(' ')}`);
  console.log(`  tunnel direct  (UDX + Noise, pr <-> pr)              ${direct.toFixed(0).padStart(6)} Mb/s   runs ${directRuns.map((x) => x.toFixed(0)).join(' ')}`);
  console.log(`  tunnel relay   (TCP via server + Noise, sym <-> sym) ${relay.toFixed(0).padStart(6)} Mb/s   runs ${relayRuns.map((x) => x.toFixed(0)).join(' ')}`);
  console.log(`  ratios: direct/raw ${(direct / raw).toFixed(2)} (goal >= 0.5)   relay/direct ${(relay / direct).toFixed(2)} (goal >= 0.8)`);
  console.log(`\nTime to direct (fresh peers, first dial -> direct link), ${TTD_RUNS} runs each:`);
  for (const t of ttd) {
    const p50 = t.ms.length ? median(t.ms).toFixed(0) : '-';
    const p95 = t.ms.length ? pct(t.ms, 95).toFixed(0) : '-';
    console.log(`  ${t.name.padEnd(38)} p50 ${p50.padStart(5)} ms  p95 ${p95.padStart(5)} ms  misses ${t.misses}   first stream (relay) p50 ${median(t.firstStreamMs).toFixed(0)} ms`);
  }
} finally {
  await tl.destroy();
}
