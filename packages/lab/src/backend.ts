// A sample backend for the demo and the end-to-end tests: HTTP on one port answers `hello from <name>`, and a UDP
// echo on the same port number prefixes `<name>:`. With SINK_PORT, a TCP sink there answers the sha256 (hex) of
// everything it received once the client half-closes (transfer.ts). BIND_ADDRESS: one pod IP of several on the host
// (default every address). Run: node backend.ts NAME PORT [SINK_PORT|-] [BIND_ADDRESS]
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import { createServer as createTcpServer } from 'node:net';
import { createSocket } from 'node:dgram';

const [name = 'backend', portArg = '8080', sinkArg = '-', bind = '0.0.0.0'] = process.argv.slice(2);
const port = Number(portArg);

const sink = sinkArg !== '-' ? createTcpServer({ allowHalfOpen: true }, (c) => {
  const h = createHash('sha256');
  c.on('data', (d: Buffer) => h.update(d));
  c.on('end', () => c.end(h.digest('hex')));
  c.on('error', () => {});
}) : undefined;
sink?.listen(Number(sinkArg), bind);

const http = createServer((req, res) => {
  const body = `hello from ${name}\n`;
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body), 'x-backend': name });
  res.end(body);
  req.resume();
});
http.listen(port, bind);

const udp = createSocket('udp4');
udp.on('message', (msg, from) => udp.send(Buffer.concat([Buffer.from(`${name}:`), msg]), from.port, from.address));
udp.bind(port, bind);

const stop = () => { http.close(); udp.close(); sink?.close(); process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
