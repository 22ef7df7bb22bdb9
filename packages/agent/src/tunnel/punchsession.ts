// One hole-punch attempt (HyperDHT's Holepuncher shape): pings every candidate on a schedule, learns peer-reflexive
// candidates, and resolves to a connected UDX stream (the first pong wins for the initiator; the responder accepts the
// stream from an address the peer authenticated from), or fails. Birthday mode when exactly one side is symmetric.
// Decisions are punch.ts's; the sockets are behind PunchIO and PeerChannel, time behind Clock.
import type { Clock, Timer } from './clock.ts';
import {
  addrKey, birthdayPorts, birthdayRole, BIRTHDAY_BATCH, BIRTHDAY_LOW_TTL, BIRTHDAY_PROBES, BIRTHDAY_SOCKETS, punchPlan, punchSchedule,
  punchTimeoutMs, sameAddr, startDelayMs, type Addr, type Candidate, type NatType, type PunchOutcome,
} from './punch.ts';
import {
  BIRTHDAY_BATCH_MS, BIRTHDAY_HEAD_START_MS, BIRTHDAY_TIMEOUT_MS, PUNCH_GRACE_MS, PUNCH_HANDSHAKE_SLACK_MS, PUNCH_SESSION_MS, SPARE_SOCKET_CLOSE_MS,
} from './timers.ts';
import type { PeerChannel, PunchIO, UdpSock, UdpStream } from './udptypes.ts';

export interface PunchResult { stream: UdpStream; socket: UdpSock; remote: Addr; remoteStreamId: number; role: 'initiator' | 'responder'; mode: 'normal' | 'birthday' }

export class PunchFailed extends Error {
  readonly outcome: PunchOutcome | 'cancelled';
  constructor(outcome: PunchOutcome | 'cancelled') {
    super(`punch ${outcome}`);
    this.outcome = outcome;
  }
}

export interface PunchOptions {
  sid: string;
  /** Whether we sent the rendezvous request (the side that may follow a failed normal punch with birthday mode). */
  requested: boolean;
  mode: 'normal' | 'birthday';
  myNat: NatType;
  io: PunchIO;
  channel: PeerChannel;
  clock: Clock;
}

export class PunchSession {
  readonly sid: string;
  readonly requested: boolean;
  readonly mode: 'normal' | 'birthday';
  readonly startedAt: number;
  readonly stream: UdpStream;
  /** initiator: connects the UDX stream on the first pong; responder: accepts it (firewall). In birthday mode the
   *  easy side is the initiator whoever asked for the rendezvous. */
  role: 'initiator' | 'responder';
  peerNat: NatType = 'unknown';
  readonly result: Promise<PunchResult>;
  private readonly o: PunchOptions;
  private cands: Candidate[] = [];
  private remoteStreamId = 0;
  private readonly txids = new Set<string>();
  /** Addresses the peer authenticated from during this attempt (the responder accepts the stream only from these). */
  private readonly verified = new Set<string>();
  private sockets: UdpSock[] = [];
  private started = false;
  private connecting = false;
  private done = false;
  private readonly timers = new Set<Timer>();
  private resolveFn!: (r: PunchResult) => void;
  private rejectFn!: (e: PunchFailed) => void;

  constructor(o: PunchOptions) {
    this.o = o;
    this.sid = o.sid;
    this.requested = o.requested;
    this.mode = o.mode;
    this.role = o.requested ? 'initiator' : 'responder';
    this.startedAt = o.clock.now();
    this.result = new Promise((res, rej) => { this.resolveFn = res; this.rejectFn = rej; });
    this.result.catch(() => {});
    this.stream = o.io.newStream((sock, port, host) => this.firewall(sock, port, host));
    this.after(PUNCH_SESSION_MS, () => this.fail('failed'));
  }

  get isStarted(): boolean {
    return this.started;
  }

  get finished(): boolean {
    return this.done;
  }

  private after(ms: number, fn: () => void): Timer {
    const t = this.o.clock.setTimeout(() => { this.timers.delete(t); if (!this.done) fn(); }, ms);
    this.timers.add(t);
    return t;
  }

  /**
   * Starts punching with the peer's candidates: the initiator when the reply arrives, the responder when it answers
   * (RTTs from the server so both start together). Ends at once when the NATs cannot be punched (both symmetric).
   */
  start(cands: Candidate[], peerNat: NatType, remoteStreamId: number, rtt: { fromMs: number; toMs: number } = { fromMs: 0, toMs: 0 }): void {
    if (this.started || this.done) return;
    this.started = true;
    this.cands = [...cands];
    this.peerNat = peerNat;
    this.remoteStreamId = remoteStreamId;
    if (punchPlan(this.o.myNat, peerNat) === 'relay-only') return this.fail('relay-only');
    const delay = startDelayMs(this.requested ? 'initiator' : 'responder', rtt.fromMs, rtt.toMs);
    if (this.mode === 'birthday') return this.birthday(delay);
    const schedule = punchSchedule(punchTimeoutMs(this.o.myNat, peerNat));
    const startAt = this.o.clock.now() + delay;
    let next = 0;
    const step = () => {
      if (this.connecting) return;
      for (const c of this.cands) this.ping(c);
      next++;
      if (next < schedule.length) this.after(Math.max(0, startAt + schedule[next] - this.o.clock.now()), step);
      else this.after(PUNCH_GRACE_MS, () => { if (!this.connecting) this.fail('failed'); }); // the last pings' pongs
    };
    this.after(delay, step);
  }

