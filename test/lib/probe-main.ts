// Probe process run inside a lab namespace (see probe.ts). Reads JSON commands on stdin, one per line, and writes
// JSON events on stdout. UDP sockets can reflect: they answer every datagram not itself a reflection with
// "seen <ip>:<port> <their data>" (the source address they observed, like STUN). TCP listeners write the same line and close.
import { createSocket, type Socket } from 'node:dgram';
import { createServer, connect, type Server } from 'node:net';
import { createInterface } from 'node:readline';

type Cmd =
  | { id: number; op: 'udp-bind'; port: number; reflect?: boolean }
  | { id: number; op: 'udp-send'; from: number; host: string; port: number; data: string }
  | { id: number; op: 'tcp-listen'; port: number }
  | { id: number; op: 'tcp-connect'; host: string; port: number; timeoutMs: number };

const SEEN = 'seen ';
const udp = new Map<number, Socket>();
const tcp = new Map<number, Server>();
const out = (ev: object) => process.stdout.write(`${JSON.stringify(ev)}\n`);

function handle(c: Cmd): void {
  switch (c.op) {
    case 'udp-bind': {
      const s = createSocket('udp4');
      s.on('error', (e) => out({ ev: 'error', id: c.id, error: e.message }));
      s.on('message', (msg, r) => {
        const data = msg.toString();
        const local = s.address().port;
        out({ ev: 'udp', local, from: r.address, fromPort: r.port, data });
        if (c.reflect && !data.startsWith(SEEN)) s.send(`${SEEN}${r.address}:${r.port} ${data}`, r.port, r.address);
      });
      s.bind(c.port, '0.0.0.0', () => {
        udp.set(s.address().port, s);
        out({ ev: 'ok', id: c.id, port: s.address().port });
      });
      return;
    }
    case 'udp-send': {
      const s = udp.get(c.from);
      if (!s) {
        out({ ev: 'error', id: c.id, error: `no socket on ${c.from}` });
        return;
      }
      s.send(c.data, c.port, c.host, (e) => out(e ? { ev: 'error', id: c.id, error: e.message } : { ev: 'ok', id: c.id }));
      return;
    }
    case 'tcp-listen': {
      const srv = createServer((sock) => {
        out({ ev: 'tcp', local: c.port, from: sock.remoteAddress, fromPort: sock.remotePort });
        sock.on('error', () => {});
        sock.end(`${SEEN}${sock.remoteAddress}:${sock.remotePort}\n`);
      });
      srv.on('error', (e) => out({ ev: 'error', id: c.id, error: e.message }));
      srv.listen(c.port, '0.0.0.0', () => {
        tcp.set(c.port, srv);
        out({ ev: 'ok', id: c.id });
      });
      return;
    }
    case 'tcp-connect': {
      let data = '';
      let done = false;
      const finish = (ev: object) => { if (!done) { done = true; out(ev); sock.destroy(); } };
      const sock = connect({ host: c.host, port: c.port });
      sock.setTimeout(c.timeoutMs, () => finish({ ev: 'error', id: c.id, error: 'timeout' }));
      sock.on('data', (d) => { data += d.toString(); });
      sock.on('end', () => finish({ ev: 'ok', id: c.id, data: data.trim() }));
      sock.on('error', (e) => finish({ ev: 'error', id: c.id, error: e.message }));
      return;
    }
  }
}

createInterface({ input: process.stdin }).on('line', (line) => {
  try {
    handle(JSON.parse(line) as Cmd);
  } catch (e) {
    out({ ev: 'error', id: -1, error: (e as Error).message });
  }
}).on('close', () => process.exit(0));
out({ ev: 'ready' });
