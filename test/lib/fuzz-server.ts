// Throws garbage at an edgemesh-server: random bytes, oversized and truncated frames, a HELLO followed by junk, and
// random / mutated STUN packets on both UDP ports. Run inside a lab namespace: node fuzz-server.ts HOST PORT ALTPORT TOKEN
// After the garbage, one genuine binding request per port is the marker (keyed by the STUN key the server gives a
// signed-in agent: the fuzzer enrolls as node `fuzzer` with the bootstrap TOKEN over TLS to learn it): the server
// handles a socket's datagrams in order, so once both genuine answers are back, an answer to any garbage would have
// come before them. stunAnswers counts every other answer (must be 0); markers says whether the server still answers.
import { connect } from 'node:net';
import { createSocket } from 'node:dgram';
import { randomBytes, randomInt } from 'node:crypto';
import { encodeFrame } from '../../packages/common/src/tunnel/frame.ts';
import { bindingRequest, decodeStun, newTxid } from '../../packages/common/src/tunnel/stun.ts';
import { connect as tlsConnect } from 'node:tls';
import { generateKeyPairSync } from 'node:crypto';
import { FrameDecoder } from '../../packages/common/src/tunnel/frame.ts';
import { rawPublicKey, signWithContext } from '../../packages/common/src/identity/keys.ts';
import { ENROLL_PROOF_CONTEXT, enrollProofMessage } from '../../packages/common/src/identity/enrollproof.ts';
import { PROTOCOL_VERSION, T, parseJson } from '../../packages/common/src/tunnel/protocol.ts';

/** Signs in as `fuzzer` (bootstrap token) and returns the STUN key from WELCOME. */
async function learnStunKey(): Promise<Buffer> {
  const { privateKey } = generateKeyPairSync('ed25519');
  const s = tlsConnect({ host, port, rejectUnauthorized: false, minVersion: 'TLSv1.3' });
  s.on('error', () => {});
  await new Promise<void>((r) => s.once('secureConnect', () => r()));
  const binding = s.exportKeyingMaterial(32, 'EXPORTER-edgemesh-enroll', Buffer.alloc(0));
  const sig = signWithContext(privateKey, ENROLL_PROOF_CONTEXT, enrollProofMessage(binding, 'bootstrap', 'fuzzer'));
  s.write(encodeFrame(T.ENROLL, Buffer.from(JSON.stringify({ v: PROTOCOL_VERSION, method: 'bootstrap', name: 'fuzzer', key: rawPublicKey(privateKey).toString('base64'), token, sig: sig.toString('base64') }))));
  const dec = new FrameDecoder();
  return new Promise((resolve, reject) => {
    s.on('data', (c: Buffer) => {
      for (const f of dec.push(c)) {
        if (f.type === T.WELCOME) {
          resolve(Buffer.from(String(parseJson(f.payload)?.stunKey), 'base64'));
          s.destroy();
        } else if (f.type === T.ENROLL_FAIL || f.type === T.ERROR) reject(new Error(`fuzzer refused: ${f.payload.toString()}`));
      }
    });
  });
}

const [host, portS, altS, token] = process.argv.slice(2);
const port = Number(portS);
const alt = Number(altS);
const TCP_CASES = 150;
const UDP_PACKETS = 1500;
/** How long to wait for the genuine answers (generous: a busy 2-core machine). */
const MARKER_TIMEOUT_MS = 15_000;

const pendingCases = new Set<number>();
process.on("exit", () => { if (pendingCases.size) console.error("pending", [...pendingCases]); });
function tcpCase(i: number): Promise<void> {
  pendingCases.add(i);
  return new Promise((resolve) => {
    const s = connect({ host, port });
    const done = () => { pendingCases.delete(i); resolve(); };
    s.on('error', done);
    s.on('close', done);
    s.resume(); // drain whatever the server answers, or the socket never ends
    s.setTimeout(2000, () => s.destroy());
    s.on('connect', () => {
      const hello = encodeFrame(1, Buffer.from(JSON.stringify({ v: 1, nonce: randomBytes(32).toString('base64') })));
      switch (i % 6) {
        case 0: s.end(randomBytes(randomInt(1, 3000))); break;
        case 1: { const b = Buffer.alloc(5); b[0] = randomInt(256); b.writeUInt32BE(0xffffffff, 1); s.end(b); break; }
        case 2: s.end(Buffer.concat([hello, encodeFrame(3, randomBytes(randomInt(0, 500)))])); break;
        case 3: s.end(Buffer.concat([hello, encodeFrame(3, Buffer.from(JSON.stringify({ node: 'x'.repeat(300), key: 'AAAA', proof: 'AAAA', sig: 'AAAA' })))])); break;
        case 4: s.end(Buffer.concat([hello, encodeFrame(randomInt(256), randomBytes(randomInt(0, 200)))])); break;
        default: s.end(encodeFrame(20, randomBytes(100))); break;
      }
    });
  });
}

for (let i = 0; i < TCP_CASES; i += 10) await Promise.all(Array.from({ length: 10 }, (_, j) => tcpCase(i + j)));

const u = createSocket('udp4');
await new Promise<void>((r) => u.bind(0, r));
let answers = 0;
const key = await learnStunKey();
const markerTxids = new Set<string>();
let markers = 0;
let allMarkers: () => void = () => {};
const markersBack = new Promise<void>((r) => { allMarkers = r; });
u.on('message', (m) => {
  const txid = decodeStun(m, key)?.txid.toString('hex');
  if (txid && markerTxids.delete(txid)) {
    if (++markers === 2) allMarkers();
  } else {
    answers++;
  }
});
for (let i = 0; i < UDP_PACKETS; i++) {
  let b: Buffer;
  if (i % 3 === 0) b = randomBytes(randomInt(0, 600));
  else {
    b = bindingRequest(newTxid(), i % 3 === 1 ? undefined : randomBytes(20));
    for (let k = 0; k < randomInt(0, 4); k++) b[randomInt(b.length)] = randomInt(256);
  }
  u.send(b, i % 2 ? port : alt, host);
  if (i % 100 === 0) await new Promise((r) => setTimeout(r, 5));
}
for (const p of [port, alt]) {
  const txid = newTxid();
  markerTxids.add(txid.toString('hex'));
  u.send(bindingRequest(txid, key), p, host);
}
let timer: NodeJS.Timeout | undefined;
await Promise.race([markersBack, new Promise<void>((r) => { timer = setTimeout(r, MARKER_TIMEOUT_MS); })]);
clearTimeout(timer);
u.close();
console.log(JSON.stringify({ tcpCases: TCP_CASES, udpPackets: UDP_PACKETS, stunAnswers: answers, markers }));
