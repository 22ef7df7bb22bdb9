// The abuse lab: a network-namespace lab where an agent and a server (the real binaries, started under a low
// RLIMIT_NOFILE with prlimit) are attacked while a legitimate pod keeps asking DNS (UDP and the TCP fallback) and the
// admin ports' /healthz. Shared by test/e2e/abuse-dns-admin.test.ts (which asserts) and test/lib/abuse-report.ts
// (which prints the attack → outcome table for any checkout, e.g. main before the fix).
//
//   203.0.113.10 node      agent (DNS on 169.254.96.16:53 on lo, admin 0.0.0.0:10560), Node podCIDRs 10.244.7.0/24
//   203.0.113.11 srv       edgemesh-server (tunnel 20004, admin 0.0.0.0:10561 as the chart sets it)
//   203.0.113.12 pod       legitimate client, source 10.244.7.10 for DNS (a pod of this node)
//   203.0.113.13 evil      attacker; also owns 10.244.7.64/26 (a compromised pod, same /24 as the legitimate one)
//   203.0.113.14 stranger  attacker outside the node's pods
import type { ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { buildLab, type Lab } from './netlab.ts';

export const ABUSE_MAIN = resolve(import.meta.dirname, 'abuse-main.ts');
export const DNS_IP = '169.254.96.16';
export const POD_IP = '10.244.7.10';
export const POD_CIDR = '10.244.7.0/24';
/** The attacker's addresses inside the node's pod CIDR. */
export const EVIL_PODS = Array.from({ length: 64 }, (_, i) => `10.244.7.${64 + i}`);
export const AGENT_ADMIN_PORT = 10560;
export const SERVER_ADMIN_PORT = 10561;
export const SERVER_PORT = 20004;
export const UDP_NAME = 'web.default.svc.cluster.local';
/** Headless Services with 20 endpoints (~960-byte answer): over 512 bytes (TC without EDNS), under 1232 (whole with EDNS). The
 *  legitimate client uses `big` for the TCP fallback; the RRL flood is for `flood` (same /24, another answer). */
export const BIG_NAME = 'big.default.svc.cluster.local';
export const FLOOD_NAME = 'flood.default.svc.cluster.local';
const BIG_ENDPOINTS = 20;
export const LEGIT_TIMEOUT_MS = 2000;
export const LEGIT_INTERVAL_MS = 500;
const READY_MS = 30_000;

export interface Victim {
  name: 'agent' | 'server';
  proc: ChildProcess;
  log: string;
}

export interface Round {
  t: number;
  udp: { ms: number; err?: string };
  tcp: { ms: number; err?: string };
  admins: Record<string, { ms: number; err?: string }>;
}

export interface AttackResult {
  attack: string;
  attacker: Record<string, unknown>;
  /** Legitimate rounds while the attack ran, and how many had a failing probe. */
  during: { rounds: number; failed: number; failures: string[] };
  /** After the attacker stopped: ms until three rounds in a row passed (-1: not within the recovery window). */
  recoveredMs: number;
  alive: { agent: boolean; server: boolean };
  fds: { agent: { before: number; peak: number; after: number }; server: { before: number; peak: number; after: number } };
  metrics: Record<string, number>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function fdCount(pid: number | undefined): number {
  if (!pid) return -1;
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return -1;
  }
}

export class AbuseLab {
  readonly lab: Lab;
  readonly dir: string;
  readonly root: string;
  readonly nofile: number;
  agent!: Victim;
  server!: Victim;

  private constructor(lab: Lab, dir: string, root: string, nofile: number) {
    this.lab = lab;
    this.dir = dir;
    this.root = root;
    this.nofile = nofile;
  }

  /** Builds the lab and starts both victims from the checkout at `root` with RLIMIT_NOFILE `nofile`. */
  static async start(root: string, nofile: number): Promise<AbuseLab> {
    const lab = await buildLab({ publicHosts: ['node', 'srv', 'pod', 'evil', 'stranger'], sites: [] });
    const dir = mkdtempSync(join(tmpdir(), 'em-abuse-'));
    const al = new AbuseLab(lab, dir, root, nofile);
    try {
      await al.network();
      al.files();
      await al.startVictims();
      return al;
    } catch (e) {
      await al.destroy();
      throw e;
    }
  }

  ip(host: string): string {
    return this.lab.host(host).ip;
  }

  get agentAdmin(): string {
    return `${this.ip('node')}:${AGENT_ADMIN_PORT}`;
  }

  get serverAdmin(): string {
    return `${this.ip('srv')}:${SERVER_ADMIN_PORT}`;
  }

  private async network(): Promise<void> {
    const node = this.ip('node');
    const sh = async (host: string, cmds: string[]) => {
      const r = await this.lab.exec(host, 'ip', ['-batch', '-'], { input: cmds.join('\n') + '\n' });
      if (r.exitCode !== 0) throw new Error(`${host}: ip -batch failed: ${r.stderr}`);
    };
    await sh('node', [`route add ${POD_IP}/32 via ${this.ip('pod')}`, `route add 10.244.7.64/26 via ${this.ip('evil')}`]);
    await sh('pod', [`addr add ${POD_IP}/32 dev eth0`, `route add ${DNS_IP}/32 via ${node} src ${POD_IP}`]);
    await sh('evil', [...EVIL_PODS.map((a) => `addr add ${a}/32 dev eth0`), `route add ${DNS_IP}/32 via ${node}`]);
    await sh('stranger', [`route add ${DNS_IP}/32 via ${node}`]);
  }

  private files(): void {
    const manifests = join(this.dir, 'manifests');
    mkdirSync(manifests, { recursive: true });
    writeFileSync(join(this.dir, 'token'), randomBytes(24).toString('hex') + '\n', { mode: 0o600 });
    const docs = [
      { apiVersion: 'v1', kind: 'Node', metadata: { name: 'node', labels: { 'kubernetes.io/hostname': 'node' } }, spec: { podCIDR: POD_CIDR, podCIDRs: [POD_CIDR] }, status: { addresses: [{ type: 'InternalIP', address: this.ip('node') }] } },
      { apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'default' }, spec: { clusterIP: '10.96.0.10', ports: [{ name: 'http', port: 80 }] } },
      ...['big', 'flood'].flatMap((svc, k) => [
        { apiVersion: 'v1', kind: 'Service', metadata: { name: svc, namespace: 'default' }, spec: { clusterIP: 'None', ports: [{ name: 'http', port: 80 }] } },
        {
          apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', metadata: { name: `${svc}-1`, namespace: 'default', labels: { 'kubernetes.io/service-name': svc } }, addressType: 'IPv4',
          endpoints: Array.from({ length: BIG_ENDPOINTS }, (_, i) => ({ addresses: [`10.244.${9 + k}.${i + 1}`], conditions: { ready: true } })), ports: [{ name: 'http', port: 80, protocol: 'TCP' }],
        },
      ]),
    ];
    writeFileSync(join(manifests, 'cluster.yaml'), docs.map((d) => stringify(d)).join('---\n'));
    writeFileSync(join(this.dir, 'server.yaml'), stringify({
      listen: `0.0.0.0:${SERVER_PORT}`, stunAltPort: SERVER_PORT + 1, tokenFile: join(this.dir, 'token'), stateDir: join(this.dir, 'server-state'),
      admin: { listen: `0.0.0.0:${SERVER_ADMIN_PORT}` }, log: { level: 'info' },
    }));
    writeFileSync(join(this.dir, 'agent.yaml'), stringify({
      nodeName: 'node', stateDir: join(this.dir, 'state'),
      cluster: { source: 'file', manifestsDir: manifests },
      dns: { enabled: true, listen: `${DNS_IP}:53`, upstream: [`${this.ip('srv')}:53`] },
      proxy: { intercept: 'none', bindAddress: '127.0.0.1' },
      tunnel: { enabled: true, servers: [`${this.ip('srv')}:${SERVER_PORT}`], listenPort: 20006, tokenFile: join(this.dir, 'token') },
      admin: { listen: `0.0.0.0:${AGENT_ADMIN_PORT}` },
      log: { level: 'info' },
    }));
  }

  private spawnVictim(name: 'agent' | 'server'): Victim {
    const bin = join(this.root, 'packages', name, 'bin', name === 'agent' ? 'edgemesh-agent.js' : 'edgemesh-server.js');
    const log = join(this.dir, `${name}.log`);
    const fd = openSync(log, 'a');
    const proc = this.lab.spawn(name === 'agent' ? 'node' : 'srv', 'prlimit', [`--nofile=${this.nofile}:${this.nofile}`, process.execPath, bin, '--config', join(this.dir, `${name}.yaml`)], {
      stdio: ['ignore', fd, fd], env: { ...process.env, EDGEMESH_TOKEN: '' },
    });
    closeSync(fd);
    return { name, proc, log };
  }

  private async startVictims(): Promise<void> {
    this.server = this.spawnVictim('server');
    await this.waitReady(this.server, 'srv', SERVER_ADMIN_PORT);
    this.agent = this.spawnVictim('agent');
    await this.waitReady(this.agent, 'node', AGENT_ADMIN_PORT);
  }

  /** Restarts whichever victim died (a "before" run continues with the next attack on a fresh process). */
  async reviveVictims(): Promise<void> {
    if (!this.alive(this.server)) {
      this.server = this.spawnVictim('server');
      await this.waitReady(this.server, 'srv', SERVER_ADMIN_PORT);
    }
    if (!this.alive(this.agent)) {
      this.agent = this.spawnVictim('agent');
      await this.waitReady(this.agent, 'node', AGENT_ADMIN_PORT);
    }
  }

  alive(v: Victim): boolean {
    return v.proc.exitCode === null && v.proc.signalCode === null;
  }

  tail(v: Victim, lines = 20): string {
    try {
      return readFileSync(v.log, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  private async curl(host: string, url: string): Promise<{ code: number; body: string }> {
    const r = await this.lab.exec(host, 'curl', ['-s', '--max-time', '3', '-o', '-', '-w', '\n%{http_code}', url]);
    const i = r.stdout.lastIndexOf('\n');
    return { code: Number(r.stdout.slice(i + 1)) || 0, body: r.stdout.slice(0, i) };
  }

  private async waitReady(v: Victim, host: string, port: number): Promise<void> {
    const end = Date.now() + READY_MS;
    let last = '';
    while (Date.now() < end) {
      if (!this.alive(v)) throw new Error(`${v.name} exited (${v.proc.exitCode ?? v.proc.signalCode}):\n${this.tail(v)}`);
      const r = await this.curl(host, `http://127.0.0.1:${port}/readyz`);
      if (r.code === 200) return;
      last = `${r.code} ${r.body.trim()}`;
      await sleep(200);
    }
    throw new Error(`${v.name} not ready after ${READY_MS} ms (${last}):\n${this.tail(v)}`);
  }

  /** Prometheus samples (name{labels} → value) of a victim's /metrics matching `re`. */
  async metrics(v: Victim, re: RegExp): Promise<Record<string, number>> {
    const r = v.name === 'agent' ? await this.curl('node', `http://127.0.0.1:${AGENT_ADMIN_PORT}/metrics`) : await this.curl('srv', `http://127.0.0.1:${SERVER_ADMIN_PORT}/metrics`);
    const out: Record<string, number> = {};
    for (const line of r.body.split('\n')) {
      if (!line || line.startsWith('#') || !re.test(line)) continue;
      const sp = line.lastIndexOf(' ');
      out[`${v.name}:${line.slice(0, sp)}`] = Number(line.slice(sp + 1));
    }
    return out;
  }

  /** The agent's view of its server connection (/status), or undefined when /status does not answer. */
  async agentConnected(): Promise<boolean | undefined> {
    const r = await this.curl('node', `http://127.0.0.1:${AGENT_ADMIN_PORT}/status`);
    if (r.code !== 200) return undefined;
    try {
      return (JSON.parse(r.body) as { servers: { connected: boolean }[] }).servers.every((s) => s.connected);
    } catch {
      return undefined;
    }
  }

  /** Runs a JSON-configured abuse-main mode in `host`; resolves with its output lines. */
  private runTool(host: string, cfg: object, onLine?: (o: Record<string, unknown>) => void): { done: Promise<Record<string, unknown>[]>; proc: ChildProcess } {
    // Attackers keep this process's descriptor limit (the victims run under `nofile`).
    const proc = this.lab.spawn(host, process.execPath, [ABUSE_MAIN, JSON.stringify(cfg)]);
    const lines: Record<string, unknown>[] = [];
    let buf = '';
    let err = '';
    proc.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const l = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          const o = JSON.parse(l) as Record<string, unknown>;
          lines.push(o);
          onLine?.(o);
        } catch {
          // not ours
        }
      }
    });
    proc.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
    const done = new Promise<Record<string, unknown>[]>((res, rej) => {
      proc.once('exit', (code) => (code === 0 ? res(lines) : rej(new Error(`abuse-main ${JSON.stringify(cfg).slice(0, 60)} exited ${code}: ${err.slice(-500)}`))));
    });
    return { done, proc };
  }

  private legit(durationMs: number, onRound?: (r: Round) => void) {
    return this.runTool('pod', {
      mode: 'legit', dns: DNS_IP, port: 53, udpName: UDP_NAME, bigName: BIG_NAME, admins: [this.agentAdmin, this.serverAdmin],
      durationMs, intervalMs: LEGIT_INTERVAL_MS, timeoutMs: LEGIT_TIMEOUT_MS,
    }, (o) => { if (o.ev === 'round') onRound?.(o as unknown as Round); });
  }

  static failures(r: Round): string[] {
    const f: string[] = [];
    if (r.udp.err) f.push(`udp: ${r.udp.err}`);
    if (r.tcp.err) f.push(`tcp fallback: ${r.tcp.err}`);
    for (const [a, h] of Object.entries(r.admins)) if (h.err) f.push(`${a}/healthz: ${h.err}`);
    return f;
  }

  /** One legitimate round must pass before an attack starts. */
  async baseline(): Promise<void> {
    const end = Date.now() + 20_000;
    let last: string[] = [];
    while (Date.now() < end) {
      const rounds: Round[] = [];
      await this.legit(LEGIT_INTERVAL_MS, (r) => rounds.push(r)).done;
      last = rounds.flatMap(AbuseLab.failures);
      if (rounds.length && !last.length) return;
      await sleep(500);
    }
    throw new Error(`no passing legitimate round before the attack: ${last.join('; ')}`);
  }

  /**
   * Runs `attack` (abuse-main config) in `host` for its duration while the legitimate client probes, then measures how
   * long the victims take to answer again (three passing rounds in a row, within `recoveryMs`).
   */
  async attack(name: string, host: string, cfg: { durationMs: number } & Record<string, unknown>, recoveryMs = 20_000): Promise<AttackResult> {
    await this.reviveVictims();
    await this.baseline();
    const fds = {
      agent: { before: fdCount(this.agent.proc.pid), peak: 0, after: -1 },
      server: { before: fdCount(this.server.proc.pid), peak: 0, after: -1 },
    };
    const sampler = setInterval(() => {
      fds.agent.peak = Math.max(fds.agent.peak, fdCount(this.agent.proc.pid));
      fds.server.peak = Math.max(fds.server.peak, fdCount(this.server.proc.pid));
    }, 250);
    const during: Round[] = [];
    try {
      const tool = this.runTool(host, cfg);
      // Give the attack a head start (connections ramp up), then probe for the rest of its duration.
      const rampMs = Math.min(3000, cfg.durationMs / 3);
      await sleep(rampMs);
      const probe = this.legit(cfg.durationMs - rampMs - 500, (r) => during.push(r));
      const [lines] = await Promise.all([tool.done, probe.done]);
      const attacker = lines.find((l) => l.ev === 'summary') ?? {};
      // Recovery: the attacker is gone.
      const t0 = Date.now();
      let streak = 0;
      let recoveredMs = -1;
      while (Date.now() - t0 < recoveryMs) {
        const rounds: Round[] = [];
        await this.legit(LEGIT_INTERVAL_MS, (r) => rounds.push(r)).done;
        streak = rounds.length && !rounds.flatMap(AbuseLab.failures).length ? streak + 1 : 0;
        if (streak >= 3) { recoveredMs = Date.now() - t0; break; }
      }
      // Descriptors back to normal (allow the sampler's own noise and keep-alive connections to settle).
      const settle = Date.now() + 15_000;
      do {
        fds.agent.after = fdCount(this.agent.proc.pid);
        fds.server.after = fdCount(this.server.proc.pid);
        if (fds.agent.after <= fds.agent.before + 32 && fds.server.after <= fds.server.before + 32) break;
        await sleep(500);
      } while (Date.now() < settle);
      const alive = { agent: this.alive(this.agent), server: this.alive(this.server) };
      const metrics = {
        ...(alive.agent ? await this.metrics(this.agent, /^edgemesh_(budget_|dns_refused|dns_rrl)/) : {}),
        ...(alive.server ? await this.metrics(this.server, /^edgemesh_server_budget_/) : {}),
      };
      const failed = during.filter((r) => AbuseLab.failures(r).length);
      return {
        attack: name, attacker: { ...attacker, ev: undefined },
        during: { rounds: during.length, failed: failed.length, failures: [...new Set(failed.flatMap(AbuseLab.failures))].slice(0, 8) },
        recoveredMs, alive, fds, metrics,
      };
    } finally {
      clearInterval(sampler);
    }
  }

  async destroy(): Promise<void> {
    try {
      await this.lab.destroy();
    } finally {
      rmSync(this.dir, { recursive: true, force: true });
    }
  }
}

