// The tunnel abuse lab: the real edgemesh-server and a real edgemesh-agent ("victim", behind a symmetric NAT so a
// birthday round would cost it 256 sockets, under a low RLIMIT_NOFILE) in network namespaces; callers are
// tunnel-node.ts processes holding the cluster token under the names they choose. Shared by
// test/e2e/abuse-tunnel.test.ts (asserts) and test/lib/tunnel-abuse-report.ts (prints before/after for any checkout).
//
//   198.18.0.10  victim  agent (site vsite, symmetric NAT); backends: TCP 8080-8083 (0.0.0.0), UDP echo 8090
//   203.0.113.10 srv     edgemesh-server (tunnel 20004, STUN alt 20005)
//   203.0.113.11 peer    legitimate cluster node, group g1 (the victim's group)
//   203.0.113.12 far     cluster node of group g2
//   203.0.113.13 evil    a compromised cluster node (group g1)
//   203.0.113.14 other   a cluster node without an agent; backend TCP 8084 (the pivot target); `not-a-cluster-node` runs here
import type { ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { buildLab, type Lab } from './netlab.ts';
import { TunnelLab, type NodeProc } from './tunnel-lab.ts';

export const AGENT_ADMIN_PORT = 10560;
export const SERVER_PORT = 20004;
export const LEGIT_TIMEOUT_MS = 2000;
const LEGIT_INTERVAL_MS = 500;
const READY_MS = 30_000;
const GROUP = 'apps.kubeedge.io/belonging-to';
/** Backend ports on the victim (and 8084 on `other`): a connection to one is a stream the victim served. */
export const PORTS = { web: 8080, loop: 8081, local: 8082, site: 8083, pivot: 8084, echo: 8090 } as const;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function fdCount(pid: number | undefined): number {
  try {
    return pid ? readdirSync(`/proc/${pid}/fd`).length : -1;
  } catch {
    return -1;
  }
}

/** TCP backends that log every connection as a JSON line and answer `ok:<port>`; a UDP echo. */
const BACKEND = `
const net = require('node:net'), dgram = require('node:dgram');
for (const p of JSON.parse(process.argv[1])) net.createServer((c) => {
  console.log(JSON.stringify({ port: p, from: c.remoteAddress }));
  c.on('error', () => {}); c.on('data', () => {}); c.on('end', () => c.end('ok:' + p + '\\n'));
}).listen(p, '0.0.0.0');
for (const p of JSON.parse(process.argv[2])) { const u = dgram.createSocket('udp4'); u.on('message', (m, r) => u.send(m, r.port, r.address)); u.bind(p, '0.0.0.0'); }
`;

export interface LegitRound { ms: number; err?: string; healthz?: string }

export interface TunnelAttackResult {
  attack: string;
  attacker: Record<string, unknown>;
  during: { rounds: number; failed: number; failures: string[] };
  recoveredMs: number;
  alive: boolean;
  fds: { before: number; peak: number; after: number };
  metrics: Record<string, number>;
}

export class TunnelAbuseLab {
  readonly lab: Lab;
  readonly tl: TunnelLab;
  readonly dir: string;
  readonly root: string;
  readonly nofile: number;
  agent!: ChildProcess;
  readonly agentLog: string;
  /** Connections each backend port saw. */
  readonly seen = new Map<number, number>();
  readonly callers = new Map<string, NodeProc>();

  private constructor(lab: Lab, root: string, nofile: number) {
    this.lab = lab;
    this.tl = new TunnelLab(lab);
    this.dir = mkdtempSync(join(tmpdir(), 'em-tabuse-'));
    this.agentLog = join(this.dir, 'agent.log');
    this.root = root;
    this.nofile = nofile;
  }

  static async start(root: string, nofile: number): Promise<TunnelAbuseLab> {
    const lab = await buildLab({ publicHosts: ['srv', 'peer', 'far', 'evil', 'other'], sites: [{ name: 'vsite', nat: 'symmetric', hosts: ['victim'] }] });
    const t = new TunnelAbuseLab(lab, root, nofile);
    try {
      await t.tl.startServer('srv');
      t.backends('victim', [PORTS.web, PORTS.loop, PORTS.local, PORTS.site], [PORTS.echo]);
      t.backends('other', [PORTS.pivot], []);
      t.files();
      await t.startAgent();
      return t;
    } catch (e) {
      await t.destroy();
      throw e;
    }
  }

  ip(host: string): string {
    return this.lab.host(host).ip;
  }

  private backends(host: string, tcp: number[], udp: number[]): void {
    const p = this.lab.spawn(host, process.execPath, ['-e', BACKEND, JSON.stringify(tcp), JSON.stringify(udp)]);
    createInterface({ input: p.stdout! }).on('line', (l) => {
      try {
        const m = JSON.parse(l) as { port: number };
        this.seen.set(m.port, (this.seen.get(m.port) ?? 0) + 1);
      } catch {
        // not ours
      }
    });
  }

  private files(): void {
    const manifests = join(this.dir, 'manifests');
    mkdirSync(manifests, { recursive: true });
    const v = this.ip('victim');
    const node = (name: string, group: string) => ({ apiVersion: 'v1', kind: 'Node', metadata: { name, labels: { [GROUP]: group } } });
    const svc = (name: string, port: number, extra: Record<string, unknown> = {}, annotations: Record<string, string> = {}, protocol = 'TCP') => ({
      apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: 'default', annotations }, spec: { clusterIP: `10.96.0.${port - 8000}`, ports: [{ name: 'p', port: 80, targetPort: port, protocol }], ...extra },
    });
    const slice = (name: string, ip: string, nodeName: string, port: number, protocol = 'TCP') => ({
      apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: `${name}-1`, namespace: 'default', labels: { 'kubernetes.io/service-name': name } },
      addressType: 'IPv4', endpoints: [{ addresses: [ip], nodeName, conditions: { ready: true } }], ports: [{ name: 'p', port, protocol }],
    });
    const docs = [
      node('victim', 'g1'), node('peer', 'g1'), node('far', 'g2'), node('evil', 'g1'), node('other', 'g1'),
      svc('web', PORTS.web), slice('web', v, 'victim', PORTS.web),
      svc('loop', PORTS.loop), slice('loop', '127.0.0.1', 'victim', PORTS.loop),
      svc('local', PORTS.local, { internalTrafficPolicy: 'Local' }), slice('local', v, 'victim', PORTS.local),
      svc('site', PORTS.site, {}, { 'apps.kubeedge.io/service-topology': 'range-nodegroup' }), slice('site', v, 'victim', PORTS.site),
      svc('pivot', PORTS.pivot), slice('pivot', this.ip('other'), 'other', PORTS.pivot),
      svc('echo', PORTS.echo, {}, {}, 'UDP'), slice('echo', v, 'victim', PORTS.echo, 'UDP'),
    ];
    writeFileSync(join(manifests, 'cluster.yaml'), docs.map((d) => stringify(d)).join('---\n'));
    writeFileSync(join(this.dir, 'agent.yaml'), stringify({
      nodeName: 'victim', stateDir: join(this.dir, 'state'),
      cluster: { source: 'file', manifestsDir: manifests },
      dns: { enabled: false },
      proxy: { intercept: 'none', bindAddress: '127.0.0.1' },
      tunnel: { enabled: true, servers: [this.tl.serverAddr()], listenPort: 20006, tokenFile: join(this.tl.dir, 'server-token') },
      admin: { listen: `127.0.0.1:${AGENT_ADMIN_PORT}` },
      log: { level: 'info' },
    }));
  }

  private async startAgent(): Promise<void> {
    const bin = join(this.root, 'packages', 'agent', 'bin', 'edgemesh-agent.js');
    const fd = openSync(this.agentLog, 'a');
    this.agent = this.lab.spawn('victim', 'prlimit', [`--nofile=${this.nofile}:${this.nofile}`, process.execPath, bin, '--config', join(this.dir, 'agent.yaml')], {
      stdio: ['ignore', fd, fd], env: { ...process.env, EDGEMESH_TOKEN: '' },
    });
    closeSync(fd);
    const end = Date.now() + READY_MS;
    while (Date.now() < end) {
      if (!this.alive()) throw new Error(`agent exited:\n${this.tail()}`);
      if ((await this.curl('/readyz')).code === 200 && (await this.connected())) return;
      await sleep(200);
    }
    throw new Error(`agent not ready:\n${this.tail()}`);
  }

  /** Restarts the victim when it died (a "before" run goes on with the next attack). */
  async revive(): Promise<void> {
    if (!this.alive()) await this.startAgent();
  }

  alive(): boolean {
    return this.agent.exitCode === null && this.agent.signalCode === null;
  }

  tail(lines = 15): string {
    try {
      return readFileSync(this.agentLog, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  async curl(path: string): Promise<{ code: number; body: string }> {
    const r = await this.lab.exec('victim', 'curl', ['-s', '--max-time', '2', '-o', '-', '-w', '\n%{http_code}', `http://127.0.0.1:${AGENT_ADMIN_PORT}${path}`]);
    const i = r.stdout.lastIndexOf('\n');
    return { code: Number(r.stdout.slice(i + 1)) || 0, body: r.stdout.slice(0, i) };
  }

  private async connected(): Promise<boolean> {
    try {
      return (JSON.parse((await this.curl('/status')).body) as { servers: { connected: boolean }[] }).servers.every((s) => s.connected);
    } catch {
      return false;
    }
  }

  async metrics(re: RegExp): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const line of (await this.curl('/metrics')).body.split('\n')) {
      if (!line || line.startsWith('#') || !re.test(line)) continue;
      const sp = line.lastIndexOf(' ');
      out[line.slice(0, sp)] = Number(line.slice(sp + 1));
    }
    return out;
  }

  /** A caller (tunnel-node.ts) named `name` on `host`, relay only. */
  async caller(name: string, host: string): Promise<NodeProc> {
    let c = this.callers.get(name);
    if (!c) {
      c = await this.tl.startNode(name, host, { listenPort: null, clusterNodes: ['victim', 'peer', 'far', 'evil', 'other'], logLevel: 'warn' });
      this.callers.set(name, c);
      const end = Date.now() + READY_MS;
      while (!(await c.status()).servers.every((s) => s.connected)) {
        if (Date.now() > end) throw new Error(`${name} did not connect to the server: ${c.stderr.slice(-500)}`);
        await sleep(100);
      }
    }
    return c;
  }

  /** One request from `caller` to Service `svc` (its endpoint as the cluster lists it). */
  async request(caller: NodeProc, svc: keyof typeof PORTS, timeoutMs = 3000): Promise<Record<string, unknown>> {
    const ip = svc === 'loop' ? '127.0.0.1' : svc === 'pivot' ? this.ip('other') : this.ip('victim');
    return caller.request('request', { to: 'victim', service: `default/${svc}`, ip, port: PORTS[svc], timeoutMs });
  }

  /** One legitimate round: `peer` asks web on the victim (2 s), and the victim's /healthz answers 200. */
  async legitRound(): Promise<LegitRound> {
    const peer = await this.caller('peer', 'peer');
    const t0 = performance.now();
    const [r, h] = await Promise.all([this.request(peer, 'web', LEGIT_TIMEOUT_MS).catch((e: Error): Record<string, unknown> => ({ error: e.message })), this.curl('/healthz')]);
    const ms = performance.now() - t0;
    const round: LegitRound = { ms };
    if (r.reply !== `ok:${PORTS.web}\n` || ms > LEGIT_TIMEOUT_MS) round.err = `web: ${String(r.error ?? r.reply)} in ${Math.round(ms)} ms`;
    if (h.code !== 200) round.healthz = `healthz ${h.code}`;
    return round;
  }

  /** Runs `attack` while legitimate rounds go on, then waits for three clean rounds in a row (the recovery). */
  async attack(name: string, attack: () => Promise<Record<string, unknown>>, cleanup: () => Promise<void> = async () => {}, recoveryMs = 30_000): Promise<TunnelAttackResult> {
    await this.revive();
    const pid = this.agent.pid;
    const fds = { before: fdCount(pid), peak: 0, after: -1 };
    const sampler = setInterval(() => { fds.peak = Math.max(fds.peak, fdCount(pid)); }, 100);
    const during: LegitRound[] = [];
    let attacking = true;
    try {
      const a = attack().catch((e: Error) => ({ error: e.message })).finally(() => { attacking = false; });
      while (attacking || during.length < 3) {
        if (!this.alive()) break;
        during.push(await this.legitRound());
        await sleep(LEGIT_INTERVAL_MS);
      }
      const attacker = await a;
      await cleanup();
      const t0 = Date.now();
      let streak = 0;
      let recoveredMs = -1;
      while (Date.now() - t0 < recoveryMs && this.alive()) {
        const r = await this.legitRound();
        streak = r.err || r.healthz ? 0 : streak + 1;
        if (streak >= 3) { recoveredMs = Date.now() - t0; break; }
        await sleep(LEGIT_INTERVAL_MS);
      }
      const settle = Date.now() + 15_000;
      do {
        fds.after = fdCount(pid);
        if (fds.after <= fds.before + 32) break;
        await sleep(500);
      } while (Date.now() < settle);
      const failed = during.filter((r) => r.err || r.healthz);
      return {
        attack: name, attacker,
        during: { rounds: during.length, failed: failed.length, failures: [...new Set(failed.flatMap((r) => [r.err, r.healthz].filter((x): x is string => !!x)))].slice(0, 6) },
        recoveredMs, alive: this.alive(), fds,
        metrics: this.alive() ? await this.metrics(/^edgemesh_(budget_refusals_total\{budget="(tunnel|fd)|tunnel_serve_refused)/) : {},
      };
    } finally {
      clearInterval(sampler);
    }
  }

  async destroy(): Promise<void> {
    try {
      for (const c of this.callers.values()) c.proc.kill('SIGKILL');
      this.agent?.kill('SIGKILL');
      await this.lab.destroy();
    } finally {
      rmSync(this.dir, { recursive: true, force: true });
      rmSync(this.tl.dir, { recursive: true, force: true });
    }
  }
}

/** The tunnel attacks: a compromised node floods served UDP streams; a burst of birthday rendezvous from it and from
 *  80 throwaway names. Bounded by their counts. */
export function tunnelAttacks(t: TunnelAbuseLab): { name: string; run: () => Promise<Record<string, unknown>>; cleanup?: () => Promise<void> }[] {
  return [
    {
      name: 'udp-stream-flood',
      run: async () => {
        const evil = await t.caller('evil', 'evil');
        return evil.request('udpflood', { to: 'victim', service: 'default/echo', ip: t.ip('victim'), port: PORTS.echo, count: 3000, concurrency: 64 });
      },
      cleanup: async () => { await (await t.caller('evil', 'evil')).request('udprelease'); },
    },
    {
      name: 'birthday-burst',
      run: async () => {
        const evil = await t.caller('evil', 'evil');
        return evil.request('birthdayburst', { to: 'victim', names: 80, perName: 2, prefix: `tmp${randomBytes(2).toString('hex')}`, host: t.ip('evil') });
      },
    },
  ];
}
