// A paced TCP transfer the way a pod would make one: resolve the name through the system resolver (the namespace's
// resolv.conf), connect, write BYTES at an even pace over SECONDS, half-close, and read the sink's answer (the
// sha256 of what it received; backend.ts SINK_PORT). Prints a progress line every second and a result line, JSON.
// Run: node transfer.ts HOST PORT BYTES SECONDS
import { createHash, randomBytes } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import { connect } from 'node:net';

const [host = '', portArg = '9000', bytesArg = '1048576', secondsArg = '10'] = process.argv.slice(2);
const total = Number(bytesArg);
const seconds = Number(secondsArg);
/** Writes happen this often; each carries its share of the pace. */
const TICK_MS = 50;
const t0 = performance.now();
const out = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify({ t: Math.round(performance.now() - t0), ...o }) + '\n');

try {
  const { address } = await lookup(host, { family: 4 });
  const sock = connect({ host: address, port: Number(portArg), allowHalfOpen: true, noDelay: true });
  const h = createHash('sha256');
  let sent = 0;
  let reply = '';
  let maxGapMs = 0;
  let lastAck = performance.now();
  const done = new Promise<void>((resolve, reject) => {
    sock.on('data', (c: Buffer) => { reply += c.toString(); });
    sock.on('end', () => resolve());
    sock.on('error', reject);
  });
  await new Promise<void>((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject); });
  const perTick = Math.ceil(total / ((seconds * 1000) / TICK_MS));
  const progress = setInterval(() => out({ progress: true, sent, maxGapMs: Math.round(maxGapMs) }), 1000);
  while (sent < total) {
    const n = Math.min(perTick, total - sent);
    const chunk = randomBytes(n);
    h.update(chunk);
    sent += n;
    const flushed = sock.write(chunk);
    if (!flushed) await new Promise((r) => sock.once('drain', r));
    const now = performance.now();
    maxGapMs = Math.max(maxGapMs, now - lastAck);
    lastAck = now;
    const due = t0 + (sent / total) * seconds * 1000;
    if (due > now) await new Promise((r) => setTimeout(r, due - now));
  }
  sock.end();
  await done;
  clearInterval(progress);
  const sha = h.digest('hex');
  out({ ok: reply === sha, sent, sha, reply, maxGapMs: Math.round(maxGapMs) });
} catch (e) {
  const err = e as NodeJS.ErrnoException;
  out({ ok: false, error: err.code ?? err.message, message: err.message });
  process.exitCode = 1;
}
process.exit();
