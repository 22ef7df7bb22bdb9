// A third party forging punch pings: it knows a victim's peer key id (public) but not the pairwise key. Sends
// forged pings to HOST:PORT, then keeps listening and counting answers until a datagram "marker" arrives (sent by the
// test from the victim's host once the victim has counted every forged ping: an answer, had there been one, came
// before it). node spoof-ping.ts HOST PORT KEYID_HEX
// stdout: {"listening":PORT,"sent":N} once sent, then {"sent":N,"answers":N} after the marker.
import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { encodePing, P } from '../../packages/agent/src/tunnel/ping.ts';

const [host, port, keyIdHex] = process.argv.slice(2);
const SPOOF_COUNT = 20;
/** The test gives up on its marker long before this; the process must not outlive a broken test. */
const MAX_LIFETIME_MS = 120_000;
const u = createSocket('udp4');
await new Promise<void>((r) => u.bind(0, r));
let answers = 0;
u.on('message', (m) => {
  if (m.toString() !== 'marker') {
    answers++;
    return;
  }
  console.log(JSON.stringify({ sent: SPOOF_COUNT, answers }));
  u.close();
  process.exit(0);
});
const sends: Promise<void>[] = [];
for (let i = 0; i < SPOOF_COUNT; i++) {
  const ping = encodePing(randomBytes(32), { type: P.PING, keyId: Buffer.from(keyIdHex, 'hex'), txid: randomBytes(12), counter: BigInt(Date.now()) * 1000000n, streamId: 1 });
  sends.push(new Promise((r) => u.send(ping, Number(port), host, () => r())));
}
await Promise.all(sends);
console.log(JSON.stringify({ listening: u.address().port, sent: SPOOF_COUNT }));
setTimeout(() => process.exit(3), MAX_LIFETIME_MS).unref();
