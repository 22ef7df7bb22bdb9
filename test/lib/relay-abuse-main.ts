// Attacker processes against edgemesh-server for the relay abuse suite (test/e2e/abuse-relay.test.ts) and the soak
// bench, run inside a lab namespace: `node relay-abuse-main.ts '<json>'`. Every mode is bounded by durationMs and its
// counts, closes what it opened, and prints one JSON summary line at the end.
//   stream-flood — `names` authenticated agents (the shared token) each keep up to `opensPerName` relay streams open to
//                  `victim`, never answering, re-opening every second what was refused or reset.
//   partial      — `conns` authenticated agents each park one frame of `frameBytes` one byte short, reconnecting
//                  (at most connectPerSec) when the server drops one.
//   unauth       — keeps up to `target` TCP connections from `sources` that never start the handshake (one byte of
//                  a frame header, so they are not idle to a kernel either), reconnecting at connectPerSec.
import { connect, type Socket } from 'node:net';
import { T } from '../../packages/common/src/tunnel/protocol.ts';
import { RawAgent } from './raw-agent.ts';

type Mode =
  | { mode: 'stream-flood'; server: string; token: string; names: string[]; victim: string; opensPerName: number; durationMs: number }
  | { mode: 'partial'; server: string; token: string; namePrefix: string; conns: number; frameBytes: number; connectPerSec: number; durationMs: number }
  | { mode: 'unauth'; server: string; sources: string[]; target: number; connectPerSec: number; durationMs: number };

const cfg = JSON.parse(process.argv[2]) as Mode;
const out = (o: object) => process.stdout.write(JSON.stringify(o) + '\n');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const [host, portS] = cfg.server.split(':');
const port = Number(portS);
const end = Date.now() + cfg.durationMs;

async function streamFlood(c: Extract<Mode, { mode: 'stream-flood' }>): Promise<object> {
  let opened = 0;
  let refused = 0;
  let resets = 0;
  let authFailed = 0;
  const held: number[] = [];
  await Promise.all(c.names.map(async (name) => {
    let a: RawAgent | undefined;
    let req = 1;
    const open = new Set<number>();
    while (Date.now() < end) {
      if (!a || a.closed) {
        try {
          a = await RawAgent.connect(name, port, host, c.token, { timeoutMs: 5000 });
        } catch {
          authFailed++;
          await sleep(500);
          continue;
        }
        open.clear();
      }
      // Top up to opensPerName, pipelined: OPEN after OPEN without waiting.
      const want = c.opensPerName - open.size;
      for (let i = 0; i < want; i++) a.control(T.OPEN, { req: req++, to: c.victim });
      await sleep(1000);
      for (let m = a.take(T.OPENED); m; m = a.take(T.OPENED)) { opened++; open.add(m.rid as number); }
      for (let m = a.take(T.OPEN_FAIL); m; m = a.take(T.OPEN_FAIL)) refused++;
      for (const f of a.frames.splice(0)) {
        if (f.type === T.RESET) { resets++; open.delete(f.payload.readUInt32BE(0)); }
      }
    }
    held.push(open.size);
    a?.close();
  }));
  return { names: c.names.length, opened, refused, resets, authFailed, heldAtEnd: held.reduce((x, y) => x + y, 0) };
}

async function partial(c: Extract<Mode, { mode: 'partial' }>): Promise<object> {
  let connects = 0;
  let dropped = 0;
  let authFailed = 0;
  let heldMsMax = 0;
  const live = new Set<{ a: RawAgent; at: number }>();
  let n = 0;
  const gap = 1000 / c.connectPerSec;
  while (Date.now() < end) {
    for (const l of live) {
      if (l.a.closed) {
        live.delete(l);
        dropped++;
        heldMsMax = Math.max(heldMsMax, Date.now() - l.at);
      }
    }
    if (live.size < c.conns) {
      const name = `${c.namePrefix}-${n++}`;
      try {
        const a = await RawAgent.connect(name, port, host, c.token, { timeoutMs: 5000 });
        connects++;
        const head = Buffer.alloc(5);
        head[0] = 0x7e;
        head.writeUInt32BE(c.frameBytes, 1);
        a.sock.write(Buffer.concat([head, Buffer.alloc(c.frameBytes - 1)]));
        live.add({ a, at: Date.now() });
      } catch {
        authFailed++;
      }
      await sleep(gap);
    } else {
      await sleep(100);
    }
  }
  const now = Date.now();
  const oldestOpenMs = Math.max(0, ...[...live].map((l) => now - l.at));
  const openAtEnd = live.size;
  for (const l of live) l.a.close();
  return { connects, dropped, authFailed, heldMsMax, oldestOpenMs, openAtEnd };
}

async function unauth(c: Extract<Mode, { mode: 'unauth' }>): Promise<object> {
  let connects = 0;
  let closedByServer = 0;
  let heldMsMax = 0;
  let errors = 0;
  const live = new Set<{ s: Socket; at: number }>();
  let i = 0;
  const gap = 1000 / c.connectPerSec;
  let last = Date.now();
  while (Date.now() < end) {
    const now = Date.now();
    let budget = Math.floor((now - last) / gap);
    if (budget > 0) last = now;
    while (budget-- > 0 && live.size < c.target) {
      const s = connect({ port, host, localAddress: c.sources[i++ % c.sources.length] });
      const l = { s, at: Date.now() };
      live.add(l);
      connects++;
      s.on('connect', () => s.write(Buffer.from([0x16]))); // the first byte of a TLS ClientHello record, and no more
      s.on('error', () => { errors++; });
      s.on('close', () => {
        if (live.delete(l)) {
          closedByServer++;
          heldMsMax = Math.max(heldMsMax, Date.now() - l.at);
        }
      });
    }
    await sleep(20);
  }
  const now = Date.now();
  const oldestOpenMs = Math.max(0, ...[...live].map((l) => now - l.at));
  const openAtEnd = live.size;
  for (const l of [...live]) { live.delete(l); l.s.destroy(); }
  return { connects, closedByServer, errors, heldMsMax, oldestOpenMs, openAtEnd };
}

const summary = cfg.mode === 'stream-flood' ? await streamFlood(cfg) : cfg.mode === 'partial' ? await partial(cfg) : await unauth(cfg);
out({ ev: 'summary', mode: cfg.mode, ...summary });
process.exit(0);
