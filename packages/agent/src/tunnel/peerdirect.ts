// The direct half of one peer, owned by its PeerPaths: the punch attempt under way (PunchSession), the upgrade
// policy (when to punch again), the ping channel, and the heartbeats and roaming on the punched path (DirectPath).
// It hands a punched UDX stream to PeerPaths, which runs the link handshake and puts the session on it.
import { randomBytes } from 'node:crypto';
import type { Rendezvous } from '@edgemesh/common/tunnel/protocol';
import type { Timer } from './clock.ts';
import { DirectPath } from './directpath.ts';
import type { Link, Transport } from './link.ts';
import type { PeerEnv, RendezvousOut } from './peerenv.ts';
import { BIRTHDAY_FOLLOWUP_MS, BIRTHDAY_SOCKET_BUDGET, REFUSAL_BIRTHDAY_UNASKED } from './limits.ts';
import { addrKey, birthdayRole, followUpMode, shouldTryUpgrade, upgradeAfter, upgradeDelayMs, type UpgradeState } from './punch.ts';
import { PunchFailed, PunchSession, type PunchResult } from './punchsession.ts';
import { SPARE_SOCKET_CLOSE_MS, TICK_MS } from './timers.ts';
import type { DirectEnv, PeerChannel, PeerPacket } from './udptypes.ts';

/** What the direct half needs from its PeerPaths. */
export interface DirectHost {
  readonly node: string;
  readonly env: PeerEnv;
  /** Runs the link handshake over a punched stream; resolves once the link joined the session. */
  establishDirect(t: Transport, initiator: boolean): Promise<Link>;
  /** The direct link, when one is up. */
  directLink(): Link | undefined;
  /** The heartbeats say the direct path is dead (or the peer asked for a new one): drop it. */
  failDirect(why: string): void;
  /** Whether anything uses the peer (upgrade attempts only then). */
  inUse(): boolean;
}

export class PeerDirect {
  private readonly host: DirectHost;
  private readonly d: DirectEnv;
  private channel: PeerChannel | undefined;
  private punch: PunchSession | undefined;
  private path: DirectPath | undefined;
  private upgrade: UpgradeState = { lastAttemptMs: -Infinity, lastOutcome: 'never' };
  private upgradeTimer: Timer | undefined;
  private tickTimer: Timer | undefined;
  private closed = false;
  /** When a normal punch with this peer last ended without a direct path (a birthday request may follow it). */
  private normalEndedAt = -Infinity;

  constructor(host: DirectHost, d: DirectEnv) {
    this.host = host;
    this.d = d;
  }

  private get env(): PeerEnv {
    return this.host.env;
  }

  setKey(key: Buffer): void {
    this.channel?.close();
    this.channel = this.d.channel(key, (p) => this.onPacket(p));
  }

  get punching(): boolean {
    return !!this.punch;
  }

  /** Where the punched path goes now (it follows the peer when it roams). */
  get remote(): string | undefined {
    return this.path ? addrKey(this.path.addr) : undefined;
  }

  /** A direct path to this peer was lost (and not yet regained): our NAT may have mapped us anew (roaming, a router
   *  restart), so the STUN answer we would offer as a candidate is asked again first. */
  private mappingMayHaveChanged(): boolean {
    return this.upgrade.sinceLost !== undefined;
  }

  /** Starts punching when none is under way and the upgrade policy says it is time (else makes sure the attempt
   *  that is due will happen). */
  want(): void {
    if (this.closed || this.punch || this.host.directLink()) return;
    if (shouldTryUpgrade(this.upgrade, this.env.clock.now(), this.env.upgradeRetryMs)) return this.attempt('normal');
    if (!this.upgradeTimer) this.scheduleUpgrade();
  }

  /** A punch attempt now (the policy was applied by the caller). */
  private attempt(mode: 'normal' | 'birthday'): void {
    if (this.closed || this.punch || this.host.directLink()) return;
    this.upgrade = { ...this.upgrade, lastAttemptMs: this.env.clock.now() };
    void this.d.freshNat(this.mappingMayHaveChanged()).then((nat) => {
      if (this.closed || this.punch || this.host.directLink()) return;
      const p = this.newPunch(randomBytes(8).toString('hex'), true, mode, nat);
      if (!p) return this.scheduleUpgrade(); // the punch budget is used up: the relay carries on, try again later
      this.env.metrics.attempts.inc({ role: 'initiator' });
      // Through every server we are on: the peer may be connected to only some of them (it answers the first copy).
      if (!this.env.rendezvous({ to: this.host.node, sid: p.sid, mode, cand: this.d.candidates(), nat, streamId: p.stream.id })) p.close();
    }).catch((e: unknown) => this.failed(e));
  }

