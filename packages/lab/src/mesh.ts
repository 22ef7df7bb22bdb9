// Runs a whole mesh inside a netlab lab: edgemesh-server on a public host, agents (file source) on site hosts,
// sample backends and clients. Shared by `edgemesh demo` and the end-to-end tests, so both drive the product exactly
// through its binaries, config files and admin API.
import { closeSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { X509Certificate, createHash } from 'node:crypto';
import { stringify } from 'yaml';
import type { Lab } from './netlab.ts';
import type { AgentStatus } from '@edgemesh/agent/main';

const SRC = resolve(import.meta.dirname, '..', '..');
export const AGENT_BIN = join(SRC, 'agent', 'bin', 'edgemesh-agent.js');
export const SERVER_BIN = join(SRC, 'server', 'bin', 'edgemesh-server.js');
const BACKEND = join(import.meta.dirname, 'backend.ts');
const CLIENT = join(import.meta.dirname, 'client.ts');

export const SERVER_PORT = 20004;
export const STUN_ALT_PORT = 20005;
export const TUNNEL_PORT = 20006;
export const AGENT_ADMIN = '127.0.0.1:10560';
export const SERVER_ADMIN_PORT = 10561;
/** The agent's link-local address for DNS and the proxy (EdgeMesh's default). */
export const AGENT_IP = '169.254.96.16';
export const READY_TIMEOUT_MS = 20_000;
const POLL_MS = 100;
const STOP_TIMEOUT_MS = 12_000;

export interface MeshProc {
  readonly name: string;
  readonly host: string;
  readonly proc: ChildProcess;
  readonly logFile: string;
}

export interface AgentOptions {
  /** Agent config merged over the mesh defaults (file source, fake IPs, iptables interception, tunnel to the server). */
  config?: Record<string, unknown>;
}

function deepMerge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const cur = out[k];
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && cur && typeof cur === 'object' && !Array.isArray(cur)
      ? deepMerge(cur as Record<string, unknown>, v as Record<string, unknown>)
      : v;
  }
  return out;
}

export class Mesh {
  readonly lab: Lab;
  readonly dir: string;
  readonly manifestsDir: string;
  readonly tokenFile: string;
  /** Hosts running an edgemesh-server, in the order agents list them. */
  private readonly serverHosts: string[] = [];
  readonly procs = new Map<string, MeshProc>();
  private readonly joinTokens = new Set<string>();

  constructor(lab: Lab, dir: string, token: string) {
    this.lab = lab;
    this.dir = dir;
    this.manifestsDir = join(dir, 'manifests');
    mkdirSync(this.manifestsDir, { recursive: true });
    this.tokenFile = join(dir, 'token');
    writeFileSync(this.tokenFile, token + '\n', { mode: 0o600 });
  }

  /** Writes (or replaces) one manifest file; agents watching the directory pick it up. */
  writeManifest(file: string, docs: readonly object[]): void {
    const tmp = join(this.dir, `.${file}.tmp`);
    writeFileSync(tmp, docs.map((d) => stringify(d)).join('---\n'));
    renameSync(tmp, join(this.manifestsDir, file)); // a watcher never reads half a file
  }

  serverAddress(host = this.serverHosts[0]): string {
    if (!host) throw new Error('mesh: server not started');
    return `${this.lab.host(host).ip}:${SERVER_PORT}`;
  }

  /** The process name of the server on `host` (the first one is `server`). */
  serverName(host: string): string {
    return host === this.serverHosts[0] ? 'server' : `server-${host}`;
  }

  private spawnLogged(name: string, host: string, args: string[]): MeshProc {
    const logFile = join(this.dir, `${name}.log`);
    const fd = openSync(logFile, 'a');
    const proc = this.lab.spawn(host, process.execPath, args, { stdio: ['ignore', fd, fd], env: { ...process.env, EDGEMESH_TOKEN: '' } });
    closeSync(fd);
    const p = { name, host, proc, logFile };
    this.procs.set(name, p);
    return p;
  }

  /** Starts (or restarts) an edgemesh-server on `host`; agents started later list every server started so far.
   *  `extra`: server config merged over the mesh's. */
  async startServer(host: string, extra: Record<string, unknown> = {}): Promise<MeshProc> {
    if (!this.serverHosts.includes(host)) this.serverHosts.push(host);
    const name = this.serverName(host);
    const cfgFile = join(this.dir, `${name}.yaml`);
    writeFileSync(cfgFile, stringify(deepMerge({
      listen: `0.0.0.0:${SERVER_PORT}`,
      stunAltPort: STUN_ALT_PORT,
      // Every server of the mesh shares this stateDir: one cluster CA, one registry of pinned nodes and join tokens.
      stateDir: join(this.dir, 'server-state'),
      tokenFile: this.tokenFile,
      // Agents enroll with one-time join tokens (joinToken below), as a production cluster should.
      enrollment: { bootstrapToken: false },
      admin: { listen: `127.0.0.1:${SERVER_ADMIN_PORT}` },
      log: { level: 'info' },
    }, extra)));
    const p = this.spawnLogged(name, host, [SERVER_BIN, '--config', cfgFile]);
    await this.waitReady(p, `127.0.0.1:${SERVER_ADMIN_PORT}`);
    return p;
  }

