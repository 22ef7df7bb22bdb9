// A test backend: TCP echo on ECHO_PORT, TCP "name" (writes NAME, closes after the client's FIN) on NAME_PORT,
// UDP echo on ECHO_PORT. Usage: node backend.ts NAME IP ECHO_PORT NAME_PORT. Prints `up` when listening.
import { createServer } from 'node:net';
import { createSocket } from 'node:dgram';

const [name, ip, echoPort, namePort] = process.argv.slice(2);
const echo = createServer({ allowHalfOpen: true }, (s) => { s.on('error', () => {}); s.pipe(s); });
const named = createServer({ allowHalfOpen: true }, (s) => {
  s.on('error', () => {});
  s.write(name);
  s.on('data', () => {});
  s.on('end', () => s.end());
});
const udp = createSocket('udp4');
udp.on('message', (m, r) => udp.send(m, r.port, r.address));
await Promise.all([
  new Promise<void>((r) => echo.listen(Number(echoPort), ip, () => r())),
  new Promise<void>((r) => named.listen(Number(namePort), ip, () => r())),
  new Promise<void>((r) => udp.bind(Number(echoPort), ip, () => r())),
]);
process.stdout.write('up\n');
process.on('SIGTERM', () => process.exit(0));
