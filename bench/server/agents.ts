// Simulated agents for bench/server/run.ts, one child process of several: each agent is a real TLS 1.3 connection
// from its own source address (127.0.0.x, round robin) with its own Ed25519 node key. Phase 1 (enroll): each signs
// in once with a bootstrap ENROLL (the key signing the connection's TLS exporter, as the agent does) and leaves: the
// server issues and pins its certificate. Phase 2 (on "go"): each signs in again with ENROLL renew (what every
// reconnect is: after a restart, a DRAIN, a network blip) and stays, answering the server's PINGs with PONGs, as an
// idle agent does. Nothing else: what the server pays per agent at rest.
//   EM_SIM='{"host","port","token","count","first","sources":[..],"concurrency"}' node bench/server/agents.ts
// stdout, JSON lines: {"phase":"enroll"|"signin", "registered": n, "failed": n, "ms": wall} once all tried; then
// {"alive": n} on "alive\n"; exits on stdin end (the connections go with the process). tlsOnly (the reference,
// tls-ref.ts): no enrollment, only phase 2 with a TLS handshake and one small frame each way.
import { connect as tcpConnect } from 'node:net';
import { connect, type TLSSocket } from 'node:tls';
import { createInterface } from 'node:readline';
import { encodeFrame, FrameDecoder } from '../../packages/common/src/tunnel/frame.ts';
import { signWithContext } from '../../packages/common/src/identity/keys.ts';
import { nodeKey } from '../../packages/common/src/identity/testca.ts';
import { ENROLL_PROOF_CONTEXT, enrollProofMessage } from '../../packages/common/src/identity/enrollproof.ts';
import { PROTOCOL_VERSION, T } from '../../packages/common/src/tunnel/protocol.ts';
import { ENROLL_BINDING_BYTES, ENROLL_EXPORTER_LABEL } from '../../packages/server/src/relay.ts';

interface Sim { host: string; port: number; token: string; count: number; first: number; sources: string[]; concurrency: number; tlsOnly?: boolean }

/** One agent gives up signing in after this (the server answers in milliseconds unless it is overloaded). */
const SIGN_IN_TIMEOUT_MS = 60_000;

const sim = JSON.parse(process.env.EM_SIM ?? '{}') as Sim;
const socks: TLSSocket[] = [];
const control = (s: TLSSocket, type: number, body: object) => s.write(encodeFrame(type, Buffer.from(JSON.stringify(body))));

const keys = new Map<number, ReturnType<typeof nodeKey>>();

function signIn(i: number, method: 'bootstrap' | 'renew'): Promise<boolean> {
  const node = `sim-${i}`;
  let key = keys.get(i);
  if (!key) keys.set(i, key = nodeKey());
  return new Promise((resolve) => {
    let done = false;
    const finish = (ok: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (!ok) s.destroy();
      resolve(ok);
    };
    const s = connect({ socket: tcpConnect({ host: sim.host, port: sim.port, localAddress: sim.sources[i % sim.sources.length] }), rejectUnauthorized: false, minVersion: 'TLSv1.3' });
    const timer = setTimeout(() => finish(false), SIGN_IN_TIMEOUT_MS);
    const dec = new FrameDecoder();
    s.on('error', () => finish(false));
    s.on('close', () => finish(false));
    s.once('secureConnect', () => {
      if (sim.tlsOnly) { // the bare TLS reference (tls-ref.ts): one small frame each way is the whole "sign-in"
        s.write(encodeFrame(T.PONG, Buffer.from('{"t":0}')));
        socks.push(s);
        return finish(true);
      }
      const binding = s.exportKeyingMaterial(ENROLL_BINDING_BYTES, ENROLL_EXPORTER_LABEL, Buffer.alloc(0));
      const sig = signWithContext(key.privateKey, ENROLL_PROOF_CONTEXT, enrollProofMessage(binding, method, node));
      control(s, T.ENROLL, { v: PROTOCOL_VERSION, method, name: node, key: key.publicKey.toString('base64'), token: method === 'bootstrap' ? sim.token : '', sig: sig.toString('base64') });
    });
    s.on('data', (c: Buffer) => {
      let frames;
      try { frames = dec.push(c); } catch { return finish(false); }
      for (const f of frames) {
        if (f.type === T.WELCOME) {
          if (method === 'bootstrap') s.destroy(); // enrolled: it comes back in phase 2
          else socks.push(s);
          finish(true);
        }
        else if (f.type === T.ENROLL_FAIL || f.type === T.ERROR) finish(false);
        else if (f.type === T.PING) s.write(encodeFrame(T.PONG, f.payload)); // {t} echoed, as the agent does
      }
    });
  });
}

async function phase(method: 'bootstrap' | 'renew'): Promise<void> {
  const t0 = performance.now();
  let next = 0;
  let registered = 0;
  let failed = 0;
  await Promise.all(Array.from({ length: Math.min(sim.concurrency, sim.count) }, async () => {
    while (next < sim.count) {
      const i = sim.first + next++;
      if (await signIn(i, method)) registered++;
      else failed++;
    }
  }));
  process.stdout.write(JSON.stringify({ phase: method === 'bootstrap' ? 'enroll' : 'signin', registered, failed, ms: Math.round(performance.now() - t0) }) + '\n');
}

async function main(): Promise<void> {
  const rl = createInterface({ input: process.stdin });
  rl.on('line', (l) => {
    if (l === 'go') void phase('renew');
    if (l === 'alive') process.stdout.write(JSON.stringify({ alive: socks.filter((s) => !s.destroyed).length }) + '\n');
  });
  rl.on('close', () => process.exit(0));
  if (sim.tlsOnly) await phase('renew');
  else await phase('bootstrap');
}

void main();
