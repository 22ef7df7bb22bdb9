// Relay throughput same-server vs cross-server (server mesh), on loopback, standalone:
//   npx node bench/server/relay.ts [--seconds 4] [--rounds 3] [--pairs 1]
// Two edgemesh-server processes (own stateDirs, one cluster CA, meshed by mesh.peers); raw agents (real TLS and
// bootstrap enrollment, test/lib/raw-agent.ts), each in its own process: a sender pushes relay DATA as fast as its
// credit allows, the receiver acknowledges every quarter window (as agents do) and counts the bytes it gets in a
// measuring window after a warm-up. Same-server: both agents on server 1. Cross-server: sender on 1, receiver on 2,
// so every byte goes agent -> server 1 -> server 2 -> agent (one extra hop, two more TLS records each way).
// Rounds alternate the two cases; the median of each is reported with the ratio (goal >= 0.8).
// Writes bench/results/server-relay.json (or $BENCH_RESULTS_DIR).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { RawAgent } from '../../test/lib/raw-agent.ts';
import { decodeStreamFrame, encodeCredit, encodeData } from '../../packages/common/src/tunnel/streams.ts';
import { MAX_DATA_CHUNK, RELAY_STREAM_TYPES, RELAY_WINDOW_BYTES, T } from '../../packages/common/src/tunnel/protocol.ts';
import { FrameDecoder, type Frame } from '../../packages/common/src/tunnel/frame.ts';
import { hostInfo, resultsDir } from '../results.ts';
import { freePort } from '../../test/lib/ports.ts';

const SERVER_BIN = resolve(import.meta.dirname, '../../packages/server/bin/edgemesh-server.js');
const SELF = import.meta.filename;
const MB = 1024 * 1024;
/** Bytes received before the measuring window starts (TCP windows and the relay window open up). */
const WARMUP_MS = 1000;

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '4' }, rounds: { type: 'string', default: '3' }, pairs: { type: 'string', default: '1' },
    // internal: an agent process
    role: { type: 'string' }, node: { type: 'string' }, port: { type: 'string' }, to: { type: 'string' }, token: { type: 'string' },
  },
});

const out = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');

// ---------- agent processes ----------

/** Receiver: acknowledges every quarter window, reports bytes in [WARMUP, WARMUP + seconds] of its first byte. */
async function receiver(): Promise<void> {
  const a = await RawAgent.connect(values.node!, Number(values.port), '127.0.0.1', values.token!);
  out({ ready: true });
  const inc = await a.next(T.INCOMING, 60_000);
  const rid = inc.rid as number;
  const ms = Number(values.seconds) * 1000;
  let got = 0;
  let acked = 0;
  let t0 = 0;
  let startBytes = -1;
  // Take the socket over: decode relay frames ourselves (RawAgent.frames would buffer everything).
  a.sock.removeAllListeners('data');
  const dec = new FrameDecoder();
  const onFrames = (frames: Frame[]) => {
    for (const f of frames) {
      const sf = decodeStreamFrame(RELAY_STREAM_TYPES, f.type, f.payload);
      if (sf?.kind !== 'data' || sf.id !== rid) continue;
      if (!t0) t0 = performance.now();
      got += sf.bytes.length;
      const now = performance.now() - t0;
      if (startBytes < 0 && now >= WARMUP_MS) startBytes = got;
      if (startBytes >= 0 && now >= WARMUP_MS + ms) {
        out({ bytes: got - startBytes, ms: now - WARMUP_MS });
        process.exit(0);
      }
      if (got - acked >= RELAY_WINDOW_BYTES / 4) {
        acked = got;
        a.sock.write(encodeCredit(RELAY_STREAM_TYPES, rid, got));
      }
    }
  };
  onFrames(a.frames.splice(0)); // anything that came with the INCOMING
  a.sock.on('data', (c: Buffer) => onFrames(dec.push(c)));
}

