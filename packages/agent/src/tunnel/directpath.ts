// The active direct path to a peer once punched: heartbeats on it, liveness (Tailscale: dead after PATH_TIMEOUT_MS
// without an authenticated answer naming our stream), and roaming (WireGuard: a fresh authenticated packet from a
// new address moves the path there). Owned by PeerPaths; sockets behind PeerChannel, time behind Clock.
// A UDX stream retransmits a packet to the address it first went to, so a move (changeRemote) is only done once
// every packet sent before it was acknowledged; packets sent to the old mapping after the NAT forgot it never are.
// A move the stream does not confirm within ROAM_CONFIRM_MS ends the path: the session goes on over the relay and a
// new punch (to the address the peer now answers from) replaces the stuck stream.
import type { Clock } from './clock.ts';
import { addrKey, pathAlive, sameAddr, type Addr } from './punch.ts';
import { HEARTBEAT_MS, LINK_PROBE_IDLE_MS, ROAM_CONFIRM_MS } from './timers.ts';
import type { PeerChannel, PeerPacket, UdpSock, UdpStream } from './udptypes.ts';

/** Heartbeat txids remembered (pongs to older ones are ignored). */
const MAX_HEARTBEATS_IN_FLIGHT = 16;

export class DirectPath {
  addr: Addr;
  readonly socket: UdpSock;
  readonly stream: UdpStream;
  readonly remoteStreamId: number;
  lastHeard: number;
  private lastPing: number;
  /** Heartbeats in flight: txid -> when sent (their pongs give the path's RTT). */
  private readonly hbTx = new Map<string, number>();
  /** A move to a new address the stream has not confirmed yet. */
  private moving: { since: number; to: string } | undefined;
  private readonly channel: PeerChannel;
  private readonly clock: Clock;

  constructor(o: { addr: Addr; socket: UdpSock; stream: UdpStream; remoteStreamId: number; channel: PeerChannel; clock: Clock }) {
    this.addr = o.addr;
    this.socket = o.socket;
    this.stream = o.stream;
    this.remoteStreamId = o.remoteStreamId;
    this.channel = o.channel;
    this.clock = o.clock;
    this.lastHeard = o.clock.now();
    this.lastPing = -Infinity; // the first tick sends a heartbeat: the link's first RTT
  }

  /** Runs every TICK_MS: why the path is dead (the peer has not answered for PATH_TIMEOUT_MS, or a move is stuck),
   *  else undefined after sending the heartbeat when due. */
  tick(): string | undefined {
    const now = this.clock.now();
    if (!pathAlive(this.lastHeard, now)) return `no answer on the direct path for ${Math.round(now - this.lastHeard)} ms`;
    if (this.moving && now - this.moving.since >= ROAM_CONFIRM_MS) return `the stream did not confirm the move to ${this.moving.to} within ${ROAM_CONFIRM_MS} ms`;
    if (now - this.lastPing >= HEARTBEAT_MS) this.ping(now);
    return undefined;
  }

  /** A heartbeat now (a dial waits on the link, or it is suspected dead), unless one went out just before. */
  probe(): void {
    const now = this.clock.now();
    if (now - this.lastPing >= LINK_PROBE_IDLE_MS) this.ping(now);
  }

  private ping(now: number): void {
    this.lastPing = now;
    const tx = this.channel.ping(this.addr, this.stream.id, this.socket).toString('hex');
    this.hbTx.set(tx, now);
    if (this.hbTx.size > MAX_HEARTBEATS_IN_FLIGHT) this.hbTx.delete(this.hbTx.keys().next().value!);
  }

  /**
   * An authenticated packet from the peer. Only packets naming the stream of our link count as the path being alive:
   * a peer that dropped the link (and answers pings for a newer one) must not keep a dead link looking healthy.
   * Returns whether it counted (`alive`), and the new address when the peer roamed and we followed it.
   */
  heard(p: PeerPacket): { alive?: true; roamed?: string; failedRoam?: string } {
    if (p.streamId !== this.remoteStreamId) return {};
    this.lastHeard = this.clock.now();
    if (sameAddr(this.addr, p.from)) return { alive: true };
    try {
      // Throws at once while a previous change is still being confirmed; the next heartbeat tries again.
      const changing = this.stream.changeRemote(this.socket, this.remoteStreamId, p.from.port, p.from.host);
      this.addr = p.from;
      if (changing) {
        const move = { since: this.clock.now(), to: addrKey(p.from) };
        this.moving = move;
        const done = () => { if (this.moving === move) this.moving = undefined; };
        changing.then(done, done);
      }
      return { alive: true, roamed: addrKey(p.from) };
    } catch (e) {
      return { alive: true, failedRoam: (e as Error).message };
    }
  }

  /** The round trip of the heartbeat a PONG answers (consumed), or undefined when it answers none of ours. */
  heartbeatRtt(txid: Buffer): number | undefined {
    const k = txid.toString('hex');
    const sent = this.hbTx.get(k);
    if (sent === undefined) return undefined;
    this.hbTx.delete(k);
    return this.clock.now() - sent;
  }
}
