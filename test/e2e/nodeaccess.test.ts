// SOCKS5 node access across NATs, end to end: two nodes at two sites behind port-restricted NATs, the real server and
// agents (file source, iptables, tunnel). n2 runs a real openssh-server on 127.0.0.1:22 (and :2222) of its own
// namespace, with its own config, host key and authorized key in a temp dir, and allows only port 22
// (nodeAccess.allowedPorts). n1 runs the SOCKS5 listener. From n1:
// - `ssh -o ProxyCommand='nc -X 5 -x 127.0.0.1:10800 %h %p' root@n2` (key auth, n2's host key pinned) runs a command
//   on n2 and prints its output: n2's own address, and SSH_CONNECTION from n2's loopback (its agent dialed it);
// - `curl --socks5-hostname` reaches a Service (backend on n2) by name;
// - n2's port 2222 (sshd listens there too, but n2 does not allow it) is refused "not allowed" (0x02), counted on n2;
//   an unknown node is refused "host unreachable" (0x04); n2's allowed port with the caller not in
//   nodeAccess.allowedNodes is refused too (n2 decides, not n1);
// - /status on n1 says node access goes through the tunnel; on n2 it lists the ports n2 serves.
// The commands and their output are kept in test-artifacts/nodeaccess.txt.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, rmdirSync, existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { buildLab, type Lab } from '../lib/netlab.ts';
import { AGENT_ADMIN, Mesh, nodeManifest, serviceManifest, sliceManifest } from '../../packages/lab/src/mesh.ts';

const NS = 'na';
const WEB_PORT = 8080;
const SOCKS = '127.0.0.1:10800';
const SSHD = '/usr/sbin/sshd';
/** sshd's privilege-separation directory (Debian's default); made for the test when missing, removed after. */
const PRIVSEP_DIR = '/run/sshd';
const SSH_TIMEOUT_MS = 30_000;
const READY_POLL_MS = 100;
const READY_TIMEOUT_MS = 15_000;
const ARTIFACTS = join(resolve(import.meta.dirname, '..', '..'), 'test-artifacts');
const PROXY_COMMAND = `nc -X 5 -x ${SOCKS} %h %p`;
/** What the commands printed, for the artifact (and the closing note). */
const transcript: string[] = [];

let lab: Lab;
let mesh: Mesh;
let dir: string;
let sshDir: string;
let sshd: ChildProcess | undefined;
let madePrivsep = false;
let n2ip = '';

async function sh(host: string, cmd: string, args: string[], timeoutMs = SSH_TIMEOUT_MS) {
  return lab.exec(host, cmd, args, { timeoutMs });
}

/** One SOCKS5 CONNECT by domain name from `host`; resolves the reply code (or `error: ...`). */
async function socksReply(host: string, name: string, port: number): Promise<string> {
  const [h, p] = SOCKS.split(':');
  const script = `const s=require('node:net').connect(${p},'${h}');const n=Buffer.from(${JSON.stringify(name)});let st=0,buf=Buffer.alloc(0);`
    + `const t=setTimeout(()=>{process.stdout.write('error: timeout');process.exit(1)},15000);`
    + `s.on('error',(e)=>{process.stdout.write('error: '+e.code);process.exit(1)});`
    + `s.on('connect',()=>s.write(Buffer.from([5,1,0])));`
    + `s.on('data',(d)=>{buf=Buffer.concat([buf,d]);if(st===0&&buf.length>=2){buf=buf.subarray(2);st=1;`
    + `const pb=Buffer.alloc(2);pb.writeUInt16BE(${port});s.write(Buffer.concat([Buffer.from([5,1,0,3,n.length]),n,pb]))}`
    + `if(st===1&&buf.length>=2){clearTimeout(t);process.stdout.write(String(buf[1]));s.destroy();process.exit(0)}});`;
  const r = await sh(host, process.execPath, ['-e', script]);
  transcript.push(`${host}: SOCKS5 CONNECT ${name}:${port} -> reply ${r.stdout.trim()}`, '');
  return r.stdout.trim();
}

