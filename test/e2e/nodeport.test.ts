// NodePort / LoadBalancer / externalIPs end to end (proxy.nodePorts: true): two nodes at two sites behind NATs, the
// real server and agents (file source, iptables, tunnel), and `c1`, a machine on site-1's LAN that is not a node.
// From c1: node address + nodePort (TCP and UDP) reaches a backend at the other site through the tunnel; an
// externalIP and a load-balancer ingress IP routed to n1 are intercepted; externalTrafficPolicy Local is strict (no
// endpoint on n1: reset; an endpoint on n1: always n1). On n1 itself: 127.0.0.1 and its own address + nodePort
// (hairpin). n1 also holds the nat and filter rules kube-proxy programs for the same nodePorts (KUBE-SERVICES ->
// KUBE-NODEPORTS DNAT to a pod IP nothing routes, KUBE-EXTERNAL-SERVICES REJECT): the agent's chain runs first.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { buildLab, type Lab } from '../lib/netlab.ts';
import { AGENT_IP, Mesh, nodeManifest, sliceManifest } from '../../packages/lab/src/mesh.ts';

const NS = 'np';
const PORT = 8080;
const EXTERNAL_IP = '192.0.2.50';
const LB_IP = '192.0.2.60';
const NP = { web: 30080, localFar: 30081, localBoth: 30082, lb: 30083 };
/** A pod IP nothing routes to: where the simulated kube-proxy would send the nodePort. */
const KUBE_PROXY_POD = '10.244.99.99';

let lab: Lab;
let mesh: Mesh;
let dir: string;
let n1ip = '';

function nodePortService(name: string, nodePort: number, spec: Record<string, unknown> = {}, status?: object): object {
  return {
    apiVersion: 'v1', kind: 'Service', metadata: { name, namespace: NS },
    spec: {
      type: 'NodePort', clusterIP: `10.96.1.${nodePort - 30000}`, selector: { app: name },
      ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: PORT, nodePort }, { name: 'udp', protocol: 'UDP', port: 80, targetPort: PORT, nodePort }],
      ...spec,
    },
    ...(status ? { status } : {}),
  };
}

/** The iptables rules kube-proxy (iptables mode) writes for these nodePorts, as a node running both would hold them. */
const KUBE_PROXY_RULES = [
  '*nat',
  ':KUBE-SERVICES - [0:0]',
  ':KUBE-NODEPORTS - [0:0]',
  '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
  '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
  '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
  ...Object.values(NP).map((p) => `-A KUBE-NODEPORTS -p tcp -m tcp --dport ${p} -j DNAT --to-destination ${KUBE_PROXY_POD}:${PORT}`),
  'COMMIT',
  '*filter',
  ':KUBE-EXTERNAL-SERVICES - [0:0]',
  '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
  `-A KUBE-EXTERNAL-SERVICES -p tcp -m addrtype --dst-type LOCAL -m tcp --dport ${NP.web} -m comment --comment "np/web has no endpoints" -j REJECT --reject-with icmp-port-unreachable`,
  'COMMIT',
  '',
].join('\n');

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'edgemesh-np-'));
  lab = await buildLab({
    publicHosts: ['relay'],
    sites: [{ name: 'site-1', nat: 'port-restricted', hosts: ['n1', 'c1'] }, { name: 'site-2', nat: 'port-restricted', hosts: ['n2'] }],
  });
  mesh = new Mesh(lab, dir, randomBytes(32).toString('hex'));
  const [n1, n2] = ['n1', 'n2'].map((h) => lab.host(h));
  n1ip = n1.ip;
  mesh.writeManifest('nodes.yaml', [nodeManifest('n1', {}, n1.ip), nodeManifest('n2', {}, n2.ip)]);
  const far = [{ ip: n2.ip, node: 'n2' }];
  const both = [{ ip: n1.ip, node: 'n1' }, { ip: n2.ip, node: 'n2' }];
  mesh.writeManifest('services.yaml', [
    nodePortService('web', NP.web, { externalIPs: [EXTERNAL_IP] }),
    sliceManifest(NS, 'web', 'web-1', PORT, far),
    nodePortService('local-far', NP.localFar, { externalTrafficPolicy: 'Local' }),
    sliceManifest(NS, 'local-far', 'local-far-1', PORT, far),
    nodePortService('local-both', NP.localBoth, { externalTrafficPolicy: 'Local' }),
    sliceManifest(NS, 'local-both', 'local-both-1', PORT, both),
    nodePortService('lb', NP.lb, { type: 'LoadBalancer' }, { loadBalancer: { ingress: [{ ip: LB_IP }] } }),
    sliceManifest(NS, 'lb', 'lb-1', PORT, far),
  ]);
  const restore = await lab.exec('n1', 'iptables-restore', ['--noflush'], { input: KUBE_PROXY_RULES });
  assert.equal(restore.exitCode, 0, restore.stderr);
  await mesh.startServer('relay');
  await mesh.startBackend('n1', 'n1', PORT);
  await mesh.startBackend('n2', 'n2', PORT);
  for (const n of ['n1', 'n2']) await mesh.startAgent(n, n, { config: { proxy: { nodePorts: true } } });
  lab.setResolvConf('n1', AGENT_IP, [`${NS}.svc.cluster.local`, 'svc.cluster.local', 'cluster.local']);
  // c1 sends the externalIP and the load balancer's IP to n1, as an upstream router or the load balancer would.
  for (const ip of [EXTERNAL_IP, LB_IP]) {
    const r = await lab.exec('c1', 'ip', ['route', 'add', `${ip}/32`, 'via', n1.ip]);
    assert.equal(r.exitCode, 0, r.stderr);
  }
});

