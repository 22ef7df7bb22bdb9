// The TCP half of one peer, owned by its PeerPaths: dialing the peer's addresses over TCP when a rendezvous names
// them (transport.ts decides which and when), taking the peer's TCP links (tcplink.ts), keeping one when both sides
// dialed at once, and the heartbeat that closes a silent TCP link (the session then moves to UDX or the relay).
import type { Candidate } from './punch.ts';
import type { Timer } from './clock.ts';
import type { Link, Transport } from './link.ts';
import type { PeerEnv, TcpEnv } from './peerenv.ts';
import type { TcpPeer } from './tcplink.ts';
import { TCP_HEARTBEAT_MS, TCP_REDIAL_MS, TCP_SILENT_MS } from './timers.ts';
import { keepTcpLink, shouldDialTcp, tcpDialTargets } from './transport.ts';

/** What the TCP half needs from its PeerPaths. */
export interface TcpHost {
  readonly node: string;
  readonly env: PeerEnv;
  /** Runs the link HELLO over a verified TLS connection; resolves once the link joined the session. */
  establishDirect(t: Transport, initiator: boolean, tls: TcpPeer): Promise<Link>;
}

const tcpTransport = (p: TcpPeer): Transport => ({ stream: p.socket, kind: 'tcp', remote: p.remote });

export class PeerTcp {
  private readonly host: TcpHost;
  private readonly t: TcpEnv;
  /** The TCP link the session may use. */
  private link: Link | undefined;
  private dialing = false;
  private lastFailedAt = -Infinity;
  private beat: Timer | undefined;
  private redial: Timer | undefined;
  /** The peer's last candidates and NAT type: dialed again TCP_REDIAL_MS after a failed dial or a lost link. */
  private last: { cand: readonly Candidate[]; nat: string } | undefined;
  private closed = false;

  constructor(host: TcpHost, t: TcpEnv) {
    this.host = host;
    this.t = t;
  }

  private get env(): PeerEnv {
    return this.host.env;
  }

  /** The TCP link when one is up. */
  get up(): Link | undefined {
    return this.link && !this.link.closed ? this.link : undefined;
  }

  /** The peer's candidates (a rendezvous request or reply): dial them over TCP unless a link is up or due later. */
  onCandidates(cand: readonly Candidate[], peerNat: string): void {
    this.last = { cand, nat: peerNat };
    const targets = tcpDialTargets(cand, { ourSubnets: this.t.subnets(), peerNat });
    const now = this.env.clock.now();
    if (this.closed || !shouldDialTcp({ haveTcp: !!this.up, dialing: this.dialing, lastFailedAt: this.lastFailedAt, now, retryMs: TCP_REDIAL_MS, targets: targets.length })) return;
    this.dialing = true;
    this.t.dial(this.host.node, targets).then((p) => {
      if (this.closed) return void p.socket.destroy();
      return this.host.establishDirect(tcpTransport(p), true, p).then(() => {});
    }).catch((e: Error) => {
      this.lastFailedAt = this.env.clock.now();
      this.env.log.debug({ peer: this.host.node, err: e.message }, 'no TCP link, UDX or the relay carries on');
      this.scheduleRedial();
    }).finally(() => { this.dialing = false; });
  }

  /** Dial the last candidates again in TCP_REDIAL_MS (a firewall may heal; the UDX path brings no new rendezvous). */
  private scheduleRedial(): void {
    this.env.clock.clearTimeout(this.redial);
    this.redial = this.env.clock.setTimeout(() => {
      this.redial = undefined;
      if (!this.closed && !this.up && this.last) this.onCandidates(this.last.cand, this.last.nat);
    }, TCP_REDIAL_MS);
  }

  /** A verified TCP connection the peer opened to us (tcplink.ts's listener). */
  onIncoming(p: TcpPeer): void {
    if (this.closed) return void p.socket.destroy();
    this.host.establishDirect(tcpTransport(p), false, p).catch((e: Error) => this.env.log.debug({ peer: this.host.node, err: e.message }, 'incoming TCP link failed'));
  }

  /** A TCP link whose HELLO passed, about to join the session: false = drop it (the other TCP link is kept). */
  adopt(link: Link): boolean {
    const cur = this.up;
    if (cur && cur !== link) {
      if (keepTcpLink(this.env.self, this.host.node, cur.initiator, link.initiator) === 'existing') return false;
      this.link = link;
      cur.close(new Error('replaced by the TCP link both sides keep'));
    }
    this.link = link;
    this.env.clock.clearTimeout(this.beat);
    this.heartbeat(link);
    return true;
  }

  /** Pings the link every TCP_HEARTBEAT_MS; closes it when the peer has been silent for TCP_SILENT_MS. */
  private heartbeat(link: Link): void {
    this.beat = this.env.clock.setTimeout(() => {
      if (this.closed || link !== this.link || link.closed) return;
      if (!link.heardSince(this.env.clock.now() - TCP_SILENT_MS)) return this.fail(link, `no answer on the TCP link for ${TCP_SILENT_MS} ms`);
      link.ping();
      this.heartbeat(link);
    }, TCP_HEARTBEAT_MS);
  }

  /** The link stopped answering (heartbeat, or a dial got no answer on it in time): close it, the session moves. */
  fail(link: Link, why: string): void {
    if (link !== this.link) return;
    this.env.log.info({ peer: this.host.node, why }, 'TCP link lost, the session moves to UDX or the relay');
    this.lastFailedAt = this.env.clock.now();
    link.close(new Error(why));
  }

  /** A link of the peer closed. */
  lost(link: Link): void {
    if (link !== this.link) return;
    this.link = undefined;
    this.env.clock.clearTimeout(this.beat);
    if (!this.closed) this.scheduleRedial();
  }

  close(): void {
    this.closed = true;
    this.env.clock.clearTimeout(this.beat);
    this.env.clock.clearTimeout(this.redial);
  }
}
