// Everything about one peer (the shape of Tailscale magicsock's endpoint): its relay links, its direct link and the
// heartbeats on it, the punch attempt under way, the upgrade policy, the choice of path, and the session whose
// streams ride on whichever link is chosen. Nothing else keeps per-peer state. Transports, sockets and time come from
// PeerEnv, so this runs with fakes in unit tests; decisions are punch.ts's.
import { randomBytes } from 'node:crypto';
import type { Logger } from '@edgemesh/common/log';
import type { Rendezvous } from '@edgemesh/common/tunnel/protocol';
import { DialError, type Deadline, type DialTarget } from '../proxy/dialer.ts';
import type { Clock, Timer } from './clock.ts';
import { checkHello, helloProof } from './identity.ts';
import { Link, type Transport } from './link.ts';
import { encodeHello, isNodeAccess, SID_BYTES, type Hello, type OpenHeader } from './linkproto.ts';
import { Session } from './mux.ts';
import { PeerDirect, type DirectHost } from './peerdirect.ts';
import type { PeerEnv, PeerStatus, RendezvousOut } from './peerenv.ts';
import { PeerTcp, type TcpHost } from './peertcp.ts';
import type { TcpPeer } from './tcplink.ts';
import { chooseTransport } from './transport.ts';
import type { TunnelStream } from './stream.ts';
import { ATTACH_TIMEOUT_MS, directFallbackMs, RELINK_RETRY_MS, SESSION_RESUME_MS, TICK_MS } from './timers.ts';

const NO_SID = Buffer.alloc(SID_BYTES);

export class PeerPaths implements DirectHost, TcpHost {
  readonly node: string;
  readonly env: PeerEnv;
  private readonly clock: Clock;
  private readonly log: Logger;
  /** The peer's key as a certificate proved it (never a server's word), and until when that certificate holds. */
  private key: Buffer | undefined;
  private keyValidUntil = -Infinity;
  private readonly d: PeerDirect | undefined; // the direct half (punching, upgrade policy, heartbeats); undefined: no UDP
  readonly t: PeerTcp | undefined; // the TCP half (peertcp.ts; tunnel.ts hands it accepted connections); undefined: no TCP
  private session: Session;
  private readonly links = new Set<Link>();
  private direct: Link | undefined;
  private relayPending = false;
  private suspectAt: number | undefined; // when the direct path stopped answering a dial (its streams are on the relay)
  private timers: Partial<Record<'suspect' | 'resume' | 'attach' | 'relink', Timer>> = {};
  private closed = false;
  private resetting = false;
  /** Settled when the session is next on a link, or nothing can carry it (connect()). */
  private linked: PromiseWithResolvers<void> | undefined;

  constructor(node: string, env: PeerEnv) {
    this.node = node;
    this.env = env;
    this.clock = env.clock;
    this.log = env.log.child({ peer: node });
    this.session = this.newSession(randomBytes(SID_BYTES));
    this.d = env.direct ? new PeerDirect(this, env.direct) : undefined;
    this.t = env.tcp ? new PeerTcp(this, env.tcp) : undefined;
  }

  private newSession(localSid: Buffer, after?: Session): Session {
    const s = new Session({ localSid, odd: this.env.self < this.node, clock: this.clock, after });
    const rtt = () => (s.current as Link | undefined)?.rttMs ?? null;
    s.onIncoming = (h, accept, reject) => (isNodeAccess(h) ? this.env.serveNode(this.node, h, accept, reject, rtt()) : this.env.serve(this.node, h, accept, reject, rtt()));
    s.onResumed = (l) => { if (this.session === s && l === s.current) this.clear('attach'); };
    s.onFollow = (l) => { this.clear('resume'); this.log.debug({ link: l.id, transport: (l as Link).transport }, 'peer moved the session to another link'); };
    s.onProtocolError = (l, why) => (l as Link).close(new Error(`protocol error: ${why}`));
    return s;
  }

  private set(name: keyof PeerPaths['timers'], ms: number, fn: () => void): void {
    this.clear(name);
    this.timers[name] = this.clock.setTimeout(() => { this.timers[name] = undefined; if (!this.closed) fn(); }, ms);
  }

