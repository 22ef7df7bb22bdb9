// Load through the agent for the takeover test, run in the client namespace until a line `stop` arrives on stdin
// (or MAX_SECONDS pass). Workers, each in a loop:
//   tcp-new   a new TCP connection per request (connect, one line, the answer, close)
//   tcp-keep  keep-alive: one connection, KEEP_REQUESTS requests one after the other, then a new connection
//   udp-flow  UDP request/response from one socket (one proxy session for the whole run)
//   udp-new   UDP request/response, a new socket (source port) per request
//   dns-udp   DNS A query over UDP, a new socket per query;  dns-tcp  the same over a new TCP connection
//   socks-new / socks-keep  (with `socks`: the agent's SOCKS5 listener) like tcp-new / tcp-keep, through a SOCKS5
//             CONNECT to the Service IP
// Every request has REQUEST_TIMEOUT_MS; a timeout, a reset, a refused connection or a wrong answer is a failure.
// Prints one JSON line: counts per worker kind, failures (kind, error, time), the longest requests, and the longest
// request per 100 ms of wall-clock time when it ended (`maxMsByWall100`, so a caller can tell what happened when).
// Usage: node load-client.ts '{"ip":..,"tcpPort":..,"udpPort":..,"dns":"ip:port","name":..,"answer":..[,"socks":"ip:port"]}'
import { connect } from 'node:net';
import { createSocket } from 'node:dgram';
import { createInterface } from 'node:readline';
import dnsPacket from 'dns-packet';

const cfg = JSON.parse(process.argv[2]) as { ip: string; tcpPort: number; udpPort: number; dns: string; name: string; answer: string; socks?: string };
const [dnsHost, dnsPortS] = cfg.dns.split(':');
const dnsPort = Number(dnsPortS);
const MAX_SECONDS = 180;
const REQUEST_TIMEOUT_MS = 3000;
const KEEP_REQUESTS = 50;
const t0 = performance.now();
let stopping = false;

type Kind = 'tcp-new' | 'tcp-keep' | 'udp-flow' | 'udp-new' | 'dns-udp' | 'dns-tcp' | 'socks-new' | 'socks-keep';
const counts: Record<string, number> = {};
const failures: { kind: Kind; error: string; atMs: number; wallMs: number }[] = [];
const longest: { kind: Kind; ms: number; atMs: number }[] = [];
const maxMsByWall100: Record<number, number> = {};

function record(kind: Kind, ms: number, error?: string): void {
  counts[kind] = (counts[kind] ?? 0) + 1;
  const bucket = Math.floor(Date.now() / 100);
  maxMsByWall100[bucket] = Math.max(maxMsByWall100[bucket] ?? 0, Math.round(ms));
  if (error) failures.push({ kind, error, atMs: Math.round(performance.now() - t0), wallMs: Date.now() });
  longest.push({ kind, ms, atMs: Math.round(performance.now() - t0) });
  longest.sort((a, b) => b.ms - a.ms);
  longest.length = Math.min(longest.length, 5);
}

