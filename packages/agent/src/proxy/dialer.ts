// The one way the proxy reaches an endpoint. Same-node endpoints are dialed directly; endpoints on other nodes go
// through the tunnel (tunnel/dialer.ts implements Dialer too). Implementations resolve only once the far side is
// connected (for the tunnel: after the remote agent answered OK), and reject with a DialError otherwise.
import type { Duplex } from 'node:stream';

export interface DialTarget {
  /** Service key `ns/name` the endpoint belongs to (the remote agent checks it knows the endpoint). */
  readonly serviceKey: string;
  readonly protocol: 'tcp' | 'udp';
  readonly ip: string;
  readonly port: number;
  /** Node hosting the endpoint; undefined or this node's name = dial directly. */
  readonly nodeName?: string;
}

/** A datagram channel that keeps datagrams whole (length-framed when it crosses a stream). */
export interface DatagramChannel {
  send(datagram: Buffer): void;
  onMessage(fn: (datagram: Buffer) => void): void;
  onClose(fn: (err?: Error) => void): void;
  close(): void;
}

export type DialErrorCode = 'refused' | 'timeout' | 'unreachable' | 'forbidden' | 'no-route';

export class DialError extends Error {
  readonly code: DialErrorCode;
  /** The socket error behind it (`EHOSTUNREACH`, ...), when a local dial failed. */
  readonly sysCode?: string;
  constructor(code: DialErrorCode, message: string, sysCode?: string) {
    super(message);
    this.code = code;
    if (sysCode !== undefined) this.sysCode = sysCode;
  }
}

export interface Dialer {
  dialTcp(target: DialTarget, signal?: AbortSignal): Promise<Duplex>;
  openUdp(target: DialTarget, signal?: AbortSignal): Promise<DatagramChannel>;
}
