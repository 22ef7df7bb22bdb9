// One node for the tunnel end-to-end tests: runs just the agent's tunnel module with an in-memory snapshot and a
// sink backend (answers the sha256 of what it received when the client half-closes). Driven by JSON lines on stdin,
// answers on stdout. Config in env EM_NODE (JSON).
import { createHash, randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { createInterface } from 'node:readline';
import { Registry } from 'prom-client';
import { pino } from 'pino';
import { Tunnel } from '../../packages/agent/src/tunnel/tunnel.ts';
import { TunnelDialer } from '../../packages/agent/src/tunnel/dialer.ts';
import { loadOrCreateKeyPair } from '../../packages/agent/src/tunnel/keys.ts';
import type { TunnelStream } from '../../packages/agent/src/tunnel/stream.ts';
import { makeSnapshot, testIdentity, type TestEndpoint } from './tunnel-fixture.ts';

interface NodeCfg { node: string; servers: string[]; token: string; joinToken?: string; caHash?: string; stateDir: string; listenPort?: number; endpoints: TestEndpoint[]; sinkHost: string; sinkPort: number; logLevel?: string; upgradeRetryMs?: number }
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

const snap = makeSnapshot(cfg.endpoints);
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
