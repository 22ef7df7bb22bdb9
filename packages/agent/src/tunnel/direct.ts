// Direct paths: one UDP socket (udx-native) for STUN, authenticated punch pings and the peers' UDX streams.
// Rendezvous through the server, punching to every candidate with peer-reflexive learning, first pong wins, a Noise
// link over a UDX stream; heartbeats on the active path, failover to the relay, upgrade retries, roaming.
// Decisions live in punch.ts (pure); this file is the I/O around them.
import { randomBytes } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import { networkInterfaces } from 'node:os';
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import UDX, { type UDXSocket, type UDXStream } from 'udx-native';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Logger } from '@edgemesh/common/log';
import type { RawKeyPair } from '@edgemesh/common/tunnel/ed25519';
import { bindingRequest, BINDING_SUCCESS, decodeStun, looksLikeStun, newTxid, stunKey } from '@edgemesh/common/tunnel/stun';
import { Link } from './link.ts';
import { decodePing, encodePing, isPing, keyId, P, peekKeyId, pingKey } from './ping.ts';
import {
  addrKey, birthdayPorts, birthdayRole, BIRTHDAY_BATCH, BIRTHDAY_BATCH_MS, BIRTHDAY_LOW_TTL, BIRTHDAY_PROBES, BIRTHDAY_SOCKETS,
  BIRTHDAY_TIMEOUT_MS, classifyNat, punchTimeoutMs, HEARTBEAT_MS, localCandidates, parseCandidates, pathAlive, punchPlan, punchSchedule, PUNCH_TIMEOUT_MS,
  ReplayWindow, sameAddr, shouldTryUpgrade, startDelayMs, STUN_FRESH_MS, type Addr, type Candidate, type NatType, type UpgradeState,
} from './punch.ts';
import type { ServerConn } from './serverconn.ts';
import type { DirectPaths, Tunnel } from './tunnel.ts';

export const TICK_MS = 250;
export const STUN_TIMEOUT_MS = 1_500;
const STUN_RETRIES_MS = [0, 250, 750];
/** After the punch window, the Noise handshake over the chosen path gets this much longer. */
const HANDSHAKE_SLACK_MS = 4_000;
/** After the last scheduled ping, wait this long for a late pong before calling the punch failed. */
const PUNCH_GRACE_MS = 500;
/** Birthday: the easy side starts probing this long after the hard side's first (low-TTL) round. */
const BIRTHDAY_HEAD_START_MS = 200;

export interface DirectOptions {
  tunnel: Tunnel;
  node: string;
  listenPort: number;
  keyPair: RawKeyPair;
  token: string;
  log: Logger;
  registry: Registry;
  /** Overrides for tests (named constants otherwise). */
  upgradeRetryMs?: number;
}

interface Session {
  sid: string;
  /** initiator: connects the UDX stream on the first pong; responder: accepts it (firewall). In birthday mode the
   *  easy side is the initiator whoever asked for the rendezvous. */
  role: 'initiator' | 'responder';
  mode: 'normal' | 'birthday';
  /** Whether we sent the rendezvous request (the side that may follow a failed normal punch with birthday mode). */
  requested: boolean;
  /** birthday, hard side: the extra sockets. */
  sockets: UDXSocket[];
  probeTimer?: NodeJS.Timeout;
  startedAt: number;
  startAt: number;
  cands: Candidate[];
  stream: UDXStream;
  remoteStreamId: number;
  txids: Map<string, Addr>;
  schedule: number[];
  next: number;
  connecting: boolean;
  peerNat: NatType;
  timer?: NodeJS.Timeout;
}

interface PeerDirect {
  node: string;
  key?: Buffer;
  pk?: Buffer;
  replay: ReplayWindow;
  upgrade: UpgradeState;
  session?: Session;
  verified: Set<string>;
  active?: { addr: Addr; socket: UDXSocket; lastHeard: number; lastPing: number; stream: UDXStream; link: Link; remoteStreamId: number; hbTx: Set<string> };
}

