// Network-namespace end-to-end test of interception + proxy + routing, with the real Agent inside a "node"
// namespace: a client namespace reaches Service IPs through the node's iptables, backends live in their own
// namespaces. Nothing is added to the root namespace.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execa } from 'execa';
import { stringify } from 'yaml';
import { node, service, slice } from '../lib/proxyfixtures.ts';

const ROOT = resolve(import.meta.dirname, '../..');
const H = join(ROOT, 'test/e2e/helpers');
const P = `em${process.pid % 1000}p`; // unique per run; names stay <= 15 chars
const NS = { node: `${P}n`, client: `${P}c`, b1: `${P}b1`, b2: `${P}b2`, b3: `${P}b3` };
const isRoot = process.getuid?.() === 0;
const ECHO = 7000;
const NAME = 7001;
const GROUP = 'apps.kubeedge.io/belonging-to';
const REASSERT_MS = 1000;

const sh = (args: string[]) => execa(args[0], args.slice(1));
const inNs = (ns: string, args: string[], opts: { reject?: boolean } = {}) => execa('ip', ['netns', 'exec', ns, ...args], { reject: opts.reject ?? true });

let dir = '';
let agent: ChildProcess | undefined;
const backends = new Map<string, ChildProcess>();

let readyInfo: { services: { name: string; routing: string; tiers?: Record<string, number> }[] } | undefined;

async function waitLine(p: ChildProcess, line: string, ms = 15_000): Promise<string> {
  let buf = '';
  return new Promise<string>((res, rej) => {
    const t = setTimeout(() => rej(new Error(`no "${line}" within ${ms} ms; output: ${buf}`)), ms);
    p.stdout!.on('data', (d: Buffer) => {
      buf += d;
      const l = buf.split('\n').slice(0, -1).find((x) => x.startsWith(line));
      if (l !== undefined) { clearTimeout(t); res(l); }
    });
    p.once('exit', (c) => { clearTimeout(t); rej(new Error(`exited ${c} before "${line}": ${buf}`)); });
  });
}

