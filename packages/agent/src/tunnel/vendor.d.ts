// Minimal typings for the native/holepunch modules the tunnel uses (they ship none).
declare module 'udx-native' {
  import type { EventEmitter } from 'node:events';
  import type { Duplex } from 'node:stream';
  export interface UDXAddress { host: string; family: number; port: number }
  export interface UDXSocket extends EventEmitter {
    bind(port?: number, host?: string): void;
    address(): UDXAddress;
    close(): Promise<void>;
    setTTL(ttl: number): void;
    send(buf: Buffer, port: number, host?: string, ttl?: number): Promise<boolean>;
    trySend(buf: Buffer, port: number, host?: string, ttl?: number): void;
    readonly bound: boolean;
    readonly closing: boolean;
    on(ev: 'message', fn: (msg: Buffer, from: UDXAddress) => void): this;
    on(ev: string, fn: (...args: any[]) => void): this;
  }
  export interface UDXStream extends Duplex {
    readonly id: number;
    readonly remoteId: number;
    readonly remoteHost: string;
    readonly remotePort: number;
    readonly connected: boolean;
    readonly rtt: number;
    connect(socket: UDXSocket, remoteId: number, port: number, host?: string): void;
    /** Returns a promise, or null when the change completes at once. Throws while a previous change is pending. */
    changeRemote(socket: UDXSocket, remoteId: number, port: number, host?: string): Promise<void> | null;
    setInteractive(b: boolean): void;
  }
  export default class UDX {
    createSocket(opts?: { ipv6Only?: boolean }): UDXSocket;
    createStream(id: number, opts?: { firewall?: (socket: UDXSocket, port: number, host: string) => boolean }): UDXStream;
    networkInterfaces(): { name: string; host: string; family: number; internal: boolean }[];
  }
}

declare module '@hyperswarm/secret-stream' {
  import type { Duplex } from 'node:stream';
  export interface KeyPair { publicKey: Buffer; secretKey: Buffer }
  export default class NoiseSecretStream extends Duplex {
    constructor(isInitiator: boolean, rawStream: Duplex, opts?: { keyPair?: KeyPair; remotePublicKey?: Buffer; keepAlive?: number });
    readonly remotePublicKey: Buffer | null;
    /** The Noise handshake hash (same on both sides, fresh for every handshake); set once opened. */
    readonly handshakeHash: Buffer | null;
    readonly publicKey: Buffer;
    readonly rawStream: Duplex;
    readonly opened: Promise<boolean>;
    /** A plaintext buffer of `len` bytes inside a record buffer: written next (before any other alloc), it is
     *  encrypted in place instead of copied into a new record (what protomux uses). */
    alloc(len: number): Buffer;
    setKeepAlive(ms: number): void;
    setTimeout(ms: number): void;
    static keyPair(seed?: Buffer): KeyPair;
  }
}

declare module 'sodium-native' {
  const sodium: {
    crypto_sign_ed25519_pk_to_curve25519(out: Buffer, pk: Buffer): void;
    crypto_sign_ed25519_sk_to_curve25519(out: Buffer, sk: Buffer): void;
    crypto_scalarmult(out: Buffer, sk: Buffer, pk: Buffer): void;
    crypto_scalarmult_BYTES: number;
    crypto_box_PUBLICKEYBYTES: number;
    crypto_box_SECRETKEYBYTES: number;
  };
  export default sodium;
}