export class DirectManager implements DirectPaths {
  private readonly o: DirectOptions;
  private readonly log: Logger;
  private readonly udx = new UDX();
  private socket: UDXSocket | undefined;
  private readonly peers = new Map<string, PeerDirect>();
  private readonly byKeyId = new Map<string, PeerDirect>();
  private counter = BigInt(Date.now()) * 1000n;
  private nextStreamId = 1 + Math.floor(Math.random() * 0x3fffffff);
  private readonly stunWait = new Map<string, (a: Addr) => void>();
  private readonly stunKey: Buffer;
  private natType: NatType = 'unknown';
  private mapped: Addr | undefined;
  private stunAt = 0;
  private stunRunning = false;
  private tick: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly m: { attempts: Counter; outcomes: Counter; ttd: Histogram; nat: Gauge; spoofed: Counter; roams: Counter; malformed: Counter; birthday: Counter };

  constructor(o: DirectOptions) {
    this.o = o;
    this.log = o.log;
    this.stunKey = stunKey(o.token);
    const r = [o.registry];
    const self = this;
    this.m = {
      attempts: new Counter({ name: 'edgemesh_tunnel_punch_attempts_total', help: 'Hole-punch attempts by role', labelNames: ['role'], registers: r }),
      outcomes: new Counter({ name: 'edgemesh_tunnel_punch_outcomes_total', help: 'Hole-punch outcomes (direct, failed, relay-only, birthday-failed)', labelNames: ['outcome'], registers: r }),
      ttd: new Histogram({ name: 'edgemesh_tunnel_time_to_direct_seconds', help: 'From rendezvous to a direct Noise link', buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10], registers: r }),
      nat: new Gauge({ name: 'edgemesh_tunnel_nat_type', help: 'Detected NAT type (1 for the current one)', labelNames: ['type'], registers: r, collect() { for (const t of ['open', 'cone', 'symmetric', 'unknown']) this.set({ type: t }, t === self.natType ? 1 : 0); } }),
      spoofed: new Counter({ name: 'edgemesh_tunnel_pings_rejected_total', help: 'Punch/heartbeat packets dropped (bad MAC, replay, unknown peer)', labelNames: ['reason'], registers: r }),
      roams: new Counter({ name: 'edgemesh_tunnel_roams_total', help: 'Times a peer\'s direct address changed and we followed it', registers: r }),
      birthday: new Counter({ name: 'edgemesh_tunnel_birthday_attempts_total', help: 'Birthday-mode punch attempts by our role (hard = symmetric side)', labelNames: ['role'], registers: r }),
      malformed: new Counter({ name: 'edgemesh_tunnel_udp_malformed_total', help: 'Unrecognised UDP packets on the tunnel socket', registers: r }),
    };
  }

  async start(): Promise<void> {
    const s = this.udx.createSocket();
    s.bind(this.o.listenPort, '0.0.0.0');
    s.on('message', (msg: Buffer, from: { host: string; port: number }) => this.safeOnMessage(msg, { host: from.host, port: from.port }, s));
    s.on('error', (e: Error) => this.log.warn({ err: e.message }, 'tunnel UDP socket error'));
    this.socket = s;
    for (const sc of this.o.tunnel.servers) sc.on('up', () => void this.detectNat(true));
    this.tick = setInterval(() => this.onTick(), TICK_MS);
    this.tick.unref();
    this.log.info({ port: s.address().port }, 'tunnel UDP socket bound');
  }

  get port(): number {
    return this.socket?.address().port ?? 0;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.tick);
    for (const pd of this.peers.values()) {
      this.endSession(pd, undefined);
      pd.active?.link.close();
      pd.active?.stream.destroy();
    }
    const s = this.socket;
    this.socket = undefined;
    if (s) await Promise.race([s.close(), new Promise((r) => setTimeout(r, 2000))]);
  }

  nat(): { type: string; mapped: string | null } {
    return { type: this.natType, mapped: this.mapped ? addrKey(this.mapped) : null };
  }

  state(node: string): 'direct' | 'punching' | 'none' {
    const pd = this.peers.get(node);
    return pd?.active ? 'direct' : pd?.session ? 'punching' : 'none';
  }

  forget(node: string): void {
    const pd = this.peers.get(node);
    if (!pd) return;
    this.endSession(pd, undefined);
    this.dropActive(pd);
    if (pd.key) this.byKeyId.delete(keyId(pd.key).toString('hex'));
    this.peers.delete(node);
  }

  private lanHosts(): string[] {
    const out: string[] = [];
    for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) out.push(a.address);
    return out;
  }

  private send(buf: Buffer, a: Addr, sock: UDXSocket | undefined = this.socket, ttl?: number): void {
    try {
      if (ttl !== undefined) sock?.trySend(buf, a.port, a.host, ttl);
      else sock?.trySend(buf, a.port, a.host);
    } catch {
      /* unreachable address: the schedule tries again */
    }
  }

  // ---------- STUN / NAT type ----------

  private async stunOnce(host: string, port: number): Promise<Addr | undefined> {
    const tx = newTxid();
    const key = tx.toString('hex');
    const req = bindingRequest(tx, this.stunKey);
    return new Promise((resolve) => {
      const timers = STUN_RETRIES_MS.map((d) => setTimeout(() => this.send(req, { host, port }), d));
      const done = (a: Addr | undefined) => {
        timers.forEach(clearTimeout);
        clearTimeout(to);
        this.stunWait.delete(key);
        resolve(a);
      };
      const to = setTimeout(() => done(undefined), STUN_TIMEOUT_MS);
      this.stunWait.set(key, done);
    });
  }

  async detectNat(force = false): Promise<NatType> {
    if (this.stunRunning || !this.socket || (!force && Date.now() - this.stunAt < STUN_FRESH_MS)) return this.natType;
    const sc = this.o.tunnel.servers.find((s) => s.connected);
    if (!sc) return this.natType;
    this.stunRunning = true;
    try {
      const host = isIP(sc.host) ? sc.host : (await lookup(sc.host, { family: 4 })).address;
      const [m1, m2] = await Promise.all([this.stunOnce(host, sc.port), sc.stunAltPort ? this.stunOnce(host, sc.stunAltPort) : Promise.resolve(undefined)]);
      const t = classifyNat({ hosts: this.lanHosts(), port: this.port }, m1, m2);
      if (t !== this.natType || !sameAddr(m1, this.mapped)) this.log.info({ nat: t, mapped: m1 ? addrKey(m1) : null }, 'NAT type detected');
      this.natType = t;
      this.mapped = m1 ?? m2;
      this.stunAt = Date.now();
    } catch (e) {
      this.log.debug({ err: (e as Error).message }, 'STUN failed');
    } finally {
      this.stunRunning = false;
    }
    return this.natType;
  }

  // ---------- packets ----------

  /** A packet must never take the agent down: anything unexpected is counted and dropped. */
  private safeOnMessage(msg: Buffer, from: Addr, sock: UDXSocket): void {
    try {
      this.onMessage(msg, from, sock);
    } catch (e) {
      this.m.malformed.inc();
      this.log.debug({ err: (e as Error).message, from: addrKey(from) }, 'tunnel UDP packet handling failed');
    }
  }

  private onMessage(msg: Buffer, from: Addr, sock: UDXSocket): void {
    if (looksLikeStun(msg)) {
      const m = decodeStun(msg, this.stunKey);
      if (!m || m.type !== BINDING_SUCCESS || !m.integrity || !m.mapped) {
        this.m.malformed.inc();
        return;
      }
      this.stunWait.get(m.txid.toString('hex'))?.(m.mapped);
      return;
    }
    if (!isPing(msg)) {
      this.m.malformed.inc();
      return;
    }
    const pd = this.byKeyId.get(peekKeyId(msg).toString('hex'));
    if (!pd?.pk) {
      this.m.spoofed.inc({ reason: 'unknown-peer' });
      return;
    }
    const p = decodePing(pd.pk, msg);
    if (!p) {
      this.m.spoofed.inc({ reason: 'bad-mac' });
      return;
    }
    if (!pd.replay.accept(p.counter)) {
      this.m.spoofed.inc({ reason: 'replay' });
      return;
    }
    const k = addrKey(from);
    pd.verified.add(k);
    const now = Date.now();
    const a = pd.active;
    // Only packets naming the stream of our link count as the path being alive: a peer that dropped the link (and
    // answers pings for a newer one) must not keep a dead link looking healthy.
    if (a && p.streamId === a.remoteStreamId) {
      a.lastHeard = now;
      // Roaming (WireGuard): an authenticated, fresh packet from a new source address moves the path there.
      if (!sameAddr(a.addr, from)) {
        try {
          // Throws at once while a previous change is still being confirmed; the next heartbeat tries again.
          const changing = a.stream.changeRemote(a.socket, a.remoteStreamId, from.port, from.host) as Promise<void> | null;
          changing?.catch(() => {});
          this.log.info({ peer: pd.node, from: addrKey(a.addr), to: k }, 'peer address changed, following it');
          this.m.roams.inc();
          a.addr = from;
          a.link.remote = k;
        } catch (e) {
          this.log.debug({ peer: pd.node, err: (e as Error).message }, 'could not move the stream yet');
        }
      }
    }
    if (p.type === P.PING) {
      this.send(encodePing(pd.pk, { type: P.PONG, keyId: keyId(this.o.keyPair.publicKey), txid: p.txid, counter: this.counter++, streamId: this.streamIdFor(pd) }), from, sock);
      const s = pd.session;
      if (s && s.mode === 'normal' && !s.cands.some((c) => sameAddr(c, from))) {
        s.cands.push({ ...from, kind: 'prflx' });
        this.pingCandidate(pd, s, from);
      }
      return;
    }
    // PONG
    const tx = p.txid.toString('hex');
    if (a?.hbTx.delete(tx)) return;
    const s = pd.session;
    if (s && s.txids.has(tx) && s.role === 'initiator' && !s.connecting) {
      s.connecting = true;
      s.remoteStreamId = p.streamId;
      this.connectDirect(pd, s, from, sock);
    }
  }

  private streamIdFor(pd: PeerDirect): number {
    return pd.active?.stream.id ?? pd.session?.stream.id ?? 0;
  }

  private pingCandidate(pd: PeerDirect, s: Session, to: Addr): void {
    const txid = randomBytes(12);
    s.txids.set(txid.toString('hex'), to);
    this.send(encodePing(pd.pk!, { type: P.PING, keyId: keyId(this.o.keyPair.publicKey), txid, counter: this.counter++, streamId: s.stream.id }), to);
  }

  // ---------- sessions ----------

  private peer(node: string): PeerDirect {
    let pd = this.peers.get(node);
    if (!pd) {
      pd = { node, replay: new ReplayWindow(), upgrade: { lastAttemptMs: 0, lastOutcome: 'never' }, verified: new Set() };
      this.peers.set(node, pd);
    }
    return pd;
  }

  private setKey(pd: PeerDirect, key: Buffer): void {
    if (pd.key?.equals(key)) return;
    if (pd.key) this.byKeyId.delete(keyId(pd.key).toString('hex'));
    pd.key = key;
    pd.pk = pingKey(this.o.keyPair.secretKey, this.o.keyPair.publicKey, key);
    pd.replay = new ReplayWindow();
    this.byKeyId.set(keyId(key).toString('hex'), pd);
  }

  private newStream(pd: PeerDirect): UDXStream {
    const id = this.nextStreamId;
    this.nextStreamId = this.nextStreamId >= 0x7ffffff0 ? 1 : this.nextStreamId + 1;
    const stream: UDXStream = this.udx.createStream(id, {
      firewall: (socket, port, host) => {
        // Only the responder's stream is reached before it connects: accept the first packet from an address the
        // peer authenticated itself from during this session, and connect the stream there.
        const s = pd.session;
        if (!s || s.role !== 'responder' || s.stream !== stream || s.connecting || !pd.verified.has(`${host}:${port}`)) return true;
        s.connecting = true;
        stream.connect(socket, s.remoteStreamId, port, host);
        queueMicrotask(() => this.linkUp(pd, s, { host, port }, socket));
        return false;
      },
    });
    stream.on('error', () => {});
    return stream;
  }

  want(node: string): void {
    if (this.stopped || !this.socket) return;
    const pd = this.peer(node);
    if (pd.active || pd.session) return;
    if (!shouldTryUpgrade(pd.upgrade, Date.now(), this.o.upgradeRetryMs)) return;
    void this.initiate(pd);
  }

  private async initiate(pd: PeerDirect, mode: 'normal' | 'birthday' = 'normal'): Promise<void> {
    pd.upgrade = { lastAttemptMs: Date.now(), lastOutcome: pd.upgrade.lastOutcome };
    const sc = this.o.tunnel.servers.find((s) => s.connected);
    if (!sc) return;
    await this.detectNat();
    if (pd.session || pd.active || this.stopped) return;
    const s: Session = {
      sid: randomBytes(8).toString('hex'), role: 'initiator', mode, requested: true, sockets: [], startedAt: Date.now(), startAt: Infinity, cands: [],
      stream: this.newStream(pd), remoteStreamId: 0, txids: new Map(), schedule: punchSchedule(), next: 0, connecting: false, peerNat: 'unknown',
    };
    pd.session = s;
    this.m.attempts.inc({ role: 'initiator' });
    s.timer = setTimeout(() => this.endSession(pd, 'failed'), PUNCH_TIMEOUT_MS + HANDSHAKE_SLACK_MS + 2_000);
    // Through every server we are on: the peer may be connected to only some of them (it answers the first copy).
    const msg = { to: pd.node, sid: s.sid, mode, cand: this.candidates(), nat: this.natType, streamId: s.stream.id };
    let sent = false;
    for (const c of this.o.tunnel.servers) if (c.connected && c.rendezvous(msg)) sent = true;
    if (!sent) this.endSession(pd, 'failed');
  }

  private candidates(): Candidate[] {
    return localCandidates(this.lanHosts(), this.port, this.mapped);
  }

  onRendezvous(conn: ServerConn, m: Record<string, unknown>): void {
    if (this.stopped || !this.socket) return;
    const from = m.from as string;
    const key = Buffer.from(m.key as string, 'base64');
    if (key.length !== 32 || typeof m.sid !== 'string' || typeof m.streamId !== 'number') return;
    const pd = this.peer(from);
    const cands = parseCandidates(m.cand);
    const peerNat: NatType = (['open', 'cone', 'symmetric', 'unknown'] as const).find((t) => t === m.nat) ?? 'unknown';
    if (m.reply === true) {
      const s = pd.session;
      if (!s || s.sid !== m.sid || !s.requested || s.startAt !== Infinity) return;
      this.setKey(pd, key);
      s.cands = cands;
      s.remoteStreamId = m.streamId;
      s.peerNat = peerNat;
      if (punchPlan(this.natType, peerNat) === 'relay-only') return this.endSession(pd, 'relay-only');
      s.startAt = Date.now() + startDelayMs('initiator', 0, 0);
      s.schedule = punchSchedule(punchTimeoutMs(this.natType, peerNat));
      if (s.mode === 'birthday') return this.runBirthday(pd, s);
      this.runSchedule(pd, s);
      return;
    }
    // A request (a second copy through another server is ignored). Simultaneous requests: the node with the smaller
    // name keeps its own.
    if (pd.session?.sid === m.sid) return;
    if (pd.session) {
      if (pd.session.requested && this.o.node < from) return;
      this.endSession(pd, undefined);
    }
    const mode = m.mode === 'birthday' ? 'birthday' : 'normal';
    if (pd.active) {
      // The peer lost the direct path (it would not ask otherwise): ours is stale too.
      this.o.tunnel.failDirect(from, 'peer asked for a new direct path');
      this.dropActive(pd);
    }
    this.setKey(pd, key);
    void this.detectNat().then(() => {
      if (this.stopped || pd.session) return;
      const s: Session = {
        sid: m.sid as string, role: 'responder', mode, requested: false, sockets: [], startedAt: Date.now(), startAt: Infinity, cands,
        stream: this.newStream(pd), remoteStreamId: m.streamId as number, txids: new Map(), schedule: punchSchedule(), next: 0, connecting: false, peerNat,
      };
      pd.session = s;
      this.m.attempts.inc({ role: 'responder' });
      s.timer = setTimeout(() => this.endSession(pd, 'failed'), PUNCH_TIMEOUT_MS + HANDSHAKE_SLACK_MS + 2_000);
      conn.rendezvous({ to: from, sid: s.sid, reply: true, cand: this.candidates(), nat: this.natType, streamId: s.stream.id });
      if (punchPlan(this.natType, peerNat) === 'relay-only') return this.endSession(pd, 'relay-only');
      const rf = typeof m.rttFromMs === 'number' ? m.rttFromMs : 0;
      const rt = typeof m.rttToMs === 'number' ? m.rttToMs : 0;
      s.startAt = Date.now() + startDelayMs('responder', rf, rt);
      s.schedule = punchSchedule(punchTimeoutMs(this.natType, peerNat));
      if (mode === 'birthday') return this.runBirthday(pd, s);
      this.runSchedule(pd, s);
    });
  }

  private runSchedule(pd: PeerDirect, s: Session): void {
    const step = () => {
      if (pd.session !== s || s.connecting || this.stopped) return;
      if (s.next >= s.schedule.length) return;
      for (const c of s.cands) this.pingCandidate(pd, s, c);
      s.next++;
      if (s.next < s.schedule.length) {
        const wait = s.startAt + s.schedule[s.next] - Date.now();
        setTimeout(step, Math.max(0, wait)).unref();
      } else {
        // Schedule exhausted: give the last pings a moment, then give up (and maybe go on with birthday mode).
        setTimeout(() => { if (pd.session === s && !s.connecting) this.endSession(pd, 'failed'); }, PUNCH_GRACE_MS).unref();
      }
    };
    setTimeout(step, Math.max(0, s.startAt - Date.now())).unref();
  }

  private connectDirect(pd: PeerDirect, s: Session, to: Addr, sock: UDXSocket): void {
    s.stream.connect(sock, s.remoteStreamId, to.port, to.host);
    this.linkUp(pd, s, to, sock);
  }

  /**
   * Birthday mode. Hard (symmetric) side: BIRTHDAY_SOCKETS sockets each send a ping to the easy side's public
   * address, the first round with a low TTL (opens our NAT, never reaches theirs), then answers whichever socket the
   * easy side's probe hits; the UDX stream is accepted on that socket. Easy side: pings to random ports of the hard
   * side's public address, connects on the first pong.
   */
  private runBirthday(pd: PeerDirect, s: Session): void {
    const role = birthdayRole(this.natType, s.peerNat);
    const target = s.cands.find((c) => c.kind === 'stun');
    if (!role || !target) return this.endSession(pd, 'failed');
    s.role = role === 'easy' ? 'initiator' : 'responder';
    clearTimeout(s.timer);
    s.timer = setTimeout(() => this.endSession(pd, 'failed'), Math.max(0, s.startAt - Date.now()) + BIRTHDAY_TIMEOUT_MS + HANDSHAKE_SLACK_MS);
    this.m.birthday.inc({ role });
    if (role === 'hard') {
      for (let i = 0; i < BIRTHDAY_SOCKETS; i++) {
        const sock = this.udx.createSocket();
        try {
          sock.bind(0, '0.0.0.0');
        } catch {
          break;
        }
        sock.on('message', (msg: Buffer, from: { host: string; port: number }) => this.safeOnMessage(msg, { host: from.host, port: from.port }, sock));
        sock.on('error', () => {});
        s.sockets.push(sock);
      }
      const round = (ttl?: number) => {
        if (pd.session !== s || s.connecting) return;
        for (const sock of s.sockets) {
          const txid = randomBytes(12);
          this.send(encodePing(pd.pk!, { type: P.PING, keyId: keyId(this.o.keyPair.publicKey), txid, counter: this.counter++, streamId: s.stream.id }), target, sock, ttl);
        }
      };
      // Low-TTL round at the start, a second one later to refresh the mappings (conntrack keeps them 30 s anyway).
      setTimeout(() => round(BIRTHDAY_LOW_TTL), Math.max(0, s.startAt - Date.now())).unref();
      setTimeout(() => round(BIRTHDAY_LOW_TTL), Math.max(0, s.startAt - Date.now()) + BIRTHDAY_TIMEOUT_MS / 2).unref();
      return;
    }
    const ports = birthdayPorts(BIRTHDAY_PROBES);
    let next = 0;
    const batch = () => {
      if (pd.session !== s || s.connecting || next >= ports.length) return;
      for (let i = 0; i < BIRTHDAY_BATCH && next < ports.length; i++, next++) this.pingCandidate(pd, s, { host: target.host, port: ports[next] });
      s.probeTimer = setTimeout(batch, BIRTHDAY_BATCH_MS);
      s.probeTimer.unref();
    };
    // Give the hard side's low-TTL round a head start so its mappings exist before the first probes arrive.
    s.probeTimer = setTimeout(batch, Math.max(0, s.startAt - Date.now()) + BIRTHDAY_HEAD_START_MS);
    s.probeTimer.unref();
  }

  private linkUp(pd: PeerDirect, s: Session, to: Addr, sock: UDXSocket): void {
    const initiator = s.role === 'initiator';
    Link.establish(s.stream as unknown as Duplex, initiator, this.o.keyPair, pd.key!, 'direct', pd.node, addrKey(to), this.o.tunnel.initLink).then(
      (link) => {
        if (pd.session !== s || this.stopped) {
          link.close();
          return;
        }
        clearTimeout(s.timer);
        pd.session = undefined;
        const now = Date.now();
        pd.active = { addr: to, socket: sock, lastHeard: now, lastPing: now, stream: s.stream, link, remoteStreamId: s.remoteStreamId, hbTx: new Set() };
        // Birthday: keep only the socket that got through.
        for (const x of s.sockets) if (x !== sock) void x.close().catch(() => {});
        s.sockets = [];
        pd.upgrade = { lastAttemptMs: now, lastOutcome: 'direct' };
        this.m.outcomes.inc({ outcome: s.mode === 'birthday' ? 'birthday-direct' : 'direct' });
        this.m.ttd.observe((now - s.startedAt) / 1000);
        this.log.info({ peer: pd.node, remote: addrKey(to), ms: now - s.startedAt, role: s.role, mode: s.mode }, 'direct path up');
        link.on('close', () => {
          if (pd.active?.link === link) this.dropActive(pd);
        });
        this.o.tunnel.addDirect(pd.node, link, initiator ? 'out' : 'in');
      },
      (e: Error) => {
        this.log.debug({ peer: pd.node, err: e.message }, 'direct link handshake failed');
        if (pd.session === s) this.endSession(pd, 'failed');
      },
    );
  }

  private dropActive(pd: PeerDirect): void {
    const a = pd.active;
    if (!a) return;
    pd.active = undefined;
    pd.upgrade = { lastAttemptMs: Date.now(), lastOutcome: 'lost' };
    a.link.close();
    a.stream.destroy();
    if (a.socket !== this.socket) setTimeout(() => void a.socket.close().catch(() => {}), 100).unref();
  }

  private endSession(pd: PeerDirect, outcome: 'failed' | 'relay-only' | undefined): void {
    const s = pd.session;
    if (!s) return;
    clearTimeout(s.timer);
    clearTimeout(s.probeTimer);
    pd.session = undefined;
    if (!s.connecting || outcome) s.stream.destroy();
    for (const x of s.sockets) void x.close().catch(() => {});
    s.sockets = [];
    if (outcome) {
      this.m.outcomes.inc({ outcome: s.mode === 'birthday' ? `birthday-${outcome}` : outcome });
      pd.upgrade = { lastAttemptMs: Date.now(), lastOutcome: outcome };
      this.log.debug({ peer: pd.node, outcome, role: s.role, mode: s.mode }, 'punch finished without a direct path');
      // A normal punch we asked for failed and exactly one side is symmetric: go on with birthday mode.
      if (outcome === 'failed' && s.mode === 'normal' && s.requested && birthdayRole(this.natType, s.peerNat) && !this.stopped) {
        void this.initiate(pd, 'birthday');
      }
    }
  }

  // ---------- heartbeats, failover, upgrade retries ----------

  private onTick(): void {
    const now = Date.now();
    for (const pd of this.peers.values()) {
      const a = pd.active;
      if (a) {
        if (!pathAlive(a.lastHeard, now)) {
          this.o.tunnel.failDirect(pd.node, `no answer on the direct path for ${now - a.lastHeard} ms`);
          this.dropActive(pd);
          continue;
        }
        if (now - a.lastPing >= HEARTBEAT_MS && pd.pk) {
          a.lastPing = now;
          const txid = randomBytes(12);
          a.hbTx.add(txid.toString('hex'));
          if (a.hbTx.size > 16) a.hbTx.delete(a.hbTx.values().next().value!);
          this.send(encodePing(pd.pk, { type: P.PING, keyId: keyId(this.o.keyPair.publicKey), txid, counter: this.counter++, streamId: a.stream.id }), a.addr, a.socket);
        }
      }
    }
    // Peers we talk to over the relay only: retry the upgrade when due.
    for (const [node, p] of this.o.tunnel.peers) {
      if (p.relays.size === 0) continue;
      const pd = this.peer(node);
      if (!pd.active && !pd.session && shouldTryUpgrade(pd.upgrade, now, this.o.upgradeRetryMs)) void this.initiate(pd);
    }
    if (now - this.stunAt >= STUN_FRESH_MS) void this.detectNat();
  }
}
