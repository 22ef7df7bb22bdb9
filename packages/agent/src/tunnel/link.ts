// A link: one secure channel to a peer over one transport: Noise (secret-stream, XX) over a relay stream or a UDX
// stream, or TLS 1.3 over kernel TCP (tcplink.ts: the handshake proves the peer's node key, the TLS exporter stands in
// for the Noise handshake hash), the peer's static key checked (identity.ts). It carries link frames (linkproto.ts): the HELLO
// that binds it to a session, PING/PONG for its RTT, and the session's frames, which it hands to `onFrame`.
// A link dies with its transport; the session's streams do not (mux.ts).
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import SecretStream from '@hyperswarm/secret-stream';
import { FrameDecoder } from '@edgemesh/common/tunnel/frame';
import type { RawKeyPair } from '@edgemesh/common/tunnel/ed25519';
import type { Clock, Timer } from './clock.ts';
import { decodeHello, encodePingFrame, L, type Hello } from './linkproto.ts';
import { HANDSHAKE_TIMEOUT_MS, LINK_PING_MS, LINK_PROBE_IDLE_MS } from './timers.ts';

/** Which path a link is: through a server, or straight to the peer. */
export type PathKind = 'relay' | 'direct';
/** What carries it. */
export type TransportKind = 'relay' | 'udx' | 'tcp';

export interface Transport {
  stream: Duplex;
  kind: TransportKind;
  /** The peer's address (direct), or the server's (relay). */
  remote: string | null;
  /** The server a relay transport goes through. */
  server?: string;
}

export interface LinkOptions {
  keyPair: RawKeyPair;
  /** The peer's node name (its certificate, in the HELLO, must name it). */
  peer: string;
  initiator: boolean;
  clock: Clock;
  /** Our HELLO, made once the handshake hash and the peer's Noise key are known (it binds the HELLO to this link). */
  hello: (handshakeHash: Buffer, remoteKey: Buffer) => Buffer;
}

let nextLinkId = 1;

/** What a link runs over once secured: a Noise stream, or a TLS socket (which encrypts what it is written). */
interface SecureChannel extends Duplex {
  alloc?(len: number): Buffer;
}

export class Link extends EventEmitter {
  readonly id = nextLinkId++;
  readonly kind: PathKind;
  readonly transport: TransportKind;
  readonly peer: string;
  /** We opened the transport (dialed, or initiated the Noise handshake). */
  readonly initiator: boolean;
  readonly server: string | undefined;
  readonly handshakeHash: Buffer;
  /** The static key the peer proved in the Noise handshake (its certificate must bind it). */
  readonly remoteKey: Buffer;
  remote: string | null;
  rttMs: number | null = null;
  /** When the last frame arrived (clock ms). */
  lastHeard: number;
  private lastPing = -Infinity;
  bytesIn = 0;
  bytesOut = 0;
  /** Session frames (everything but HELLO, PING, PONG); held in `held` until start(). */
  private onFrame: ((type: number, payload: Buffer) => void) | undefined;
  private held: { type: number; payload: Buffer }[] = [];
  private readonly noise: SecureChannel;
  private readonly decoder: FrameDecoder;

  private readonly clock: Clock;
  /** UDX links: a PING inside the reliable stream would be stuck on a mapping the peer's NAT just forgot, holding up
   *  the stream's move to the new address (directpath.ts), so liveness and RTT come from the direct path's heartbeats
   *  outside the stream: ping() asks for one, noteHeard() reports it. */
  outOfBandPing: (() => void) | undefined;
  private closedFlag = false;
  private pinger: Timer | undefined;

  /** The peer's HELLO (its first frame), or an error when the link dies or times out before it. */
  readonly hello: Promise<Hello>;
  private helloDone: ((h: Hello | Error) => void) | undefined;

  private constructor(noise: SecureChannel, t: Transport, o: LinkOptions, handshakeHash: Buffer, remoteKey: Buffer) {
    super();
    this.noise = noise;
    this.kind = t.kind === 'relay' ? 'relay' : 'direct';
    this.transport = t.kind;
    this.peer = o.peer;
    this.initiator = o.initiator;
    this.server = t.server;
    this.remote = t.remote;
    this.clock = o.clock;
    this.decoder = new FrameDecoder();
    this.handshakeHash = handshakeHash;
    this.remoteKey = remoteKey;
    this.lastHeard = o.clock.now();
    this.hello = new Promise((resolve, reject) => {
      const timer = o.clock.setTimeout(() => this.close(new Error('no HELLO on the new link')), HANDSHAKE_TIMEOUT_MS);
      this.helloDone = (h) => {
        this.helloDone = undefined;
        o.clock.clearTimeout(timer);
        if (h instanceof Error) reject(h);
        else resolve(h);
      };
    });
    this.hello.catch(() => {});
    noise.on('data', (c: Buffer) => this.onData(c));
    noise.on('error', (e: Error) => this.close(e));
    noise.on('close', () => this.close());
    noise.on('end', () => noise.end());
    if (t.kind !== 'udx') this.schedulePing();
  }