/** Sender: opens a relay stream to `to` (retrying until the peer is known), then sends within its credit. */
async function sender(): Promise<void> {
  const a = await RawAgent.connect(values.node!, Number(values.port), '127.0.0.1', values.token!);
  let rid: number | undefined;
  for (let req = 1; req < 200 && rid === undefined; req++) {
    const o = await a.open(req, values.to!);
    if (o.rid !== undefined) rid = o.rid;
    else await new Promise((r) => setTimeout(r, 100));
  }
  if (rid === undefined) throw new Error(`cannot open a relay stream to ${values.to}`);
  a.sock.removeAllListeners('data');
  const dec = new FrameDecoder();
  const chunk = randomBytes(MAX_DATA_CHUNK);
  let sent = 0;
  let ack = 0;
  const pump = () => {
    while (sent + chunk.length <= ack + RELAY_WINDOW_BYTES && a.sock.writableLength < 4 * MB) {
      a.sock.write(encodeData(RELAY_STREAM_TYPES, rid!, sent, chunk));
      sent += chunk.length;
    }
  };
  a.sock.on('data', (c: Buffer) => {
    for (const f of dec.push(c)) {
      const sf = decodeStreamFrame(RELAY_STREAM_TYPES, f.type, f.payload);
      if (sf?.kind === 'credit' && sf.ack > ack) ack = sf.ack;
      if (sf?.kind === 'reset') process.exit(3);
    }
    pump();
  });
  a.sock.on('drain', pump);
  a.sock.on('close', () => process.exit(0));
  pump();
}

// ---------- the bench ----------

interface Proc { p: ChildProcess; lines: Record<string, unknown>[]; log: string }

function run(args: string[]): Proc {
  const p = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const r: Proc = { p, lines: [], log: '' };
  createInterface({ input: p.stdout! }).on('line', (l) => {
    r.log += l + '\n';
    try { r.lines.push(JSON.parse(l) as Record<string, unknown>); } catch { /* a log line */ }
  });
  p.stderr!.on('data', (c: Buffer) => { r.log += c.toString(); });
  return r;
}

async function until(cond: () => boolean, ms: number, what: string, proc?: Proc): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${proc ? `: ${proc.log.slice(-2000)}` : ''}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** CPU time (user + system, ms) a process used so far (/proc; clock ticks of 10 ms). */
function cpuMs(pid: number | undefined): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(f[11]) + Number(f[12])) * 10;
  } catch {
    return 0;
  }
}

