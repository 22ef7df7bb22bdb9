// Connections that survive a path change, through the whole mesh (DNS name -> iptables -> proxy -> tunnel -> the
// far agent -> backend) in network namespaces: a paced 60 s transfer with its sha256 checked while (a) the direct
// path is blackholed and later healed, (b) the relaying server restarts with a second server configured, (c) the
// peer's NAT mapping changes (roaming). No reset, every byte, and /status follows the path. New connections opened
// while the direct path is silently dead succeed over the relay within the dial deadline.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { buildLab, type Lab } from '../lib/netlab.ts';
import { AGENT_IP, Mesh, nodeManifest, serviceManifest, sliceManifest, TUNNEL_PORT } from '../../packages/lab/src/mesh.ts';

const GROUP = 'apps.kubeedge.io/belonging-to';
const TRANSFER = resolve(import.meta.dirname, '../../packages/lab/src/transfer.ts');
const SINK_PORT = 9000;
const HTTP_PORT = 8080;
const SECONDS = 60;
/** 1 MiB/s for 60 s: long enough to span a fault and its repair, light enough for a shared 2-core machine. */
const BYTES = SECONDS * 1024 * 1024;
const POLL_MS = 500;

let lab: Lab;
let mesh: Mesh;
let dir: string;

interface Seen { t: number; path: string | undefined; remote: string | null | undefined }

/** Runs a paced transfer from `host` to a Service by name; `at(t, fn)` schedules faults by the transfer's clock. */
function transfer(host: string, svc: string, bytes = BYTES, seconds = SECONDS) {
  const p = lab.spawn(host, process.execPath, [TRANSFER, `${svc}.mesh.svc.cluster.local`, String(SINK_PORT), String(bytes), String(seconds)]);
  let started = 0;
  const waiters: { t: number; fn: () => void }[] = [];
  let last: Record<string, unknown> | undefined;
  let stderr = '';
  p.stderr!.on('data', (c: Buffer) => { stderr += c.toString(); });
  const result = new Promise<Record<string, unknown>>((res) => {
    createInterface({ input: p.stdout! }).on('line', (l) => {
      const m = JSON.parse(l) as Record<string, unknown>;
      if (!started) started = Date.now();
      if (m.progress) {
        for (const w of waiters.splice(0)) if ((m.t as number) >= w.t) w.fn(); else waiters.push(w);
      } else {
        last = m;
      }
    });
    p.on('exit', () => res(last ?? { ok: false, error: 'no result', stderr }));
  });
  return {
    result,
    /** Resolves once the transfer has run `ms`. */
    at: (ms: number) => new Promise<void>((r) => waiters.push({ t: ms, fn: r })),
  };
}

/** Polls `host`'s /status for its peer `peer` until stopped, recording every change. */
function watchPath(host: string, peer: string) {
  const seen: Seen[] = [];
  let on = true;
  const t0 = Date.now();
  const loop = (async () => {
    while (on) {
      try {
        const st = await mesh.agentStatus(host);
        const p = st.peers.find((x) => x.node === peer);
        const last = seen.at(-1);
        if (!last || last.path !== p?.path || last.remote !== p?.remote) seen.push({ t: Date.now() - t0, path: p?.path, remote: p?.remote });
      } catch { /* the agent is busy: try again */ }
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  })();
  return {
    seen,
    now: () => seen.at(-1),
    stop: async () => { on = false; await loop; },
    until: async (cond: (s: Seen | undefined) => boolean, ms: number, what: string) => {
      const end = Date.now() + ms;
      while (!cond(seen.at(-1))) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}; seen ${JSON.stringify(seen)}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    },
  };
}

async function metric(host: string, re: RegExp): Promise<number> {
  const r = await mesh.adminGet(host, '127.0.0.1:10560', '/metrics');
  let sum = 0;
  for (const line of r.body.split('\n')) if (re.test(line)) sum += Number(line.split(' ').pop());
  return sum;
}

