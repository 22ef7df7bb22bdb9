// The edgemesh-server binary's identity at start and its token/node commands, as an operator uses them: the stateDir
// and CA files get their modes, a join token made while the server runs is stored hashed, node revoke/reset/list,
// and config errors (weak token, bad CA) exit 2 naming the key.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { caHashOf } from '@edgemesh/common/identity/ca';
import { NodeRegistry } from '../packages/server/src/identity/registry.ts';
import { nodeKey } from '@edgemesh/common/identity/testca';
import { poll } from './lib/agentproc.ts';

const SERVER_BIN = resolve(import.meta.dirname, '../packages/server/bin/edgemesh-server.js');
let dir: string;
let cfgFile: string;
let stateDir: string;

function cli(...args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [SERVER_BIN, ...args], { encoding: 'utf8', env: { ...process.env, EDGEMESH_TOKEN: '' } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

function config(name: string, extra: string): string {
  const f = join(dir, name);
  writeFileSync(f, `listen: 127.0.0.1:0\nstunAltPort: 0\nadmin:\n  listen: 127.0.0.1:0\nlog:\n  level: info\n${extra}`);
  return f;
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'em-srvid-'));
  stateDir = join(dir, 'state');
  writeFileSync(join(dir, 'token'), randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
  cfgFile = config('server.yaml', `stateDir: ${stateDir}\ntokenFile: ${join(dir, 'token')}\n`);
});
after(() => rmSync(dir, { recursive: true, force: true }));

test('start: stateDir 0700, ca.crt and ca.key 0600, caHash in /status; a token made while it runs is stored hashed', async () => {
  const child = spawn(process.execPath, [SERVER_BIN, '--config', cfgFile], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, EDGEMESH_TOKEN: '' } });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const exited = once(child, 'exit');
  try {
    await poll('server listening', async () => (out.includes('server listening') ? true : undefined));
    assert.equal(statSync(stateDir).mode & 0o777, 0o700);
    for (const f of ['ca.crt', 'ca.key']) assert.equal(statSync(join(stateDir, f)).mode & 0o777, 0o600, f);
    const caHash = caHashOf(readFileSync(join(stateDir, 'ca.crt'), 'utf8'));
    assert.match(out, new RegExp(`"caHash":"${caHash}"`), 'the log names the CA hash agents pin');
    const adminAddr = /"admin":"([^"]+)"/.exec(out)?.[1];
    assert.ok(adminAddr, out);
    const status = await (await fetch(`http://${adminAddr}/status`)).json() as { identity?: { caHash: string; pendingJoinTokens: number } };
    assert.equal(status.identity?.caHash, caHash);
    assert.equal(status.identity?.pendingJoinTokens, 0);
    const made = cli('token', 'create', '--config', cfgFile, '--node', 'edge-a', '--ttl', '1h');
    assert.equal(made.code, 0, made.err);
    const token = made.out.trim();
    assert.match(token, /^emj1\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}$/);
    assert.match(made.err, /for node edge-a, valid until/);
    const files = readdirSync(join(stateDir, 'join-tokens'));
    assert.equal(files.length, 1);
    const stored = readFileSync(join(stateDir, 'join-tokens', files[0]), 'utf8');
    assert.ok(!stored.includes(token.split('.')[2]), 'the secret is not at rest');
    assert.equal(statSync(join(stateDir, 'join-tokens', files[0])).mode & 0o777, 0o600);
    const st2 = await (await fetch(`http://${adminAddr}/status`)).json() as { identity?: { pendingJoinTokens: number } };
    assert.equal(st2.identity?.pendingJoinTokens, 1, 'the running server sees the new token');
    const listed = cli('token', 'list', '--config', cfgFile, '--json');
    assert.equal(listed.code, 0, listed.err);
    assert.deepEqual((JSON.parse(listed.out) as { node: string }[]).map((t) => t.node), ['edge-a']);
    assert.ok(!listed.out.includes(token.split('.')[2]));
    child.kill('SIGTERM');
    const [code] = await exited;
    assert.equal(code, 0, out);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
});

