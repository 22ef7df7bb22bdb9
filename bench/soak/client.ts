// The soak's legitimate load, run inside a node's namespace like a pod: every intervalMs one DNS query to the agent
// (UDP), one HTTP GET to the resolved Service (TCP through the mesh) and one UDP datagram to it (echoed by the
// backend), each with its own deadline. Prints one JSON line per reportMs with counts and the slowest answer, then a
// last line when durationMs is over. Run: node client.ts '<json config>'
import { Resolver } from 'node:dns/promises';
import { createSocket } from 'node:dgram';
import { request } from 'node:http';

interface Cfg { dns: string; name: string; port: number; durationMs: number; intervalMs: number; timeoutMs: number; reportMs: number }
const cfg = JSON.parse(process.argv[2]) as Cfg;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Kind = 'dns' | 'tcp' | 'udp';
const fresh = () => ({ ok: { dns: 0, tcp: 0, udp: 0 }, failed: { dns: 0, tcp: 0, udp: 0 }, maxMs: { dns: 0, tcp: 0, udp: 0 }, errors: [] as string[] });
let cur = fresh();

async function timed(kind: Kind, fn: () => Promise<void>): Promise<boolean> {
  const t0 = performance.now();
  try {
    await fn();
    const ms = performance.now() - t0;
    if (ms > cfg.timeoutMs) throw new Error(`slow ${Math.round(ms)} ms`);
    cur.ok[kind]++;
    cur.maxMs[kind] = Math.max(cur.maxMs[kind], Math.round(ms));
    return true;
  } catch (e) {
    cur.failed[kind]++;
    if (cur.errors.length < 5) cur.errors.push(`${kind}: ${(e as Error).message}`.slice(0, 100));
    return false;
  }
}

const resolver = new Resolver({ timeout: cfg.timeoutMs, tries: 1 });
resolver.setServers([cfg.dns]);

function get(ip: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = request({ host: ip, port: cfg.port, path: '/', agent: false, timeout: cfg.timeoutMs }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => { body += c.toString(); });
      res.on('end', () => (res.statusCode === 200 && body.startsWith('hello from') ? resolve() : reject(new Error(`status ${res.statusCode}`))));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

// One UDP socket for the whole run (one flow, as a long-lived UDP client has): what the agents hold for it stays put,
// so a descriptor count that grows is the mesh's, not this client's.
const usock = createSocket('udp4');
const waiting = new Map<string, () => void>();
usock.on('message', (m) => {
  const text = m.toString();
  const i = text.lastIndexOf('soak-');
  const done = i >= 0 ? waiting.get(text.slice(i)) : undefined;
  if (done) done();
});
usock.on('error', () => {});

function udp(ip: string, n: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const msg = `soak-${n}`;
    const t = setTimeout(() => { waiting.delete(msg); reject(new Error('timeout')); }, cfg.timeoutMs);
    waiting.set(msg, () => { clearTimeout(t); waiting.delete(msg); resolve(); });
    usock.send(msg, cfg.port, ip);
  });
}

const end = Date.now() + cfg.durationMs;
let lastReport = Date.now();
let n = 0;
while (Date.now() < end) {
  const t0 = Date.now();
  let ip = '';
  await timed('dns', async () => { ip = (await resolver.resolve4(cfg.name))[0]; });
  if (ip) await Promise.all([timed('tcp', () => get(ip)), timed('udp', () => udp(ip, n++))]);
  if (Date.now() - lastReport >= cfg.reportMs) {
    process.stdout.write(JSON.stringify({ ev: 'report', t: Date.now(), ...cur }) + '\n');
    cur = fresh();
    lastReport = Date.now();
  }
  await sleep(Math.max(0, cfg.intervalMs - (Date.now() - t0)));
}
process.stdout.write(JSON.stringify({ ev: 'report', t: Date.now(), last: true, ...cur }) + '\n');
process.exit(0);