function ssh(host: string, target: string, command: string) {
  return sh(host, 'ssh', [
    '-F', '/dev/null', '-i', join(sshDir, 'client_key'), '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes',
    '-o', `UserKnownHostsFile=${join(sshDir, 'known_hosts')}`, '-o', 'GlobalKnownHostsFile=/dev/null', '-o', 'StrictHostKeyChecking=yes',
    '-o', 'ConnectTimeout=20', '-o', `ProxyCommand=${PROXY_COMMAND}`, `root@${target}`, command,
  ]).then((r) => {
    transcript.push(`n1$ ssh -o ProxyCommand='${PROXY_COMMAND}' root@${target} '${command}'   (exit ${r.exitCode})`, (r.stdout + r.stderr).trim(), '');
    return r;
  });
}

async function curl(url: string) {
  const r = await sh('n1', 'curl', ['-sS', '--max-time', '15', '--socks5-hostname', SOCKS, url]);
  transcript.push(`n1$ curl --socks5-hostname ${SOCKS} ${url}   (exit ${r.exitCode})`, (r.stdout + r.stderr).trim(), '');
  return r;
}

async function metricOn(host: string, name: string, labels: string): Promise<number> {
  const r = await mesh.adminGet(host, AGENT_ADMIN, '/metrics');
  let sum = 0;
  for (const line of r.body.split('\n')) if (line.startsWith(name) && line.includes(labels)) sum += Number(line.split(' ').pop());
  return sum;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'edgemesh-na-'));
  // sshd runs partly unprivileged (privilege separation) and checks its files: they live in a directory of their own
  // that anyone may traverse, whatever the checkout's or the test dir's permissions are.
  sshDir = mkdtempSync(join(tmpdir(), 'edgemesh-na-sshd-'));
  chmodSync(sshDir, 0o755);
  for (const k of ['host_key', 'client_key']) {
    const r = await runHere('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', k, '-f', join(sshDir, k)]);
    assert.equal(r.code, 0, r.stderr);
  }
  writeFileSync(join(sshDir, 'authorized_keys'), readFileSync(join(sshDir, 'client_key.pub')), { mode: 0o600 });
  // n2's host key, pinned for the name ssh is given (the ProxyCommand's %h): the client verifies it reached n2's sshd.
  writeFileSync(join(sshDir, 'known_hosts'), `n2 ${readFileSync(join(sshDir, 'host_key.pub'), 'utf8').split(' ').slice(0, 2).join(' ')}\n`);
  writeFileSync(join(sshDir, 'sshd_config'), [
    'ListenAddress 127.0.0.1:22',
    'ListenAddress 127.0.0.1:2222',
    `HostKey ${join(sshDir, 'host_key')}`,
    `PidFile ${join(sshDir, 'sshd.pid')}`,
    `AuthorizedKeysFile ${join(sshDir, 'authorized_keys')}`,
    'PubkeyAuthentication yes',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    'PermitRootLogin prohibit-password',
    'UsePAM no',
    // The temp dir sits in /tmp (world-writable): the key files' own modes are right, their parents are not ours.
    'StrictModes no',
    'LogLevel VERBOSE',
    '',
  ].join('\n'));

  lab = await buildLab({
    publicHosts: ['relay'],
    sites: [{ name: 'site-1', nat: 'port-restricted', hosts: ['n1'] }, { name: 'site-2', nat: 'port-restricted', hosts: ['n2'] }],
  });
  mesh = new Mesh(lab, dir, randomBytes(32).toString('hex'));
  const [n1, n2] = ['n1', 'n2'].map((h) => lab.host(h));
  n2ip = n2.ip;
  mesh.writeManifest('nodes.yaml', [
    nodeManifest('n1', { 'topology.kubernetes.io/zone': 'site-1' }, n1.ip),
    nodeManifest('n2', { 'topology.kubernetes.io/zone': 'site-2' }, n2.ip),
  ]);
  mesh.writeManifest('services.yaml', [serviceManifest(NS, 'web', 80, WEB_PORT), sliceManifest(NS, 'web', 'web-1', WEB_PORT, [{ ip: n2.ip, node: 'n2' }])]);

  if (!existsSync(PRIVSEP_DIR)) {
    mkdirSync(PRIVSEP_DIR, { mode: 0o755 });
    madePrivsep = true;
  }
  sshd = lab.spawn('n2', SSHD, ['-D', '-e', '-f', join(sshDir, 'sshd_config'), '-E', join(sshDir, 'sshd.log')], { stdio: 'ignore' });
  const deadline = Date.now() + READY_TIMEOUT_MS;
  const probe = `const s=require('node:net').connect(22,'127.0.0.1');s.on('data',d=>{process.stdout.write(d.toString());process.exit(0)});s.on('error',()=>process.exit(1))`;
  for (;;) {
    assert.equal(sshd.exitCode, null, `sshd exited: ${readLog('sshd.log')}`);
    const r = await sh('n2', process.execPath, ['-e', probe], 5000);
    if (r.exitCode === 0 && r.stdout.startsWith('SSH-2.0-')) break;
    assert.ok(Date.now() < deadline, `sshd did not answer on n2's 127.0.0.1:22: ${readLog('sshd.log')}`);
    await new Promise((r) => setTimeout(r, READY_POLL_MS));
  }

  await mesh.startServer('relay');
  await mesh.startBackend('n2', 'n2', WEB_PORT);
  await mesh.startAgent('n2', 'n2', { config: { nodeAccess: { allowedPorts: [22] } } });
  await mesh.startAgent('n1', 'n1', { config: { socks5: { enabled: true, listen: SOCKS } } });
});