  private clear(name: keyof PeerPaths['timers']): void {
    this.clock.clearTimeout(this.timers[name]);
    this.timers[name] = undefined;
  }

  /** The peer's key, proved by a verified certificate (on a link, or a signed rendezvous offer). */
  private setKey(key: Buffer, validUntil = -Infinity): void {
    if (!this.key?.equals(key)) this.d?.setKey(key);
    [this.key, this.keyValidUntil] = [key, this.key?.equals(key) ? Math.max(validUntil, this.keyValidUntil) : validUntil];
  }

  // ---------- dialing ----------

  /** A stream to `target` on the peer, answered OK within `deadline` (the relay takes over a silent direct path). */
  open(t: DialTarget, deadline: Deadline): Promise<TunnelStream> {
    return this.openStream({ target: { protocol: t.protocol, serviceKey: t.serviceKey, ip: t.ip, port: t.port }, timeoutMs: 0 }, `${t.ip}:${t.port}`, deadline);
  }
  /** A stream with any header (a node-access stream: `{nodePort}`); `what` names its target in errors. */
  async openStream(header: OpenHeader, what: string, deadline: Deadline): Promise<TunnelStream> {
    if (this.closed) throw new DialError('unreachable', `node ${this.node} was forgotten`);
    const remaining = deadline.remaining();
    if (deadline.signal.aborted || remaining <= 0) throw new DialError('timeout', `dial ${this.node} ${what}: no time left`);
    this.d?.want();
    const { stream, answered } = this.session.open({ ...header, timeoutMs: remaining }, this.clock.now() + remaining);
    let path = (this.session.current as Link | undefined)?.kind ?? 'relay';
    const sentAt = this.clock.now();
    if (!this.session.current) this.reselect();
    else (this.session.current as Link).probe();
    const fallback = this.clock.setTimeout(() => {
      const cur = this.session.current as Link | undefined;
      if (!stream || !this.session.isOpening(stream) || !cur || cur.heardSince(sentAt)) return;
      if (cur.transport === 'udx') this.suspectDirect(); else if (cur.transport === 'tcp') this.t?.fail(cur, 'a dial got no answer on the TCP link');
    }, directFallbackMs(remaining));
    const onAbort = () => { if (stream) this.session.cancel(stream); };
    deadline.signal.addEventListener('abort', onAbort, { once: true });
    try {
      const { stream: s, via } = await answered;
      path = (via as Link | undefined)?.kind ?? path;
      s.path = path;
      this.env.metrics.streams.inc({ path, outcome: 'ok' });
      return s;
    } catch (e) {
      const err = deadline.signal.aborted ? new DialError('timeout', `dial ${this.node} ${what}: timed out`) : e instanceof DialError ? e : new DialError('unreachable', (e as Error).message);
      this.env.metrics.streams.inc({ path, outcome: err.code });
      throw err;
    } finally {
      this.clock.clearTimeout(fallback);
      deadline.signal.removeEventListener('abort', onAbort);
    }
  }

  /** Brings a link up without a stream (a successor warming its predecessor's links, handoff/takeover.ts): a relay
   *  link at once, punching in parallel. Resolves once the session is on a link. */
  connect(): Promise<void> {
    if (this.closed) return Promise.reject(new DialError('unreachable', `node ${this.node} was forgotten`));
    this.d?.want();
    if (this.current) return Promise.resolve();
    if (!this.linked) (this.linked = Promise.withResolvers<void>()).promise.catch(() => {});
    this.ensureRelay();
    return this.linked.promise;
  }

  private settleLinked(err?: Error): void {
    const l = this.linked;
    this.linked = undefined;
    if (err) l?.reject(err); else l?.resolve();
  }

  /** A dial got no answer on the direct path within its share of the deadline: move the session to the relay until
   *  the direct link is heard from again. */
  private suspectDirect(): void {
    if (this.suspectAt !== undefined) return;
    this.suspectAt = this.clock.now();
    this.log.debug('no answer on the direct path, moving to the relay');
    this.direct?.ping();
    if (this.direct) this.session.distrust(this.direct);
    this.ensureRelay();
    this.reselect();
    this.watchSuspect();
  }

