// The agent's DNS on its default address inside a lab namespace: 169.254.96.16:53 is put on the dummy interface
// edgemesh0 (lo without dummy support), upstreams come from the namespace's resolv.conf (which lists the agent itself first: it must be skipped),
// forwarding crosses to an upstream on another host; on SIGTERM the address and the interface are removed.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { stringify } from 'yaml';
import { buildLab, type Lab } from '../lib/netlab.ts';
import { fixtureObjects } from '../../packages/agent/src/dns/testfixture.ts';

const HELPER = resolve(import.meta.dirname, '../lib/dns-helpers-main.ts');
const AGENT_DNS_IP = '169.254.96.16';
const READY_TIMEOUT_MS = 15_000;
const isRoot = process.getuid?.() === 0;

function waitReady(child: ChildProcess, what: string): Promise<void> {
  return new Promise((res, rej) => {
    let out = '';
    const t = setTimeout(() => rej(new Error(`${what} not ready: ${out}`)), READY_TIMEOUT_MS);
    const on = (d: Buffer) => {
      out += d.toString();
      if (out.includes('READY')) { clearTimeout(t); res(); }
    };
    child.stdout?.on('data', on);
    child.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
    child.once('exit', (code) => { clearTimeout(t); rej(new Error(`${what} exited ${code}: ${out}`)); });
  });
}

function exited(child: ChildProcess): Promise<number | null> {
  return new Promise((res) => (child.exitCode !== null ? res(child.exitCode) : child.once('exit', (c) => res(c))));
}

let lab: Lab;
let dir: string;

before(async () => {
  if (!isRoot) return;
  lab = await buildLab({ publicHosts: ['node', 'up'], sites: [] });
  dir = mkdtempSync(join(tmpdir(), 'em-dnse2e-'));
});
after(async () => {
  await lab?.destroy();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('DNS on 169.254.96.16:53 via edgemesh0, resolv.conf upstreams without itself, cleaned up on exit', { skip: !isRoot && 'needs root' }, async () => {
  const up = lab.spawn('up', process.execPath, [HELPER, 'upstream', lab.host('up').ip, '53']);
  await waitReady(up, 'upstream');
  lab.setResolvConf('node', [AGENT_DNS_IP, lab.host('up').ip], ['default.svc.cluster.local', 'svc.cluster.local', 'cluster.local']);
  const manifests = join(dir, 'manifests');
  mkdirSync(manifests, { recursive: true });
  const f = fixtureObjects();
  writeFileSync(join(manifests, 'cluster.yaml'), [...f.services, ...f.slices].map((o) => stringify({ apiVersion: o.kind === 'Service' ? 'v1' : 'discovery.k8s.io/v1', ...o })).join('---\n'));
  const cfgFile = join(dir, 'agent.yaml');
  writeFileSync(cfgFile, stringify({
    nodeName: 'node', stateDir: join(dir, 'state'), cluster: { source: 'file', manifestsDir: manifests },
    proxy: { intercept: 'none', ipMode: 'fake' }, tunnel: { enabled: false }, admin: { listen: '127.0.0.1:0' }, log: { level: 'warn' },
  }));
  const agent = lab.spawn('node', process.execPath, [HELPER, 'agent', cfgFile]);
  await waitReady(agent, 'agent');

  // On edgemesh0, or on lo where the kernel has no dummy interfaces (this development VM's kernel has none).
  const dummy = (await lab.exec('node', 'ip', ['link', 'add', 'dev', 'emprobe0', 'type', 'dummy'])).exitCode === 0;
  if (dummy) await lab.exec('node', 'ip', ['link', 'del', 'dev', 'emprobe0']);
  const iface = dummy ? 'edgemesh0' : 'lo';
  const link = await lab.exec('node', 'ip', ['-o', 'addr', 'show', 'dev', iface]);
  assert.equal(link.exitCode, 0);
  assert.match(link.stdout, /169\.254\.96\.16\/32/);

  const a = await lab.exec('node', 'dig', ['@' + AGENT_DNS_IP, '+time=5', '+tries=1', '+short', 'web.default.svc.cluster.local', 'A'], { reject: true });
  assert.match(a.stdout.trim(), /^9\.251\.\d+\.\d+$/);
  const tcp = await lab.exec('node', 'dig', ['@' + AGENT_DNS_IP, '+tcp', '+time=5', '+tries=1', '+short', 'web.default.svc.cluster.local', 'A'], { reject: true });
  assert.equal(tcp.stdout.trim(), a.stdout.trim());
  // Forwarded across the lab to the upstream named in resolv.conf (the agent skipped its own address there).
  const fwd = await lab.exec('node', 'dig', ['@' + AGENT_DNS_IP, '+time=5', '+tries=1', '+short', 'www.example.test', 'A'], { reject: true });
  assert.equal(fwd.stdout.trim(), '192.0.2.10');
  // A pod-style lookup through the search path with the system resolver (getent uses resolv.conf).
  const getent = await lab.exec('node', 'getent', ['ahostsv4', 'web'], { reject: true });
  assert.match(getent.stdout, new RegExp(a.stdout.trim().replace(/\./g, '\\.')));

  agent.kill('SIGTERM');
  assert.equal(await exited(agent), 0);
  if (dummy) assert.notEqual((await lab.exec('node', 'ip', ['link', 'show', 'dev', 'edgemesh0'])).exitCode, 0, 'edgemesh0 removed on exit');
  assert.doesNotMatch((await lab.exec('node', 'ip', ['-o', 'addr', 'show'])).stdout, /169\.254\.96\.16/, 'address removed on exit');
  up.kill('SIGTERM');
});
