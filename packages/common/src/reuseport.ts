// Binding with SO_REUSEPORT (Linux >= 3.9; Node >= 22.12 for net and dgram), so that a successor agent can bind the
// same addresses and ports alongside the running one during a takeover. Two hazards of the option are handled here:
// - a fresh start must still refuse a port another program holds: `shared: false` first binds the port once
//   without SO_REUSEPORT (that fails on any holder), releases it, then binds it shared;
// - for UDP, the kernel's choice of a port for port 0 may be a port another SO_REUSEPORT socket of the same user
//   holds (TCP never does that), which would split one port's datagrams between two unrelated sockets: a fresh UDP
//   port is found without SO_REUSEPORT first. Those find-then-bind steps run one at a time in the process.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, isIP, type Server } from 'node:net';

let queue: Promise<unknown> = Promise.resolve();

/** Runs `fn` after every earlier call has settled (process-wide). */
function serial<T>(fn: () => Promise<T>): Promise<T> {
  const p = queue.then(fn, fn);
  queue = p.catch(() => {});
  return p;
}

function inUse(host: string, port: number): NodeJS.ErrnoException {
  const e: NodeJS.ErrnoException = new Error(`listen EADDRINUSE: address already in use ${host}:${port}`);
  e.code = 'EADDRINUSE';
  return e;
}

/** Binds `port` (0: any) once without SO_REUSEPORT and releases it; resolves the port, or rejects EADDRINUSE. */
export async function probePort(protocol: 'tcp' | 'udp', host: string | undefined, port: number): Promise<number> {
  if (protocol === 'tcp') {
    const s = createServer();
    const got = await new Promise<number>((resolve, reject) => {
      s.once('error', (e) => { s.close(); reject(e); });
      s.listen({ host, port, exclusive: true }, () => {
        const a = s.address();
        resolve(typeof a === 'object' && a ? a.port : port);
      });
    });
    await new Promise<void>((r) => s.close(() => r()));
    return got;
  }
  const u = createSocket({ type: host && isIP(host) === 6 ? 'udp6' : 'udp4' });
  const got = await new Promise<number>((resolve, reject) => {
    u.once('error', (e) => { u.close(); reject(e); });
    u.bind({ port, address: host, exclusive: true }, () => resolve(u.address().port));
  });
  await new Promise<void>((r) => u.close(() => r()));
  return got;
}

function listen(server: Server, host: string | undefined, port: number, backlog: number | undefined): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error) => reject(e);
    server.once('error', onError);
    server.listen({ host, port, backlog, reusePort: true, exclusive: true }, () => {
      server.removeListener('error', onError);
      const a = server.address();
      resolve(typeof a === 'object' && a ? a.port : port);
    });
  });
}

function bind(sock: UdpSocket, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error) => reject(e);
    sock.once('error', onError);
    sock.bind({ port, address: host, exclusive: true }, () => {
      sock.removeListener('error', onError);
      resolve(sock.address().port);
    });
  });
}

export interface SharedBindOptions {
  /** The port is expected to be held by the agent being taken over: bind alongside it without checking. */
  shared: boolean;
  backlog?: number;
}

/**
 * Listens on host:port with SO_REUSEPORT. Port 0 gets a fresh port (TCP's port choice never lands on a port held by
 * another socket). With `shared: false` a held port is refused (EADDRINUSE) as without SO_REUSEPORT.
 */
export async function listenReusePort(server: Server, host: string | undefined, port: number, o: SharedBindOptions): Promise<number> {
  if (port === 0 || o.shared) return listen(server, host, port, o.backlog);
  return serial(async () => {
    await probePort('tcp', host, port);
    return listen(server, host, port, o.backlog);
  });
}

/**
 * Binds a UDP socket created with `reusePort: true` to host:port. Port 0 gets a port no other socket holds; with
 * `shared: false` a held port is refused (EADDRINUSE).
 */
export async function bindReusePort(sock: UdpSocket, host: string, port: number, o: SharedBindOptions): Promise<number> {
  if (port !== 0 && o.shared) return bind(sock, host, port);
  return serial(async () => {
    const p = await probePort('udp', host, port).catch((e: NodeJS.ErrnoException) => {
      throw e.code === 'EADDRINUSE' ? inUse(host, port) : e;
    });
    return bind(sock, host, p);
  });
}