  private ping(to: Addr, sock?: UdpSock, ttl?: number): void {
    const txid = this.o.channel.ping(to, this.stream.id, sock, ttl);
    this.txids.add(txid.toString('hex'));
  }

  /** Every authenticated packet from the peer during the attempt (ping or pong). */
  noteVerified(from: Addr): void {
    this.verified.add(addrKey(from));
  }

  /** A PING from the peer: an address we did not know is a peer-reflexive candidate (its NAT's mapping toward us). */
  onPing(from: Addr): void {
    this.noteVerified(from);
    if (this.done || !this.started || this.mode !== 'normal' || this.cands.some((c) => sameAddr(c, from))) return;
    this.cands.push({ ...from, kind: 'prflx' });
    this.ping(from);
  }

  /** A PONG: the initiator connects the UDX stream to the first address that answered one of our pings. */
  onPong(txid: Buffer, from: Addr, streamId: number, sock: UdpSock): boolean {
    if (!this.txids.has(txid.toString('hex'))) return false;
    this.noteVerified(from);
    if (this.done || this.role !== 'initiator' || this.connecting) return true;
    this.connecting = true;
    this.remoteStreamId = streamId;
    this.stream.connect(sock, streamId, from.port, from.host);
    this.succeed(sock, from);
    return true;
  }

  private firewall(sock: UdpSock, port: number, host: string): boolean {
    // Only the responder's stream is reached before it connects: accept the first packet from an address the peer
    // authenticated itself from during this attempt, and connect the stream there.
    if (this.done || this.role !== 'responder' || this.connecting || !this.verified.has(`${host}:${port}`)) return true;
    this.connecting = true;
    this.stream.connect(sock, this.remoteStreamId, port, host);
    queueMicrotask(() => this.succeed(sock, { host, port }));
    return false;
  }

  /**
   * Birthday mode. Hard (symmetric) side: BIRTHDAY_SOCKETS sockets each ping the easy side's public address, the first
   * round with a low TTL (opens our NAT, never reaches theirs), then whichever socket the easy side's probe hits
   * accepts the stream. Easy side: pings random ports of the hard side's public address, connects on the first pong.
   */
  private birthday(delay: number): void {
    const role = birthdayRole(this.o.myNat, this.peerNat);
    const target = this.cands.find((c) => c.kind === 'stun');
    if (!role || !target) return this.fail('failed');
    this.role = role === 'easy' ? 'initiator' : 'responder';
    this.after(delay + BIRTHDAY_TIMEOUT_MS + PUNCH_HANDSHAKE_SLACK_MS, () => this.fail('failed'));
    if (role === 'hard') {
      this.sockets = this.o.io.openSockets(BIRTHDAY_SOCKETS);
      const round = () => { if (!this.connecting) for (const s of this.sockets) this.ping(target, s, BIRTHDAY_LOW_TTL); };
      // Low-TTL round at the start, a second one later to refresh the mappings (conntrack keeps them 30 s anyway).
      this.after(delay, round);
      this.after(delay + BIRTHDAY_TIMEOUT_MS / 2, round);
      return;
    }
    const ports = birthdayPorts(BIRTHDAY_PROBES);
    let next = 0;
    const batch = () => {
      if (this.connecting || next >= ports.length) return;
      for (let i = 0; i < BIRTHDAY_BATCH && next < ports.length; i++, next++) this.ping({ host: target.host, port: ports[next] });
      this.after(BIRTHDAY_BATCH_MS, batch);
    };
    // The hard side's low-TTL round gets a head start so its mappings exist before the first probes arrive.
    this.after(delay + BIRTHDAY_HEAD_START_MS, batch);
  }

  private succeed(sock: UdpSock, remote: Addr): void {
    if (this.done) return;
    this.finish();
    // Birthday: keep only the socket that got through.
    for (const s of this.sockets) if (s !== sock) this.o.io.closeSocket(s, SPARE_SOCKET_CLOSE_MS);
    this.sockets = [];
    this.resolveFn({ stream: this.stream, socket: sock, remote, remoteStreamId: this.remoteStreamId, role: this.role, mode: this.mode });
  }

  private fail(outcome: PunchOutcome | 'cancelled'): void {
    if (this.done) return;
    this.finish();
    this.stream.destroy();
    for (const s of this.sockets) this.o.io.closeSocket(s);
    this.sockets = [];
    this.rejectFn(new PunchFailed(outcome));
  }

  private finish(): void {
    this.done = true;
    for (const t of this.timers) this.o.clock.clearTimeout(t);
    this.timers.clear();
  }

  /** Abandons the attempt (the peer asked for another, a direct path came up otherwise, or we stop). Idempotent. */
  close(): void {
    this.fail('cancelled');
  }
}
