// The tunnel's UDP socket (udx-native; HyperDHT's socket-pool + nat): one socket on tunnel.listenPort carries STUN,
// authenticated pings and the peers' UDX streams, demultiplexed by first byte. It detects the NAT type with STUN to
// both server ports, checks every ping (key id -> the peer's MAC key, replay window) before any peer sees it, and
// opens the extra sockets of birthday mode. Nothing here knows about paths or sessions.
import { randomBytes } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import { networkInterfaces } from 'node:os';
import { isIP } from 'node:net';
import UDX, { type UDXSocket, type UDXStream } from 'udx-native';
import type { FdPressure } from '@edgemesh/common/fds';
import type { Logger } from '@edgemesh/common/log';
import type { RawKeyPair } from '@edgemesh/common/tunnel/ed25519';
import { bindingRequest, BINDING_SUCCESS, decodeStun, looksLikeStun, newTxid } from '@edgemesh/common/tunnel/stun';
import type { TunnelMetrics } from './metrics.ts';
import { decodePing, encodePing, isPing, keyId, P, peekKeyId, pingKey } from './ping.ts';
import { addrKey, classifyNat, localCandidates, ReplayWindow, sameAddr, type Addr, type Candidate, type NatType } from './punch.ts';
import { INTERFACES_REFRESH_MS } from './limits.ts';
import { SOCKET_CLOSE_TIMEOUT_MS, STUN_FRESH_MS, STUN_RETRIES_MS, STUN_TIMEOUT_MS } from './timers.ts';
import type { DirectEnv, PeerChannel, PeerPacket, PunchIO, UdpSock, UdpStream } from './udptypes.ts';

/** A connected server's STUN ports and the integrity key it told us in WELCOME. */
export interface StunServer { host: string; port: number; altPort: number; key: Buffer }

export interface TunnelSocketOptions {
  listenPort: number;
  keyPair: RawKeyPair;
  log: Logger;
  metrics: TunnelMetrics;
  /** Servers we are connected to now (STUN goes to the first). */
  stunServers: () => StunServer[];
  /** Descriptor pressure: birthday sockets are opened only while it admits them. */
  fds?: FdPressure;
  /** Reads this host's interfaces (tests); default os.networkInterfaces(). */
  interfaces?: typeof networkInterfaces;
}

interface Channel { key: Buffer; pk: Buffer; replay: ReplayWindow; onPacket: (p: PeerPacket) => void }

export class TunnelSocket implements DirectEnv, PunchIO {
  private readonly o: TunnelSocketOptions;
  private readonly udx = new UDX();
  private socket: UDXSocket | undefined;
  private readonly extra = new Set<UDXSocket>();
  private readonly byKeyId = new Map<string, Channel>();
  private counter = BigInt(Date.now()) * 1000n;
  private nextStreamId = 1 + Math.floor(Math.random() * 0x3fffffff);
  /** STUN transactions in flight: the key their answer must be signed with, and who waits. */
  private readonly stunWait = new Map<string, { key: Buffer; done: (a: Addr) => void }>();
  private readonly myKeyId: Buffer;
  private nat: NatType = 'unknown';
  private mapped: Addr | undefined;
  private stunAt = -Infinity;
  private stunRunning: Promise<NatType> | undefined;
  /** This host's IPv4 addresses (LAN candidates), read at start and every INTERFACES_REFRESH_MS. */
  private lan: string[] = [];
  /** Their subnets (CIDR), for telling a same-LAN peer (transport.ts, the TCP transport). */
  private subnets: string[] = [];
  private lanTimer: NodeJS.Timeout | undefined;

  constructor(o: TunnelSocketOptions) {
    this.o = o;
    this.myKeyId = keyId(o.keyPair.publicKey);
    o.metrics.natType = () => this.nat;
  }

  start(): void {
    this.refreshInterfaces();
    this.lanTimer = setInterval(() => this.refreshInterfaces(), INTERFACES_REFRESH_MS);
    this.lanTimer.unref();
    const s = this.udx.createSocket();
    s.bind(this.o.listenPort, '0.0.0.0');
    this.listen(s);
    s.on('error', (e: Error) => this.o.log.warn({ err: e.message }, 'tunnel UDP socket error'));
    this.socket = s;
    this.o.log.info({ port: s.address().port }, 'tunnel UDP socket bound');
  }