  // ---------- links ----------

  private hello(handshakeHash: Buffer, remoteKey: Buffer): Buffer {
    const [sid, peerSid] = [this.session.localSid, this.session.remoteSid ?? NO_SID];
    return encodeHello({ sid, peerSid, proof: helloProof(this.env.keyPair, remoteKey, handshakeHash, sid, peerSid), identity: this.env.identity.ourCert() });
  }

  private async establish(t: Transport, initiator: boolean, side: 'in' | 'out', tls?: TcpPeer): Promise<Link> {
    this.env.budgets?.linkLease(this.node, t.stream); // links per peer (limits.ts): released when the transport closes
    const o = { keyPair: this.env.keyPair, peer: this.node, initiator, clock: this.clock, hello: (hh: Buffer, rk: Buffer) => this.hello(hh, rk) };
    const link = tls ? Link.overTls(t, o, tls.remoteKey, tls.binding) : await Link.establish(t, o);
    // A key a valid certificate of this peer proved before: use the link at once (a first stream rides the last
    // handshake message), check the HELLO when it comes; a fresh key waits for its certificate. A HELLO naming another
    // session (the peer restarted) starts the session over below.
    const early = !!this.key?.equals(link.remoteKey) && Date.now() < this.keyValidUntil;
    if (early) this.adopt(link, side);
    let hello: Hello;
    try {
      hello = await link.hello;
    } catch (e) {
      link.close();
      throw e;
    }
    if (this.closed) {
      link.close();
      return link;
    }
    const ok = checkHello(this.env.identity, this.env.keyPair, this.node, link, hello);
    if ('why' in ok) {
      this.env.metrics.peersRefused.inc({ reason: ok.reason });
      this.log.warn({ transport: link.transport, why: ok.why }, 'link HELLO refused, dropping the link');
      link.close();
      throw new DialError('unreachable', ok.why);
    }
    this.setKey(link.remoteKey, ok.notAfter);
    if (!early) this.adopt(link, side);
    if (this.session.remoteSid && !this.session.remoteSid.equals(hello.sid)) {
      // The peer restarted, or gave this session up: our streams cannot resume. Keep our id (see docs).
      this.resetSession('peer-restarted', this.session.localSid, link);
      this.session.remoteSid = hello.sid;
      this.reselect();
    }
    this.session.remoteSid = hello.sid;
    return link;
  }

  /** A link whose peer proved its key: it joins the session, which may move onto it. */
  private adopt(link: Link, side: 'in' | 'out'): void {
    if (this.closed || link.closed || (link.transport === 'tcp' && !this.t?.adopt(link))) return link.close(); // one TCP link kept
    this.links.add(link);
    if (link.transport === 'udx') [this.direct, link.outOfBandPing] = [link, () => this.d?.probe()];
    const bytesIn = this.env.metrics.bytes.labels({ path: link.kind, direction: 'in' });
    const bytesOut = this.env.metrics.bytes.labels({ path: link.kind, direction: 'out' });
    let seenIn = 0, seenOut = 0;
    const count = () => { bytesIn.inc(link.bytesIn - seenIn); bytesOut.inc(link.bytesOut - seenOut); seenIn = link.bytesIn; seenOut = link.bytesOut; };
    link.on('pong', count);
    link.once('close', (err?: Error) => {
      count();
      if (link === this.direct) this.log.info({ err: err?.message }, 'direct link closed, the session moves to another link');
      else this.log.debug({ transport: link.transport, server: link.server, err: err?.message }, 'link closed');
      this.onLinkClose(link);
    });
    link.start((type, p) => this.session.onFrame(link, type, p));
    this.env.metrics.links.inc({ path: link.kind, side });
    this.log.debug({ link: link.id, transport: link.transport, server: link.server, side }, 'link up');
    this.reselect();
    if (link.kind === 'relay') this.d?.want();
  }