  /** A punch attempt holding its budgets (limits.ts: punch sessions; a birthday round's sockets, one round at a
   *  time), given back when it ends however it ends. Undefined when a budget refused it (counted and logged there). */
  private newPunch(sid: string, requested: boolean, mode: 'normal' | 'birthday', nat: PunchSession['peerNat']): PunchSession | undefined {
    const b = this.env.budgets;
    const lease = b?.punch.tryAcquire();
    if (b && !lease) return undefined;
    const round = mode === 'birthday' ? b?.birthday.tryAcquire(BIRTHDAY_SOCKET_BUDGET) : undefined;
    if (b && mode === 'birthday' && !round) {
      lease?.release();
      return undefined;
    }
    // The initiator learns the peer's key from the reply: pings go through whatever channel exists by then.
    const lazy: PeerChannel = {
      ping: (to, id, sock, ttl) => this.channel ? this.channel.ping(to, id, sock, ttl) : randomBytes(12),
      pong: (tx, to, sock, id) => this.channel?.pong(tx, to, sock, id),
      close: () => {},
    };
    const p = new PunchSession({ sid, requested, mode, myNat: nat, io: this.d.io, channel: lazy, clock: this.env.clock });
    this.punch = p;
    const release = () => { lease?.release(); round?.release(); };
    p.result.then((r) => { release(); this.punched(p, r); }, (e: PunchFailed) => { release(); this.punchEnded(p, e.outcome); }).catch((e: unknown) => this.failed(e));
    return p;
  }

  private punched(p: PunchSession, r: PunchResult): void {
    if (this.punch !== p || this.closed) return void r.stream.destroy();
    this.host.establishDirect({ stream: r.stream, kind: 'udx', remote: addrKey(r.remote) }, r.role === 'initiator').then(
      () => {
        if (this.punch !== p || this.closed) return;
        this.punch = undefined;
        const now = this.env.clock.now();
        this.path = new DirectPath({ addr: r.remote, socket: r.socket, stream: r.stream, remoteStreamId: r.remoteStreamId, channel: this.channel!, clock: this.env.clock });
        this.upgrade = upgradeAfter(this.upgrade, 'direct', now);
        this.env.metrics.outcomes.inc({ outcome: p.mode === 'birthday' ? 'birthday-direct' : 'direct' });
        this.env.metrics.ttd.observe((now - p.startedAt) / 1000);
        this.env.log.info({ peer: this.host.node, remote: addrKey(r.remote), ms: Math.round(now - p.startedAt), role: r.role, mode: p.mode }, 'direct path up');
        this.tick();
      },
      (e: Error) => {
        this.env.log.debug({ peer: this.host.node, err: e.message }, 'direct link handshake failed');
        this.punchEnded(p, 'failed');
      },
    ).catch((e: unknown) => this.failed(e));
  }

  /** A bug on the way of a punch (never expected): logged; the attempt is dropped, the relay carries on. */
  private failed(e: unknown): void {
    this.env.log.error({ peer: this.host.node, err: e }, 'punch attempt failed unexpectedly');
    this.punch?.close();
  }

  private punchEnded(p: PunchSession, outcome: PunchFailed['outcome']): void {
    if (p.mode === 'normal') this.normalEndedAt = this.env.clock.now();
    if (this.punch !== p) return;
    this.punch = undefined;
    if (this.closed) return;
    // Cancelled: whatever replaced it (the peer's attempt) reschedules when it ends; if nothing did, this does.
    if (outcome === 'cancelled') return this.scheduleUpgrade();
    this.env.metrics.outcomes.inc({ outcome: p.mode === 'birthday' ? `birthday-${outcome}` : outcome });
    this.upgrade = upgradeAfter(this.upgrade, outcome, this.env.clock.now());
    this.env.log.debug({ peer: this.host.node, outcome, role: p.role, mode: p.mode }, 'punch finished without a direct path');
    const next = followUpMode(outcome, p.mode, p.requested, this.d.natType(), p.peerNat);
    if (next) return this.attempt(next);
    this.scheduleUpgrade();
  }

  private scheduleUpgrade(): void {
    const clock = this.env.clock;
    clock.clearTimeout(this.upgradeTimer);
    const wait = upgradeDelayMs(this.upgrade, this.env.upgradeRetryMs) - (clock.now() - this.upgrade.lastAttemptMs);
    // The timer is the policy: when it fires the attempt is made, whatever a timer's rounding says the clock reads.
    this.upgradeTimer = clock.setTimeout(() => {
      this.upgradeTimer = undefined;
      if (this.closed) return;
      // An idle peer is not punched for; the next dial or link asks again (want).
      if (this.host.inUse()) this.attempt('normal');
    }, Math.max(0, wait));
  }

