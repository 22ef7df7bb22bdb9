// A test backend for the takeover test: TCP on IP:TCP_PORT answers every line with `ok <line>` (a client may send
// one request per connection or many on one, keep-alive style); UDP on IP:UDP_PORT echoes every datagram.
// Usage: node line-backend.ts IP TCP_PORT UDP_PORT. Prints `up` when listening.
import { createServer } from 'node:net';
import { createSocket } from 'node:dgram';

const [ip, tcpPort, udpPort] = process.argv.slice(2);
const tcp = createServer((s) => {
  s.on('error', () => {});
  let buf = '';
  s.setEncoding('utf8');
  s.on('data', (d: string) => {
    buf += d;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      s.write(`ok ${buf.slice(0, i)}\n`);
      buf = buf.slice(i + 1);
    }
  });
});
const udp = createSocket('udp4');
udp.on('message', (m, r) => udp.send(m, r.port, r.address));
await Promise.all([
  new Promise<void>((r) => tcp.listen(Number(tcpPort), ip, () => r())),
  new Promise<void>((r) => udp.bind(Number(udpPort), ip, () => r())),
]);
process.stdout.write('up\n');
process.on('SIGTERM', () => process.exit(0));
