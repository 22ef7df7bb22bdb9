// Attacker and legitimate-client processes for the abuse suite (test/e2e/abuse-dns-admin.test.ts), run inside lab
// namespaces: `node abuse-main.ts '<json>'`. Every mode is bounded by durationMs (and by counts), closes what it
// opened and prints one JSON line per round (`legit`) or one summary line at the end (attacks).
//   legit     — every intervalMs: a UDP query, the TCP fallback (a UDP query answered TC, then the same over TCP),
//               GET /healthz on the agent's and the server's admin ports; each with its own deadline.
//   dribble   — keeps up to `target` DNS-over-TCP connections open from `sources`, each sending one byte of a query
//               every byteEveryMs (reconnecting at connectPerSec when the server closes one).
//   flood     — `qps` identical UDP queries (optionally from `source`); counts what comes back and its size.
//   slowloris — keeps up to `target` connections per admin address sending a header line every lineEveryMs.
import { createSocket } from 'node:dgram';
import { connect, type Socket } from 'node:net';
import { request } from 'node:http';
import dnsPacket from 'dns-packet';

type Mode =
  | { mode: 'legit'; dns: string; port: number; udpName: string; bigName: string; admins: string[]; durationMs: number; intervalMs: number; timeoutMs: number }
  | { mode: 'dribble'; dns: string; port: number; sources: string[]; target: number; connectPerSec: number; byteEveryMs: number; durationMs: number }
  | { mode: 'flood'; dns: string; port: number; name: string; type: string; edns: number; qps: number; durationMs: number; source?: string }
  | { mode: 'slowloris'; admins: string[]; target: number; connectPerSec: number; lineEveryMs: number; durationMs: number };

const cfg = JSON.parse(process.argv[2]) as Mode;
const out = (o: object) => process.stdout.write(JSON.stringify(o) + '\n');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let nextId = 1;

function query(name: string, type: string, edns = 0): Buffer {
  return dnsPacket.encode({
    type: 'query', id: nextId++ & 0xffff, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: type as 'A', name }],
    additionals: edns ? [{ type: 'OPT', name: '.', udpPayloadSize: edns } as dnsPacket.Answer] : [],
  });
}

const ancount = (b: Buffer) => b.readUInt16BE(6);
const tc = (b: Buffer) => (b.readUInt16BE(2) & 0x0200) !== 0;
const rcode = (b: Buffer) => b.readUInt16BE(2) & 0xf;

function udpAsk(dns: string, port: number, q: Buffer, timeoutMs: number): Promise<Buffer> {
  return new Promise((res, rej) => {
    const s = createSocket('udp4');
    const t = setTimeout(() => { s.close(); rej(new Error('udp timeout')); }, timeoutMs);
    s.on('error', (e) => { clearTimeout(t); s.close(); rej(e); });
    s.on('message', (m) => { clearTimeout(t); s.close(); res(m); });
    s.send(q, port, dns);
  });
}

function tcpAsk(dns: string, port: number, q: Buffer, timeoutMs: number): Promise<Buffer> {
  return new Promise((res, rej) => {
    const c = connect({ host: dns, port });
    let buf = Buffer.alloc(0);
    const t = setTimeout(() => { c.destroy(); rej(new Error('tcp timeout')); }, timeoutMs);
    c.on('connect', () => { const l = Buffer.alloc(2); l.writeUInt16BE(q.length); c.write(Buffer.concat([l, q])); });
    c.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) { clearTimeout(t); c.destroy(); res(buf.subarray(2, 2 + buf.readUInt16BE(0))); }
    });
    c.on('error', (e) => { clearTimeout(t); rej(e); });
    c.on('close', () => { clearTimeout(t); rej(new Error('tcp closed without an answer')); });
  });
}