/** The attacks of the suite, as abuse-main configs (each bounded by durationMs and its counts). */
export function attacks(al: AbuseLab): { name: string; host: string; cfg: { durationMs: number } & Record<string, unknown> }[] {
  return [
    {
      name: 'dns-tcp-dribble', host: 'evil',
      cfg: { mode: 'dribble', dns: DNS_IP, port: 53, sources: EVIL_PODS, target: 1200, connectPerSec: 400, byteEveryMs: 5000, durationMs: 20_000 },
    },
    {
      name: 'dns-stranger', host: 'stranger',
      cfg: { mode: 'flood', dns: DNS_IP, port: 53, name: BIG_NAME, type: 'A', edns: 4096, qps: 2000, durationMs: 8000 },
    },
    {
      name: 'dns-rrl-flood', host: 'evil',
      cfg: { mode: 'flood', dns: DNS_IP, port: 53, name: FLOOD_NAME, type: 'A', edns: 4096, qps: 4000, durationMs: 10_000, source: EVIL_PODS[0] },
    },
    {
      name: 'admin-slowloris', host: 'evil',
      cfg: { mode: 'slowloris', admins: [al.agentAdmin, al.serverAdmin], target: 3000, connectPerSec: 600, lineEveryMs: 1000, durationMs: 20_000 },
    },
  ];
}