  async stop(): Promise<void> {
    clearInterval(this.lanTimer);
    const all = [...this.extra, ...(this.socket ? [this.socket] : [])];
    this.extra.clear();
    this.socket = undefined;
    const timeout = new Promise((r) => setTimeout(r, SOCKET_CLOSE_TIMEOUT_MS).unref());
    await Promise.race([Promise.all(all.map((s) => s.close().catch(() => {}))), timeout]);
  }

  get port(): number {
    return this.socket?.address().port ?? 0;
  }

  get main(): UdpSock {
    return this.socket as UdpSock;
  }

  natType(): NatType {
    return this.nat;
  }

  status(): { type: NatType; mapped: string | null } {
    return { type: this.nat, mapped: this.mapped ? addrKey(this.mapped) : null };
  }

  /** Reads the interfaces (a netlink socket: it throws under descriptor exhaustion, then the last list stays). */
  refreshInterfaces(): void {
    try {
      const out: string[] = [];
      const nets: string[] = [];
      for (const list of Object.values((this.o.interfaces ?? networkInterfaces)())) for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) { out.push(a.address); if (a.cidr) nets.push(a.cidr); }
      this.lan = out;
      this.subnets = nets;
    } catch (e) {
      this.o.log.debug({ err: (e as Error).message }, 'reading the network interfaces failed, keeping the last list');
    }
  }

  /** This host's IPv4 subnets (CIDR), read with the LAN candidates. */
  lanSubnets(): readonly string[] {
    return this.subnets;
  }

  private lanHosts(): string[] {
    return this.lan;
  }

  candidates(): Candidate[] {
    return localCandidates(this.lanHosts(), this.port, this.mapped);
  }

  private listen(s: UDXSocket): void {
    s.on('message', (msg: Buffer, from: { host: string; port: number }) => this.safeOnMessage(msg, { host: from.host, port: from.port }, s));
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

  private stunOnce(host: string, port: number, stunKey: Buffer): Promise<Addr | undefined> {
    const tx = newTxid();
    const key = tx.toString('hex');
    const req = bindingRequest(tx, stunKey);
    return new Promise((resolve) => {
      const timers = STUN_RETRIES_MS.map((d) => setTimeout(() => this.send(req, { host, port }), d));
      const done = (a: Addr | undefined) => {
        timers.forEach(clearTimeout);
        clearTimeout(to);
        this.stunWait.delete(key);
        resolve(a);
      };
      const to = setTimeout(() => done(undefined), STUN_TIMEOUT_MS);
      this.stunWait.set(key, { key: stunKey, done });
    });
  }

  /** The NAT type, refreshed by STUN when older than STUN_FRESH_MS (or `force`). One detection at a time. */
  freshNat(force = false): Promise<NatType> {
    if (this.stunRunning) return this.stunRunning;
    if (!this.socket || (!force && performance.now() - this.stunAt < STUN_FRESH_MS)) return Promise.resolve(this.nat);
    const sc = this.o.stunServers()[0];
    if (!sc) return Promise.resolve(this.nat);
    this.stunRunning = this.detect(sc).finally(() => { this.stunRunning = undefined; });
    return this.stunRunning;
  }

  private async detect(sc: StunServer): Promise<NatType> {
    try {
      const host = isIP(sc.host) ? sc.host : (await lookup(sc.host, { family: 4 })).address;
      const [m1, m2] = await Promise.all([this.stunOnce(host, sc.port, sc.key), sc.altPort ? this.stunOnce(host, sc.altPort, sc.key) : Promise.resolve(undefined)]);
      const t = classifyNat({ hosts: this.lanHosts(), port: this.port }, m1, m2);
      if (t !== this.nat || !sameAddr(m1, this.mapped)) this.o.log.info({ nat: t, mapped: m1 ? addrKey(m1) : null }, 'NAT type detected');
      this.nat = t;
      // No answer at all (the server or UDP briefly unreachable): keep the last mapping as a candidate; a punch with
      // only LAN candidates could not reach a peer behind another NAT, and the mapping usually still holds.
      this.mapped = m1 ?? m2 ?? this.mapped;
      this.stunAt = performance.now();
    } catch (e) {
      this.o.log.debug({ err: (e as Error).message }, 'STUN failed');
    }
    return this.nat;
  }

  // ---------- pings ----------

  /** Registers the peer with static key `peerKey`: its pings are checked and handed to `onPacket`. */
  channel(peerKey: Buffer, onPacket: (p: PeerPacket) => void): PeerChannel {
    const id = keyId(peerKey).toString('hex');
    const ch: Channel = { key: peerKey, pk: pingKey(this.o.keyPair.secretKey, this.o.keyPair.publicKey, peerKey), replay: new ReplayWindow(), onPacket };
    this.byKeyId.set(id, ch);
    const packet = (type: number, txid: Buffer, streamId: number) => encodePing(ch.pk, { type, keyId: this.myKeyId, txid, counter: this.counter++, streamId });
    return {
      ping: (to, streamId, sock, ttl) => {
        const txid = randomBytes(12);
        this.send(packet(P.PING, txid, streamId), to, (sock as UDXSocket | undefined) ?? this.socket, ttl);
        return txid;
      },
      pong: (txid, to, sock, streamId) => this.send(packet(P.PONG, txid, streamId), to, sock as UDXSocket),
      close: () => { if (this.byKeyId.get(id) === ch) this.byKeyId.delete(id); },
    };
  }

  /** A packet must never take the agent down: anything unexpected is counted and dropped. */
  private safeOnMessage(msg: Buffer, from: Addr, sock: UDXSocket): void {
    try {
      this.onMessage(msg, from, sock);
    } catch (e) {
      this.o.metrics.malformed.inc();
      this.o.log.debug({ err: (e as Error).message, from: addrKey(from) }, 'tunnel UDP packet handling failed');
    }
  }

  private onMessage(msg: Buffer, from: Addr, sock: UDXSocket): void {
    if (looksLikeStun(msg)) {
      // At most a few transactions are in flight: the answer must be signed with the key of the server asked.
      for (const w of this.stunWait.values()) {
        const m = decodeStun(msg, w.key);
        if (!m || m.type !== BINDING_SUCCESS || !m.integrity || !m.mapped) continue;
        const mine = this.stunWait.get(m.txid.toString('hex'));
        if (mine?.key === w.key) return mine.done(m.mapped);
      }
      return void this.o.metrics.malformed.inc();
    }
    if (!isPing(msg)) return void this.o.metrics.malformed.inc();
    const ch = this.byKeyId.get(peekKeyId(msg).toString('hex'));
    if (!ch) return void this.o.metrics.spoofed.inc({ reason: 'unknown-peer' });
    const p = decodePing(ch.pk, msg);
    if (!p) return void this.o.metrics.spoofed.inc({ reason: 'bad-mac' });
    if (!ch.replay.accept(p.counter)) return void this.o.metrics.spoofed.inc({ reason: 'replay' });
    ch.onPacket({ type: p.type === P.PING ? 'ping' : 'pong', txid: p.txid, streamId: p.streamId, from, sock });
  }

  // ---------- streams and sockets ----------

  newStream(firewall: (sock: UdpSock, port: number, host: string) => boolean): UdpStream {
    const id = this.nextStreamId;
    this.nextStreamId = this.nextStreamId >= 0x7ffffff0 ? 1 : this.nextStreamId + 1;
    const stream: UDXStream = this.udx.createStream(id, { firewall: (socket, port, host) => firewall(socket as UdpSock, port, host) });
    stream.on('error', () => {});
    return stream as unknown as UdpStream;
  }

  get io(): PunchIO {
    return this;
  }

  openSockets(n: number): UdpSock[] {
    const out: UdpSock[] = [];
    for (let i = 0; i < n; i++) {
      if (this.o.fds && !this.o.fds.admit(1)) break; // descriptor pressure: birthday mode runs with fewer sockets
      const sock = this.udx.createSocket();
      try {
        sock.bind(0, '0.0.0.0');
      } catch {
        void sock.close().catch(() => {});
        break; // out of ports or descriptors: birthday mode runs with fewer sockets
      }
      this.listen(sock);
      sock.on('error', () => {});
      this.extra.add(sock);
      out.push(sock as UdpSock);
    }
    return out;
  }

  closeSocket(s: UdpSock, delayMs = 0): void {
    const sock = s as UDXSocket;
    if (sock === this.socket || !this.extra.delete(sock)) return;
    const close = () => { this.o.fds?.note(-1); void sock.close().catch(() => {}); };
    if (delayMs > 0) setTimeout(close, delayMs).unref();
    else close();
  }
}
