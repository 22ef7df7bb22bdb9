// A one-node namespace lab for agent-binary tests (readiness, takeover): a node namespace where the agent runs with
// iptables interception, a client namespace behind it (client 198.18.40.2 -> node 198.18.40.1, default route via the
// node, so Service IPs are intercepted in the node's PREROUTING), and a backend on the node (198.18.41.1 on its lo).
// Nothing is added to the root namespace; cleanup() removes both namespaces and the work directory.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execa } from 'execa';
import { stringify } from 'yaml';

export const ROOT = resolve(import.meta.dirname, '../..');
export const AGENT_BIN = join(ROOT, 'packages/agent/bin/edgemesh-agent.js');
export const HELPERS = join(ROOT, 'test/e2e/helpers');
export const CLIENT_IP = '198.18.40.2';
export const NODE_IP = '198.18.40.1';
export const BACKEND_IP = '198.18.41.1';
export const AGENT_IP = '169.254.96.16';

export interface Run { stdout: string; stderr: string; exitCode: number | undefined }

export interface NodeLab {
  node: string;
  client: string;
  dir: string;
  inNode(args: string[], reject?: boolean): Promise<Run>;
  inClient(args: string[], reject?: boolean): Promise<Run>;
  /** Spawns `node <script> ...args` in a namespace (stdout piped). */
  spawnIn(ns: string, script: string, args: string[]): ChildProcess;
  writeManifests(objects: object[]): string;
  cleanup(): Promise<void>;
}

export async function buildNodeLab(tag: string): Promise<NodeLab> {
  const p = `em${process.pid % 1000}${tag}`; // names stay <= 15 characters
  const node = `${p}n`;
  const client = `${p}c`;
  const procs = new Set<ChildProcess>();
  const dir = mkdtempSync(join(tmpdir(), `${p}-`));
  const inNs = async (ns: string, args: string[], reject = true): Promise<Run> => {
    const r = await execa('ip', ['netns', 'exec', ns, ...args], { reject });
    return { stdout: String(r.stdout), stderr: String(r.stderr), exitCode: r.exitCode };
  };
  const cleanup = async () => {
    for (const c of procs) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const ns of [node, client]) await execa('ip', ['netns', 'del', ns], { reject: false });
    rmSync(dir, { recursive: true, force: true });
  };
  await cleanup();
  mkdirSync(dir, { recursive: true });
  try {
    for (const ns of [node, client]) {
      await execa('ip', ['netns', 'add', ns]);
      await inNs(ns, ['ip', 'link', 'set', 'dev', 'lo', 'up']);
    }
    await execa('ip', ['link', 'add', 'dev', `${p}c0`, 'netns', client, 'type', 'veth', 'peer', 'name', `${p}c1`, 'netns', node]);
    await inNs(client, ['ip', 'addr', 'add', `${CLIENT_IP}/24`, 'dev', `${p}c0`]);
    await inNs(client, ['ip', 'link', 'set', 'dev', `${p}c0`, 'up']);
    await inNs(client, ['ip', 'route', 'add', 'default', 'via', NODE_IP]);
    await inNs(node, ['ip', 'addr', 'add', `${NODE_IP}/24`, 'dev', `${p}c1`]);
    await inNs(node, ['ip', 'link', 'set', 'dev', `${p}c1`, 'up']);
    await inNs(node, ['ip', 'addr', 'add', `${BACKEND_IP}/32`, 'dev', 'lo']);
  } catch (e) {
    await cleanup();
    throw e;
  }
  return {
    node, client, dir,
    inNode: (args, reject) => inNs(node, args, reject),
    inClient: (args, reject) => inNs(client, args, reject),
    spawnIn(ns, script, args) {
      const c = spawn('ip', ['netns', 'exec', ns, process.execPath, script, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
      procs.add(c);
      c.once('exit', () => procs.delete(c));
      return c;
    },
    writeManifests(objects) {
      const m = join(dir, 'manifests');
      mkdirSync(m, { recursive: true });
      for (const [i, o] of objects.entries()) writeFileSync(join(m, `${i}.yaml`), stringify(o));
      return m;
    },
    cleanup,
  };
}

/** Collects a child's output; `lines()` are its stdout+stderr so far. */
export function collect(c: ChildProcess): { text(): string; waitFor(re: RegExp, ms: number): Promise<string> } {
  let out = '';
  const waiters: { re: RegExp; resolve: (l: string) => void }[] = [];
  const on = (d: Buffer) => {
    out += d;
    for (const w of [...waiters]) {
      const m = w.re.exec(out);
      if (m) { waiters.splice(waiters.indexOf(w), 1); w.resolve(m[0]); }
    }
  };
  c.stdout?.on('data', on);
  c.stderr?.on('data', on);
  return {
    text: () => out,
    waitFor: (re, ms) => new Promise((resolveLine, reject) => {
      const m = re.exec(out);
      if (m) return resolveLine(m[0]);
      const t = setTimeout(() => reject(new Error(`no ${re} within ${ms} ms; output:\n${out.slice(-4000)}`)), ms);
      waiters.push({ re, resolve: (l) => { clearTimeout(t); resolveLine(l); } });
      c.once('exit', (code) => { clearTimeout(t); reject(new Error(`exited ${code} before ${re}; output:\n${out.slice(-4000)}`)); });
    }),
  };
}

/** The agent config the lab's tests use (file source, iptables, DNS on AGENT_IP); `extra` is merged on top. */
export function agentConfig(lab: NodeLab, manifests: string, stateDir: string, extra: Record<string, unknown> = {}): string {
  const cfg = {
    nodeName: 'n-a', stateDir,
    cluster: { source: 'file', manifestsDir: manifests },
    // The client namespace plays the node's pods: the DNS answers it (dns.allowCIDRs; it refuses everyone else).
    dns: { enabled: true, listen: `${AGENT_IP}:53`, upstream: ['127.0.0.1:5399'], allowCIDRs: ['198.18.40.0/24'] },
    tunnel: { enabled: false },
    proxy: { intercept: 'iptables', bindAddress: AGENT_IP },
    routing: { default: 'cluster' },
    admin: { listen: `${NODE_IP}:10560` },
    log: { level: process.env.EM_LOG ?? 'info' },
    ...extra,
  };
  const file = join(lab.dir, `agent-${Math.random().toString(36).slice(2, 8)}.yaml`);
  writeFileSync(file, stringify(cfg));
  return file;
}
