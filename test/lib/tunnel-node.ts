// One node for the tunnel end-to-end tests: runs just the agent's tunnel module with an in-memory snapshot and a
// sink backend (answers the sha256 of what it received when the client half-closes). Driven by JSON lines on stdin,
// answers on stdout. Config in env EM_NODE (JSON).
import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Registry } from 'prom-client';
import { pino } from 'pino';
import { Tunnel } from '../../packages/agent/src/tunnel/tunnel.ts';
import { TunnelDialer } from '../../packages/agent/src/tunnel/dialer.ts';
import { loadOrCreateKeyPair } from '../../packages/agent/src/tunnel/keys.ts';
import type { TunnelStream } from '../../packages/agent/src/tunnel/stream.ts';
import { RENDEZVOUS_CONTEXT, rendezvousMessage } from '../../packages/agent/src/tunnel/rendezvous.ts';
import type { AgentIdentity } from '../../packages/agent/src/identity/agentidentity.ts';
import { ServerConn } from '../../packages/agent/src/tunnel/serverconn.ts';
import type { DatagramChannel } from '../../packages/agent/src/proxy/dialer.ts';
import { dialDeadline } from '../../packages/agent/src/proxy/dialer.ts';
import { makeSnapshot, testIdentity, type TestEndpoint } from './tunnel-fixture.ts';

interface NodeCfg { node: string; servers: string[]; token: string; joinToken?: string; caHash?: string; stateDir: string; listenPort?: number; endpoints: TestEndpoint[]; sinkHost: string; sinkPort: number; logLevel?: string; upgradeRetryMs?: number; clusterNodes?: string[] }
const cfg = JSON.parse(process.env.EM_NODE!) as NodeCfg;
// Logs go to stderr: stdout carries the JSON-lines protocol.
const log = pino({ level: cfg.logLevel ?? 'info', name: 'tunnel-node', base: { node: cfg.node } }, pino.destination(2));

const sink = createServer((s) => {
  const h = createHash('sha256');
  s.on('data', (c: Buffer) => h.update(c));
  s.on('end', () => s.end(h.digest('hex')));
  s.on('error', () => {});
});
await new Promise<void>((r) => sink.listen(cfg.sinkPort, cfg.sinkHost, r));

const snap = makeSnapshot(cfg.endpoints, cfg.clusterNodes ?? []);
const registry = new Registry();
const { pair } = loadOrCreateKeyPair(cfg.stateDir);
const identity = testIdentity(cfg.node, cfg.stateDir, cfg.joinToken ? { joinToken: cfg.joinToken } : { bootstrapToken: cfg.token }, { caHash: cfg.caHash });
const tunnel = new Tunnel({ node: cfg.node, servers: cfg.servers, identity, keyPair: pair, listenPort: cfg.listenPort, log, registry, snapshot: () => snap, upgradeRetryMs: cfg.upgradeRetryMs });
await tunnel.start();
const dialer = new TunnelDialer(tunnel);

/** Deterministic-size random payload, generated in 1 MiB blocks (hash computed as it is written). */
async function transfer(m: { to: string; service: string; ip: string; port: number; bytes: number }): Promise<unknown> {
  const t0 = performance.now();
  const s = (await dialer.dialTcp({ serviceKey: m.service, protocol: 'tcp', ip: m.ip, port: m.port, nodeName: m.to })) as TunnelStream;
  const path = s.path;
  const h = createHash('sha256');
  const block = randomBytes(1024 * 1024);
  let reply = '';
  const done = new Promise<void>((resolve, reject) => {
    s.on('data', (c: Buffer) => { reply += c.toString(); });
    s.on('end', () => resolve());
    s.on('error', reject);
  });
  for (let sent = 0; sent < m.bytes;) {
    const n = Math.min(block.length, m.bytes - sent);
    const chunk = Buffer.from(block.subarray(0, n));
    chunk.writeUInt32BE(sent >>> 0, 0);
    h.update(chunk);
    sent += n;
    if (!s.write(chunk)) await new Promise((r) => s.once('drain', r));
  }
  s.end();
  await done;
  const ms = performance.now() - t0;
  const sha = h.digest('hex');
  return { ok: reply === sha, sha, reply, path, ms, mbps: (m.bytes * 8) / 1e6 / (ms / 1000) };
}

/** One TCP request through the tunnel: writes `send`, half-closes, and returns what came back (abuse and authz tests). */
async function request(m: { to: string; service: string; ip: string; port: number; send?: string; timeoutMs?: number }): Promise<unknown> {
  const t0 = performance.now();
  const deadline = dialDeadline(m.timeoutMs ?? 3000);
  const s = (await dialer.dialTcp({ serviceKey: m.service, protocol: 'tcp', ip: m.ip, port: m.port, nodeName: m.to }, deadline)) as TunnelStream;
  let reply = '';
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => { s.destroy(); reject(new Error('no reply in time')); }, m.timeoutMs ?? 3000);
    s.on('data', (c: Buffer) => { reply += c.toString(); });
    s.on('end', () => { clearTimeout(t); resolve(); });
    s.on('error', (e) => { clearTimeout(t); reject(e); });
    s.end(m.send ?? 'hello\n');
  });
  s.destroy();
  return { ok: true, reply, ms: performance.now() - t0 };
}

/** Held UDP streams of `udpflood` (closed by `udprelease`). */
const heldUdp: DatagramChannel[] = [];

