// Test client, run inside a namespace. Prints one JSON line.
//   sha IP PORT BYTES    send BYTES random bytes, half-close, compare the echo by sha256
//   names IP PORT N      N sequential connections; each collects what the server wrote (or the error code)
//   udp IP PORT N        N datagrams of assorted sizes; checks every one comes back whole
import { connect } from 'node:net';
import { createSocket } from 'node:dgram';
import { createHash, randomBytes } from 'node:crypto';

const [cmd, ip, portS, nS] = process.argv.slice(2);
const port = Number(portS);
const n = Number(nS);
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
/** Bounded wait for the UDP echoes (generous: a busy 2-core machine; returns as soon as all are back). */
const UDP_WAIT_MS = 10_000;

function once(payload: Buffer): Promise<{ data: Buffer; error?: string; ms: number }> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const s = connect({ host: ip, port, allowHalfOpen: true });
    s.setTimeout(10_000, () => s.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
    s.on('connect', () => s.end(payload));
    s.on('data', (d) => chunks.push(d));
    s.on('error', (e: NodeJS.ErrnoException) => resolve({ data: Buffer.concat(chunks), error: e.code ?? e.message, ms: performance.now() - t0 }));
    s.on('end', () => resolve({ data: Buffer.concat(chunks), ms: performance.now() - t0 }));
  });
}

if (cmd === 'sha') {
  const payload = randomBytes(n);
  const r = await once(payload);
  console.log(JSON.stringify({ ok: !r.error && sha(r.data) === sha(payload), sent: payload.length, got: r.data.length, error: r.error }));
} else if (cmd === 'names') {
  const out: { name?: string; error?: string; ms: number }[] = [];
  for (let i = 0; i < n; i++) {
    const r = await once(Buffer.from('hi'));
    out.push(r.error ? { error: r.error, ms: Math.round(r.ms) } : { name: r.data.toString(), ms: Math.round(r.ms) });
  }
  console.log(JSON.stringify(out));
} else if (cmd === 'udp') {
  const s = createSocket('udp4');
  const sent = Array.from({ length: n }, (_, i) => randomBytes([1, 100, 1200, 1472, 8000, 30000][i % 6]));
  const want = new Set(sent.map(sha));
  let got = 0;
  let whole = 0;
  let timer: NodeJS.Timeout | undefined;
  const done = new Promise<void>((resolve) => {
    s.on('message', (m) => {
      got++;
      if (want.delete(sha(m))) whole++;
      if (got === n) resolve();
    });
    timer = setTimeout(resolve, UDP_WAIT_MS); // stops waiting early once every datagram is back
  });
  s.connect(port, ip, () => { for (const d of sent) s.send(d); });
  await done;
  clearTimeout(timer);
  s.close();
  console.log(JSON.stringify({ ok: whole === n, sent: n, got, whole }));
} else {
  console.error(`unknown command ${cmd}`);
  process.exit(2);
}
