// Readiness probe + first connection, run in the client namespace: polls READYZ_URL until it answers 200, then at
// once connects to IP:PORT, sends a line and reads the answer. Reports the SYN retransmits this namespace made while
// connecting (TcpExt TCPSynRetrans, /proc/net/netstat is per network namespace): 0 means the first SYN was answered.
// Usage: node ready-client.ts READYZ_URL IP PORT. Prints one JSON line.
import { get } from 'node:http';
import { connect } from 'node:net';
import { readFileSync } from 'node:fs';

const [url, ip, portS] = process.argv.slice(2);
const POLL_MS = 5;
const DEADLINE_MS = 30_000;

function synRetrans(): number {
  const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n').filter((l) => l.startsWith('TcpExt:'));
  const names = lines[0].split(/\s+/);
  const values = lines[1].split(/\s+/);
  return Number(values[names.indexOf('TCPSynRetrans')]);
}

const status = () => new Promise<number>((resolve) => {
  const req = get(url, { timeout: 1000, agent: false }, (res) => { res.resume(); resolve(res.statusCode ?? 0); });
  req.on('error', () => resolve(0));
  req.on('timeout', () => req.destroy());
});

const t0 = performance.now();
let polls = 0;
for (;;) {
  polls++;
  if ((await status()) === 200) break;
  if (performance.now() - t0 > DEADLINE_MS) {
    console.log(JSON.stringify({ ok: false, error: 'never ready', polls }));
    process.exit(0);
  }
  await new Promise((r) => setTimeout(r, POLL_MS));
}
const readyMs = performance.now() - t0;
const before = synRetrans();
const c0 = performance.now();
const r = await new Promise<{ connectMs?: number; answer?: string; error?: string }>((resolve) => {
  const s = connect({ host: ip, port: Number(portS) });
  let connectMs: number | undefined;
  let buf = '';
  s.setTimeout(10_000, () => s.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
  s.on('connect', () => { connectMs = performance.now() - c0; s.write('first\n'); });
  s.setEncoding('utf8');
  s.on('data', (d: string) => { buf += d; if (buf.includes('\n')) { s.destroy(); resolve({ connectMs, answer: buf.trim() }); } });
  s.on('error', (e: NodeJS.ErrnoException) => resolve({ connectMs, error: e.code ?? e.message }));
});
console.log(JSON.stringify({ ok: r.answer === 'ok first', readyMs: Math.round(readyMs), polls, ...r, synRetransmits: synRetrans() - before }));