  /** sha256 of the cluster CA's public key (what an operator puts in tunnel.caHash), from the servers' stateDir. */
  caHash(): string {
    const ca = new X509Certificate(readFileSync(join(this.dir, 'server-state', 'ca.crt')));
    return 'sha256:' + createHash('sha256').update(ca.publicKey.export({ type: 'spki', format: 'der' })).digest('hex');
  }

  /** A join token for `node` made with `edgemesh-server token create` (once per node: a restarted agent renews with
   *  its certificate), in a 0600 file; returns the file. */
  joinToken(node: string): string {
    const file = join(this.dir, `join-${node}`);
    if (this.joinTokens.has(node)) return file;
    const cfg = join(this.dir, `${this.serverName(this.serverHosts[0])}.yaml`);
    const r = spawnSync(process.execPath, [SERVER_BIN, 'token', 'create', '--config', cfg, '--node', node], { encoding: 'utf8', env: { ...process.env, EDGEMESH_TOKEN: '' } });
    if (r.status !== 0) throw new Error(`edgemesh-server token create --node ${node} failed: ${r.stderr}`);
    writeFileSync(file, r.stdout.trim() + '\n', { mode: 0o600 });
    this.joinTokens.add(node);
    return file;
  }

  agentConfig(node: string, opts: AgentOptions = {}): Record<string, unknown> {
    const base: Record<string, unknown> = {
      nodeName: node,
      stateDir: join(this.dir, `state-${node}`),
      cluster: { source: 'file', manifestsDir: this.manifestsDir },
      dns: { enabled: true, listen: `${AGENT_IP}:53` },
      proxy: { ipMode: 'fake', intercept: 'iptables', bindAddress: AGENT_IP },
      tunnel: { enabled: true, servers: this.serverHosts.map((h) => this.serverAddress(h)), listenPort: TUNNEL_PORT, tokenFile: '', joinTokenFile: this.joinToken(node), caHash: this.caHash() },
      admin: { listen: AGENT_ADMIN },
      log: { level: 'info' },
    };
    return deepMerge(base, opts.config ?? {});
  }

  /** Starts an agent for `node` in the host's namespace (hostNetwork, like the DaemonSet) and waits for /readyz. */
  async startAgent(node: string, host: string, opts: AgentOptions = {}): Promise<MeshProc> {
    const cfgFile = join(this.dir, `agent-${node}.yaml`);
    writeFileSync(cfgFile, stringify(this.agentConfig(node, opts)));
    const p = this.spawnLogged(node, host, [AGENT_BIN, '--config', cfgFile]);
    await this.waitReady(p, AGENT_ADMIN);
    return p;
  }