  private onLinkClose(link: Link): void {
    this.links.delete(link);
    if (link === this.direct) {
      // The direct link died under us (not a failover we decided): re-punch soon.
      this.direct = undefined;
      this.suspectAt = undefined;
      this.d?.lost();
    }
    this.t?.lost(link);
    this.session.detach(link);
    if (!this.closed && !this.resetting) this.reselect();
  }

  /** Puts the session on the best link, opening a relay link when there is none. */
  private reselect(): void {
    if (this.closed) return;
    const direct = this.direct && !this.direct.closed ? this.direct : undefined;
    const cur = this.session.current as Link | undefined;
    let relay = cur?.kind === 'relay' && !cur.closed ? cur : undefined;
    for (const l of this.links) if (!relay && l.kind === 'relay' && !l.closed) relay = l;
    const tcp = this.t?.up;
    const want = chooseTransport({ tcp: !!tcp, udx: !!direct, udxSuspect: this.suspectAt !== undefined, relay: !!relay });
    const link = want === 'tcp' ? tcp : want === 'udx' ? direct : want === 'relay' ? relay : undefined;
    if (this.suspectAt !== undefined && !relay) this.ensureRelay();
    if (!link) {
      this.session.detach();
      // Streams or opens waiting: find them a transport, within the resume bound (an idle session waits for a dial).
      if (this.session.size === 0) return;
      this.ensureRelay();
      if (!this.timers.resume) this.set('resume', SESSION_RESUME_MS, () => this.resetSession('timeout', randomBytes(SID_BYTES)));
      return;
    }
    this.clear('resume');
    this.settleLinked();
    if (this.session.current === link) return;
    // Leaving a direct link suspected dead: opens sent there since are asked again on the new link.
    if (this.direct && link !== this.direct && this.suspectAt !== undefined) this.session.distrust(this.direct);
    this.log.debug({ link: link.id, transport: link.transport, suspect: this.suspectAt !== undefined }, 'moving the session to a link');
    this.session.attach(link);
    this.env.metrics.resumes.inc({ path: link.kind });
    this.set('attach', ATTACH_TIMEOUT_MS, () => {
      if (this.session.current === link && !this.session.isResumed) link.close(new Error('the peer did not answer ATTACH'));
    });
  }

  /** Opens a relay link unless one is up or on its way. */
  private ensureRelay(): void {
    if (this.closed || this.relayPending) return;
    for (const l of this.links) if (l.kind === 'relay' && !l.closed) return;
    this.relayPending = true;
    this.env.openRelay(this.node).then((r) => this.establish({ stream: r.stream, kind: 'relay', remote: r.server, server: r.server }, true, 'out')).then(() => { this.relayPending = false; }, (e: Error) => {
      this.relayPending = false;
      if (this.closed) return;
      this.log.debug({ err: e.message }, 'no relay link');
      const current = this.session.current;
      // Nothing else can carry a new stream now: the opens waiting fail at once (the proxy tries another endpoint).
      if (!current && !this.direct && !this.d?.punching) {
        const err = e instanceof DialError ? e : new DialError('unreachable', e.message);
        this.session.failOpening(err);
        this.settleLinked(err);
      }
      if (!current && this.session.size > 0) this.set('relink', RELINK_RETRY_MS, () => this.reselect());
    }).catch((e: unknown) => this.log.error({ err: e }, 'relay link setup failed unexpectedly'));
  }

  /** A relay stream the peer opened to us through a server. */
  onIncomingRelay(stream: Transport['stream'], server: string): void {
    if (this.closed) return void stream.destroy();
    this.establish({ stream, kind: 'relay', remote: server, server }, false, 'in').catch((e: Error) => this.log[e instanceof DialError && e.code === 'refused' ? 'debug' : 'warn']({ err: e.message }, 'incoming relay link failed')); // a links-budget refusal is counted and logged rate-limited there
  }

