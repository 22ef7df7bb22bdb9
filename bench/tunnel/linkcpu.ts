// CPU per MB of a link alone (no mux, no proxy, no harness), both ends in this process over loopback TCP: the TCP
// transport's TLS 1.3 link (tcplink.ts) against Noise (secret-stream) over the same kind of TCP connection, the choice
// the TCP transport had to make. 64 KiB DATA frames, the receiver acknowledging every 2 MiB, 8 MiB in flight.
//   node bench/tunnel/linkcpu.ts [--mb 512]
// Prints ms of CPU (user + system, both ends together) per MB and the Mb/s of the run (one process: half a core each).
import { createServer, connect, type Socket } from 'node:net';
import { parseArgs } from 'node:util';
import { Budgets } from '@edgemesh/common/budget';
import { silentLogger } from '@edgemesh/common/log';
import { generateKeyPair } from '@edgemesh/common/tunnel/ed25519';
import { encodeFrame } from '@edgemesh/common/tunnel/frame';
import { makeRealClock } from '../../packages/agent/src/tunnel/clock.ts';
import { Link, type LinkOptions } from '../../packages/agent/src/tunnel/link.ts';
import { encodeHello, L } from '../../packages/agent/src/tunnel/linkproto.ts';
import { dialTcpLink, TcpLinkListener, TcpLinkTls, type TcpPeer } from '../../packages/agent/src/tunnel/tcplink.ts';
import { fakeCa } from '../../packages/agent/src/tunnel/testfixture.ts';

const { values } = parseArgs({ options: { mb: { type: 'string', default: '512' } } });
const MB = 1 << 20;
const TOTAL = Number(values.mb) * MB;
const FRAME = 64 * 1024;
const ACK_EVERY = 2 * MB;
const IN_FLIGHT = 8 * MB;

const clock = makeRealClock((e) => { throw e; });
const cas = fakeCa();
const node = (name: string) => {
  const keyPair = generateKeyPair();
  const identity = cas.identity(cas.issue(name, keyPair.publicKey));
  return { keyPair, identity, tls: new TcpLinkTls({ node: name, keyPair, identity }) };
};
const a = node('a');
const b = node('b');
const opts = (k: typeof a, initiator: boolean): LinkOptions => ({
  keyPair: k.keyPair, peer: 'x', initiator, clock,
  hello: () => encodeHello({ sid: Buffer.alloc(16), peerSid: Buffer.alloc(16), proof: Buffer.alloc(32), identity: Buffer.alloc(0) }),
});

async function tlsPair(): Promise<[Link, Link, () => Promise<void>]> {
  let acc: TcpPeer | undefined;
  const l = new TcpLinkListener({ port: 0, host: '127.0.0.1', tls: b.tls, identity: b.identity, budgets: new Budgets(), log: silentLogger, isPeerNode: () => true, onPeer: (p) => { acc = p; } });
  await l.listen();
  const p = await dialTcpLink([{ host: '127.0.0.1', port: l.port }], 'b', a.tls, a.identity);
  while (!acc) await new Promise((r) => setTimeout(r, 5));
  const la = Link.overTls({ stream: p.socket, kind: 'tcp', remote: '' }, opts(a, true), p.remoteKey, p.binding);
  const lb = Link.overTls({ stream: acc.socket, kind: 'tcp', remote: '' }, opts(b, false), acc.remoteKey, acc.binding);
  return [la, lb, () => l.close()];
}

async function noisePair(): Promise<[Link, Link, () => Promise<void>]> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const accepted = new Promise<Socket>((r) => srv.once('connection', r));
  const cs = connect((srv.address() as { port: number }).port, '127.0.0.1');
  const ss = await accepted;
  for (const s of [cs, ss]) s.setNoDelay(true);
  const [la, lb] = await Promise.all([Link.establish({ stream: cs, kind: 'udx', remote: '' }, opts(a, true)), Link.establish({ stream: ss, kind: 'udx', remote: '' }, opts(b, false))]);
  return [la, lb, () => new Promise((r) => srv.close(() => r()))];
}

async function run(name: string, make: () => Promise<[Link, Link, () => Promise<void>]>): Promise<void> {
  const [la, lb, stop] = await make();
  await Promise.all([la.hello, lb.hello]);
  let got = 0, acked = 0, sent = 0;
  const { promise: done, resolve } = Promise.withResolvers<void>();
  lb.start((_t, p) => {
    got += p.length;
    if (got >= TOTAL) resolve();
    if (got - acked >= ACK_EVERY) { acked = got; lb.send(encodeFrame(L.CREDIT, Buffer.alloc(12))); }
  });
  const chunk = Buffer.alloc(FRAME, 7);
  const pump = () => {
    while (sent - acked < IN_FLIGHT && sent < TOTAL) {
      const f = la.alloc(5 + FRAME);
      f[0] = L.DATA;
      f.writeUInt32BE(FRAME, 1);
      chunk.copy(f, 5);
      la.send(f);
      sent += FRAME;
    }
  };
  la.start((t) => { if (t === L.CREDIT) pump(); });
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  pump();
  await done;
  const c = process.cpuUsage(c0);
  const s = (performance.now() - t0) / 1000;
  console.log(`  ${name.padEnd(28)} ${((c.user + c.system) / 1000 / (TOTAL / MB)).toFixed(2).padStart(6)} ms CPU per MB (both ends)   ${((TOTAL * 8) / 1e6 / s).toFixed(0).padStart(6)} Mb/s`);
  la.close();
  lb.close();
  await stop();
}

console.log(`Link CPU, ${values.mb} MB of 64 KiB DATA frames over loopback TCP, both ends in one process:`);
await run('TLS 1.3 (tcplink.ts)', tlsPair);
await run('Noise (secret-stream)', noisePair);
process.exit(0);