async function bench(): Promise<void> {
  const seconds = Number(values.seconds);
  const rounds = Number(values.rounds);
  const pairs = Number(values.pairs);
  const dir = mkdtempSync(join(tmpdir(), 'em-bench-srvrelay-'));
  const token = randomBytes(32).toString('hex');
  const tokenFile = join(dir, 'token');
  writeFileSync(tokenFile, token + '\n', { mode: 0o600 });
  const [p1, p2] = [await freePort(), await freePort()];
  const servers: Proc[] = [];
  const startServer = async (name: string, port: number, extra: string) => {
    const cfg = join(dir, `${name}.yaml`);
    writeFileSync(cfg, `listen: 127.0.0.1:${port}\nstunAltPort: 0\nstateDir: ${join(dir, `${name}-state`)}\ntokenFile: ${tokenFile}\nadmin:\n  listen: 127.0.0.1:0\nlog:\n  level: info\n${extra}`);
    const s = run([SERVER_BIN, '--config', cfg]);
    servers.push(s);
    await until(() => s.log.includes('server listening'), 20_000, `${name} listening`, s);
  };
  const agents: Proc[] = [];
  try {
    await startServer('s1', p1, `mesh:\n  peers: ["127.0.0.1:${p2}"]\n`);
    await startServer('s2', p2, `caFile: ${join(dir, 's1-state', 'ca.crt')}\ncaKeyFile: ${join(dir, 's1-state', 'ca.key')}\nmesh:\n  peers: ["127.0.0.1:${p1}"]\n`);
    const results: { same: number[]; cross: number[] } = { same: [], cross: [] };
    /** Server CPU per MiB relayed (both servers together), per case: what one relayed byte costs the server tier. */
    const cpu: { same: number[]; cross: number[] } = { same: [], cross: [] };
    let n = 0;
    for (let round = 0; round < rounds; round++) {
      for (const kind of ['same', 'cross'] as const) {
        const recvs: Proc[] = [];
        const sends: Proc[] = [];
        for (let i = 0; i < pairs; i++) {
          n++;
          const rx = run([SELF, '--role', 'recv', '--node', `rx${n}`, '--port', String(kind === 'same' ? p1 : p2), '--token', token, '--seconds', String(seconds)]);
          agents.push(rx);
          await until(() => rx.lines.some((l) => l.ready), 20_000, 'receiver signed in', rx);
          recvs.push(rx);
        }
        const cpu0 = servers.reduce((t, s) => t + cpuMs(s.p.pid), 0);
        const cpuEach0 = servers.map((s) => cpuMs(s.p.pid));
        for (let i = 0; i < pairs; i++) {
          const tx = run([SELF, '--role', 'send', '--node', `tx${n - pairs + 1 + i}`, '--port', String(p1), '--to', `rx${n - pairs + 1 + i}`, '--token', token]);
          agents.push(tx);
          sends.push(tx);
        }
        await until(() => recvs.every((r) => r.lines.some((l) => l.bytes !== undefined)), (seconds + 30) * 1000, `${kind} transfer`, recvs[0]);
        const mbps = recvs.reduce((s, r) => { const l = r.lines.find((x) => x.bytes !== undefined)!; return s + ((l.bytes as number) / MB) / ((l.ms as number) / 1000); }, 0);
        results[kind].push(Math.round(mbps * 10) / 10);
        const totalMiB = recvs.reduce((t, r) => t + (r.lines.find((x) => x.bytes !== undefined)!.bytes as number), 0) / MB;
        // The whole transfer (warm-up included) went through the servers; count it against the bytes measured plus
        // the warm-up's share (throughput x warm-up), an estimate good to a few percent.
        const each = servers.map((s, i) => cpuMs(s.p.pid) - cpuEach0[i]);
        const serverCpu = servers.reduce((t, s) => t + cpuMs(s.p.pid), 0) - cpu0;
        const perMiB = serverCpu / (totalMiB + (mbps * WARMUP_MS) / 1000);
        cpu[kind].push(Math.round(perMiB * 100) / 100);
        console.log(`round ${round + 1} ${kind}-server: ${mbps.toFixed(1)} MiB/s (${pairs} pair${pairs > 1 ? 's' : ''}), server CPU ${perMiB.toFixed(2)} ms/MiB (s1 ${each[0]} ms, s2 ${each[1]} ms)`);
        for (const p of [...sends, ...recvs]) p.p.kill('SIGKILL');
      }
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const data = {
      seconds, rounds, pairs, windowBytes: RELAY_WINDOW_BYTES,
      sameServerMiBps: median(results.same), crossServerMiBps: median(results.cross),
      ratio: Math.round((median(results.cross) / median(results.same)) * 100) / 100, goal: 0.8, runs: results,
      serverCpuMsPerMiB: { same: median(cpu.same), cross: median(cpu.cross) }, cpuRuns: cpu, loadavg1: loadavg()[0],
    };
    console.log(`\nsame-server ${data.sameServerMiBps} MiB/s, cross-server ${data.crossServerMiBps} MiB/s: ratio ${data.ratio} (goal >= ${data.goal}); server CPU ${data.serverCpuMsPerMiB.same} vs ${data.serverCpuMsPerMiB.cross} ms/MiB`);
    const rdir = resultsDir();
    mkdirSync(rdir, { recursive: true });
    const file = join(rdir, 'server-relay.json');
    writeFileSync(file, JSON.stringify({ bench: 'server-relay', date: new Date().toISOString(), host: hostInfo(), argv: process.argv.slice(2), data }, null, 2) + '\n');
    console.log(`results written to ${file}`);
  } finally {
    for (const p of [...agents, ...servers]) p.p.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

if (values.role === 'recv') await receiver();
else if (values.role === 'send') await sender();
else await bench();