function healthz(hostPort: string, timeoutMs: number): Promise<number> {
  const [host, port] = [hostPort.slice(0, hostPort.lastIndexOf(':')), Number(hostPort.slice(hostPort.lastIndexOf(':') + 1))];
  return new Promise((res, rej) => {
    const req = request({ host, port, path: '/healthz', agent: false, timeout: timeoutMs }, (r) => {
      r.resume();
      r.on('end', () => (r.statusCode === 200 ? res(200) : rej(new Error(`HTTP ${r.statusCode}`))));
    });
    req.on('timeout', () => req.destroy(new Error('http timeout')));
    req.on('error', rej);
    req.end();
  });
}

async function timed<T>(p: Promise<T>): Promise<{ ms: number; err?: string }> {
  const t0 = performance.now();
  try {
    await p;
    return { ms: Math.round(performance.now() - t0) };
  } catch (e) {
    return { ms: Math.round(performance.now() - t0), err: (e as Error).message };
  }
}

async function legit(c: Extract<Mode, { mode: 'legit' }>): Promise<void> {
  const end = Date.now() + c.durationMs;
  while (Date.now() < end) {
    const t0 = Date.now();
    const udp = timed(udpAsk(c.dns, c.port, query(c.udpName, 'A'), c.timeoutMs).then((b) => { if (rcode(b) !== 0 || ancount(b) < 1) throw new Error(`udp rcode ${rcode(b)} answers ${ancount(b)} tc ${tc(b)}`); }));
    const fallback = timed((async () => {
      const u = await udpAsk(c.dns, c.port, query(c.bigName, 'A'), c.timeoutMs);
      if (!tc(u)) throw new Error(`expected TC over UDP, got rcode ${rcode(u)} answers ${ancount(u)}`);
      const t = await tcpAsk(c.dns, c.port, query(c.bigName, 'A'), c.timeoutMs);
      if (rcode(t) !== 0 || ancount(t) < 1) throw new Error(`tcp rcode ${rcode(t)} answers ${ancount(t)}`);
    })());
    const admins = c.admins.map((a) => timed(healthz(a, c.timeoutMs)));
    const [u, f, ...h] = await Promise.all([udp, fallback, ...admins]);
    out({ ev: 'round', t: t0, udp: u, tcp: f, admins: Object.fromEntries(c.admins.map((a, i) => [a, h[i]])) });
    await sleep(Math.max(0, t0 + c.intervalMs - Date.now()));
  }
  out({ ev: 'done' });
}

/** Keeps up to `target` connections; `onOpen` starts the trickle. Reports how long the server let them live. */
async function hold(opts: { target: number; connectPerSec: number; durationMs: number; open: (i: number) => Socket; trickle: (s: Socket, i: number) => void; everyMs: number }): Promise<Record<string, number>> {
  const open = new Set<Socket>();
  const openedAt = new Map<Socket, number>();
  const held: number[] = [];
  let connects = 0;
  let failed = 0;
  let closedByPeer = 0;
  let maxOpen = 0;
  let stopping = false;
  const end = Date.now() + opts.durationMs;
  const perTick = Math.max(1, Math.round(opts.connectPerSec / 20));
  while (Date.now() < end) {
    for (let k = 0; k < perTick && open.size < opts.target; k++) {
      const i = connects++;
      const s = opts.open(i);
      const t0 = Date.now();
      let connected = false;
      let timer: NodeJS.Timeout | undefined;
      open.add(s);
      openedAt.set(s, t0);
      s.on('connect', () => {
        connected = true;
        opts.trickle(s, i);
        timer = setInterval(() => { if (!s.destroyed) opts.trickle(s, i); }, opts.everyMs);
      });
      s.on('error', () => {});
      s.on('data', () => {});
      s.on('close', () => {
        if (timer) clearInterval(timer);
        open.delete(s);
        openedAt.delete(s);
        if (!connected) failed++;
        else if (!stopping) { closedByPeer++; held.push(Date.now() - t0); }
      });
    }
    maxOpen = Math.max(maxOpen, open.size);
    await sleep(50);
  }
  stopping = true;
  const now = Date.now();
  const live = [...open].filter((s) => !s.connecting);
  const stillOpen = live.length;
  const oldestOpenMs = live.reduce((m, s) => Math.max(m, now - (openedAt.get(s) ?? now)), 0);
  for (const s of open) s.destroy();
  await sleep(200);
  held.sort((a, b) => a - b);
  return {
    connects, failedToConnect: failed, closedByPeer, maxOpen, openAtEnd: stillOpen, oldestOpenMs,
    heldMsP50: held.length ? held[Math.floor(held.length / 2)] : -1, heldMsMax: held.length ? held[held.length - 1] : -1,
    closedWithin100ms: held.filter((h) => h < 100).length,
  };
}

