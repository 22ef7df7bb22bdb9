// `edgemesh demo` (= `npm start`): the whole product on one machine. Builds a lab in network namespaces — a public
// network with edgemesh-server, two edge sites each behind its own NAT with one node — writes a manifests directory,
// starts the server, two agents (file source, fake IPs, iptables interception) and a backend on the far node, then
// from a client on the near node fetches http://hello.demo.svc.cluster.local/ by DNS name, like a pod would.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import { buildLab, cleanupStale, type Lab } from './netlab.ts';
import { AGENT_IP, Mesh, nodeManifest, serviceManifest, sliceManifest, type AgentStatusJson, type ClientResult } from './mesh.ts';

export const DEMO_PREFIX = 'emdemo';
export const DEMO_URL = 'http://hello.demo.svc.cluster.local/';
/** How long the demo waits for the hole-punched path to replace the relay. */
export const DIRECT_WAIT_MS = 8000;
const BACKEND_PORT = 8080;
const GROUP_LABEL = 'apps.kubeedge.io/belonging-to';

type Out = (line: string) => void;

async function hasTools(): Promise<string | undefined> {
  for (const t of ['ip', 'iptables', 'iptables-restore']) {
    const r = await execa('sh', ['-c', `command -v ${t}`], { reject: false });
    if (r.exitCode !== 0) return t;
  }
  return undefined;
}

export async function demo(_args: string[], out: Out = (l) => process.stdout.write(l + '\n')): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write('edgemesh demo needs root: it builds network namespaces, veth pairs and iptables rules. Run `sudo npm start`.\n');
    return 2;
  }
  const missing = await hasTools();
  if (missing) {
    process.stderr.write(`edgemesh demo needs ${missing} (Debian: apt-get install iproute2 iptables)\n`);
    return 2;
  }
  const t0 = performance.now();
  const steps = 8;
  let n = 0;
  const step = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    n++;
    const s = performance.now();
    const r = await fn();
    out(`[${n}/${steps}] ${what.padEnd(62, '.')} ${fmt(performance.now() - s)}`);
    return r;
  };

  let lab: Lab | undefined;
  let mesh: Mesh | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'edgemesh-demo-'));
  let interrupted = false;
  const teardown = async () => {
    await mesh?.stopAll().catch(() => {});
    await lab?.destroy().catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  };
  const onSignal = () => {
    if (interrupted) return;
    interrupted = true;
    out('interrupted: tearing the lab down');
    void teardown().then(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    out('edgemesh demo: two edge sites behind NATs, one public relay server');
    const stale = await cleanupStale(DEMO_PREFIX);
    if (stale.length) out(`  removed a leftover lab from an earlier run (${stale.length} namespaces)`);
    lab = await step('lab: public network + site-1 and site-2 behind port-restricted NATs', () => buildLab({
      prefix: DEMO_PREFIX,
      publicHosts: ['relay'],
      sites: [{ name: 'site-1', nat: 'port-restricted', hosts: ['edge-a'] }, { name: 'site-2', nat: 'port-restricted', hosts: ['edge-b'] }],
    }));
    const a = lab.host('edge-a');
    const b = lab.host('edge-b');
    const m = (mesh = new Mesh(lab, dir, randomBytes(32).toString('hex')));
    await step('manifests: Service demo/hello, backend on edge-b, node groups', async () => {
      m.writeManifest('nodes.yaml', [nodeManifest('edge-a', { [GROUP_LABEL]: 'site-1' }, a.ip), nodeManifest('edge-b', { [GROUP_LABEL]: 'site-2' }, b.ip)]);
      m.writeManifest('hello.yaml', [
        serviceManifest('demo', 'hello', 80, BACKEND_PORT),
        sliceManifest('demo', 'hello', 'hello-1', BACKEND_PORT, [{ ip: b.ip, node: 'edge-b' }]),
      ]);
    });
    await step(`edgemesh-server on ${lab.host('relay').ip} (public)`, () => m.startServer('relay'));
    await step(`backend on edge-b (${b.ip}:${BACKEND_PORT})`, () => m.startBackend('edge-b', 'edge-b', BACKEND_PORT));
    await step('agent on edge-b (site-2, behind NAT)', () => m.startAgent('edge-b', 'edge-b'));
    await step('agent on edge-a (site-1, behind NAT)', () => m.startAgent('edge-a', 'edge-a'));
    // Pods on edge-a resolve through the agent (kubelet's clusterDNS); set after the agent read the host's resolv.conf.
    lab.setResolvConf('edge-a', AGENT_IP, ['demo.svc.cluster.local', 'svc.cluster.local', 'cluster.local']);

    const first = await step(`client on edge-a: GET ${DEMO_URL}`, () => m.fetch('edge-a', DEMO_URL));
    if (!first.ok) throw new Error(`the request failed: ${first.error} ${first.message ?? ''}\n--- edge-a log ---\n${m.tail('edge-a')}`);
    const before = peerOf(await m.agentStatus('edge-a'), 'edge-b');
    out('');
    out(`reply:   ${JSON.stringify(first.body?.trim())} (HTTP ${first.status}, ${first.address} is hello's fake IP)`);
    out(`path:    edge-a -> edge-b ${before?.path ?? 'unknown'}${before?.remote ? ` via ${before.remote}` : ''}`);
    out(`timings: ${timings(first)}`);

    const direct = await step('waiting for the hole-punched direct path', () => waitDirect(m, DIRECT_WAIT_MS));
    if (direct) {
      const second = await m.fetch('edge-a', DEMO_URL);
      out(`path:    edge-a -> edge-b direct to ${direct.remote ?? '?'}${direct.rttMs !== null ? `, rtt ${direct.rttMs.toFixed(2)} ms` : ''}`);
      if (second.ok) out(`again:   ${JSON.stringify(second.body?.trim())}, ${timings(second)}`);
    } else {
      out(`path:    still ${peerOf(await m.agentStatus('edge-a'), 'edge-b')?.path ?? 'unknown'} after ${DIRECT_WAIT_MS / 1000} s (the relay keeps serving)`);
    }
    out(`done in ${fmt(performance.now() - t0)}; tearing down`);
    return 0;
  } catch (e) {
    if (interrupted) return 130;
    process.stderr.write(`edgemesh demo failed: ${(e as Error).message}\n`);
    return 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (!interrupted) await teardown();
  }
}

function peerOf(s: AgentStatusJson, node: string) {
  return s.peers.find((p) => p.node === node);
}

async function waitDirect(m: Mesh, ms: number) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const p = peerOf(await m.agentStatus('edge-a'), 'edge-b');
    if (p?.path === 'direct') return p;
    await new Promise((r) => setTimeout(r, 200));
  }
  return undefined;
}

function timings(r: ClientResult): string {
  return `dns ${r.dnsMs} ms, connect ${r.connectMs} ms, first byte ${r.firstByteMs} ms, total ${r.totalMs} ms`;
}

function fmt(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}
