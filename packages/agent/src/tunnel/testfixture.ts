// Fakes for the tunnel's unit tests (no sockets): a network carrying pings and UDX-like streams between fake UDP
// endpoints (with blackholes and address changes), relay "servers" made of in-memory stream pairs, and a pair of
// PeerPaths wired through them on a ManualClock. Noise runs for real over the in-memory streams.
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { newSerial, signNodeCert, verifyNodeCert, type CaPublic, type NodeCertificate, type RevocationCheck } from '@edgemesh/common/identity/cert';
import type { PeerIdentity } from './identity.ts';
import { Duplex, duplexPair } from 'node:stream';
import { Registry } from 'prom-client';
import { silentLogger } from '@edgemesh/common/log';
import { generateKeyPair, type RawKeyPair } from '@edgemesh/common/tunnel/ed25519';
import type { Deadline } from '../proxy/dialer.ts';
import { ManualClock } from './clock.ts';
import type { TunnelBudgets } from './limits.ts';
import { createTunnelMetrics, type TunnelMetrics } from './metrics.ts';
import type { PeerEnv, RendezvousOut } from './peerenv.ts';
import { PeerPaths } from './peerpaths.ts';
import { addrKey, type Addr, type Candidate, type NatType } from './punch.ts';
import type { TunnelStream } from './stream.ts';
import { dialTcpLink, TcpLinkListener, TcpLinkTls } from './tcplink.ts';
import { Budgets } from '@edgemesh/common/budget';
import type { DirectEnv, PeerChannel, PeerPacket, PunchIO, UdpSock, UdpStream } from './udptypes.ts';

/** Lets in-memory I/O (streams, Noise, promise chains) run until it settles. */
export async function settle(rounds = 30): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
}

export class FakeNet {
  readonly endpoints = new Map<string, FakeUdp>();
  /** Hosts whose packets are dropped both ways (a silently dead path). */
  readonly blackholed = new Set<string>();
  packets = 0;

  /** Delivers (later, in order) unless the path is blackholed or nobody has the address; false then. */
  send(from: Addr, to: Addr, fn: (ep: FakeUdp) => void): boolean {
    if (this.blackholed.has(from.host) || this.blackholed.has(to.host)) return false;
    const ep = this.endpoints.get(addrKey(to));
    if (!ep) return false;
    this.packets++;
    setImmediate(() => fn(ep));
    return true;
  }

  blackhole(...hosts: string[]): void {
    for (const h of hosts) this.blackholed.add(h);
  }

  /** The path heals: streams retransmit what they could not deliver (UDX is reliable). */
  heal(...hosts: string[]): void {
    for (const h of hosts) this.blackholed.delete(h);
    for (const ep of this.endpoints.values()) for (const st of ep.streams.values()) st.flush();
  }

  /** The NAT in front of `ep` maps it to a new public address (roaming). */
  rebind(ep: FakeUdp, to: Addr): void {
    this.endpoints.delete(addrKey(ep.addr));
    ep.addr = to;
    this.endpoints.set(addrKey(to), ep);
  }
}

class FakeStream extends Duplex implements UdpStream {
  readonly id: number;
  private readonly ep: FakeUdp;
  private readonly firewall: (sock: UdpSock, port: number, host: string) => boolean;
  remote: { addr: Addr; id: number } | undefined;
  private accepted = false;

  constructor(ep: FakeUdp, id: number, firewall: (sock: UdpSock, port: number, host: string) => boolean) {
    super();
    this.ep = ep;
    this.id = id;
    this.firewall = firewall;
  }

  connect(_s: UdpSock, remoteId: number, port: number, host: string): void {
    this.remote = { addr: { host, port }, id: remoteId };
    this.accepted = true;
  }

  /** As libudx: the move applies to packets sent from now on; a packet already sent keeps its destination on
   *  retransmits, and the move is confirmed once every such packet got through (never, if its address is gone). */
  changeRemote(_s: UdpSock, remoteId: number, port: number, host: string): Promise<void> | null {
    this.remote = { addr: { host, port }, id: remoteId };
    this.flush();
    if (!this.outbox.some((p) => p.to)) return null;
    return new Promise((resolve) => this.confirm.push(resolve));
  }