const withTimeout = <T>(p: Promise<T>, what: string): Promise<T> =>
  new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what}: timeout`)), REQUEST_TIMEOUT_MS);
    p.then((v) => { clearTimeout(t); resolve(v); }, (e) => { clearTimeout(t); reject(e); });
  });

async function timed(kind: Kind, fn: () => Promise<void>): Promise<void> {
  const s = performance.now();
  try {
    await fn();
    record(kind, performance.now() - s);
  } catch (e) {
    record(kind, performance.now() - s, (e as NodeJS.ErrnoException).code ?? (e as Error).message);
  }
}

/** The SOCKS5 (RFC 1928) exchange for a CONNECT to cfg.ip:cfg.tcpPort, no authentication: greeting, request. */
const SOCKS_GREETING = Buffer.from([5, 1, 0]);
const SOCKS_REQUEST = Buffer.from([5, 1, 0, 1, ...cfg.ip.split('.').map(Number), cfg.tcpPort >> 8, cfg.tcpPort & 0xff]);
/** Method choice (2 bytes) + a reply with an IPv4 bound address (10 bytes). */
const SOCKS_ANSWER_BYTES = 12;

/**
 * A line-protocol TCP connection: request(line) resolves the answer line. `socks`: through the SOCKS5 listener
 * (greeting and request sent at once, the answer checked before the first line).
 */
function tcpConn(socks = false): Promise<{ request(line: string): Promise<string>; close(): void }> {
  return new Promise((resolve, reject) => {
    const [sh, sp] = (cfg.socks ?? ':').split(':');
    const s = socks ? connect({ host: sh, port: Number(sp) }) : connect({ host: cfg.ip, port: cfg.tcpPort });
    let handshake = socks ? Buffer.alloc(0) : undefined;
    let buf = '';
    let waiting: { resolve: (l: string) => void; reject: (e: Error) => void } | undefined;
    const ready = () => resolve({
      request: (line) => new Promise<string>((res, rej) => { waiting = { resolve: res, reject: rej }; s.write(line + '\n'); }),
      close: () => s.destroy(),
    });
    s.on('data', (chunk: Buffer) => {
      let d = chunk.toString('utf8');
      if (handshake) {
        handshake = Buffer.concat([handshake, chunk]);
        if (handshake.length < SOCKS_ANSWER_BYTES) return;
        const ok = handshake[0] === 5 && handshake[1] === 0 && handshake[2] === 5 && handshake[3] === 0;
        if (!ok) { s.destroy(); reject(new Error(`socks5 refused: ${handshake.subarray(0, SOCKS_ANSWER_BYTES).toString('hex')}`)); return; }
        d = handshake.subarray(SOCKS_ANSWER_BYTES).toString('utf8');
        handshake = undefined;
        ready();
      }
      buf += d;
      const i = buf.indexOf('\n');
      if (i >= 0 && waiting) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        const w = waiting;
        waiting = undefined;
        w.resolve(line);
      }
    });
    const fail = (e: Error) => { waiting?.reject(e); waiting = undefined; reject(e); };
    s.on('error', fail);
    s.on('close', () => fail(Object.assign(new Error('closed'), { code: 'CLOSED' })));
    s.on('connect', () => {
      if (socks) s.write(Buffer.concat([SOCKS_GREETING, SOCKS_REQUEST]));
      else ready();
    });
  });
}

async function tcpNew(i: number, socks = false): Promise<void> {
  for (let n = 0; !stopping; n++) {
    await timed(socks ? 'socks-new' : 'tcp-new', async () => {
      const c = await withTimeout(tcpConn(socks), 'connect');
      try {
        const a = await withTimeout(c.request(`n${i}-${n}`), 'answer');
        if (a !== `ok n${i}-${n}`) throw new Error(`wrong answer ${a}`);
      } finally {
        c.close();
      }
    });
  }
}

async function tcpKeep(i: number, socks = false): Promise<void> {
  const kind = socks ? 'socks-keep' : 'tcp-keep';
  while (!stopping) {
    let c: Awaited<ReturnType<typeof tcpConn>> | undefined;
    await timed(kind, async () => { c = await withTimeout(tcpConn(socks), 'connect'); });
    if (!c) continue;
    for (let n = 0; n < KEEP_REQUESTS && !stopping; n++) {
      let broken = false;
      await timed(kind, async () => {
        try {
          const a = await withTimeout(c!.request(`k${i}-${n}`), 'answer');
          if (a !== `ok k${i}-${n}`) throw new Error(`wrong answer ${a}`);
        } catch (e) {
          broken = true;
          throw e;
        }
      });
      if (broken) break;
    }
    c.close();
  }
}

function udpExchange(sock: ReturnType<typeof createSocket>, payload: Buffer, host: string, port: number, check: (m: Buffer) => boolean): Promise<void> {
  return withTimeout(new Promise<void>((resolve, reject) => {
    const onMsg = (m: Buffer) => { if (check(m)) { sock.off('message', onMsg); resolve(); } };
    sock.on('message', onMsg);
    sock.send(payload, port, host, (e) => { if (e) reject(e); });
  }), 'udp answer');
}

async function udpFlow(i: number): Promise<void> {
  const sock = createSocket('udp4');
  sock.on('error', () => {});
  for (let n = 0; !stopping; n++) {
    const p = Buffer.from(`f${i}-${n}`);
    await timed('udp-flow', () => udpExchange(sock, p, cfg.ip, cfg.udpPort, (m) => m.equals(p)));
    await new Promise((r) => setTimeout(r, 2));
  }
  sock.close();
}

async function udpNew(i: number): Promise<void> {
  for (let n = 0; !stopping; n++) {
    const sock = createSocket('udp4');
    sock.on('error', () => {});
    const p = Buffer.from(`u${i}-${n}`);
    await timed('udp-new', () => udpExchange(sock, p, cfg.ip, cfg.udpPort, (m) => m.equals(p)));
    sock.close();
    await new Promise((r) => setTimeout(r, 2));
  }
}

const answerOk = (buf: Buffer, id: number) => {
  const r = dnsPacket.decode(buf);
  return r.id === id && (r as { rcode?: string }).rcode === 'NOERROR' && (r.answers ?? []).some((a) => a.type === 'A' && a.data === cfg.answer);
};

async function dnsUdp(): Promise<void> {
  for (let n = 0; !stopping; n++) {
    const sock = createSocket('udp4');
    sock.on('error', () => {});
    const id = (n * 7919 + 1) & 0xffff;
    const q = dnsPacket.encode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name: cfg.name }] });
    await timed('dns-udp', async () => {
      let bad: string | undefined;
      await udpExchange(sock, q, dnsHost, dnsPort, (m) => { const ok = answerOk(m, id); if (!ok) bad = 'wrong answer'; return true; });
      if (bad) throw new Error(bad);
    });
    sock.close();
    await new Promise((r) => setTimeout(r, 2));
  }
}

async function dnsTcp(): Promise<void> {
  for (let n = 0; !stopping; n++) {
    const id = (n * 104729 + 3) & 0xffff;
    await timed('dns-tcp', () => withTimeout(new Promise<void>((resolve, reject) => {
      const s = connect({ host: dnsHost, port: dnsPort });
      let buf = Buffer.alloc(0);
      s.on('connect', () => s.write(dnsPacket.streamEncode({ type: 'query', id, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name: cfg.name }] })));
      s.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          s.destroy();
          if (answerOk(buf.subarray(2, 2 + buf.readUInt16BE(0)), id)) resolve();
          else reject(new Error('wrong answer'));
        }
      });
      s.on('error', reject);
      s.on('close', () => reject(Object.assign(new Error('closed'), { code: 'CLOSED' })));
    }), 'dns tcp'));
    await new Promise((r) => setTimeout(r, 5));
  }
}

createInterface({ input: process.stdin }).on('line', (l) => { if (l.trim() === 'stop') stopping = true; });
setTimeout(() => { stopping = true; }, MAX_SECONDS * 1000).unref();
process.stdout.write('started\n');
const socksWorkers = cfg.socks ? [tcpNew(10, true), tcpNew(11, true), tcpKeep(10, true)] : [];
await Promise.all([tcpNew(0), tcpNew(1), tcpNew(2), tcpKeep(0), tcpKeep(1), udpFlow(0), udpNew(0), dnsUdp(), dnsUdp(), dnsTcp(), ...socksWorkers]);
process.stdout.write(JSON.stringify({ seconds: Math.round((performance.now() - t0) / 100) / 10, counts, failures: failures.slice(0, 50), failureCount: failures.length, longest, maxMsByWall100 }) + '\n');
process.exit(0);
