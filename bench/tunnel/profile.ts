// One-stream throughput of the tunnel's direct path (UDX + Noise) between two agents behind port-restricted NATs,
// optionally with the agents' CPU profiles (root; network namespaces):
//   node bench/tunnel/profile.ts [--mb 200] [--repeats 3] [--prof DIR] [--pair pr|lan]
// (--pair lan: two hosts of one LAN instead, whose session goes on the TCP transport when it works)
// With --prof, both tunnel nodes run with --cpu-prof into DIR (one .cpuprofile per process, written at exit); read
// them with Chrome DevTools or summarise the self time per function. Prints Mb/s per run and the median.
import { mkdirSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { buildLab } from '../../test/lib/netlab.ts';
import { TunnelLab, waitUntil } from '../../test/lib/tunnel-lab.ts';

const { values } = parseArgs({ options: { mb: { type: 'string', default: '200' }, repeats: { type: 'string', default: '3' }, prof: { type: 'string' }, pair: { type: 'string', default: 'pr' } } });
const LAN = values.pair === 'lan';
const MB = 1024 * 1024;
const TICKS_PER_S = 100; // USER_HZ of /proc/PID/stat on Linux
/** CPU seconds (user + system) a process has used, from /proc (the load on a shared machine makes Mb/s noisy;
 *  CPU per byte is what the code changes). */
const cpuS = (pid: number) => { const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' '); return (Number(f[11]) + Number(f[12])) / TICKS_PER_S; };
const sites = LAN ? [{ name: 'lan', nat: 'port-restricted' as const, hosts: ['hp1', 'hp2'] }] : [{ name: 'pr1', nat: 'port-restricted' as const, hosts: ['hp1'] }, { name: 'pr2', nat: 'port-restricted' as const, hosts: ['hp2'] }];
const lab = await buildLab({ publicHosts: ['srv'], sites });
const tl = new TunnelLab(lab);
try {
  tl.planEndpoints([{ name: 'p1', host: 'hp1' }, { name: 'p2', host: 'hp2' }]);
  await tl.startServer('srv', undefined, '', { clusterNodes: ['p1', 'p2'] });
  if (values.prof) {
    mkdirSync(values.prof, { recursive: true });
    process.env.NODE_OPTIONS = `${process.env.NODE_OPTIONS ?? ''} --cpu-prof --cpu-prof-dir=${values.prof}`.trim();
  }
  for (const n of ['p1', 'p2']) await tl.startNode(n, `h${n}`, { logLevel: 'warn' });
  await waitUntil(async () => (await tl.node('p1').status()).servers[0].connected && (await tl.node('p2').status()).servers[0].connected, 20_000, 'connected');
  await tl.transfer('p1', 'p2', MB);
  await waitUntil(async () => (await tl.node('p1').path('p2')) === 'direct', 20_000, 'p1-p2 direct');
  if (LAN) await waitUntil(async () => (await tl.node('p1').transport('p2')) === 'tcp', 10_000, 'p1-p2 on tcp').catch(() => {});
  console.log(`transport: ${await tl.node('p1').transport('p2')}`);
  const runs: number[] = [];
  const send: number[] = [];
  const recv: number[] = [];
  const [a, b] = [tl.node('p1').proc.pid!, tl.node('p2').proc.pid!];
  for (let i = 0; i < Number(values.repeats); i++) {
    const [a0, b0] = [cpuS(a), cpuS(b)];
    const r = await tl.transfer('p1', 'p2', Number(values.mb) * MB);
    if (!r.ok || r.path !== 'direct') throw new Error(`direct run: ${JSON.stringify(r)}`);
    runs.push(r.mbps as number);
    // CPU ms per MB moved (the harness's sha256 of the data on both sides included).
    send.push(((cpuS(a) - a0) * 1000) / Number(values.mb));
    recv.push(((cpuS(b) - b0) * 1000) / Number(values.mb));
  }
  const med = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
  const list = (xs: number[]) => xs.map((x) => x.toFixed(1)).join(' ');
  console.log(`tunnel direct, one stream of ${values.mb} MB: median ${med(runs).toFixed(0)} Mb/s, runs ${runs.map((x) => x.toFixed(0)).join(' ')}`);
  console.log(`CPU ms per MB: sender median ${med(send).toFixed(1)} (${list(send)}), receiver median ${med(recv).toFixed(1)} (${list(recv)}); load ${readFileSync('/proc/loadavg', 'utf8').split(' ')[0]}`);
  if (values.prof) {
    // --cpu-prof writes at exit: ask the nodes to stop rather than kill them.
    for (const n of tl.nodes.values()) {
      const exited = new Promise((r) => n.proc.once('exit', r));
      void n.request('stop').catch(() => {});
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
    }
    console.log(`profiles in ${values.prof}`);
  }
} finally {
  await tl.destroy();
}