  /** Chunks not delivered yet, in order (a reliable stream retransmits them), each pinned to the destination of its
   *  first transmission. */
  private outbox: { chunk: Buffer | null; to?: { addr: Addr; id: number } }[] = [];
  private confirm: (() => void)[] = [];

  private deliver(chunk: Buffer | null): void {
    this.outbox.push({ chunk });
    this.flush();
  }

  flush(): void {
    while (this.remote && this.outbox.length) {
      const p = this.outbox[0];
      const to = p.to ??= this.remote;
      if (!this.ep.net.send(this.ep.addr, to.addr, (ep) => ep.streams.get(to.id)?.arrive(this.ep.addr, p.chunk))) break;
      this.outbox.shift();
    }
    if (!this.outbox.some((p) => p.to && p.to !== this.remote)) for (const r of this.confirm.splice(0)) r();
  }

  override _write(chunk: Buffer, _e: BufferEncoding, cb: () => void): void {
    this.deliver(chunk);
    cb();
  }

  override _read(): void {}

  arrive(from: Addr, chunk: Buffer | null): void {
    if (this.destroyed) return;
    if (!this.accepted) {
      if (this.firewall(this.ep.main, from.port, from.host)) return;
      this.accepted = true;
    }
    this.push(chunk);
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    this.deliver(null);
    this.ep.streams.delete(this.id);
    cb(err);
  }
}

let nextStreamId = 100;

/** One agent's UDP side on the fake network. */
export class FakeUdp implements DirectEnv, PunchIO {
  readonly net: FakeNet;
  addr: Addr;
  readonly myKey: Buffer;
  readonly main: UdpSock = {};
  readonly streams = new Map<number, FakeStream>();
  private readonly channels = new Map<string, (p: PeerPacket) => void>();
  nat: NatType = 'cone';

  constructor(net: FakeNet, addr: Addr, myKey: Buffer) {
    this.net = net;
    this.addr = addr;
    this.myKey = myKey;
    net.endpoints.set(addrKey(addr), this);
  }

  get io(): PunchIO {
    return this;
  }

  channel(peerKey: Buffer, onPacket: (p: PeerPacket) => void): PeerChannel {
    const k = peerKey.toString('hex');
    this.channels.set(k, onPacket);
    const packet = (type: 'ping' | 'pong', txid: Buffer, to: Addr, streamId: number) =>
      this.net.send(this.addr, to, (ep) => ep.receive(this.myKey, { type, txid, streamId, from: this.addr, sock: ep.main }));
    return {
      ping: (to, streamId) => {
        const txid = randomBytes(12);
        packet('ping', txid, to, streamId);
        return txid;
      },
      pong: (txid, to, _sock, streamId) => packet('pong', txid, to, streamId),
      close: () => { if (this.channels.get(k) === onPacket) this.channels.delete(k); },
    };
  }

  receive(fromKey: Buffer, p: PeerPacket): void {
    this.channels.get(fromKey.toString('hex'))?.(p);
  }

  newStream(firewall: (sock: UdpSock, port: number, host: string) => boolean): UdpStream {
    const s = new FakeStream(this, nextStreamId++, firewall);
    this.streams.set(s.id, s);
    return s;
  }

  openSockets(): UdpSock[] {
    return [];
  }

  closeSocket(): void {}

  natType(): NatType {
    return this.nat;
  }

  candidates(): Candidate[] {
    return [{ ...this.addr, kind: 'stun' }];
  }

  freshNat(): Promise<NatType> {
    return Promise.resolve(this.nat);
  }
}

/** A relay server: pairs of in-memory streams between the two sides; kill() drops them all (a restart). */
export class FakeServer {
  readonly name: string;
  up = true;
  private readonly pairs = new Set<[Duplex, Duplex]>();

  constructor(name: string) {
    this.name = name;
  }

  pair(): [Duplex, Duplex] {
    const p = duplexPair();
    this.pairs.add(p);
    return p;
  }

  kill(): void {
    this.up = false;
    for (const [x, y] of this.pairs) {
      x.destroy();
      y.destroy();
    }
    this.pairs.clear();
  }
}