after(async () => {
  await mesh?.stopAll();
  await lab?.destroy();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function get(host: string, url: string): Promise<string> {
  const r = await mesh.fetch(host, url, 8000);
  assert.ok(r.ok, `${host} GET ${url}: ${r.error} ${r.message ?? ''}\n${mesh.tail('n1')}`);
  return r.body!.trim();
}

/** One UDP datagram from `host` to ip:port; resolves the answer (or an error after 5 s). */
async function udp(host: string, ip: string, port: number, payload: string): Promise<string> {
  const script = `const s=require('node:dgram').createSocket('udp4');const t=setTimeout(()=>{process.stdout.write('timeout');process.exit(1)},5000);`
    + `s.on('message',(m)=>{clearTimeout(t);process.stdout.write(m.toString());process.exit(0)});s.send(Buffer.from(${JSON.stringify(payload)}),${port},${JSON.stringify(ip)})`;
  return (await lab.exec(host, process.execPath, ['-e', script])).stdout;
}

test('rules: nodePorts (every local address), the externalIP and the load-balancer IP are in the agent\'s chain, ahead of kube-proxy\'s', async () => {
  const save = (await lab.exec('n1', 'iptables-save', ['-t', 'nat'])).stdout;
  const chain = save.split('\n').filter((l) => l.startsWith('-A EDGEMESH-SERVICES'));
  for (const p of Object.values(NP)) {
    assert.ok(chain.some((l) => l.includes('-p tcp -m addrtype --dst-type LOCAL') && l.includes(`--dport ${p} `)), `tcp nodePort ${p}:\n${chain.join('\n')}`);
    assert.ok(chain.some((l) => l.includes('-p udp -m addrtype --dst-type LOCAL') && l.includes(`--dport ${p} `)), `udp nodePort ${p}`);
  }
  assert.ok(chain.some((l) => l.startsWith(`-A EDGEMESH-SERVICES -d ${EXTERNAL_IP}/32 -p tcp`)), 'externalIP');
  assert.ok(chain.some((l) => l.startsWith(`-A EDGEMESH-SERVICES -d ${LB_IP}/32 -p tcp`)), 'load-balancer IP');
  const pre = save.split('\n').filter((l) => l.startsWith('-A PREROUTING'));
  assert.match(pre[0], /-j EDGEMESH-SERVICES/, 'our jump is first');
  assert.ok(pre.some((l) => l.includes('-j KUBE-SERVICES')), 'kube-proxy\'s jump is still there');
  const st = (await mesh.agentStatus('n1')).services.find((s) => s.name === `${NS}/local-far`)!;
  assert.deepEqual(st.nodePorts, [NP.localFar, NP.localFar]);
  assert.equal(st.externalRouting, 'strict-node');
});

test('from a machine outside the cluster: node address + nodePort reaches the backend at the other site (TCP and UDP)', async () => {
  for (let i = 0; i < 3; i++) assert.equal(await get('c1', `http://${n1ip}:${NP.web}/`), 'hello from n2');
  assert.equal(await udp('c1', n1ip, NP.web, 'ping'), 'n2:ping');
  // Through the tunnel: n1 has n2 as a peer.
  assert.ok((await mesh.agentStatus('n1')).peers.some((p) => p.node === 'n2'), 'n1 reached n2 through the tunnel');
});

test('an externalIP and a LoadBalancer ingress IP routed to the node are intercepted like Service IPs', async () => {
  assert.equal(await get('c1', `http://${EXTERNAL_IP}/`), 'hello from n2');
  assert.equal(await get('c1', `http://${LB_IP}/`), 'hello from n2');
  assert.equal(await get('c1', `http://${n1ip}:${NP.lb}/`), 'hello from n2', 'and the LoadBalancer\'s nodePort');
});

test('externalTrafficPolicy Local is strict node: no endpoint on this node resets at once, one on this node always serves', async () => {
  const r = await mesh.fetch('c1', `http://${n1ip}:${NP.localFar}/`, 8000);
  assert.equal(r.ok, false, `expected a refusal, got ${JSON.stringify(r)}`);
  assert.match(String(r.error), /ECONNRESET|ECONNREFUSED|socket hang up/, `a reset, not a hang: ${r.error} ${r.message}`);
  for (let i = 0; i < 6; i++) assert.equal(await get('c1', `http://${n1ip}:${NP.localBoth}/`), 'hello from n1');
  // In-cluster callers of the same Service are not bound by externalTrafficPolicy: its Service IP reaches n2.
  assert.equal(await get('n1', `http://local-far.${NS}.svc.cluster.local/`), 'hello from n2');
});

test('on the node itself: 127.0.0.1 and the node\'s own address + nodePort (hairpin)', async () => {
  assert.equal(await get('n1', `http://127.0.0.1:${NP.web}/`), 'hello from n2');
  assert.equal(await get('n1', `http://${n1ip}:${NP.web}/`), 'hello from n2');
  assert.equal(await udp('n1', '127.0.0.1', NP.web, 'lo'), 'n2:lo');
});

test('a takeover on n1 keeps the nodePort and externalIP rules as they are (persisted listener ports), and they keep working', async () => {
  const rules = async () => (await lab.exec('n1', 'iptables-save', ['-t', 'nat'])).stdout.split('\n').filter((l) => l.startsWith('-A EDGEMESH-SERVICES')).sort();
  const before = await rules();
  const old = mesh.procs.get('n1')!;
  const exited = new Promise<number | null>((r) => old.proc.once('exit', (code) => r(code)));
  // Same stateDir and config: the new agent takes over (it is ready only once its rules equal the kernel's).
  await mesh.startAgent('n1', 'n1', { config: { proxy: { nodePorts: true }, shutdownDrainSeconds: 5 } });
  assert.equal(await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('still running'), 30_000))]), 0, 'the old agent handed over and exited 0');
  assert.deepEqual(await rules(), before);
  assert.equal(await get('c1', `http://${n1ip}:${NP.web}/`), 'hello from n2');
  assert.equal(await get('c1', `http://${EXTERNAL_IP}/`), 'hello from n2');
});

test('SIGTERM removes the agent\'s rules and leaves kube-proxy\'s', async () => {
  assert.equal(await mesh.stop('n1'), 0);
  const nat = (await lab.exec('n1', 'iptables-save', ['-t', 'nat'])).stdout;
  assert.doesNotMatch(nat, /EDGEMESH/);
  assert.match(nat, /-A KUBE-NODEPORTS -p tcp -m tcp --dport 30080 -j DNAT/);
  const filter = (await lab.exec('n1', 'iptables-save', ['-t', 'filter'])).stdout;
  assert.match(filter, /KUBE-EXTERNAL-SERVICES/);
});
