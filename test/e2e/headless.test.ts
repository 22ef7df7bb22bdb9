// Headless Services and pods by name across two NATed sites (issue 19), and flat groups (proxy.directCIDRs).
// site-1: n1 (the caller's node) and n2 on one LAN; site-2: n3 behind its own NAT. The headless Service demo/web has
// three pods, each answering its own name: web-0 and web-1 on n3 with different pod IPs (extra addresses on n3's lo),
// web-2 on n1. A client on n1 reaches each by name, TCP and UDP, and gets the reply of exactly that pod: the far ones
// through their mesh IPs (n1's agent in clusterIP mode: headless Services still get them), the local one at its real
// pod IP. n1's proxy.directCIDRs lists site-1's LAN (n2's endpoint is dialed directly: no tunnel stream) and a range on
// n3 that n1 cannot reach (the direct dial fails and the tunnel takes over). `dig` and `curl` output for the three
// names is kept in test-artifacts/headless-names.txt.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { buildLab, type Lab } from '../lib/netlab.ts';
import { AGENT_ADMIN, AGENT_IP, Mesh, nodeManifest, serviceManifest, sliceManifest } from '../../packages/lab/src/mesh.ts';

const GROUP = 'apps.kubeedge.io/belonging-to';
const PORT = 8080;
const ARTIFACTS = join(resolve(import.meta.dirname, '..', '..'), 'test-artifacts');
/** Pod IPs: two on n3 (site-2), one on n1 (site-1), and one on n3 in a range n1 wrongly believes flat. */
const POD = { web0: '10.244.3.10', web1: '10.244.3.11', web2: '10.244.1.10', unflat: '10.244.4.10' };
const UNFLAT_RANGE = '10.244.4.0/24';
const name = (host: string) => `${host}.web.demo.svc.cluster.local`;

let lab: Lab;
let mesh: Mesh;
let dir: string;
let lan: string;

function headlessManifests(): object[] {
  return [
    {
      apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'demo' },
      spec: { clusterIP: 'None', selector: { app: 'web' }, ports: [{ name: 'http', protocol: 'TCP', port: PORT }, { name: 'udp', protocol: 'UDP', port: PORT }] },
    },
    {
      apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice', addressType: 'IPv4',
      metadata: { name: 'web-abc', namespace: 'demo', labels: { 'kubernetes.io/service-name': 'web' } },
      ports: [{ name: 'http', protocol: 'TCP', port: PORT }, { name: 'udp', protocol: 'UDP', port: PORT }],
      endpoints: [
        { addresses: [POD.web0], hostname: 'web-0', nodeName: 'n3', conditions: { ready: true } },
        { addresses: [POD.web1], hostname: 'web-1', nodeName: 'n3', conditions: { ready: true } },
        { addresses: [POD.web2], hostname: 'web-2', nodeName: 'n1', conditions: { ready: true } },
      ],
    },
  ];
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'edgemesh-e2e-headless-'));
  lab = await buildLab({
    publicHosts: ['relay'],
    sites: [{ name: 'site-1', nat: 'port-restricted', hosts: ['n1', 'n2'] }, { name: 'site-2', nat: 'port-restricted', hosts: ['n3'] }],
  });
  mesh = new Mesh(lab, dir, randomBytes(32).toString('hex'));
  const [n1, n2, n3] = ['n1', 'n2', 'n3'].map((h) => lab.host(h));
  lan = `${n1.ip.split('.').slice(0, 3).join('.')}.0/24`;
  // The pods' addresses: extra addresses on the hosts' loopback (no CNI in the lab; each backend binds its own).
  for (const [host, ip] of [['n3', POD.web0], ['n3', POD.web1], ['n1', POD.web2], ['n3', POD.unflat]]) {
    await lab.exec(host, 'ip', ['addr', 'add', `${ip}/32`, 'dev', 'lo'], { reject: true });
  }
  mesh.writeManifest('nodes.yaml', [nodeManifest('n1', { [GROUP]: 'g1' }, n1.ip), nodeManifest('n2', { [GROUP]: 'g1' }, n2.ip), nodeManifest('n3', { [GROUP]: 'g2' }, n3.ip)]);
  mesh.writeManifest('headless.yaml', headlessManifests());
  mesh.writeManifest('flat.yaml', [
    serviceManifest('demo', 'lan', 80, PORT, { clusterIP: '10.96.0.40' }),
    sliceManifest('demo', 'lan', 'lan-1', PORT, [{ ip: n2.ip, node: 'n2' }]),
    serviceManifest('demo', 'unflat', 80, PORT, { clusterIP: '10.96.0.41' }),
    sliceManifest('demo', 'unflat', 'unflat-1', PORT, [{ ip: POD.unflat, node: 'n3' }]),
  ]);
  await mesh.startServer('relay');
  await mesh.startBackend('web-0', 'n3', PORT, { bind: POD.web0 });
  await mesh.startBackend('web-1', 'n3', PORT, { bind: POD.web1 });
  await mesh.startBackend('web-2', 'n1', PORT, { bind: POD.web2 });
  await mesh.startBackend('n2', 'n2', PORT);
  await mesh.startBackend('unflat', 'n3', PORT, { bind: POD.unflat });
  await mesh.startAgent('n3', 'n3');
  await mesh.startAgent('n2', 'n2');
  await mesh.startAgent('n1', 'n1', { config: { proxy: { ipMode: 'clusterIP', directCIDRs: [lan, UNFLAT_RANGE] } } });
  lab.setResolvConf('n1', AGENT_IP, ['demo.svc.cluster.local', 'svc.cluster.local', 'cluster.local']);
});

