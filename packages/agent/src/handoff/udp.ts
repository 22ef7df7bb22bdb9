// UDP sockets during a takeover. Every UDP socket the agent serves on (DNS, UDP service ports) is bound with
// SO_REUSEPORT; a leaving agent *detaches* each one from its reuse group by connecting it to its own address: from
// then on the kernel hands every new datagram for that address and port to the other agent's socket (Linux >= 5.4
// scores connected sockets apart from the group), while the datagrams already queued on ours are still read and
// answered. A connected socket can send only to its peer, so the replies it still owes (queued questions, answers
// from upstreams or endpoints in flight) go out through the staying agent's socket on the same address and port,
// carried over the handoff connection (UdpRelay): the client sees the reply from the address and port it asked.
import type { Socket as UdpSocket } from 'node:dgram';

/** The staying agent's sockets, reached over the handoff connection. */
export interface UdpRelay {
  /** The staying agent serves `local` (`host:port`): only such sockets are detached (others keep serving). */
  has(local: string): boolean;
  /** Sends `data` to address:port from the staying agent's socket on `local`. */
  send(local: string, data: Buffer, port: number, address: string): void;
}

export type UdpSend = (data: Buffer, port: number, address: string) => void;

export const localKey = (host: string, port: number): string => `${host}:${port}`;

/** The sockets this process serves on, by local address, so datagrams relayed from a leaving agent can be sent. */
const sockets = new Map<string, UdpSend>();

/** Registers a serving socket; returns the unregister function. */
export function registerUdp(host: string, port: number, send: UdpSend): () => void {
  const key = localKey(host, port);
  sockets.set(key, send);
  return () => { if (sockets.get(key) === send) sockets.delete(key); };
}

/** Sends a datagram relayed from the other agent from our socket on `local`; false when we have none there. */
export function sendFrom(local: string, data: Buffer, port: number, address: string): boolean {
  const s = sockets.get(local);
  if (!s) return false;
  s(data, port, address);
  return true;
}

/** Local UDP addresses this process serves (told to the agent being taken over: it detaches only those). */
export function servedUdp(): string[] {
  return [...sockets.keys()];
}

/** Connects `sock` to its own address: it leaves the reuse group for new datagrams, keeps its queue. */
export function detachUdp(sock: UdpSocket, host: string, port: number): Promise<void> {
  const to = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return new Promise((resolve) => {
    try {
      sock.connect(port, to, () => resolve()); // on failure the callback gets the error: nothing detached either way
    } catch {
      resolve(); // already closed or connected: nothing to detach
    }
  });
}
