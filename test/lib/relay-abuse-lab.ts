// The relay abuse lab: edgemesh-server (the real binary of the checkout at `root`, under a low RLIMIT_NOFILE with
// prlimit) on a public host, two real agents in two UDP-blocked sites (so every cross-node call rides the server's
// relay), a backend on n2 and an attacker host holding the cluster token. While an attack runs, a pod on n1 calls the
// Service on n2 and /healthz of the server every LEGIT_INTERVAL_MS, each with a LEGIT_TIMEOUT_MS deadline. Shared by
// test/e2e/abuse-relay.test.ts (asserts), test/lib/relay-abuse-report.ts (prints the table for any checkout) and the
// soak bench (bench/soak/run.ts).
//
//   203.0.113.10 relay  edgemesh-server (tunnel 20004, admin 127.0.0.1:10561)
//   203.0.113.11 evil   attacker; also owns 10.99.0.1-64 (routed by the relay host), the token leaked to it
//   site-1 (udp-blocked) n1: agent + the legitimate client;  site-2 (udp-blocked) n2: agent + backend `web`
import type { ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { buildLab, type Lab } from './netlab.ts';
import { AGENT_IP, Mesh, nodeManifest, serviceManifest, sliceManifest } from '../../packages/lab/src/mesh.ts';

export const RELAY_ABUSE_MAIN = resolve(import.meta.dirname, 'relay-abuse-main.ts');
export const SERVER_PORT = 20004;
export const SERVER_ADMIN = '127.0.0.1:10561';
export const WEB_PORT = 8080;
export const WEB_URL = 'http://web.mesh.svc.cluster.local/';
export const EVIL_SOURCES = Array.from({ length: 64 }, (_, i) => `10.99.0.${i + 1}`);
export const LEGIT_TIMEOUT_MS = 2000;
export const LEGIT_INTERVAL_MS = 500;
const READY_MS = 30_000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface ProcStats { fds: number; rssKiB: number }

export function procStats(pid: number | undefined): ProcStats {
  if (!pid) return { fds: -1, rssKiB: -1 };
  try {
    const fds = readdirSync(`/proc/${pid}/fd`).length;
    const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return { fds, rssKiB: m ? Number(m[1]) : -1 };
  } catch {
    return { fds: -1, rssKiB: -1 };
  }
}

export interface LegitRound { t: number; web: { ms: number; err?: string }; healthz: { ms: number; err?: string } }

export interface RelayAttackResult {
  attack: string;
  attacker: Record<string, unknown>;
  during: { rounds: number; failed: number; failures: string[]; webMsMax: number };
  recoveredMs: number;
  alive: boolean;
  server: { before: ProcStats; peak: ProcStats; after: ProcStats };
  /** Warning lines the victim agent (n2) logged while the attack ran. */
  victimWarnings: number;
  metrics: Record<string, number>;
}

export class RelayAbuseLab {
  readonly lab: Lab;
  readonly mesh: Mesh;
  readonly dir: string;
  readonly root: string;
  readonly nofile: number;
  readonly token = randomBytes(32).toString('hex');
  server!: { proc: ChildProcess; log: string };
  /** EDGEMESH_MEMORY_LIMIT for the server and the agents (V8 sized as under a container limit); none by default. */
  readonly memoryLimits: { server: string; agent: string } | undefined;

  private constructor(lab: Lab, dir: string, root: string, nofile: number, memoryLimits?: { server: string; agent: string }) {
    this.memoryLimits = memoryLimits;
    this.lab = lab;
    this.dir = dir;
    this.root = root;
    this.nofile = nofile;
    this.mesh = new Mesh(lab, dir, this.token);
  }

  static async start(root: string, nofile: number, opts: { memoryLimits?: { server: string; agent: string } } = {}): Promise<RelayAbuseLab> {
    const lab = await buildLab({
      publicHosts: ['relay', 'evil'],
      sites: [{ name: 'site-1', nat: 'udp-blocked', hosts: ['n1'] }, { name: 'site-2', nat: 'udp-blocked', hosts: ['n2'] }],
    });
    const dir = mkdtempSync(join(tmpdir(), 'em-relay-abuse-'));
    const al = new RelayAbuseLab(lab, dir, root, nofile, opts.memoryLimits);
    try {
      await al.setup();
      return al;
    } catch (e) {
      await al.destroy();
      throw e;
    }
  }

  get serverAddress(): string {
    return `${this.lab.host('relay').ip}:${SERVER_PORT}`;
  }

  private async setup(): Promise<void> {
    const sh = async (host: string, cmds: string[]) => {
      const r = await this.lab.exec(host, 'ip', ['-batch', '-'], { input: cmds.join('\n') + '\n' });
      if (r.exitCode !== 0) throw new Error(`${host}: ip -batch failed: ${r.stderr}`);
    };
    await sh('evil', EVIL_SOURCES.map((a) => `addr add ${a}/32 dev eth0`));
    await sh('relay', [`route add 10.99.0.0/24 via ${this.lab.host('evil').ip}`]);
    const [n1, n2] = ['n1', 'n2'].map((h) => this.lab.host(h));
    this.mesh.writeManifest('nodes.yaml', [nodeManifest('n1', {}, n1.ip), nodeManifest('n2', {}, n2.ip)]);
    this.mesh.writeManifest('services.yaml', [
      serviceManifest('mesh', 'web', 80, WEB_PORT, { clusterIP: '10.96.0.10' }),
      sliceManifest('mesh', 'web', 'web-1', WEB_PORT, [{ ip: n2.ip, node: 'n2' }]),
    ]);
    writeFileSync(join(this.dir, 'server.yaml'), stringify({
      listen: `0.0.0.0:${SERVER_PORT}`, stunAltPort: SERVER_PORT + 1, stateDir: join(this.dir, 'server-state'), tokenFile: this.mesh.tokenFile,
      admin: { listen: SERVER_ADMIN }, log: { level: 'info' },
    }));
    await this.startServer();
    await this.mesh.startBackend('n2', 'n2', WEB_PORT);
    const tunnel = { servers: [this.serverAddress] };
    // Mesh passes this process's environment to the agents it spawns: set the agents' limit around their start.
    const saved = process.env.EDGEMESH_MEMORY_LIMIT;
    if (this.memoryLimits) process.env.EDGEMESH_MEMORY_LIMIT = this.memoryLimits.agent;
    try {
      await this.mesh.startAgent('n1', 'n1', { config: { tunnel } });
      await this.mesh.startAgent('n2', 'n2', { config: { tunnel } });
    } finally {
      if (saved === undefined) delete process.env.EDGEMESH_MEMORY_LIMIT;
      else process.env.EDGEMESH_MEMORY_LIMIT = saved;
    }
    this.lab.setResolvConf('n1', AGENT_IP, ['mesh.svc.cluster.local', 'svc.cluster.local', 'cluster.local']);
    await this.baseline(60_000);
  }

  private async startServer(): Promise<void> {
    const bin = join(this.root, 'packages', 'server', 'bin', 'edgemesh-server.js');
    const log = join(this.dir, 'server.log');
    const fd = openSync(log, 'a');
    const proc = this.lab.spawn('relay', 'prlimit', [`--nofile=${this.nofile}:${this.nofile}`, process.execPath, bin, '--config', join(this.dir, 'server.yaml')], {
      stdio: ['ignore', fd, fd], env: { ...process.env, EDGEMESH_TOKEN: '', ...(this.memoryLimits ? { EDGEMESH_MEMORY_LIMIT: this.memoryLimits.server } : {}) },
    });
    closeSync(fd);
    this.server = { proc, log };
    const end = Date.now() + READY_MS;
    while (Date.now() < end) {
      if (!this.alive()) throw new Error(`server exited:\n${this.tail()}`);
      if ((await this.mesh.adminGet('relay', SERVER_ADMIN, '/readyz')).status === 200) return;
      await sleep(200);
    }
    throw new Error(`server not ready:\n${this.tail()}`);
  }

  /** Restarts the server when a ("before") attack killed it; agents reconnect by themselves. */
  async revive(): Promise<void> {
    if (!this.alive()) {
      await this.startServer();
      await this.baseline(60_000);
    }
  }

  alive(): boolean {
    return this.server.proc.exitCode === null && this.server.proc.signalCode === null;
  }

  tail(lines = 12): string {
    try {
      return readFileSync(this.server.log, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  /** One legitimate round: the Service on n2 from n1 (through the relay) and the server's /healthz. */
  async round(): Promise<LegitRound> {
    const t = Date.now();
    const [web, hz] = await Promise.all([
      this.mesh.fetch('n1', WEB_URL, LEGIT_TIMEOUT_MS),
      (async () => { const t0 = Date.now(); const r = await this.mesh.adminGet('relay', SERVER_ADMIN, '/healthz'); return { r, ms: Date.now() - t0 }; })(),
    ]);
    return {
      t,
      web: web.ok && web.totalMs <= LEGIT_TIMEOUT_MS && web.body?.includes('n2') ? { ms: web.totalMs } : { ms: web.totalMs, err: `${web.error ?? 'slow'} ${web.message ?? ''}`.trim().slice(0, 120) },
      healthz: hz.r.status === 200 ? { ms: hz.ms } : { ms: hz.ms, err: `${hz.r.status} ${hz.r.body.slice(0, 80)}` },
    };
  }

  static failures(r: LegitRound): string[] {
    return [...(r.web.err ? [`web: ${r.web.err}`] : []), ...(r.healthz.err ? [`healthz: ${r.healthz.err}`] : [])];
  }

  async baseline(ms = 30_000): Promise<void> {
    const end = Date.now() + ms;
    let last: string[] = [];
    while (Date.now() < end) {
      const r = await this.round();
      last = RelayAbuseLab.failures(r);
      if (!last.length) return;
      await sleep(500);
    }
    throw new Error(`no passing legitimate round: ${last.join('; ')}\nserver:\n${this.tail()}\nn1:\n${this.mesh.tail('n1')}`);
  }

  async metrics(re: RegExp): Promise<Record<string, number>> {
    const r = await this.mesh.adminGet('relay', SERVER_ADMIN, '/metrics');
    const out: Record<string, number> = {};
    for (const line of r.body.split('\n')) {
      if (!line || line.startsWith('#') || !re.test(line)) continue;
      const sp = line.lastIndexOf(' ');
      out[line.slice(0, sp)] = Number(line.slice(sp + 1));
    }
    return out;
  }

  /** Starts an attacker tool in `evil`; `done` resolves with its summary line. */
  runTool(cfg: object): { done: Promise<Record<string, unknown>>; proc: ChildProcess } {
    const proc = this.lab.spawn('evil', process.execPath, [RELAY_ABUSE_MAIN, JSON.stringify(cfg)]);
    let buf = '';
    let err = '';
    proc.stdout!.on('data', (d: Buffer) => { buf += d.toString(); });
    proc.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
    const done = new Promise<Record<string, unknown>>((res, rej) => {
      proc.once('exit', (code) => {
        if (code !== 0) return rej(new Error(`relay-abuse-main exited ${code}: ${err.slice(-500)}`));
        const line = buf.trim().split('\n').pop() ?? '{}';
        try { res(JSON.parse(line) as Record<string, unknown>); } catch { res({ raw: line }); }
      });
    });
    return { done, proc };
  }

  private logSize(name: string): number {
    try {
      return statSync(join(this.dir, `${name}.log`)).size;
    } catch {
      return 0;
    }
  }

  private warningsSince(name: string, offset: number): number {
    try {
      const text = readFileSync(join(this.dir, `${name}.log`), 'utf8').slice(offset);
      return text.split('\n').filter((l) => /"level":(40|50|60)/.test(l)).length;
    } catch {
      return -1;
    }
  }

  /** Runs one attack while probing; then waits for three passing rounds in a row (within recoveryMs). */
  async attack(name: string, cfg: { durationMs: number } & Record<string, unknown>, recoveryMs = 30_000): Promise<RelayAttackResult> {
    await this.revive();
    await this.baseline();
    const pid = () => this.server.proc.pid;
    const before = procStats(pid());
    const peak = { ...before };
    const sampler = setInterval(() => {
      const s = procStats(pid());
      peak.fds = Math.max(peak.fds, s.fds);
      peak.rssKiB = Math.max(peak.rssKiB, s.rssKiB);
    }, 250);
    const logAt = this.logSize('n2');
    const during: LegitRound[] = [];
    try {
      const tool = this.runTool(cfg);
      const rampMs = Math.min(4000, cfg.durationMs / 3);
      await sleep(rampMs);
      const probeEnd = Date.now() + cfg.durationMs - rampMs - 1000;
      while (Date.now() < probeEnd) {
        const t0 = Date.now();
        during.push(await this.round());
        await sleep(Math.max(0, LEGIT_INTERVAL_MS - (Date.now() - t0)));
      }
      const attacker = await tool.done;
      const victimWarnings = this.warningsSince('n2', logAt);
      const t0 = Date.now();
      let streak = 0;
      let recoveredMs = -1;
      while (Date.now() - t0 < recoveryMs) {
        const r = await this.round();
        streak = RelayAbuseLab.failures(r).length ? 0 : streak + 1;
        if (streak >= 3) { recoveredMs = Date.now() - t0; break; }
        await sleep(LEGIT_INTERVAL_MS);
      }
      let after = procStats(pid());
      const settle = Date.now() + 20_000;
      while (after.fds > before.fds + 32 && Date.now() < settle) {
        await sleep(500);
        after = procStats(pid());
      }
      const alive = this.alive();
      const metrics = alive ? await this.metrics(/^edgemesh_server_(budget_refusals_total|budget_evictions_total|relay_streams_total)/) : {};
      const failed = during.filter((r) => RelayAbuseLab.failures(r).length);
      return {
        attack: name, attacker: { ...attacker, ev: undefined, mode: undefined },
        during: { rounds: during.length, failed: failed.length, failures: [...new Set(failed.flatMap(RelayAbuseLab.failures))].slice(0, 6), webMsMax: Math.max(0, ...during.map((r) => r.web.ms)) },
        recoveredMs, alive, server: { before, peak, after }, victimWarnings, metrics,
      };
    } finally {
      clearInterval(sampler);
    }
  }

  async destroy(): Promise<void> {
    try {
      await this.mesh.stopAll();
      if (this.server && this.alive()) {
        const exited = new Promise((r) => this.server.proc.once('exit', r));
        this.server.proc.kill('SIGTERM');
        const t = setTimeout(() => this.server.proc.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(t);
      }
    } finally {
      try {
        await this.lab.destroy();
      } finally {
        rmSync(this.dir, { recursive: true, force: true });
      }
    }
  }
}

/** The server attacks of the suite, as relay-abuse-main configs (each bounded by durationMs and its counts). */
export function relayAttacks(al: RelayAbuseLab, durationMs = 20_000): { name: string; cfg: { durationMs: number } & Record<string, unknown> }[] {
  return [
    {
      name: 'relay-stream-flood',
      cfg: { mode: 'stream-flood', server: al.serverAddress, token: al.token, names: ['evil-0', 'evil-1', 'evil-2', 'evil-3'], victim: 'n2', opensPerName: 4096, durationMs },
    },
    {
      name: 'partial-frames',
      cfg: { mode: 'partial', server: al.serverAddress, token: al.token, namePrefix: 'slow', conns: 200, frameBytes: 1024 * 1024, connectPerSec: 50, durationMs },
    },
    {
      name: 'unauth-flood',
      cfg: { mode: 'unauth', server: al.serverAddress, sources: EVIL_SOURCES, target: 3000, connectPerSec: 600, durationMs },
    },
  ];
}