after(async () => {
  if (transcript.length) {
    mkdirSync(ARTIFACTS, { recursive: true });
    writeFileSync(join(ARTIFACTS, 'nodeaccess.txt'), transcript.join('\n') + '\n');
  }
  if (sshd && sshd.exitCode === null) sshd.kill('SIGTERM');
  await mesh?.stopAll();
  await lab?.destroy();
  if (madePrivsep) rmdirSync(PRIVSEP_DIR);
  if (dir) rmSync(dir, { recursive: true, force: true });
  if (sshDir) rmSync(sshDir, { recursive: true, force: true });
});

function readLog(name: string): string {
  try {
    return readFileSync(join(sshDir, name), 'utf8').split('\n').slice(-15).join('\n');
  } catch {
    return '(no log)';
  }
}

/** A command on this host, outside the lab (ssh-keygen for the key files). */
async function runHere(cmd: string, args: string[]): Promise<{ code: number | null; stderr: string }> {
  const { execFile } = await import('node:child_process');
  return new Promise((resolve) => execFile(cmd, args, { timeout: 20_000 }, (err, _o, stderr) => resolve({ code: err ? 1 : 0, stderr })));
}

test('ssh through the SOCKS5 proxy (nc -X 5) to the far node behind its NAT runs a command there and prints its output', async () => {
  const r = await ssh('n1', 'n2', 'echo "on $(ip -4 -o addr show | grep -o \'inet [0-9.]*\' | tr \'\\n\' \' \')"; echo "via $SSH_CONNECTION"; echo done');
  assert.equal(r.exitCode, 0, `ssh failed (${r.exitCode}): ${r.stderr}\nn1:\n${mesh.tail('n1')}\nn2:\n${mesh.tail('n2')}\nsshd:\n${readLog('sshd.log')}`);
  const lines = r.stdout.trim().split('\n');
  assert.ok(lines[0].includes(`inet ${n2ip} `), `the command ran in n2's namespace: ${r.stdout}`);
  assert.match(lines[1], /^via 127\.0\.0\.1 \d+ 127\.0\.0\.1 22$/, 'sshd saw a connection from n2\'s own loopback (n2\'s agent dialed it)');
  assert.equal(lines[2], 'done');
  // Key auth, and the session really crossed the tunnel.
  assert.match(readLog('sshd.log'), /Accepted publickey for root from 127\.0\.0\.1/);
  assert.ok((await mesh.agentStatus('n1')).peers.some((p) => p.node === 'n2'), 'n1 has n2 as a tunnel peer');
  assert.ok(await metricOn('n2', 'edgemesh_tunnel_node_access_served_total', 'outcome="ok"') >= 1, 'n2 served the stream');
  // Again, on whatever path the tunnel has now (relay or punched direct): a second session works as well.
  const again = await ssh('n1', 'n2', 'echo second');
  assert.equal(again.exitCode, 0, again.stderr);
  assert.equal(again.stdout.trim(), 'second');
});