test('node list / revoke / reset', () => {
  const reg = new NodeRegistry(stateDir);
  const k = nodeKey();
  assert.ok(reg.createPin({ name: 'edge-b', key: k.publicKey.toString('base64'), method: 'bootstrap', enrolledAt: Date.now() }));
  let r = cli('node', 'list', '--config', cfgFile, '--json');
  assert.equal(r.code, 0, r.err);
  assert.deepEqual((JSON.parse(r.out) as { name: string; status: string }[]).map((n) => [n.name, n.status]), [['edge-b', 'enrolled']]);
  r = cli('node', 'revoke', 'edge-b', '--config', cfgFile);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /revoked edge-b key [0-9a-f]{16}/);
  assert.ok(reg.revocations().isRevoked({ publicKey: k.publicKey }));
  r = cli('node', 'list', '--config', cfgFile);
  assert.match(r.out, /edge-b\s+revoked/);
  r = cli('node', 'reset', 'edge-b', '--config', cfgFile);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /a join token or Kubernetes/);
  assert.equal(reg.readPin('edge-b'), undefined);
  assert.ok(reg.revocations().isRevoked({ publicKey: k.publicKey }), 'reset keeps the revocation');
  r = cli('node', 'list', '--config', cfgFile, '--json');
  assert.deepEqual((JSON.parse(r.out) as { name: string; status: string; revokedKeys: unknown[] }[]).map((n) => [n.name, n.status, n.revokedKeys.length]), [['edge-b', 'not enrolled', 1]]);
  assert.equal(cli('node', 'revoke', 'edge-c', '--config', cfgFile).code, 1, 'nothing to revoke');
  assert.equal(cli('node', 'reset', 'edge-c', '--config', cfgFile).code, 1, 'nothing to reset');
  assert.equal(cli('node', 'revoke', '--config', cfgFile).code, 2, 'no name');
  assert.equal(cli('token', 'create', '--config', cfgFile).code, 2, 'no --node');
  assert.equal(cli('token', 'create', '--config', cfgFile, '--node', 'edge-a', '--ttl', '90d').code, 2, 'ttl too long');
  assert.equal(cli('token', 'create', '--node', 'edge-a').code, 2, 'no --config');
  assert.equal(cli('node', 'frobnicate', '--config', cfgFile).code, 2);
});

test('config errors at start exit 2 naming the key', () => {
  writeFileSync(join(dir, 'weak'), 'hunter2hunter2hunter2\n');
  let r = cli('--config', config('weak.yaml', `stateDir: ${join(dir, 's2')}\ntokenFile: ${join(dir, 'weak')}\n`));
  assert.equal(r.code, 2);
  assert.match(r.err, /^config: tokenFile: .*at least 128 are required/m);
  writeFileSync(join(dir, 'bad.crt'), 'not a certificate');
  writeFileSync(join(dir, 'bad.key'), 'not a key', { mode: 0o600 });
  r = cli('--config', config('badca.yaml', `stateDir: ${join(dir, 's3')}\ntokenFile: ${join(dir, 'token')}\ncaFile: ${join(dir, 'bad.crt')}\ncaKeyFile: ${join(dir, 'bad.key')}\n`));
  assert.equal(r.code, 2);
  assert.match(r.err, /^config: caFile: not a PEM X\.509 certificate/m);
  r = cli('--config', config('nostate.yaml', `stateDir: ${join(dir, 'token')}/sub\ntokenFile: ${join(dir, 'token')}\n`));
  assert.equal(r.code, 2);
  assert.match(r.err, /^config: stateDir: cannot create/m);
});

test('bootstrap enrollment off: no tokenFile needed', async () => {
  const f = config('nobootstrap.yaml', `stateDir: ${join(dir, 's4')}\ntokenFile: ${join(dir, 'absent')}\nenrollment:\n  bootstrapToken: false\n`);
  const child = spawn(process.execPath, [SERVER_BIN, '--config', f], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, EDGEMESH_TOKEN: '' } });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const exited = once(child, 'exit');
  try {
    await poll('server listening', async () => (out.includes('server listening') ? true : undefined));
    assert.match(out, /cluster\.source is none/, 'none warns at start');
    assert.match(out, /enrollment by join token only/);
    child.kill('SIGTERM');
    assert.equal((await exited)[0], 0, out);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
});
