// Test-side driver for tunnel end-to-end tests in a netlab lab: the real edgemesh-server binary on a public host,
// tunnel-node.ts processes on the other hosts, driven over stdio.
import { spawnSync, type ChildProcess } from 'node:child_process';
import { X509Certificate, createHash } from 'node:crypto';
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import type { Lab, SiteSpec } from './netlab.ts';
import type { TestEndpoint } from './tunnel-fixture.ts';

/** The NAT matrix of docs/natlab.md: one site per NAT type, a host per tunnel node (node `p1` on host `hp1`), and a LAN
 *  with two hosts. Shared by test/e2e/tunnel-matrix.test.ts and bench/tunnel. */
export const NAT_MATRIX_SITES: readonly SiteSpec[] = [
  { name: 'pr1', nat: 'port-restricted', hosts: ['hp1'] },
  { name: 'pr2', nat: 'port-restricted', hosts: ['hp2'] },
  { name: 'fc', nat: 'full-cone', hosts: ['hf1'] },
  { name: 'rc', nat: 'restricted-cone', hosts: ['hr1'] },
  { name: 'sym1', nat: 'symmetric', hosts: ['hs1'] },
  { name: 'sym2', nat: 'symmetric', hosts: ['hs2'] },
  { name: 'ub', nat: 'udp-blocked', hosts: ['hu1'] },
  { name: 'lan', nat: 'port-restricted', hosts: ['hl1', 'hl2'] },
];

export const SERVER_BIN = resolve(import.meta.dirname, '../../packages/server/bin/edgemesh-server.js');
const NODE_SCRIPT = resolve(import.meta.dirname, 'tunnel-node.ts');
export const E2E_TOKEN = 'e2e-token-' + 'x'.repeat(24);
export const SERVER_PORT = 20004;
export const SINK_PORT = 9000;
const REQUEST_TIMEOUT_MS = 120_000;

export class NodeProc {
  readonly name: string;
  readonly host: string;
  readonly proc: ChildProcess;
  private nextId = 1;
  private readonly waiting = new Map<number, (v: Record<string, unknown>) => void>();
  readonly ready: Promise<void>;
  stderr = '';

  constructor(name: string, host: string, proc: ChildProcess) {
    this.name = name;
    this.host = host;
    this.proc = proc;
    let readyFn: () => void;
    this.ready = new Promise((r) => { readyFn = r; });
    createInterface({ input: proc.stdout! }).on('line', (l) => {
      let m: Record<string, unknown>;
      try { m = JSON.parse(l); } catch { return; }
      if (m.id === 0) return readyFn();
      const w = this.waiting.get(m.id as number);
      this.waiting.delete(m.id as number);
      w?.(m);
    });
    // E2E_LOG_DIR: each node's log also goes to <dir>/<node>.log (a flaky run read afterwards; with E2E_LOG_LEVEL).
    const logFile = process.env.E2E_LOG_DIR ? join(process.env.E2E_LOG_DIR, `${name}.log`) : undefined;
    proc.stderr!.on('data', (c: Buffer) => {
      if (logFile) appendFileSync(logFile, c);
      this.stderr += c.toString();
      if (this.stderr.length > 200_000) this.stderr = this.stderr.slice(-100_000);
    });
  }

  request(cmd: string, body: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => { this.waiting.delete(id); reject(new Error(`${this.name}: ${cmd} timed out`)); }, REQUEST_TIMEOUT_MS);
      this.waiting.set(id, (v) => { clearTimeout(t); resolve(v); });
      this.proc.stdin!.write(JSON.stringify({ id, cmd, ...body }) + '\n');
    });
  }

  async status(): Promise<{ servers: { connected: boolean }[]; nat: { type: string; mapped: string | null }; peers: { node: string; path: string; transport: string | null; remote: string | null }[] }> {
    return (await this.request('status')).status as never;
  }

  /** This node's /status entry for `peer` (undefined: no path state for it). */
  async peerStatus(peer: string): Promise<{ node: string; path: string; transport: string | null; remote: string | null } | undefined> {
    return (await this.status()).peers.find((p) => p.node === peer);
  }

  async path(peer: string): Promise<string | undefined> {
    return (await this.peerStatus(peer))?.path;
  }

  /** What carries the session to `peer` now (/status peers[].transport: tcp, udx, relay). */
  async transport(peer: string): Promise<string | null | undefined> {
    return (await this.peerStatus(peer))?.transport;
  }

  /** The last `n` log lines about `peer` (pino JSON on stderr), compact: ms clock, level, message, fields. */
  logAbout(peer: string, n = 40): string {
    const out: string[] = [];
    for (const line of this.stderr.split('\n')) {
      let j: Record<string, unknown>;
      try { j = JSON.parse(line); } catch { continue; }
      if (j.peer !== peer) continue;
      const { time, level, msg, node: _n, name: _m, peer: _p, pid: _i, hostname: _h, ...rest } = j;
      out.push(`  ${this.name} ${Number(time) % 100_000} ${level} ${msg} ${JSON.stringify(rest)}`);
    }
    return out.slice(-n).join('\n');
  }

  async metric(re: RegExp): Promise<number> {
    const text = (await this.request('metrics')).metrics as string;
    let sum = 0;
    for (const line of text.split('\n')) if (re.test(line)) sum += Number(line.split(' ').pop());
    return sum;
  }
}