  /**
   * Starts the sample backend (HTTP + UDP echo) named `name` on `port` (on `bind` only, e.g. one pod IP of several on
   * the host; with `sinkPort`, also the sha256 TCP sink), waiting until it accepts connections.
   */
  async startBackend(name: string, host: string, port: number, opts: { sinkPort?: number; bind?: string } = {}): Promise<MeshProc> {
    const { sinkPort, bind } = opts;
    const p = this.spawnLogged(`backend-${name}`, host, [BACKEND, name, String(port), sinkPort ? String(sinkPort) : '-', ...(bind ? [bind] : [])]);
    const deadline = Date.now() + READY_TIMEOUT_MS;
    const probe = `const s=require('node:net').connect(${port},'${bind ?? '127.0.0.1'}');s.on('connect',()=>process.exit(0));s.on('error',()=>process.exit(1))`;
    while (Date.now() < deadline) {
      this.assertRunning(p);
      if ((await this.lab.exec(host, process.execPath, ['-e', probe])).exitCode === 0) return p;
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    throw new Error(`backend ${name} did not start listening on ${port}`);
  }

  /** Stops a process with SIGTERM and returns its exit code (agents remove their rules before exiting 0). */
  async stop(name: string): Promise<number | null> {
    const p = this.procs.get(name);
    if (!p) return null;
    this.procs.delete(name);
    const proc = p.proc;
    if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode;
    const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), STOP_TIMEOUT_MS);
    const code = await exited;
    clearTimeout(timer);
    return code;
  }

  /** GET on an admin API inside the host's namespace. */
  async adminGet(host: string, hostPort: string, path: string): Promise<{ status: number; body: string }> {
    const script = `fetch('http://${hostPort}${path}',{signal:AbortSignal.timeout(3000)}).then(async r=>{process.stdout.write(JSON.stringify({status:r.status,body:await r.text()}))},e=>{process.stdout.write(JSON.stringify({status:0,body:String(e.cause?.code??e.message)}))})`;
    const r = await this.lab.exec(host, process.execPath, ['-e', script]);
    try {
      return JSON.parse(r.stdout) as { status: number; body: string };
    } catch {
      return { status: 0, body: r.stderr.trim() };
    }
  }

  async agentStatus(host: string): Promise<AgentStatusJson> {
    const r = await this.adminGet(host, AGENT_ADMIN, '/status');
    if (r.status !== 200) throw new Error(`agent status on ${host}: ${r.status} ${r.body}`);
    return JSON.parse(r.body) as AgentStatusJson;
  }

  /** Runs the sample client in the host's namespace: resolves `url`'s name by DNS like a pod and GETs it. */
  async fetch(host: string, url: string, timeoutMs = 5000): Promise<ClientResult> {
    const r = await this.lab.exec(host, process.execPath, [CLIENT, url, String(timeoutMs)], { timeoutMs: timeoutMs + 5000 });
    try {
      return JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as ClientResult;
    } catch {
      return { ok: false, error: 'client-crashed', message: (r.stderr || r.stdout).trim().slice(0, 500), totalMs: 0 };
    }
  }

  private assertRunning(p: MeshProc): void {
    if (p.proc.exitCode !== null || p.proc.signalCode !== null) {
      throw new Error(`${p.name} exited (${p.proc.exitCode ?? p.proc.signalCode}); last log lines:\n${this.tail(p.name)}`);
    }
  }

  async waitReady(p: MeshProc, admin: string): Promise<void> {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    let last = '';
    while (Date.now() < deadline) {
      this.assertRunning(p);
      const r = await this.adminGet(p.host, admin, '/readyz');
      if (r.status === 200) return;
      last = `${r.status} ${r.body.trim()}`;
      await new Promise((res) => setTimeout(res, POLL_MS));
    }
    throw new Error(`${p.name} not ready after ${READY_TIMEOUT_MS} ms (${last}); last log lines:\n${this.tail(p.name)}`);
  }

  /** Last lines of a process's log, for error messages. */
  tail(name: string, lines = 15): string {
    try {
      return readFileSync(join(this.dir, `${name}.log`), 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.procs.keys()].map((n) => this.stop(n)));
  }
}

export interface ClientResult {
  ok: boolean;
  address?: string;
  status?: number;
  body?: string;
  dnsMs?: number;
  connectMs?: number;
  firstByteMs?: number;
  totalMs: number;
  error?: string;
  message?: string;
}

/** The agent's `/status` JSON (the admin API contract). */
export type AgentStatusJson = AgentStatus;

/** Manifest builders for the lab's clusters. */
export function nodeManifest(name: string, labels: Record<string, string>, ip: string): object {
  return { apiVersion: 'v1', kind: 'Node', metadata: { name, labels: { 'kubernetes.io/hostname': name, ...labels } }, status: { addresses: [{ type: 'InternalIP', address: ip }] } };
}

export function serviceManifest(ns: string, name: string, port: number, targetPort: number, extra: { annotations?: Record<string, string>; spec?: Record<string, unknown>; clusterIP?: string } = {}): object {
  return {
    apiVersion: 'v1', kind: 'Service',
    metadata: { name, namespace: ns, annotations: extra.annotations ?? {} },
    spec: {
      clusterIP: extra.clusterIP ?? '10.96.0.1', selector: { app: name },
      ports: [{ name: 'http', protocol: 'TCP', port, targetPort }, { name: 'udp', protocol: 'UDP', port, targetPort }],
      ...extra.spec,
    },
  };
}

export function sliceManifest(ns: string, svc: string, sliceName: string, port: number, endpoints: { ip: string; node: string; ready?: boolean }[]): object {
  return {
    apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', addressType: 'IPv4',
    metadata: { name: sliceName, namespace: ns, labels: { 'kubernetes.io/service-name': svc } },
    ports: [{ name: 'http', protocol: 'TCP', port }, { name: 'udp', protocol: 'UDP', port }],
    endpoints: endpoints.map((e) => ({ addresses: [e.ip], nodeName: e.node, conditions: { ready: e.ready ?? true } })),
  };
}