export interface Side {
  name: string; keys: RawKeyPair; paths: PeerPaths; udp: FakeUdp; metrics: TunnelMetrics; registry: Registry; served: string[]; env: PeerEnv; cert: NodeCertificate;
  /** Node-access streams opened to this side (`peer:port`); ports in nodePorts are answered `node <self> port <p> for <peer>`. */
  nodeOpens: string[]; nodePorts: number[];
}

/** A CA for the fakes: an Ed25519 key that signs node certificates (no X.509 needed to verify them). */
export function fakeCa(): { ca: CaPublic; issue(name: string, publicKey: Buffer, validMs?: number): NodeCertificate; identity(cert: NodeCertificate, revoked?: RevocationCheck): PeerIdentity } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const keyId = createHash('sha256').update(publicKey.export({ type: 'spki', format: 'der' })).digest();
  const ca: CaPublic = { publicKey, keyId };
  return {
    ca,
    issue: (name, pk, validMs = 24 * 3_600_000) => signNodeCert({ name, publicKey: pk, groups: [], notBefore: Date.now() - 60_000, notAfter: Date.now() + validMs, serial: newSerial(), issuer: keyId }, privateKey),
    identity: (cert, revoked) => ({
      ourCert: () => cert.raw,
      verifyPeer: (raw, name, key) => verifyNodeCert(raw, { ca, now: Date.now(), name, publicKey: key, revoked }),
    }),
  };
}

/**
 * Two nodes `a` and `b`, each with a PeerPaths for the other, relayed through `servers` (the first that is up) and,
 * with `direct`, punching over the fake network. b serves a hash sink: it answers the sha256 of what it received.
 */
export function makePair(o: { servers?: FakeServer[]; direct?: boolean; clock?: ManualClock; upgradeRetryMs?: number; budgets?: (side: string) => TunnelBudgets | undefined; tcp?: boolean } = {}) {
  const clock = o.clock ?? new ManualClock();
  const net = new FakeNet();
  const servers = o.servers ?? [new FakeServer('srv1')];
  const sides = new Map<string, Side>();
  const listeners = new Map<string, Promise<TcpLinkListener>>();
  /** With `tcp`: whether dials fail (a firewall dropping TCP), and closing the listeners at the end of a test. */
  const tcp = { blocked: false, close: async () => { for (const l of listeners.values()) await (await l).close(); } };
  const cas = fakeCa();
  const mk = (name: string, host: string): Side => {
    const keys = generateKeyPair();
    const cert = cas.issue(name, keys.publicKey);
    const registry = new Registry();
    const metrics = createTunnelMetrics(registry);
    const udp = new FakeUdp(net, { host, port: 20006 }, keys.publicKey);
    const side = { name, keys, udp, metrics, registry, served: [] as string[], nodeOpens: [] as string[], nodePorts: [22], cert } as Side;
    const env: PeerEnv = {
      self: name, keyPair: keys, clock, log: silentLogger, metrics, direct: o.direct ? udp : undefined, upgradeRetryMs: o.upgradeRetryMs, budgets: o.budgets?.(name),
      identity: cas.identity(cert),
      openRelay: async (node) => {
        const srv = servers.find((s) => s.up);
        const peer = sides.get(node);
        if (!srv || !peer) throw new Error('no server has the peer');
        const [x, y] = srv.pair();
        setImmediate(() => peer.paths.onIncomingRelay(y, srv.name));
        return { stream: x, server: srv.name };
      },
      rendezvous: (msg: RendezvousOut) => {
        const peer = sides.get(msg.to as string);
        if (!peer || !servers.some((s) => s.up)) return false;
        deliverRendezvous(side, peer, msg);
        return true;
      },
      serve: (_peer, _h, accept) => {
        const s = accept();
        const h = createHash('sha256');
        s.on('data', (c: Buffer) => h.update(c));
        s.on('end', () => { const d = h.digest('hex'); side.served.push(d); s.end(d); });
        s.on('error', () => {});
      },
      serveNode: (peer, h, accept, reject) => {
        side.nodeOpens.push(`${peer}:${h.nodePort}`);
        if (!side.nodePorts.includes(h.nodePort)) return reject('forbidden', `port ${h.nodePort} is not in nodeAccess.allowedPorts`);
        const s = accept();
        s.on('error', () => {});
        s.end(`node ${name} port ${h.nodePort} for ${peer}`);
      },
    };
    if (o.tcp) {
      udp.nat = 'open'; // its candidate is its own public address: a TCP dial target (transport.ts)
      // The TCP transport for real, on loopback: each side listens on 127.0.0.1; a dial (whatever the candidates say)
      // goes to the peer's listener unless tcpBlocked says the firewall drops it.
      const tls = new TcpLinkTls({ node: name, keyPair: keys, identity: env.identity });
      const l = new TcpLinkListener({ port: 0, host: '127.0.0.1', tls, identity: env.identity, budgets: new Budgets(), log: silentLogger, isPeerNode: (n) => sides.has(n), onPeer: (p) => side.paths.t?.onIncoming(p) });
      listeners.set(name, l.listen().then(() => l));
      env.tcp = {
        dial: async (node) => {
          if (tcp.blocked) throw new Error('TCP dropped (test)');
          return dialTcpLink([{ host: '127.0.0.1', port: (await listeners.get(node)!).port }], node, tls, env.identity);
        },
        subnets: () => ['203.0.113.0/24'],
      };
    }
    side.env = env;
    side.paths = new PeerPaths(name === 'a' ? 'b' : 'a', env);
    sides.set(name, side);
    return side;
  };
  const deliverRendezvous = (from: Side, to: Side, msg: RendezvousOut) => {
    setImmediate(() => to.paths.onRendezvous({
      sid: msg.sid as string, reply: msg.reply, mode: (msg.mode ?? 'normal') as 'normal' | 'birthday', cand: msg.cand as Candidate[],
      nat: (msg.nat ?? 'unknown') as NatType, streamId: msg.streamId as number, from: from.name, rttFromMs: 0, rttToMs: 0,
      ts: Date.now(), cert: Buffer.from(from.cert.raw), sig: Buffer.alloc(64),
    }, (reply) => { deliverRendezvous(to, from, reply); return true; }, Buffer.from(from.keys.publicKey)));
  };
  const a = mk('a', '203.0.113.1');
  const b = mk('b', '203.0.113.2');
  /** The side's agent restarts: its PeerPaths is gone, a new one (new session) takes its place. */
  const restart = (side: Side) => {
    side.paths.close();
    side.paths = new PeerPaths(side.name === 'a' ? 'b' : 'a', side.env);
  };
  return { clock, net, servers, a, b, restart, tcp };
}