  private resetSession(reason: 'timeout' | 'peer-restarted', localSid: Buffer, keep?: Link): void {
    const old = this.session;
    if (old.size > 0) {
      this.env.metrics.sessionsReset.inc({ reason });
      this.log.info({ reason, streams: old.size }, 'peer session reset, its streams end');
    }
    this.session = this.newSession(localSid, old);
    // Opens the old peer never answered are asked again of the new one (a dial does not fail because of a restart).
    if (reason === 'peer-restarted') old.moveOpenings(this.session);
    old.close(new Error(reason === 'timeout' ? 'no path to the peer within the resume bound' : 'the peer restarted'));
    this.clear('resume');
    this.clear('attach');
    // Links of the old session carry nothing that can be resumed; the new session starts on `keep` (the caller
    // adopts it next, so closing the others must not go looking for a path meanwhile).
    this.resetting = true;
    try {
      for (const l of [...this.links]) if (l !== keep) l.close();
    } finally {
      this.resetting = false;
    }
  }

  // ---------- direct path ----------

  /** A punched stream or a verified TLS connection (`tls`, peertcp.ts): the link handshake; the session moves onto it. */
  establishDirect(t: Transport, initiator: boolean, tls?: TcpPeer): Promise<Link> {
    return this.establish(t, initiator, initiator ? 'out' : 'in', tls);
  }

  /** Bytes (inside Noise) on the peer's open links (the fleet report's per-peer traffic). */
  linkBytes(): { bytesIn: number; bytesOut: number } {
    const open = [...this.links].filter((l) => !l.closed);
    return { bytesIn: open.reduce((n, l) => n + l.bytesIn, 0), bytesOut: open.reduce((n, l) => n + l.bytesOut, 0) };
  }

  directLink(): Link | undefined { return this.direct && !this.direct.closed ? this.direct : undefined; }

  inUse(): boolean { return this.links.size > 0 || this.session.size > 0; }

  onRendezvous(m: Rendezvous, reply: (msg: RendezvousOut) => boolean, provedKey: Buffer): void {
    if (this.closed || !this.d) return;
    // The offer's certificate (verified by the tunnel) proved this key: pings are MAC'd with it; the punched link
    // still proves the certificate in its HELLO.
    this.setKey(provedKey);
    this.t?.onCandidates(m.cand, m.nat);
    this.d.onRendezvous(m, reply);
  }

  /** The peer's key as last proved (revocation checks). */
  get provedKey(): Buffer | undefined { return this.key; }

  /** The direct path stopped answering: drop it; the session moves to the relay, re-punching follows. */
  failDirect(why: string): void {
    const l = this.direct;
    if (!l) return;
    this.env.metrics.failovers.inc();
    this.log.info({ why }, 'direct path lost, falling back to relay');
    this.direct = undefined;
    this.suspectAt = undefined;
    this.d?.lost();
    // Have the relay ready (Tailscale keeps its DERP path the same way).
    this.ensureRelay();
    l.close(new Error(why));
  }

  private watchSuspect(): void {
    this.set('suspect', TICK_MS, () => {
      if (this.suspectAt === undefined) return;
      if (!this.direct || this.direct.heardSince(this.suspectAt)) {
        this.suspectAt = undefined;
        return this.reselect();
      }
      this.watchSuspect();
    });
  }

  // ---------- state ----------

  /** The link the session sends on now. */
  get current(): Link | undefined {
    const l = this.session.current as Link | undefined;
    return l && !l.closed ? l : undefined;
  }

  status(): PeerStatus | undefined {
    const cur = this.session.current as Link | undefined;
    if (cur && !cur.closed) {
      const remote = cur.transport === 'udx' ? (this.d?.remote ?? cur.remote) : cur.transport === 'tcp' ? cur.remote : (cur.server ?? null);
      return { node: this.node, path: cur.kind, transport: cur.transport, remote, rttMs: cur.rttMs };
    }
    if (this.relayPending || this.d?.punching || this.links.size) return { node: this.node, path: 'connecting', transport: null, remote: null, rttMs: null };
    return undefined;
  }

  /** Drops every link, the punch attempt and the session (the node left the cluster, or we stop). Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const k of Object.keys(this.timers) as (keyof PeerPaths['timers'])[]) this.clear(k);
    this.d?.close();
    this.t?.close();
    this.settleLinked(new DialError('unreachable', `node ${this.node} was forgotten`));
    this.session.close(new Error(`node ${this.node} was forgotten`));
    for (const l of [...this.links]) l.close();
  }
}
