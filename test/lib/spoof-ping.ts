// A third party forging punch pings: it knows a victim's peer key id (public) but not the pairwise key. Sends
// forged pings to HOST:PORT and counts answers. node spoof-ping.ts HOST PORT KEYID_HEX
import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { encodePing, P } from '../../packages/agent/src/tunnel/ping.ts';

const [host, port, keyIdHex] = process.argv.slice(2);
const COUNT = 20;
const u = createSocket('udp4');
await new Promise<void>((r) => u.bind(0, r));
let answers = 0;
u.on('message', () => answers++);
for (let i = 0; i < COUNT; i++) {
  u.send(encodePing(randomBytes(32), { type: P.PING, keyId: Buffer.from(keyIdHex, 'hex'), txid: randomBytes(12), counter: BigInt(Date.now()) * 1000000n, streamId: 1 }), Number(port), host);
}
await new Promise((r) => setTimeout(r, 1000));
u.close();
console.log(JSON.stringify({ sent: COUNT, answers }));