/** A metric's value (summed over the label sets matching `labels`). */
export async function metric(side: Side, name: string, labels = ''): Promise<number> {
  const text = await side.registry.getSingleMetricAsString(name);
  let sum = 0;
  for (const line of text.split('\n')) if (line.startsWith(name) && line.includes(labels)) sum += Number(line.split(' ').pop());
  return sum;
}

/** A deadline on the manual clock. */
export function fakeDeadline(clock: ManualClock, ms: number): Deadline {
  const ac = new AbortController();
  const at = clock.now() + ms;
  clock.setTimeout(() => ac.abort(), ms);
  return { signal: ac.signal, remaining: () => Math.max(0, at - clock.now()) };
}

/** Runs the clock forward in steps, letting I/O settle in between, until `cond` or `ms` have passed. */
export async function runUntil(clock: ManualClock, cond: () => boolean, ms = 10_000, stepMs = 50): Promise<boolean> {
  for (let t = 0; t <= ms; t += stepMs) {
    await settle();
    if (cond()) return true;
    clock.advance(stepMs);
  }
  await settle();
  return cond();
}

export const TARGET = { serviceKey: 'ns/sink', protocol: 'tcp' as const, ip: '10.0.0.2', port: 8080, nodeName: 'b' };

/** Reads a stream to its end (collected), recording errors. */
export function collect(s: TunnelStream): { text: () => string; ended: () => boolean; error: () => Error | undefined } {
  const chunks: Uint8Array[] = [];
  let ended = false;
  let error: Error | undefined;
  s.on('data', (c: Buffer) => chunks.push(c));
  s.on('end', () => { ended = true; });
  s.on('error', (e) => { error = e; });
  return { text: () => Buffer.concat(chunks).toString(), ended: () => ended, error: () => error };
}
