// The UDP side as the peer objects see it: a per-peer channel for authenticated pings, UDX streams and sockets.
// socket.ts implements these over udx-native; unit tests implement them with fakes (no sockets).
import type { Duplex } from 'node:stream';
import type { Addr, Candidate, NatType } from './punch.ts';

/** A UDP socket (udx-native's UDXSocket as far as we use it). */
export interface UdpSock { readonly bound?: boolean }

/** A UDX stream (reliable, ordered, over a UdpSock), before and after it is connected. */
export interface UdpStream extends Duplex {
  readonly id: number;
  connect(socket: UdpSock, remoteId: number, port: number, host: string): void;
  /** Follows the peer to a new address (roaming). Throws while a previous change is still being confirmed. */
  changeRemote(socket: UdpSock, remoteId: number, port: number, host: string): Promise<void> | null;
}

/** An authenticated, fresh ping or pong from the peer (the MAC and the replay window were checked). */
export interface PeerPacket {
  type: 'ping' | 'pong';
  txid: Buffer;
  /** The sender's UDX stream for us (its active link, or its punch attempt). */
  streamId: number;
  from: Addr;
  sock: UdpSock;
}

/** Pings to and from one peer. */
export interface PeerChannel {
  /** Sends a PING; returns its txid (a PONG echoes it). */
  ping(to: Addr, streamId: number, sock?: UdpSock, ttl?: number): Buffer;
  pong(txid: Buffer, to: Addr, sock: UdpSock, streamId: number): void;
  close(): void;
}

/** What a punch attempt needs besides the peer channel. */
export interface PunchIO {
  readonly main: UdpSock;
  /** A new UDX stream; `firewall` decides on the first packet of a not yet connected stream (true = drop). */
  newStream(firewall: (sock: UdpSock, port: number, host: string) => boolean): UdpStream;
  /** Up to `n` extra sockets (birthday mode), their packets dispatched like the main socket's. */
  openSockets(n: number): UdpSock[];
  closeSocket(s: UdpSock, delayMs?: number): void;
}

/** The UDP side of the tunnel, as PeerPaths uses it. */
export interface DirectEnv {
  readonly io: PunchIO;
  channel(peerKey: Buffer, onPacket: (p: PeerPacket) => void): PeerChannel;
  natType(): NatType;
  candidates(): Candidate[];
  /** Refreshes the NAT type if stale or `force` (STUN); resolves at once when fresh. */
  freshNat(force?: boolean): Promise<NatType>;
}
