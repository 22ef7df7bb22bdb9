// Throws garbage at an edgemesh-server: random bytes, oversized and truncated frames, a HELLO followed by junk, and
// random / mutated STUN packets on both UDP ports. Run inside a lab namespace: node fuzz-server.ts HOST PORT ALTPORT TOKEN
// After the garbage, one genuine binding request (keyed by the cluster TOKEN) per port is the marker: the server
// handles a socket's datagrams in order, so once both genuine answers are back, an answer to any garbage would have
// come before them. stunAnswers counts every other answer (must be 0); markers says whether the server still answers.
import { connect } from 'node:net';
import { createSocket } from 'node:dgram';
import { randomBytes, randomInt } from 'node:crypto';
import { encodeFrame } from '../../packages/common/src/tunnel/frame.ts';
import { bindingRequest, decodeStun, newTxid, stunKey } from '../../packages/common/src/tunnel/stun.ts';

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
const key = stunKey(token);
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