  /**
   * Runs Noise over the transport (the peer proves its static key) and sends our HELLO; resolves with the link
   * once the handshake is done. The peer's HELLO follows in `link.hello` (for the responder it comes with the last
   * handshake message; the initiator may use a fresh session's link before it arrives).
   */
  static establish(t: Transport, o: LinkOptions): Promise<Link> {
    return new Promise((resolve, reject) => {
      const noise = new SecretStream(o.initiator, t.stream, { keyPair: { publicKey: o.keyPair.publicKey, secretKey: o.keyPair.secretKey } });
      let settled = false;
      const fail = (e: Error) => {
        if (settled) return;
        settled = true;
        o.clock.clearTimeout(timer);
        noise.destroy();
        t.stream.destroy();
        reject(e);
      };
      const timer = o.clock.setTimeout(() => fail(new Error('link handshake timed out')), HANDSHAKE_TIMEOUT_MS);
      noise.on('error', fail);
      noise.once('close', () => fail(new Error('transport closed during the link handshake')));
      noise.opened.then((ok) => {
        if (settled) return;
        if (!ok || !noise.remotePublicKey) return fail(new Error('Noise handshake failed'));
        settled = true;
        o.clock.clearTimeout(timer);
        noise.off('error', fail);
        noise.removeAllListeners('close');
        resolve(Link.started(noise, t, o, Buffer.from(noise.handshakeHash!), Buffer.from(noise.remotePublicKey)));
      }).catch((e: unknown) => {
        settled = false;
        fail(e instanceof Error ? e : new Error(String(e)));
      });
    });
  }

  /**
   * A link over a TLS 1.3 socket whose handshake is done (tcplink.ts): `remoteKey` is the node key the peer's TLS
   * certificate carried and proved, `binding` this connection's TLS exporter value (what the HELLO proof covers).
   */
  static overTls(t: Transport, o: LinkOptions, remoteKey: Buffer, binding: Buffer): Link {
    return Link.started(t.stream, t, o, binding, remoteKey);
  }

  private static started(ch: SecureChannel, t: Transport, o: LinkOptions, handshakeHash: Buffer, remoteKey: Buffer): Link {
    const link = new Link(ch, t, o, handshakeHash, remoteKey);
    link.send(o.hello(link.handshakeHash, link.remoteKey));
    return link;
  }

  private onData(c: Buffer): void {
    this.bytesIn += c.length;
    this.lastHeard = this.clock.now();
    let frames;
    try {
      frames = this.decoder.push(c);
    } catch (e) {
      this.close(new Error(`protocol error: ${(e as Error).message}`));
      return;
    }
    for (const f of frames) {
      if (this.closedFlag) return;
      this.onLinkFrame(f.type, f.payload);
    }
  }

  private onLinkFrame(type: number, p: Buffer): void {
    if (type === L.PING && p.length === 8) return this.send(encodePingFrame(L.PONG, p.readDoubleBE(0)));
    if (type === L.PONG && p.length === 8) {
      this.rttMs = Math.round((this.clock.now() - p.readDoubleBE(0)) * 100) / 100;
      this.emit('pong');
      return;
    }
    if (this.helloDone) {
      const h = type === L.HELLO ? decodeHello(p) : undefined;
      if (!h) return this.close(new Error('protocol error: expected HELLO'));
      return this.helloDone(h);
    }
    if (type === L.HELLO) return this.close(new Error('protocol error: second HELLO'));
    if (this.onFrame) this.onFrame(type, p);
    else this.held.push({ type, payload: p });
  }

  /** Hands session frames to `onFrame` from now on, starting with those that arrived before. */
  start(onFrame: (type: number, payload: Buffer) => void): void {
    this.onFrame = onFrame;
    const held = this.held;
    this.held = [];
    for (const f of held) {
      if (this.closedFlag) return;
      onFrame(f.type, f.payload);
    }
  }

  /** A buffer for the next frame: pass it to send() right away (before another alloc) and Noise encrypts it in place
   *  rather than copying it into a record of its own (one copy and one allocation per DATA frame fewer). */
  alloc(len: number): Buffer {
    return this.noise.alloc ? this.noise.alloc(len) : Buffer.allocUnsafe(len);
  }

  send(frame: Buffer): void {
    if (this.closedFlag) return;
    this.bytesOut += frame.length;
    this.noise.write(frame);
  }

  ping(): void {
    this.lastPing = this.clock.now();
    if (this.transport === 'udx') return this.outOfBandPing?.();
    this.send(encodePingFrame(L.PING, this.lastPing));
  }

  /** The peer was heard outside the link (a direct-path heartbeat naming this link's stream), `rttMs` when it
   *  answered one of ours. */
  noteHeard(rttMs?: number): void {
    this.lastHeard = this.clock.now();
    if (rttMs === undefined) return;
    this.rttMs = Math.round(rttMs * 100) / 100;
    this.emit('pong');
  }

  /** A dial is waiting on this link: make sure it will hear from the peer soon if the path is alive. */
  probe(): void {
    const now = this.clock.now();
    if (now - this.lastHeard > LINK_PROBE_IDLE_MS && now - this.lastPing > LINK_PROBE_IDLE_MS) this.ping();
  }

  heardSince(t: number): boolean {
    return this.lastHeard > t;
  }

  private schedulePing(): void {
    this.ping();
    this.pinger = this.clock.setTimeout(() => this.schedulePing(), LINK_PING_MS);
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  close(err?: Error): void {
    if (this.closedFlag) return;
    this.closedFlag = true;
    this.clock.clearTimeout(this.pinger);
    this.helloDone?.(err ?? new Error('link closed'));
    this.noise.destroy();
    this.emit('close', err);
  }
}