/** Opens `count` UDP streams to one endpoint, `concurrency` at a time, and holds them (a peer flooding served UDP). */
async function udpFlood(m: { to: string; service: string; ip: string; port: number; count: number; concurrency?: number }): Promise<unknown> {
  const codes: Record<string, number> = {};
  let opened = 0;
  let next = 0;
  const worker = async () => {
    while (next < m.count) {
      next++;
      try {
        const ch = await dialer.openUdp({ serviceKey: m.service, protocol: 'udp', ip: m.ip, port: m.port, nodeName: m.to }, dialDeadline(3000));
        ch.send(Buffer.from('x'));
        heldUdp.push(ch);
        opened++;
      } catch (e) {
        const c = (e as { code?: string }).code ?? 'error';
        codes[c] = (codes[c] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: m.concurrency ?? 64 }, worker));
  return { opened, codes };
}

/**
 * A burst of birthday RENDEZVOUS to `to`: `names` throwaway agents (ServerConns of their own, names `<prefix>-<i>`)
 * and this node each send `perName`, claiming a cone NAT with `host` as its public address (so a symmetric victim
 * would be the birthday round's hard side: 256 sockets).
 */
async function birthdayBurst(m: { to: string; names: number; perName: number; prefix: string; host: string }): Promise<unknown> {
  const hp = cfg.servers[0].split(':');
  const conns: { c: ServerConn; id: AgentIdentity; name: string; dir: string }[] = [];
  for (let i = 0; i < m.names; i++) {
    // Throwaway names enroll with the bootstrap token (a server without a cluster Node list admits them); each signs
    // its offers with its own certificate, as any enrolled attacker can.
    const name = `${m.prefix}-${i}`;
    const dir = mkdtempSync(join(tmpdir(), 'emt-burst-'));
    const id = testIdentity(name, dir, { bootstrapToken: cfg.token }, { caHash: cfg.caHash });
    const c = new ServerConn({ host: hp[0], port: Number(hp[1]), identity: id, log });
    c.on('error', () => {});
    c.start();
    conns.push({ c, id, name, dir });
  }
  const end = Date.now() + 10_000;
  while (conns.some((x) => !x.c.connected) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  let sent = 0;
  const senders = [...conns, ...tunnel.servers.map((c) => ({ c, id: identity, name: cfg.node }))];
  for (const { c, id, name } of senders) {
    for (let k = 0; k < m.perName; k++) {
      const o = { sid: randomBytes(8).toString('hex'), mode: 'birthday' as const, cand: [{ host: m.host, port: 20006, kind: 'stun' as const }], nat: 'cone' as const, streamId: 1 + k };
      const ts = Date.now();
      const sig = id.sign(RENDEZVOUS_CONTEXT, rendezvousMessage(name, m.to, o, ts));
      if (c.rendezvous({ to: m.to, ...o, ts, cert: id.ourCert(), sig })) sent++;
    }
  }
  // Let the victim act on them before the throwaway agents go away.
  await new Promise((r) => setTimeout(r, 2000));
  for (const x of conns) {
    x.c.stop();
    rmSync(x.dir, { recursive: true, force: true });
  }
  return { sent, connected: conns.filter((x) => x.c.connected).length };
}

/** How long `ttd` waits for the direct link unless the request says otherwise (a miss after that). */
const TTD_TIMEOUT_MS = 20_000;

const rl = createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  let msg: { id: number; cmd: string; [k: string]: unknown };
  try {
    msg = JSON.parse(line);
  } catch {
    return;
  }
  const reply = (body: unknown) => process.stdout.write(JSON.stringify({ id: msg.id, ...(body as object) }) + '\n');
  try {
    if (msg.cmd === 'status') return reply({ status: tunnel.status(), errors: tunnel.servers.map((s) => s.lastError) });
    if (msg.cmd === 'metrics') return reply({ metrics: await registry.metrics() });
    if (msg.cmd === 'transfer') return reply(await transfer(msg as never));
    if (msg.cmd === 'request') return reply(await request(msg as never));
    if (msg.cmd === 'udpflood') return reply(await udpFlood(msg as never));
    if (msg.cmd === 'udprelease') {
      for (const ch of heldUdp.splice(0)) ch.close();
      return reply({ ok: true });
    }
    if (msg.cmd === 'birthdayburst') return reply(await birthdayBurst(msg as never));
    if (msg.cmd === 'forget') {
      tunnel.forget(msg.node as string);
      return reply({ ok: true });
    }
    if (msg.cmd === 'ttd') {
      // Time to direct for a fresh peer: from the first dial (relay, at once) until a direct link is up.
      const t0 = performance.now();
      const s = await dialer.dialTcp({ serviceKey: msg.service as string, protocol: 'tcp', ip: msg.ip as string, port: msg.port as number, nodeName: msg.to as string });
      const relayMs = performance.now() - t0;
      s.destroy();
      const end = Date.now() + (typeof msg.timeoutMs === 'number' ? msg.timeoutMs : TTD_TIMEOUT_MS);
      while (!tunnel.directLink(msg.to as string) && Date.now() < end) await new Promise((r) => setTimeout(r, 2));
      return reply({ relayMs, directMs: tunnel.directLink(msg.to as string) ? performance.now() - t0 : null });
    }
    if (msg.cmd === 'stop') {
      await tunnel.stop();
      sink.close();
      reply({ ok: true });
      process.exit(0);
    }
    reply({ error: `unknown command ${msg.cmd}` });
  } catch (e) {
    reply({ error: (e as Error).message, code: (e as { code?: string }).code });
  }
});
process.stdout.write(JSON.stringify({ id: 0, ready: true }) + '\n');