async function dribble(c: Extract<Mode, { mode: 'dribble' }>): Promise<void> {
  const q = query('web.default.svc.cluster.local', 'A');
  const framed = Buffer.concat([Buffer.from([0, q.length]), q]);
  const sent = new Map<Socket, number>();
  const r = await hold({
    target: c.target, connectPerSec: c.connectPerSec, durationMs: c.durationMs, everyMs: c.byteEveryMs,
    open: (i) => connect({ host: c.dns, port: c.port, localAddress: c.sources[i % c.sources.length] }),
    trickle: (s) => {
      // One byte of a query at a time, never the last one.
      const n = sent.get(s) ?? 0;
      if (n < framed.length - 1) { s.write(framed.subarray(n, n + 1)); sent.set(s, n + 1); }
    },
  });
  out({ ev: 'summary', mode: 'dribble', ...r });
}

async function slowloris(c: Extract<Mode, { mode: 'slowloris' }>): Promise<void> {
  const results = await Promise.all(c.admins.map((a) => {
    const host = a.slice(0, a.lastIndexOf(':'));
    const port = Number(a.slice(a.lastIndexOf(':') + 1));
    const first = new Set<Socket>();
    return hold({
      target: c.target, connectPerSec: c.connectPerSec, durationMs: c.durationMs, everyMs: c.lineEveryMs,
      open: () => connect({ host, port }),
      trickle: (s, i) => {
        if (!first.has(s)) { first.add(s); s.write(`GET /healthz HTTP/1.1\r\nHost: ${host}\r\n`); return; }
        s.write(`X-Slow-${i}: ${Date.now()}\r\n`);
      },
    }).then((r) => [a, r] as const);
  }));
  out({ ev: 'summary', mode: 'slowloris', byAdmin: Object.fromEntries(results) });
}

async function flood(c: Extract<Mode, { mode: 'flood' }>): Promise<void> {
  const s = createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, c.source, () => r()));
  const counts = { sent: 0, replies: 0, full: 0, truncated: 0, refused: 0, other: 0, bytesSent: 0, bytesReceived: 0, truncatedBytes: 0, largestReply: 0, largestQuery: 0, seconds: 0 };
  s.on('message', (m) => {
    counts.replies++;
    counts.bytesReceived += m.length;
    counts.largestReply = Math.max(counts.largestReply, m.length);
    if (rcode(m) === 5) counts.refused++;
    else if (tc(m)) {
      counts.truncated++;
      counts.truncatedBytes += m.length;
    }
    else if (rcode(m) === 0 && ancount(m) > 0) counts.full++;
    else counts.other++;
  });
  s.on('error', () => {});
  const started = Date.now();
  const end = started + c.durationMs;
  const perTick = Math.max(1, Math.round(c.qps / 100));
  while (Date.now() < end) {
    for (let k = 0; k < perTick; k++) {
      const q = query(c.name, c.type, c.edns);
      counts.sent++;
      counts.bytesSent += q.length;
      counts.largestQuery = Math.max(counts.largestQuery, q.length);
      s.send(q, c.port, c.dns);
    }
    await sleep(10);
  }
  counts.seconds = (Date.now() - started) / 1000;
  await sleep(500);
  s.close();
  out({ ev: 'summary', mode: 'flood', ...counts, amplification: counts.bytesSent ? +(counts.bytesReceived / counts.bytesSent).toFixed(2) : 0 });
}

const run = { legit, dribble, flood, slowloris }[cfg.mode] as (c: Mode) => Promise<void>;
run(cfg).then(() => process.exit(0), (e: Error) => { out({ ev: 'error', error: e.message }); process.exit(1); });
