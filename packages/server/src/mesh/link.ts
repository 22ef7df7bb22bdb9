// One mesh link: a TLS socket to another server of the mesh, after both certificates passed checkMeshPeer. Frames in
// (decoded, bounded by MAX_FRAME_BYTES), frames out through a FairWriter, ping/pong for liveness and the link RTT.
import type { TLSSocket } from 'node:tls';
import { FrameDecoder, type Frame } from '@edgemesh/common/tunnel/frame';
import { FairWriter, type FramePart } from './writer.ts';
import { encodePing, M } from './frames.ts';
import { firstStreamId, type LinkDirection } from './decide.ts';

/** A link pings every MESH_PING_INTERVAL_MS; one silent for MESH_IDLE_TIMEOUT_MS (three pings lost) is closed. */
export const MESH_PING_INTERVAL_MS = 5_000;
export const MESH_IDLE_TIMEOUT_MS = 15_000;
/** A link whose peer does not send HELLO within this is closed (the TLS handshake itself is bounded already). */
export const MESH_HELLO_TIMEOUT_MS = 10_000;

export class MeshLink {
  readonly sock: TLSSocket;
  readonly peerId: string;
  readonly direction: LinkDirection;
  /** The dial target (`host:port`) of an outbound link. */
  readonly target: string | undefined;
  readonly writer: FairWriter;
  readonly decoder = new FrameDecoder();
  /** HELLO seen; links are used only once both HELLOs went. */
  helloSeen = false;
  /** The peer's full presence set is in (PRESENCE_SYNCED). */
  synced = false;
  closed = false;
  lastSeen = Date.now();
  rttMs = 0;
  readonly since = Date.now();
  bytesOut = 0;
  bytesIn = 0;
  /** Newest revocation list issuedAt seen from this peer (older ones are refused). */
  revocationsIssuedAt = -1;
  private nextMid: number;
  /** Parity of the mesh stream ids we allocate (the peer's OPENs must have the other). */
  readonly ownParity: number;

  constructor(sock: TLSSocket, localId: string, peerId: string, direction: LinkDirection, target?: string) {
    this.sock = sock;
    this.peerId = peerId;
    this.direction = direction;
    this.target = target;
    this.writer = new FairWriter(sock);
    this.nextMid = firstStreamId(localId, peerId);
    this.ownParity = this.nextMid % 2;
  }

  /** A fresh mesh stream id of ours (odd or even by server id; wraps far below 2^32). */
  allocMid(): number {
    const id = this.nextMid;
    this.nextMid = this.nextMid >= 0xfffffff0 ? this.nextMid % 2 === 1 ? 1 : 2 : this.nextMid + 2;
    return id;
  }

  control(frame: Buffer): void {
    if (this.closed || this.sock.destroyed) return;
    this.bytesOut += frame.length;
    this.writer.control(frame);
  }

  data(mid: number, frame: FramePart): void {
    if (this.closed || this.sock.destroyed) return;
    this.bytesOut += Buffer.isBuffer(frame) ? frame.length : frame.reduce((n, b) => n + b.length, 0);
    this.writer.data(mid, frame);
  }

  ping(now: number): void {
    this.control(encodePing(M.PING, now));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.writer.clear();
    this.sock.destroy();
  }

  /** Decodes what arrived; throws FrameError on an oversized frame (the caller closes the link). */
  push(chunk: Buffer): Frame[] {
    this.lastSeen = Date.now();
    this.bytesIn += chunk.length;
    return this.decoder.push(chunk);
  }
}