describe('connections survive a path change', { timeout: 900_000 }, () => {
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'edgemesh-resume-'));
    lab = await buildLab({
      publicHosts: ['relay1', 'relay2', 'pub'],
      sites: [{ name: 'site-1', nat: 'port-restricted', hosts: ['n1'] }, { name: 'site-2', nat: 'port-restricted', hosts: ['n2'] }],
    });
    mesh = new Mesh(lab, dir, randomBytes(32).toString('hex'));
    const ip = (h: string) => lab.host(h).ip;
    mesh.writeManifest('nodes.yaml', [nodeManifest('n1', { [GROUP]: 'g1' }, ip('n1')), nodeManifest('n2', { [GROUP]: 'g2' }, ip('n2')), nodeManifest('n3', { [GROUP]: 'g3' }, ip('pub'))]);
    mesh.writeManifest('services.yaml', [
      serviceManifest('mesh', 'sink-n2', SINK_PORT, SINK_PORT, { clusterIP: '10.96.0.20' }),
      sliceManifest('mesh', 'sink-n2', 'sink-n2-1', SINK_PORT, [{ ip: ip('n2'), node: 'n2' }]),
      serviceManifest('mesh', 'sink-n1', SINK_PORT, SINK_PORT, { clusterIP: '10.96.0.21' }),
      sliceManifest('mesh', 'sink-n1', 'sink-n1-1', SINK_PORT, [{ ip: ip('n1'), node: 'n1' }]),
      serviceManifest('mesh', 'hello-n2', 80, HTTP_PORT, { clusterIP: '10.96.0.22' }),
      sliceManifest('mesh', 'hello-n2', 'hello-n2-1', HTTP_PORT, [{ ip: ip('n2'), node: 'n2' }]),
    ]);
    await mesh.startServer('relay1');
    await mesh.startServer('relay2');
    await mesh.startBackend('n1', 'n1', HTTP_PORT, { sinkPort: SINK_PORT });
    await mesh.startBackend('n2', 'n2', HTTP_PORT, { sinkPort: SINK_PORT });
    await mesh.startAgent('n1', 'n1');
    await mesh.startAgent('n2', 'n2');
    await mesh.startAgent('n3', 'pub');
    for (const h of ['n1', 'pub']) lab.setResolvConf(h, AGENT_IP, ['mesh.svc.cluster.local', 'svc.cluster.local', 'cluster.local']);
  });

  after(async () => {
    await mesh?.stopAll();
    await lab?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('(a) the direct path blackholed mid-transfer, later healed; new connections meanwhile go over the relay', async () => {
    const w = watchPath('n1', 'n2');
    try {
      assert.ok((await mesh.fetch('n1', 'http://hello-n2/')).ok, 'warm-up');
      await w.until((s) => s?.path === 'direct', 45_000, 'n1 -> n2 direct');
      const x = transfer('n1', 'sink-n2');
      await x.at(10_000);
      const fault = await lab.blackhole('site-2', { proto: 'udp' });
      // A new connection while the direct path is silently dead (the heartbeats have not noticed): over the relay,
      // within the proxy's dial deadline (the client gives up after 5 s; the proxy resets after 3 s per attempt).
      const fresh = await mesh.fetch('n1', 'http://hello-n2/', 5_000);
      assert.ok(fresh.ok, `a new connection during the fault: ${fresh.error} ${fresh.message ?? ''}`);
      await w.until((s) => s?.path === 'relay', 20_000, 'the path moves to the relay');
      await x.at(30_000);
      await lab.unblackhole(fault);
      const r = await x.result;
      assert.equal(r.ok, true, `transfer: ${JSON.stringify(r)}`);
      assert.equal(r.sent, BYTES);
      await w.until((s) => s?.path === 'direct', 90_000, 'direct again after healing');
      console.log(`(a) paths seen: ${JSON.stringify(w.seen)}; longest write stall ${r.maxGapMs} ms`);
      assert.equal(await metric('n1', /^edgemesh_tunnel_sessions_reset_total/), 0, 'no session was reset');
    } finally {
      await w.stop();
    }
  });

  test('(b) the relaying server restarts mid-transfer; the second server carries on', async () => {
    const w = watchPath('n1', 'n2');
    const fault = await lab.blackhole('site-1', { proto: 'udp' }); // keep the pair on the relay
    try {
      const relay1 = mesh.serverAddress('relay1');
      const relay2 = mesh.serverAddress('relay2');
      assert.ok((await mesh.fetch('n1', 'http://hello-n2/')).ok);
      await w.until((s) => s?.path === 'relay' && s.remote === relay1, 30_000, 'relayed through the first server');
      const x = transfer('n1', 'sink-n2');
      await x.at(15_000);
      assert.equal(await mesh.stop('server'), 0, 'the first server stops cleanly');
      await w.until((s) => s?.path === 'relay' && s.remote === relay2, 20_000, 'the session moves to the second server');
      await x.at(25_000);
      await mesh.startServer('relay1');
      const r = await x.result;
      assert.equal(r.ok, true, `transfer: ${JSON.stringify(r)}`);
      console.log(`(b) paths seen: ${JSON.stringify(w.seen)}; longest write stall ${r.maxGapMs} ms`);
      assert.equal(await metric('n1', /^edgemesh_tunnel_sessions_reset_total/), 0, 'no session was reset');
    } finally {
      await lab.unblackhole(fault);
      await w.stop();
    }
  });

  test('(c) the peer\'s NAT mapping changes mid-transfer (roaming): the path follows it', async () => {
    // n3 is public; n1 sits behind site-1's NAT, which is made to map n1 to new ports and forget its old mappings.
    // Roaming is the UDX path's: n3 is public, so n1 would reach it over the TCP transport; TCP to n3's tunnel port
    // is dropped to keep the pair on UDX (a TCP link does not roam: it dies and the session moves to UDX).
    const noTcp = await lab.blackhole('pub', { proto: 'tcp', dport: TUNNEL_PORT });
    const w = watchPath('pub', 'n1');
    const rule = ['-t', 'nat', '-I', 'POSTROUTING', '1', '-o', 'wan0', '-p', 'udp', '-j', 'MASQUERADE', '--to-ports', '40000-40100'];
    let ruleIn = false;
    try {
      // First contact between n3 and n1: if the first punch fails (n1's NAT state is fresh from (b)'s blackhole), the
      // next attempt is a retry interval (60 s) later; a short transfer opens the session, then the path must settle.
      const warm = await transfer('pub', 'sink-n1', 1024 * 1024, 1).result;
      assert.equal(warm.ok, true, `warm-up: ${JSON.stringify(warm)}`);
      await w.until((s) => s?.path === 'direct', 90_000, 'n3 -> n1 direct');
      const x = transfer('pub', 'sink-n1');
      const before = w.now()!.remote;
      await x.at(20_000);
      await lab.exec('site-1', 'iptables', rule, { reject: true });
      ruleIn = true;
      await lab.flushConntrack('site-1');
      await w.until((s) => s?.path === 'direct' && s.remote !== before && /:400\d\d$/.test(s.remote ?? ''), 30_000, 'the path follows n1 to its new address');
      const r = await x.result;
      assert.equal(r.ok, true, `transfer: ${JSON.stringify(r)}`);
      console.log(`(c) paths seen: ${JSON.stringify(w.seen)}; roams ${await metric('pub', /^edgemesh_tunnel_roams_total/)}, failovers ${await metric('pub', /^edgemesh_tunnel_failovers_total/)}; longest write stall ${r.maxGapMs} ms`);
      assert.equal(await metric('pub', /^edgemesh_tunnel_sessions_reset_total/), 0, 'no session was reset');
    } finally {
      if (ruleIn) await lab.exec('site-1', 'iptables', ['-t', 'nat', '-D', ...rule.slice(3).filter((_, i) => i !== 1)]);
      await noTcp.remove();
      await w.stop();
    }
  });
});
