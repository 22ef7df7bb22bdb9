// DNS benchmark: dnsperf against the agent's DNS and against unbound serving the same names, in one run.
// (a) cluster names (agent: Service records; unbound: local-data), (b) cached forwarded names (both forward a zone to a
// local upstream; caches warmed first). Prints queries/s of each and the ratio agent/unbound.
// Run: npx node bench/dns/run.ts [--seconds 10]   (needs dnsperf and unbound: apt-get install dnsperf unbound;
// installed automatically when missing and running as root). Not a test: numbers depend on the machine.
// Writes bench/results/dns.json (README tables: node bench/readme.ts).
import { spawn, execFile, execFileSync, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { startUpstream } from '../../test/lib/dnsupstream.ts';
import { CLUSTER_SERVICES, FORWARD_ZONE, FORWARDED_NAMES, benchService, forwardedName } from './names.ts';
import { writeResult } from '../results.ts';
import type { DnsData } from '../shapes.ts';

const root = resolve(import.meta.dirname, '../..');
const argSeconds = process.argv.indexOf('--seconds');
const SECONDS = argSeconds > 0 ? Number(process.argv[argSeconds + 1]) : 10;
const WARMUP_S = 1;
/** dnsperf clients / outstanding queries: enough to saturate one server core over loopback. */
const DNSPERF_CLIENTS = 8;
const DNSPERF_OUTSTANDING = 200;

const has = (bin: string) => {
  try {
    execFileSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

function ensureTools(): void {
  const missing = ['dnsperf', 'unbound'].filter((b) => !has(b));
  if (!missing.length) return;
  if (process.getuid?.() !== 0) {
    console.error(`missing ${missing.join(', ')}: run  apt-get install -y dnsperf unbound  (or run this as root)`);
    process.exit(2);
  }
  console.log(`installing ${missing.join(' ')} ...`);
  execFileSync('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'dnsperf', 'unbound'], { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
}

/** A port free for both UDP and TCP on 127.0.0.1 right now (for unbound, which needs a number up front). */
async function freePort(): Promise<number> {
  for (let i = 0; i < 20; i++) {
    const s = createSocket('udp4');
    await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
    const p = s.address().port;
    const t = createServer();
    const ok = await new Promise<boolean>((r) => {
      t.once('error', () => r(false));
      t.listen(p, '127.0.0.1', () => r(true));
    });
    if (ok) await new Promise<void>((r) => t.close(() => r()));
    await new Promise<void>((r) => s.close(() => r()));
    if (ok) return p;
  }
  throw new Error('no free port');
}

// Servers on CPU 0, dnsperf on CPU 1 (when the machine has two cores and taskset exists).
const pin = availableParallelism() >= 2 && has('taskset');
const pinned = (cpu: number, cmd: string, args: string[]): [string, string[]] => (pin ? ['taskset', ['-c', String(cpu), cmd, ...args]] : [cmd, args]);

function waitForLine(child: ChildProcess, re: RegExp, what: string, timeoutMs = 15_000): Promise<RegExpExecArray> {
  return new Promise((resolveP, reject) => {
    let out = '';
    const t = setTimeout(() => reject(new Error(`${what} did not start: ${out}`)), timeoutMs);
    const on = (d: Buffer) => {
      out += d.toString();
      const m = re.exec(out);
      if (m) {
        clearTimeout(t);
        resolveP(m);
      }
    };
    child.stdout?.on('data', on);
    child.stderr?.on('data', on);
    child.once('exit', (code) => reject(new Error(`${what} exited (${code}): ${out}`)));
  });
}

async function waitForDns(port: number, name: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    try {
      const { stdout } = await run('dig', ['@127.0.0.1', '-p', String(port), '+time=1', '+tries=1', '+short', name]);
      if (stdout.trim()) return;
    } catch {
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  throw new Error(`no DNS answer on port ${port}`);
}

const run = promisify(execFile);

// Async on purpose: the test upstream lives in this process and must keep answering while dnsperf runs.
async function dnsperf(port: number, file: string, seconds: number): Promise<{ qps: number; lost: string }> {
  const [cmd, args] = pinned(1, 'dnsperf', ['-s', '127.0.0.1', '-p', String(port), '-d', file, '-l', String(seconds), '-c', String(DNSPERF_CLIENTS), '-q', String(DNSPERF_OUTSTANDING), '-t', '2']);
  const { stdout: out } = await run(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  const qps = Number(/Queries per second:\s+([\d.]+)/.exec(out)?.[1] ?? NaN);
  const lost = /Queries lost:\s+(\S+ \([^)]*\))/.exec(out)?.[1] ?? '?';
  const codes = /Response codes:\s+(.*)/.exec(out)?.[1] ?? '?';
  return { qps, lost: `lost ${lost}, ${codes}` };
}

async function main(): Promise<void> {
  ensureTools();
  const dir = mkdtempSync(join(tmpdir(), 'em-dnsbench-'));
  const children: ChildProcess[] = [];
  const upstream = await startUpstream({
    records: Object.fromEntries(Array.from({ length: FORWARDED_NAMES }, (_, i) => {
      const f = forwardedName(i);
      return [f.fqdn, [{ name: f.fqdn, type: 'A' as const, ttl: 3600, data: f.ip }]];
    })),
  });
  try {
    const clusterFile = join(dir, 'cluster.txt');
    const fwdFile = join(dir, 'forward.txt');
    writeFileSync(clusterFile, Array.from({ length: CLUSTER_SERVICES }, (_, i) => `${benchService(i).fqdn} A`).join('\n') + '\n');
    writeFileSync(fwdFile, Array.from({ length: FORWARDED_NAMES }, (_, i) => `${forwardedName(i).fqdn} A`).join('\n') + '\n');

    // The agent's DNS.
    const [acmd, aargs] = pinned(0, process.execPath, [join(root, 'bench/dns/agent-dns.ts'), '0', String(upstream.port), String(CLUSTER_SERVICES)]);
    const agent = spawn(acmd, aargs, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(agent);
    const agentPort = Number((await waitForLine(agent, /READY (\d+)/, 'agent DNS'))[1]);

    // unbound with the same names.
    const unboundPort = await freePort();
    const conf = [
      'server:',
      `  interface: 127.0.0.1@${unboundPort}`, `  port: ${unboundPort}`,
      '  do-daemonize: no', '  username: ""', '  chroot: ""', `  directory: "${dir}"`, '  pidfile: ""', '  use-syslog: no', '  logfile: ""', '  verbosity: 0',
      '  num-threads: 1', '  do-ip6: no', '  access-control: 127.0.0.0/8 allow', '  module-config: "iterator"', '  do-not-query-localhost: no', '  qname-minimisation: no',
      '  msg-cache-size: 64m', '  rrset-cache-size: 64m',
      '  local-zone: "cluster.local." static',
      ...Array.from({ length: CLUSTER_SERVICES }, (_, i) => `  local-data: "${benchService(i).fqdn}. 30 IN A ${benchService(i).ip}"`),
      'forward-zone:', `  name: "${FORWARD_ZONE}."`, `  forward-addr: 127.0.0.1@${upstream.port}`,
      '',
    ].join('\n');
    writeFileSync(join(dir, 'unbound.conf'), conf);
    const [ucmd, uargs] = pinned(0, 'unbound', ['-d', '-c', join(dir, 'unbound.conf')]);
    const unbound = spawn(ucmd, uargs, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(unbound);
    await waitForDns(unboundPort, benchService(0).fqdn);
    await waitForDns(agentPort, benchService(0).fqdn);

    console.log(`dnsperf ${SECONDS}s per run, ${DNSPERF_CLIENTS} clients, ${DNSPERF_OUTSTANDING} outstanding; servers pinned to CPU 0, dnsperf to CPU 1: ${pin}`);
    const results: DnsData['rows'] = [];
    for (const [what, file] of [['cluster names', clusterFile], ['cached forwarded names', fwdFile]] as const) {
      // Warm-up (fills the forwarding caches; JIT for the agent).
      await dnsperf(agentPort, file, WARMUP_S);
      await dnsperf(unboundPort, file, WARMUP_S);
      const a = await dnsperf(agentPort, file, SECONDS);
      const u = await dnsperf(unboundPort, file, SECONDS);
      results.push({ what, agentQps: a.qps, unboundQps: u.qps, agentOutcome: a.lost, unboundOutcome: u.lost });
    }
    console.log('\n| names | agent qps | unbound qps | agent/unbound |');
    console.log('|---|---:|---:|---:|');
    for (const r of results) console.log(`| ${r.what} | ${Math.round(r.agentQps)} | ${Math.round(r.unboundQps)} | ${(r.agentQps / r.unboundQps).toFixed(2)}x |`);
    for (const r of results) console.log(`${r.what}: agent ${r.agentOutcome}, unbound ${r.unboundOutcome}`);
    console.log(`\nupstream queries during the bench: udp ${upstream.counts.udp}, tcp ${upstream.counts.tcp} (for ${FORWARDED_NAMES} names, both servers)`);
    writeResult<DnsData>('dns', {
      seconds: SECONDS, warmupS: WARMUP_S, clients: DNSPERF_CLIENTS, outstanding: DNSPERF_OUTSTANDING, pinned: pin,
      clusterNames: CLUSTER_SERVICES, forwardedNames: FORWARDED_NAMES, rows: results,
      upstreamQueries: { udp: upstream.counts.udp, tcp: upstream.counts.tcp },
    });
  } finally {
    for (const c of children) c.kill('SIGTERM');
    await upstream.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