after(async () => {
  await mesh?.stopAll();
  await lab?.destroy();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function dig(args: string[]): Promise<string> {
  const r = await lab.exec('n1', 'dig', [`@${AGENT_IP}`, '+time=5', '+tries=1', ...args], { reject: true });
  return r.stdout;
}

async function digShort(qname: string, type = 'A'): Promise<string[]> {
  return (await dig(['+short', qname, type])).trim().split('\n').filter(Boolean);
}

/** UDP from n1: resolve like a pod (getaddrinfo), send one datagram, return the reply. */
async function udpAsk(host: string, msg: string): Promise<{ address: string; reply: string }> {
  const script = `
    const { lookup } = require('node:dns/promises');
    const dgram = require('node:dgram');
    (async () => {
      const { address } = await lookup(${JSON.stringify(host)}, { family: 4 });
      const s = dgram.createSocket('udp4');
      const t = setTimeout(() => { console.log(JSON.stringify({ address, reply: 'TIMEOUT' })); process.exit(1); }, 4000);
      s.on('message', (m) => { clearTimeout(t); console.log(JSON.stringify({ address, reply: m.toString() })); s.close(); });
      s.send(${JSON.stringify(msg)}, ${PORT}, address);
    })().catch((e) => { console.log(JSON.stringify({ address: '', reply: 'ERROR ' + e.message })); process.exit(1); });`;
  const r = await lab.exec('n1', process.execPath, ['-e', script], { timeoutMs: 10_000 });
  return JSON.parse(r.stdout.trim() || '{"address":"","reply":"no output"}') as { address: string; reply: string };
}

/** Sums a counter's series on n1's /metrics matching a label filter. */
async function metric(nameRe: string, labels = ''): Promise<number> {
  const r = await mesh.adminGet('n1', AGENT_ADMIN, '/metrics');
  let sum = 0;
  for (const line of r.body.split('\n')) {
    const m = new RegExp(`^${nameRe}(\\{[^}]*\\})? (\\S+)$`).exec(line);
    if (m && (m[1] ?? '').includes(labels)) sum += Number(m[2]);
  }
  return sum;
}

/** Retries while the path to n3 settles (the first stream rides the relay at once). */
async function eventually<T>(what: string, fn: () => Promise<T>, ok: (v: T) => boolean, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  let last: T | undefined;
  while (Date.now() < end) {
    last = await fn();
    if (ok(last)) return last;
    await new Promise((r) => setTimeout(r, 300));
  }
  assert.fail(`${what}: last ${JSON.stringify(last)}\n${mesh.tail('n1')}`);
}

test('flat group: an endpoint on another node inside proxy.directCIDRs is dialed directly (no tunnel stream opened)', async () => {
  const before = await metric('edgemesh_tunnel_streams_opened_total');
  for (let i = 0; i < 3; i++) {
    const r = await mesh.fetch('n1', 'http://lan.demo.svc.cluster.local/');
    assert.ok(r.ok, `${r.error} ${r.message}\n${mesh.tail('n1')}`);
    assert.equal(r.body!.trim(), 'hello from n2');
  }
  assert.equal(await metric('edgemesh_tunnel_streams_opened_total'), before, 'no tunnel stream for the flat endpoint');
  const peers = (await mesh.agentStatus('n1')).peers;
  assert.ok(!peers.some((p) => p.node === 'n2'), `n1 needed no tunnel peer n2: ${JSON.stringify(peers)}`);
});

test('flat group probe: a range that is not reachable directly falls back to the tunnel in the same connection, counted', async () => {
  const r = await mesh.fetch('n1', 'http://unflat.demo.svc.cluster.local/', 8000);
  assert.ok(r.ok, `${r.error} ${r.message}\n${mesh.tail('n1')}`);
  assert.equal(r.body!.trim(), 'hello from unflat');
  assert.ok(await metric('edgemesh_proxy_flat_fallbacks_total') >= 1);
  const st = await mesh.agentStatus('n1');
  assert.deepEqual(st.flat?.directCIDRs, [lan, UNFLAT_RANGE]);
  assert.ok(st.flat?.notFlat.some((n) => n.node === 'n3'), JSON.stringify(st.flat));
  // While held "not flat", the next connection goes straight through the tunnel (no second fallback).
  const n = await metric('edgemesh_proxy_flat_fallbacks_total');
  assert.equal((await mesh.fetch('n1', 'http://unflat.demo.svc.cluster.local/')).body?.trim(), 'hello from unflat');
  assert.equal(await metric('edgemesh_proxy_flat_fallbacks_total'), n);
});

test('headless across sites: each pod by name, TCP and UDP, answers as itself; the local one at its real pod IP', async () => {
  const st = await mesh.agentStatus('n1');
  const web = st.services.find((s) => s.name === 'demo/web');
  assert.ok(web?.endpointIPs, JSON.stringify(st.services));
  const byName = new Map(web.endpointIPs.map((e) => [e.name, e]));
  assert.deepEqual([...byName.keys()], ['web-0', 'web-1', 'web-2']);
  for (const n of ['web-0', 'web-1']) {
    assert.equal(byName.get(n)!.mesh, true);
    assert.match(byName.get(n)!.ip, /^9\.251\./);
  }
  assert.deepEqual(byName.get('web-2'), { name: 'web-2', ip: POD.web2, podIP: POD.web2, node: 'n1', ready: true, mesh: false });
  const expect = { 'web-0': byName.get('web-0')!.ip, 'web-1': byName.get('web-1')!.ip, 'web-2': POD.web2 };

  const transcript: string[] = [];
  for (const [host, ip] of Object.entries(expect)) {
    assert.deepEqual(await digShort(name(host)), [ip], `${host} resolves to ${ip}`);
    transcript.push(`$ dig @${AGENT_IP} ${name(host)} A`, (await dig([name(host), 'A'])).trim(), '');
    const r = await eventually(`GET ${host}`, () => mesh.fetch('n1', `http://${name(host)}:${PORT}/`), (x) => x.ok);
    assert.equal(r.address, ip);
    assert.equal(r.body!.trim(), `hello from ${host}`, 'the reply of exactly that pod');
    const curl = await lab.exec('n1', 'curl', ['-sS', '-i', '--max-time', '5', `http://${name(host)}:${PORT}/`], { reject: true });
    assert.match(curl.stdout, new RegExp(`hello from ${host}`));
    transcript.push(`$ curl -i http://${name(host)}:${PORT}/`, curl.stdout.trim(), '');
    const u = await eventually(`UDP ${host}`, () => udpAsk(name(host), 'ping'), (x) => x.reply === `${host}:ping`);
    assert.equal(u.address, ip);
    transcript.push(`$ echo ping | udp ${name(host)}:${PORT}  ->  ${u.reply}`, '');
    // Again, several times: no load balancing behind a pod's name.
    for (let i = 0; i < 3; i++) assert.equal((await mesh.fetch('n1', `http://${name(host)}:${PORT}/`)).body?.trim(), `hello from ${host}`);
  }
  // The Service name lists all three; SRV targets are the pods' names with their addresses alongside; PTR both ways.
  assert.deepEqual((await digShort('web.demo.svc.cluster.local')).sort(), Object.values(expect).sort());
  const srv = (await digShort('_http._tcp.web.demo.svc.cluster.local', 'SRV')).map((l) => l.split(' ').slice(2).join(' ')).sort();
  assert.deepEqual(srv, ['web-0', 'web-1', 'web-2'].map((h) => `${PORT} ${name(h)}.`));
  const rev = (ip: string) => ['-x', ip];
  assert.deepEqual((await dig(['+short', ...rev(expect['web-0'])])).trim(), `${name('web-0')}.`);
  assert.deepEqual((await dig(['+short', ...rev(POD.web1)])).trim(), `${name('web-1')}.`);
  assert.deepEqual(await digShort(`${POD.web0.replace(/\./g, '-')}.demo.pod.cluster.local`), [expect['web-0']]);
  assert.deepEqual(await digShort('dns-version.cluster.local', 'TXT'), ['"1.1.0"']);
  transcript.push(`$ dig @${AGENT_IP} +short _http._tcp.web.demo.svc.cluster.local SRV`, (await dig(['+short', '_http._tcp.web.demo.svc.cluster.local', 'SRV'])).trim(), '');
  transcript.push(`$ dig @${AGENT_IP} +short dns-version.cluster.local TXT`, (await dig(['+short', 'dns-version.cluster.local', 'TXT'])).trim(), '');
  const status = await lab.exec('n1', process.execPath, [join(resolve(import.meta.dirname, '..', '..'), 'packages', 'agent', 'bin', 'edgemesh.js'), 'status'], { reject: true });
  assert.match(status.stdout, /HEADLESS ENDPOINTS/);
  transcript.push('$ edgemesh status (on n1)', status.stdout.trim(), '');
  mkdirSync(ARTIFACTS, { recursive: true });
  writeFileSync(join(ARTIFACTS, 'headless-names.txt'), transcript.join('\n') + '\n');

  // Counted per endpoint; the far agent served every stream (its target check admitted the pods).
  assert.ok(await metric('edgemesh_proxy_endpoint_connections_total', 'endpoint="web-0",protocol="tcp"') >= 5);
  assert.ok(await metric('edgemesh_proxy_endpoint_connections_total', 'endpoint="web-1",protocol="udp"') >= 1);
  assert.equal(await metric('edgemesh_proxy_endpoint_connections_total', 'endpoint="web-2"'), 0, 'the local pod is not proxied');
});

test('a pod rescheduled with a new IP keeps its name and mesh IP; the caller reaches the new pod', async () => {
  const before = (await mesh.agentStatus('n1')).services.find((s) => s.name === 'demo/web')!.endpointIPs!.find((e) => e.name === 'web-1')!;
  await lab.exec('n3', 'ip', ['addr', 'add', '10.244.3.21/32', 'dev', 'lo'], { reject: true });
  await mesh.stop('backend-web-1');
  await mesh.startBackend('web-1', 'n3', PORT, { bind: '10.244.3.21' });
  const docs = headlessManifests();
  (docs[1] as { endpoints: { addresses: string[] }[] }).endpoints[1].addresses = ['10.244.3.21'];
  mesh.writeManifest('headless.yaml', docs);
  await eventually('web-1 on its new pod IP', async () => (await mesh.agentStatus('n1')).services.find((s) => s.name === 'demo/web')!.endpointIPs!.find((e) => e.name === 'web-1')!,
    (e) => e.podIP === '10.244.3.21');
  assert.deepEqual(await digShort(name('web-1')), [before.ip]);
  const r = await eventually('GET web-1 again', () => mesh.fetch('n1', `http://${name('web-1')}:${PORT}/`), (x) => x.ok && x.body?.trim() === 'hello from web-1');
  assert.equal(r.address, before.ip);
});
