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

/**
 * The one deadline of a dial, created by the proxy (one per connect attempt) and passed down: the tunnel gives the
 * direct path a share of what remains before it tries the relay, and tells the far agent how long it may dial.
 */
export interface Deadline {
  readonly signal: AbortSignal;
  /** Milliseconds left (0 once passed). */
  remaining(): number;
}

/** A deadline `ms` from now; with `caller`, it also ends when the caller gives up (its signal aborts). */
export function dialDeadline(ms: number, caller?: AbortSignal): Deadline {
  const at = performance.now() + ms;
  const timeout = AbortSignal.timeout(Math.max(0, ms));
  return { signal: caller ? AbortSignal.any([timeout, caller]) : timeout, remaining: () => (caller?.aborted ? 0 : Math.max(0, at - performance.now())) };
}

export interface Dialer {
  dialTcp(target: DialTarget, deadline?: Deadline): Promise<Duplex>;
  openUdp(target: DialTarget, deadline?: Deadline): Promise<DatagramChannel>;
}
