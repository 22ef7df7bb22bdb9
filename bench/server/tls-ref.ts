// The reference for bench/server/run.ts: a bare node:tls server with the same TLS 1.3 setup (the cluster CA's Ed25519
// key and certificate from the edgemesh server's stateDir), holding every connection and pinging each every 10 s
// with the same PING frame (the simulated agents answer PONG). What Node and OpenSSL alone cost per idle connection
// and per heartbeat, measured in the same run, so edgemesh-server's figures read as a ratio to it.
//   node bench/server/tls-ref.ts PORT KEYFILE CERTFILE   (prints "listening" once it is)
import { readFileSync } from 'node:fs';
import { createServer, type TLSSocket } from 'node:tls';
import { encodeFrame } from '../../packages/common/src/tunnel/frame.ts';
import { T } from '../../packages/common/src/tunnel/protocol.ts';

/** As the server's relay.ts PING_INTERVAL_MS. */
const PING_INTERVAL_MS = 10_000;
const [port, keyFile, certFile] = process.argv.slice(2);
const socks = new Set<TLSSocket>();
const server = createServer({ key: readFileSync(keyFile), cert: readFileSync(certFile), minVersion: 'TLSv1.3' }, (s) => {
  socks.add(s);
  s.setKeepAlive(true, 15_000);
  s.on('data', () => {}); // PONGs: read and dropped
  s.on('error', () => {});
  s.on('close', () => socks.delete(s));
});
server.listen(Number(port), '127.0.0.1', () => process.stdout.write('listening\n'));
setInterval(() => {
  const ping = encodeFrame(T.PING, Buffer.from(JSON.stringify({ t: Date.now() })));
  for (const s of socks) s.write(ping);
}, PING_INTERVAL_MS);