  /** The server passed on the peer's rendezvous (request or reply); `reply` answers through the same server. */
  onRendezvous(m: Rendezvous, reply: (msg: RendezvousOut) => boolean): void {
    if (this.closed) return;
    if (m.reply) {
      const p = this.punch;
      if (p && p.sid === m.sid && p.requested && !p.isStarted) p.start(m.cand, m.nat, m.streamId);
      return;
    }
    if (this.punch?.sid === m.sid) return; // a second copy through another server
    if (m.mode === 'birthday' && !this.birthdayWanted(m)) {
      this.env.budgets?.budgets.refuse(REFUSAL_BIRTHDAY_UNASKED, { peer: this.host.node, nat: m.nat });
      return;
    }
    if (this.punch) {
      // Simultaneous requests: the node with the smaller name keeps its own.
      if (this.punch.requested && this.env.self < this.host.node) return;
      this.punch.close();
    }
    // The peer lost the direct path (it would not ask otherwise): ours is stale too.
    if (this.host.directLink()) this.host.failDirect('peer asked for a new direct path');
    void this.d.freshNat(this.mappingMayHaveChanged()).then((nat) => {
      if (this.closed || this.punch) return;
      const p = this.newPunch(m.sid, false, m.mode, nat);
      if (!p) return; // a budget refused it: no answer, the peer's attempt times out and the relay carries on
      this.env.metrics.attempts.inc({ role: 'responder' });
      reply({ to: this.host.node, sid: m.sid, reply: true, mode: m.mode, cand: this.d.candidates(), nat, streamId: p.stream.id });
      p.start(m.cand, m.nat, m.streamId, { fromMs: m.rttFromMs ?? 0, toMs: m.rttToMs ?? 0 });
    }).catch((e: unknown) => this.failed(e));
  }

  /**
   * Whether we follow a peer's birthday request: only as the follow-up of a normal punch with this peer that is under
   * way or failed within BIRTHDAY_FOLLOWUP_MS, and only when our own view of the NATs says birthday mode applies
   * (exactly one side symmetric). A birthday round costs 256 sockets or 1,600 probes: never on a stranger's word.
   */
  private birthdayWanted(m: Rendezvous): boolean {
    if (!birthdayRole(this.d.natType(), m.nat)) return false;
    const p = this.punch;
    if (p && p.mode === 'normal' && p.isStarted) return true;
    return this.env.clock.now() - this.normalEndedAt < BIRTHDAY_FOLLOWUP_MS;
  }

  /** An authenticated ping or pong from the peer on our UDP socket(s). */
  private onPacket(p: PeerPacket): void {
    this.punch?.noteVerified(p.from);
    const dp = this.path;
    const link = this.host.directLink();
    const r = dp?.heard(p);
    if (r?.roamed) {
      this.env.metrics.roams.inc();
      this.env.log.info({ peer: this.host.node, to: r.roamed }, 'peer address changed, following it');
      if (link) link.remote = r.roamed;
    }
    // What names our link's stream is its liveness, a heartbeat's answer its RTT (link.ts: a UDX link sends no PING).
    if (p.type === 'ping') {
      if (r?.alive) link?.noteHeard();
      this.channel?.pong(p.txid, p.from, p.sock, dp?.stream.id ?? this.punch?.stream.id ?? 0);
      this.punch?.onPing(p.from);
      return;
    }
    const rtt = dp?.heartbeatRtt(p.txid);
    if (rtt !== undefined) {
      if (r?.alive) link?.noteHeard(rtt);
      return;
    }
    this.punch?.onPong(p.txid, p.from, p.streamId, p.sock);
  }

  private tick(): void {
    this.tickTimer = undefined;
    const dp = this.path;
    if (!dp || this.closed) return;
    const dead = dp.tick();
    if (dead) return this.host.failDirect(dead);
    this.tickTimer = this.env.clock.setTimeout(() => this.tick(), TICK_MS);
  }

  /** A heartbeat on the direct path now (the direct link's ping(): a dial waits on it, or it is suspected dead). */
  probe(): void {
    this.path?.probe();
  }

  /** The direct link is gone (given up, or it died): forget the path, punch again soon. */
  lost(): void {
    const dp = this.path;
    this.path = undefined;
    this.env.clock.clearTimeout(this.tickTimer);
    this.tickTimer = undefined;
    if (dp) {
      dp.stream.destroy();
      if (dp.socket !== this.d.io.main) this.d.io.closeSocket(dp.socket, SPARE_SOCKET_CLOSE_MS);
    }
    if (this.closed) return;
    this.upgrade = upgradeAfter(this.upgrade, 'lost', this.env.clock.now());
    this.scheduleUpgrade();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.env.clock.clearTimeout(this.upgradeTimer);
    this.punch?.close();
    this.punch = undefined;
    this.lost();
    this.channel?.close();
  }
}