test('curl --socks5-hostname reaches a Service by name through the same listener', async () => {
  for (const name of [`web.${NS}.svc.cluster.local`, `web.${NS}`]) {
    const r = await curl(`http://${name}/`);
    assert.equal(r.exitCode, 0, `${name}: ${r.stderr}`);
    assert.equal(r.stdout.trim(), 'hello from n2');
  }
});

test('a port the far node does not allow is refused "not allowed" (0x02) by that node; an unknown node "host unreachable" (0x04)', async () => {
  const deniedBefore = await metricOn('n2', 'edgemesh_budget_refusals_total', 'budget="node_access_denied"');
  // sshd listens on n2's 2222 too: only n2's nodeAccess.allowedPorts keeps it out.
  assert.equal(await socksReply('n1', 'n2', 2222), '2');
  assert.equal(await metricOn('n2', 'edgemesh_tunnel_node_access_served_total', 'outcome="forbidden"'), 1);
  assert.equal(await metricOn('n2', 'edgemesh_budget_refusals_total', 'budget="node_access_denied"'), deniedBefore + 1, 'counted on n2');
  assert.equal(await socksReply('n1', 'no-such-node', 22), '4');
  // What real clients see: curl names the reply, ssh fails.
  const c = await curl('http://n2:2222/');
  assert.equal(c.exitCode, 97, `curl: ${c.stderr}`); // CURLE_PROXY: the proxy refused the connection
  assert.match(c.stderr, /SOCKS5.*\(2\)|not allowed/i, c.stderr);
  const s = await ssh('n1', 'no-such-node', 'true');
  assert.notEqual(s.exitCode, 0);
  assert.equal(await socksReply('n1', 'n2', 22), '0', 'the allowed port still succeeds');
});

test('/status: n1 reaches other nodes through the tunnel; n2 lists the ports it serves, its streams back to 0 once the sessions ended', async () => {
  const st = (await mesh.agentStatus('n1')) as unknown as { socks5?: { nodeAccess: string }; nodeAccess?: unknown };
  assert.equal(st.socks5?.nodeAccess, 'tunnel');
  assert.equal(st.nodeAccess, undefined, 'n1 serves no ports');
  type Served = { nodeAccess?: { allowedPorts: number[]; allowedGroups: string[]; allowedNodes: string[]; streams: number } };
  let n2 = (await mesh.agentStatus('n2')) as unknown as Served;
  for (let i = 0; i < 50 && n2.nodeAccess?.streams !== 0; i++) {
    await new Promise((r) => setTimeout(r, 200));
    n2 = (await mesh.agentStatus('n2')) as unknown as Served;
  }
  assert.deepEqual(n2.nodeAccess, { allowedPorts: [22], allowedGroups: [], allowedNodes: [], streams: 0 });
});

test('the far node decides who: with n1 not in its nodeAccess.allowedNodes, even port 22 is refused', async () => {
  await mesh.stop('n2');
  await mesh.startAgent('n2', 'n2', { config: { nodeAccess: { allowedPorts: [22], allowedNodes: ['somebody-else'] } } });
  let reply = '';
  // n1's session to n2 is re-established with the restarted agent; a bounded wait for the new answer.
  for (let i = 0; i < 20 && reply !== '2'; i++) {
    reply = await socksReply('n1', 'n2', 22);
    if (reply !== '2') await new Promise((r) => setTimeout(r, 500));
  }
  assert.equal(reply, '2', `n2 refuses n1 now:\n${mesh.tail('n2')}`);
  const s = await ssh('n1', 'n2', 'true');
  assert.notEqual(s.exitCode, 0, 'ssh is refused too');
});