async function client(ns: string, ...args: (string | number)[]): Promise<any> {
  const r = await inNs(ns, [process.execPath, join(H, 'client.ts'), ...args.map(String)]);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

async function natRules(): Promise<string> {
  return (await inNs(NS.node, ['iptables-save', '-t', 'nat'])).stdout;
}

async function poll<T>(fn: () => Promise<T>, ok: (v: T) => boolean, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (ok(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function cleanup(): Promise<void> {
  agent?.kill('SIGKILL');
  for (const b of backends.values()) b.kill('SIGKILL');
  for (const ns of Object.values(NS)) await execa('ip', ['netns', 'del', ns], { reject: false });
  if (dir) rmSync(dir, { recursive: true, force: true });
}

before(async () => {
  if (!isRoot) return;
  await cleanup();
  for (const ns of Object.values(NS)) {
    await sh(['ip', 'netns', 'add', ns]);
    await inNs(ns, ['ip', 'link', 'set', 'dev', 'lo', 'up']);
  }
  // client <-> node: 198.18.10.0/24; backend i <-> node: 198.18.2i.0/24. Default routes point at the node.
  const link = async (ns: string, a: string, b: string, net: string) => {
    await sh(['ip', 'link', 'add', 'dev', a, 'netns', ns, 'type', 'veth', 'peer', 'name', b, 'netns', NS.node]);
    await inNs(ns, ['ip', 'addr', 'add', `${net}.2/24`, 'dev', a]);
    await inNs(ns, ['ip', 'link', 'set', 'dev', a, 'up']);
    await inNs(ns, ['ip', 'route', 'add', 'default', 'via', `${net}.1`]);
    await inNs(NS.node, ['ip', 'addr', 'add', `${net}.1/24`, 'dev', b]);
    await inNs(NS.node, ['ip', 'link', 'set', 'dev', b, 'up']);
  };
  await link(NS.client, `${P}c0`, `${P}c1`, '198.18.10');
  await link(NS.b1, `${P}1a`, `${P}1b`, '198.18.21');
  await link(NS.b2, `${P}2a`, `${P}2b`, '198.18.22');
  await link(NS.b3, `${P}3a`, `${P}3b`, '198.18.23');
  // The agent's listen address. This machine's kernel has no dummy interfaces, so it goes on lo up front (the
  // agent then finds it local and leaves interfaces alone).
  await inNs(NS.node, ['ip', 'addr', 'add', '169.254.96.16/32', 'dev', 'lo']);
  // Host-network callers on the node itself reach Service IPs through OUTPUT; they need some route to them.
  await inNs(NS.node, ['ip', 'route', 'add', '100.64.0.0/16', 'dev', `${P}c1`]);
  for (const [i, ns] of [NS.b1, NS.b2, NS.b3].entries()) {
    const b = spawn('ip', ['netns', 'exec', ns, process.execPath, join(H, 'backend.ts'), `b${i + 1}`, `198.18.2${i + 1}.2`, String(ECHO), String(NAME)], { stdio: ['ignore', 'pipe', 'inherit'] });
    backends.set(`b${i + 1}`, b);
    await waitLine(b, 'up');
  }
  // Cluster: this node n-a and n-b in group g1, n-c in g2. b1 runs on n-a, b2 on n-b, b3 on n-c.
  const eps = { b1: { ip: '198.18.21.2', node: 'n-a' }, b2: { ip: '198.18.22.2', node: 'n-b' }, b3: { ip: '198.18.23.2', node: 'n-c' } };
  const namePort = [{ name: 'name', port: NAME }];
  const objects = [
    node('n-a', { [GROUP]: 'g1' }), node('n-b', { [GROUP]: 'g1' }), node('n-c', { [GROUP]: 'g2' }),
    service({ name: 'echo', ip: '100.64.0.10', ports: [{ name: 'tcp', port: ECHO }, { name: 'udp', port: ECHO, protocol: 'UDP' }, { name: 'name', port: NAME }] }),
    slice('echo', [{ name: 'tcp', port: ECHO }, { name: 'udp', port: ECHO, protocol: 'UDP' }, { name: 'name', port: NAME }], [eps.b1, eps.b2, eps.b3]),
    service({ name: 'strict-far', ip: '100.64.0.11', ports: namePort, annotations: { 'apps.kubeedge.io/service-topology': 'range-nodegroup' } }),
    slice('strict-far', namePort, [eps.b3]),
    service({ name: 'prefer-far', ip: '100.64.0.12', ports: namePort, spec: { trafficDistribution: 'PreferClose' } }),
    slice('prefer-far', namePort, [eps.b3]),
    service({ name: 'strict-near', ip: '100.64.0.13', ports: namePort, annotations: { 'apps.kubeedge.io/service-topology': 'range-nodegroup' } }),
    slice('strict-near', namePort, [eps.b1, eps.b2, eps.b3]),
  ];
  dir = mkdtempSync(join(tmpdir(), `${P}-`));
  mkdirSync(join(dir, 'manifests'));
  for (const [i, o] of objects.entries()) writeFileSync(join(dir, 'manifests', `${i}.yaml`), stringify(o));
  writeFileSync(join(dir, 'objects.json'), JSON.stringify(objects));
  writeFileSync(join(dir, 'agent.yaml'), stringify({
    nodeName: 'n-a', stateDir: join(dir, 'state'),
    cluster: { source: 'file', manifestsDir: join(dir, 'manifests') },
    dns: { enabled: false }, tunnel: { enabled: false },
    proxy: { intercept: 'iptables', bindAddress: '169.254.96.16' },
    routing: { groupLabels: [GROUP], default: 'cluster' },
    admin: { listen: '127.0.0.1:0' }, log: { level: 'warn' },
  }));
  agent = spawn('ip', ['netns', 'exec', NS.node, process.execPath, join(H, 'agent-runner.ts'), join(dir, 'agent.yaml'), join(dir, 'objects.json'), String(REASSERT_MS)], { stdio: ['ignore', 'pipe', 'inherit'] });
  readyInfo = JSON.parse((await waitLine(agent, 'READY')).slice('READY '.length));
});

after(cleanup);

test('rules: own chain jumped from the top of PREROUTING and OUTPUT, one DNAT per service port with comments', { skip: !isRoot && 'needs root' }, async () => {
  const t = await natRules();
  assert.match(t, /^-A PREROUTING .*-j EDGEMESH-SERVICES/m);
  assert.match(t, /^-A OUTPUT .*-j EDGEMESH-SERVICES/m);
  assert.match(t, /-A EDGEMESH-SERVICES -d 100\.64\.0\.10\/32 -p tcp -m tcp --dport 7000 -m comment --comment "?default\/echo:7000"? -j DNAT --to-destination 169\.254\.96\.16:\d+/);
  assert.match(t, /-A EDGEMESH-SERVICES -d 100\.64\.0\.10\/32 -p udp -m udp --dport 7000 .*-j DNAT/);
  assert.equal(t.split('\n').filter((l) => l.startsWith('-A EDGEMESH-SERVICES')).length, 6);
});

test('status: routing mode and endpoint counts per tier for each Service', { skip: !isRoot && 'needs root' }, () => {
  const byName = new Map(readyInfo!.services.map((s) => [s.name, s]));
  assert.equal(byName.get('default/echo')!.routing, 'cluster');
  assert.deepEqual(byName.get('default/echo')!.tiers, { node: 1, group: 1, region: 0, cluster: 1 });
  assert.equal(byName.get('default/strict-far')!.routing, 'strict-group');
  assert.deepEqual(byName.get('default/strict-far')!.tiers, { node: 0, group: 0, region: 0, cluster: 1 });
  assert.equal(byName.get('default/prefer-far')!.routing, 'prefer-group');
  assert.equal(byName.get('default/strict-near')!.routing, 'strict-group');
});

test('TCP: 10 MB through the intercepted Service IP arrives intact (sha256), from a pod namespace and from the node', { skip: !isRoot && 'needs root' }, async () => {
  const r = await client(NS.client, 'sha', '100.64.0.10', ECHO, 10 << 20);
  assert.deepEqual(r, { ok: true, sent: 10 << 20, got: 10 << 20 });
  const local = await client(NS.node, 'sha', '100.64.0.10', ECHO, 1 << 20);
  assert.equal(local.ok, true, JSON.stringify(local));
});

test('UDP: datagrams through the Service IP come back whole', { skip: !isRoot && 'needs root' }, async () => {
  const r = await client(NS.client, 'udp', '100.64.0.10', ECHO, 12);
  assert.deepEqual(r, { ok: true, sent: 12, got: 12, whole: 12 });
});

test('routing: strict with no in-group endpoint resets at once; strict stays in group; prefer spills', { skip: !isRoot && 'needs root' }, async () => {
  const strict = await client(NS.client, 'names', '100.64.0.11', NAME, 2);
  // A reset (not a hang: the client would report TIMEOUT after 10 s) for every attempt.
  for (const r of strict) assert.equal(r.error, 'ECONNRESET', JSON.stringify(strict));
  const near = await client(NS.client, 'names', '100.64.0.13', NAME, 8);
  assert.deepEqual([...new Set(near.map((r: { name: string }) => r.name))].sort(), ['b1', 'b2']);
  const prefer = await client(NS.client, 'names', '100.64.0.12', NAME, 3);
  assert.deepEqual(prefer.map((r: { name: string }) => r.name), ['b3', 'b3', 'b3']);
});

test('rules are re-asserted after a manual flush of the agent chain', { skip: !isRoot && 'needs root' }, async () => {
  await inNs(NS.node, ['iptables', '-t', 'nat', '-F', 'EDGEMESH-SERVICES']);
  assert.doesNotMatch(await natRules(), /-A EDGEMESH-SERVICES/);
  const t = await poll(natRules, (s) => /-A EDGEMESH-SERVICES -d 100\.64\.0\.10/.test(s), 5000);
  assert.match(t, /-A EDGEMESH-SERVICES -d 100\.64\.0\.10/);
  const r = await client(NS.client, 'names', '100.64.0.10', NAME, 1);
  assert.ok(r[0].name, JSON.stringify(r));
  // kube-proxy (re)inserting its jump above ours: ours moves back to the top at the next re-assert.
  await inNs(NS.node, ['iptables', '-t', 'nat', '-N', 'KUBE-SERVICES']);
  await inNs(NS.node, ['iptables', '-t', 'nat', '-I', 'PREROUTING', '1', '-j', 'KUBE-SERVICES']);
  const first = async () => (await inNs(NS.node, ['iptables', '-t', 'nat', '-S', 'PREROUTING'])).stdout.split('\n').filter((l) => l.startsWith('-A '));
  const pre = await poll(first, (l) => /EDGEMESH-SERVICES/.test(l[0]), 5000);
  assert.match(pre[0], /-j EDGEMESH-SERVICES/);
  assert.equal(pre.filter((l) => /EDGEMESH-SERVICES/.test(l)).length, 1);
});

test('a backend killed mid-test: new connections go to the others', { skip: !isRoot && 'needs root' }, async () => {
  const before = await client(NS.client, 'names', '100.64.0.10', NAME, 6);
  assert.deepEqual([...new Set(before.map((r: { name: string }) => r.name))].sort(), ['b1', 'b2', 'b3']);
  const b2 = backends.get('b2')!;
  b2.kill('SIGKILL');
  await new Promise((r) => b2.once('exit', r));
  const after = await client(NS.client, 'names', '100.64.0.10', NAME, 9);
  for (const r of after) assert.ok(r.name === 'b1' || r.name === 'b3', JSON.stringify(after));
});

test('SIGTERM: the agent exits 0 and every rule is gone', { skip: !isRoot && 'needs root' }, async () => {
  const p = agent!;
  const exited = new Promise<number | null>((r) => p.once('exit', (c) => r(c)));
  p.kill('SIGTERM');
  assert.equal(await exited, 0);
  agent = undefined;
  assert.doesNotMatch(await natRules(), /EDGEMESH/);
});