export class TunnelLab {
  readonly lab: Lab;
  readonly dir = mkdtempSync(join(tmpdir(), 'em-tunnel-e2e-'));
  readonly nodes = new Map<string, NodeProc>();
  server: ChildProcess | undefined;
  serverHost = '';
  serverLog = '';
  endpoints: TestEndpoint[] = [];
  private serverConfig = '';
  /** Nodes enroll with join tokens (startServer with clusterNodes). */
  private joinTokens = false;
  private readonly enrolled = new Set<string>();

  constructor(lab: Lab) {
    this.lab = lab;
  }

  serverAddr(): string {
    return `${this.lab.host(this.serverHost).ip}:${SERVER_PORT}`;
  }

  /**
   * The real server on `host`. With `clusterNodes`, as a production cluster runs it: it reads those Node objects from
   * a manifests directory (`cluster.source: file`; other names cannot enroll), the bootstrap token is off, and each
   * node started later enrolls with a one-time join token made by `edgemesh-server token create` and pins the CA by
   * `caHash`. Without, nodes enroll with the bootstrap token (the abuse lab's throwaway names need that).
   */
  async startServer(host: string, token = E2E_TOKEN, extra = '', opts: { clusterNodes?: string[] } = {}): Promise<void> {
    this.serverHost = host;
    const tokenFile = join(this.dir, 'server-token');
    writeFileSync(tokenFile, token + '\n', { mode: 0o600 });
    const cfgFile = join(this.dir, 'server.yaml');
    this.serverConfig = cfgFile;
    let cluster = '';
    if (opts.clusterNodes) {
      const manifests = join(this.dir, 'server-manifests');
      mkdirSync(manifests, { recursive: true });
      writeFileSync(join(manifests, 'nodes.yaml'), opts.clusterNodes.map((n) => `apiVersion: v1\nkind: Node\nmetadata:\n  name: ${n}\n`).join('---\n'));
      cluster = `cluster:\n  source: file\n  manifestsDir: ${manifests}\nenrollment:\n  bootstrapToken: false\n`;
      this.joinTokens = true;
    }
    writeFileSync(cfgFile, `listen: 0.0.0.0:${SERVER_PORT}\nstunAltPort: 20005\nstateDir: ${join(this.dir, 'server-state')}\ntokenFile: ${tokenFile}\n${cluster}admin:\n  listen: 127.0.0.1:10561\nlog:\n  level: info\n${extra}`);
    const p = this.lab.spawn(host, process.execPath, [SERVER_BIN, '--config', cfgFile]);
    p.stdout!.on('data', (c: Buffer) => { this.serverLog += c.toString(); });
    p.stderr!.on('data', (c: Buffer) => { this.serverLog += c.toString(); });
    this.server = p;
    const end = Date.now() + 60_000;
    while (!this.serverLog.includes('server listening')) {
      if (Date.now() > end || p.exitCode !== null) throw new Error(`server did not start: ${this.serverLog}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** sha256 of the cluster CA's public key (tunnel.caHash), from the server's stateDir. */
  caHash(): string {
    const ca = new X509Certificate(readFileSync(join(this.dir, 'server-state', 'ca.crt')));
    return 'sha256:' + createHash('sha256').update(ca.publicKey.export({ type: 'spki', format: 'der' })).digest('hex');
  }

  /** A one-time join token for `node` from `edgemesh-server token create` (the CLI an operator runs; it writes the
   *  token's hash into the server's stateDir, which the running server reads). */
  joinToken(node: string): string {
    const r = spawnSync(process.execPath, [SERVER_BIN, 'token', 'create', '--config', this.serverConfig, '--node', node], { encoding: 'utf8', env: { ...process.env, EDGEMESH_TOKEN: '' } });
    if (r.status !== 0) throw new Error(`edgemesh-server token create --node ${node} failed: ${r.stderr}`);
    return r.stdout.trim();
  }

  /** SIGTERM; resolves with the exit code. */
  async stopServer(): Promise<number | null> {
    const p = this.server;
    if (!p || p.exitCode !== null) return p?.exitCode ?? null;
    const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
    p.kill('SIGTERM');
    return exited;
  }

  /** GET on the server's admin API from inside its namespace. */
  async serverAdmin(path: string): Promise<string> {
    const r = await this.lab.exec(this.serverHost, process.execPath, ['-e', `fetch('http://127.0.0.1:10561${path}').then(async (r) => { console.log(r.status); console.log(await r.text()); })`]);
    return r.stdout;
  }

  /** Every node serves a sink on its own address; each node knows every sink as an endpoint of default/sink-<node>. */
  planEndpoints(names: { name: string; host: string }[]): void {
    this.endpoints = names.map((n) => ({ service: `default/sink-${n.name}`, ip: this.lab.host(n.host).ip, port: SINK_PORT, node: n.name }));
  }

  async startNode(name: string, host: string, opts: { token?: string; listenPort?: number | null; logLevel?: string; upgradeRetryMs?: number; clusterNodes?: string[] } = {}): Promise<NodeProc> {
    // With join tokens, one per node name (a restarted node renews with the certificate in its stateDir).
    const enroll = this.joinTokens && !this.enrolled.has(name) ? { joinToken: this.joinToken(name), caHash: this.caHash() } : this.joinTokens ? { caHash: this.caHash() } : {};
    this.enrolled.add(name);
    const cfg = {
      ...enroll,
      node: name, servers: [this.serverAddr()], token: opts.token ?? E2E_TOKEN, stateDir: join(this.dir, `state-${name}`),
      listenPort: opts.listenPort === null ? undefined : (opts.listenPort ?? 20006), endpoints: this.endpoints,
      sinkHost: this.lab.host(host).ip, sinkPort: SINK_PORT, logLevel: opts.logLevel ?? process.env.E2E_LOG_LEVEL ?? 'info', upgradeRetryMs: opts.upgradeRetryMs, clusterNodes: opts.clusterNodes,
    };
    const p = this.lab.spawn(host, process.execPath, [NODE_SCRIPT], { env: { ...process.env, EM_NODE: JSON.stringify(cfg) } });
    const n = new NodeProc(name, host, p);
    this.nodes.set(name, n);
    await Promise.race([n.ready, new Promise((_, rej) => setTimeout(() => rej(new Error(`${name} did not start: ${n.stderr}`)), 20_000))]);
    return n;
  }

  node(name: string): NodeProc {
    return this.nodes.get(name)!;
  }

  /** A transfer of `bytes` from node `from` to the sink of node `to`. */
  transfer(from: string, to: string, bytes: number): Promise<Record<string, unknown>> {
    const ep = this.endpoints.find((e) => e.node === to)!;
    return this.node(from).request('transfer', { to, service: ep.service, ip: ep.ip, port: ep.port, bytes });
  }

  /** Both sides forget each other, then `from` measures time to direct from its first dial (null after `timeoutMs`).
   *  `between` runs after the forgetting, before the dial (bench/tunnel deletes the pair's NAT state there). */
  async timeToDirect(from: string, to: string, opts: { timeoutMs?: number; between?: () => Promise<void> } = {}): Promise<{ relayMs: number; directMs: number | null }> {
    await this.node(from).request('forget', { node: to });
    await this.node(to).request('forget', { node: from });
    await new Promise((r) => setTimeout(r, 100));
    await opts.between?.();
    const ep = this.endpoints.find((e) => e.node === to)!;
    return (await this.node(from).request('ttd', { to, service: ep.service, ip: ep.ip, port: ep.port, timeoutMs: opts.timeoutMs })) as never;
  }

  /** For a failure message: how each of `x` and `y` sees the other now (/status) and what its log says about it
   *  (nodes started with logLevel debug log every link and session move). */
  async explain(x: string, y: string): Promise<string> {
    const side = async (a: string, b: string) => `${a} sees ${b}: ${JSON.stringify(await this.node(a).peerStatus(b))}\n${this.node(a).logAbout(b)}`;
    return `${await side(x, y)}\n${await side(y, x)}`;
  }

  async destroy(): Promise<void> {
    for (const n of this.nodes.values()) n.proc.kill('SIGKILL');
    this.server?.kill('SIGKILL');
    await this.lab.destroy();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Polls `cond` until true; after `ms` fails naming `what` and, with `explain`, what it returns (tl.explain). */
export async function waitUntil(cond: () => Promise<boolean>, ms: number, what: string, explain?: () => Promise<string>): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}${explain ? `\n${await explain()}` : ''}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
