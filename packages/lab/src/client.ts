// A client that calls a URL the way a pod would: resolve the name through the system resolver (getaddrinfo, so the
// namespace's resolv.conf and search path apply), then one HTTP GET. Prints one JSON line with the timings.
// Run: node client.ts URL [TIMEOUT_MS]
import { lookup } from 'node:dns/promises';
import { request } from 'node:http';

const [url = '', timeoutArg = '5000'] = process.argv.slice(2);
const TIMEOUT_MS = Number(timeoutArg);
const u = new URL(url);
const t0 = performance.now();
const ms = (t: number) => Math.round((t - t0) * 10) / 10;

try {
  const { address } = await lookup(u.hostname, { family: 4 });
  const dnsMs = ms(performance.now());
  const result = await new Promise<Record<string, unknown>>((resolve, reject) => {
    let connectMs = 0;
    let firstByteMs = 0;
    const req = request({ host: address, port: Number(u.port || 80), path: u.pathname + u.search, headers: { host: u.host }, timeout: TIMEOUT_MS }, (res) => {
      firstByteMs = ms(performance.now());
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString(), connectMs, firstByteMs, totalMs: ms(performance.now()) }));
      res.on('error', reject);
    });
    req.on('socket', (s) => s.on('connect', () => { connectMs = ms(performance.now()); }));
    req.on('timeout', () => req.destroy(new Error(`timed out after ${TIMEOUT_MS} ms`)));
    req.on('error', reject);
    req.end();
  });
  process.stdout.write(JSON.stringify({ ok: true, address, dnsMs, ...result }) + '\n');
} catch (e) {
  const err = e as NodeJS.ErrnoException;
  process.stdout.write(JSON.stringify({ ok: false, error: err.code ?? err.message, message: err.message, totalMs: ms(performance.now()) }) + '\n');
  process.exitCode = 1;
}
