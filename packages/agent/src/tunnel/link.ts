// A Noise-encrypted, mutually authenticated link to one peer over a raw duplex (a relay stream or a direct UDX
// stream), carrying the stream multiplexer. The peer's static key must equal the key the server vouched for.
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import SecretStream from '@hyperswarm/secret-stream';
import type { RawKeyPair } from '@edgemesh/common/tunnel/ed25519';
import { Mux } from './mux.ts';

export const HANDSHAKE_TIMEOUT_MS = 10_000;
export const LINK_PING_MS = 5_000;

export type PathKind = 'relay' | 'direct';

export class Link extends EventEmitter {
  readonly kind: PathKind;
  readonly peer: string;
  readonly mux: Mux;
  readonly noise: SecretStream;
  remote: string | null;
  rttMs: number | null = null;
  bytesIn = 0;
  bytesOut = 0;
  private closedFlag = false;
  private pinger: NodeJS.Timeout | undefined;

  private constructor(noise: SecretStream, initiator: boolean, kind: PathKind, peer: string, remote: string | null, init?: (l: Link) => void) {
    super();
    this.noise = noise;
    this.kind = kind;
    this.peer = peer;
    this.remote = remote;
    this.mux = new Mux((b) => {
      if (this.closedFlag) return;
      this.bytesOut += b.length;
      this.emit('bytes', 'out', b.length);
      noise.write(b);
    }, initiator);
    this.mux.onPong = (rtt) => { this.rttMs = Math.round(rtt * 100) / 100; };
    this.mux.onProtocolError = (why) => this.close(new Error(`protocol error: ${why}`));
    init?.(this);
    noise.on('data', (b: Buffer) => {
      this.bytesIn += b.length;
      this.emit('bytes', 'in', b.length);
      this.mux.push(b);
    });
    noise.on('error', (e: Error) => this.close(e));
    noise.on('close', () => this.close());
    noise.on('end', () => noise.end());
    this.pinger = setInterval(() => this.mux.ping(), LINK_PING_MS);
    this.pinger.unref();
    this.mux.ping();
  }

  /** Runs the Noise handshake over `raw`; resolves once the peer proved `expectedKey`. */
  static establish(raw: Duplex, initiator: boolean, keyPair: RawKeyPair, expectedKey: Buffer, kind: PathKind, peer: string, remote: string | null, init?: (l: Link) => void): Promise<Link> {
    return new Promise((resolve, reject) => {
      const noise = new SecretStream(initiator, raw, { keyPair: { publicKey: keyPair.publicKey, secretKey: keyPair.secretKey } });
      const fail = (e: Error) => {
        clearTimeout(timer);
        noise.destroy();
        raw.destroy();
        reject(e);
      };
      const timer = setTimeout(() => fail(new Error('Noise handshake timed out')), HANDSHAKE_TIMEOUT_MS);
      noise.once('error', fail);
      noise.opened.then((ok) => {
        clearTimeout(timer);
        noise.off('error', fail);
        if (!ok) return fail(new Error('Noise handshake failed'));
        if (!noise.remotePublicKey || !expectedKey.equals(noise.remotePublicKey)) {
          return fail(new Error(`peer ${peer} presented a key the server did not vouch for`));
        }
        resolve(new Link(noise, initiator, kind, peer, remote, init));
      }, fail);
    });
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  close(err?: Error): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    clearInterval(this.pinger);
    this.mux.close(err);
    this.noise.destroy();
    this.emit('close', err);
  }
}
