// Hitless takeover between two agents on one stateDir (what a DaemonSet rolling update with maxSurge 1 and
// maxUnavailable 0 does on a hostNetwork pod). Both sides of protocol.ts, over the parts of the agent they touch.
//
// Successor: binds every address and port alongside the running agent (SO_REUSEPORT; persisted listener ports),
// follows its rules (reads the kernel back, writes nothing), re-establishes tunnel links, and when ready — its own
// desired rules identical to the kernel's, listeners and DNS bound, connected to a server — says `ready`; once the
// running agent has `released` the rules it applies them (identical: no change), takes the socket path and says `go`.
// Running agent: on `hello` reports not ready (the kubelet's probe may reach either process on the shared admin
// port); on `ready` stops changing rules and the port table; on `go` stops accepting — TCP listeners closed (with
// net.ipv4.tcp_migrate_req the kernel moves connections still in their accept queues to the successor's listeners),
// UDP sockets detached from their reuse groups (replies still owed leave from the successor's sockets) — drains
// in-flight connections for up to shutdownDrainSeconds, never removes rules or addresses, and exits 0. A successor
// that goes away before `go` leaves the running agent as it was (it re-asserts its rules).
import { readFileSync, writeFileSync } from 'node:fs';
import type { Logger } from '@edgemesh/common/log';
import type { AdminServer } from '@edgemesh/common/admin';
import { sleep } from '@edgemesh/common/backoff';
import { addedAddresses, keepLocalAddresses } from '../intercept/localaddr.ts';
import type { DnsHandle } from '../dns/index.ts';
import type { Proxier } from '../proxy/proxier.ts';
import type { ListenerPorts } from '../proxy/ports.ts';
import { HANDOFF_VERSION, type Message } from './protocol.ts';
import type { HandoffSocket, Peer, Predecessor } from './socket.ts';
import { sendFrom, servedUdp, type UdpRelay } from './udp.ts';

/** A successor looks this often whether it is ready to take over. */
export const TAKEOVER_POLL_MS = 200;
/**
 * A successor whose rules still differ from the running agent's this long after it started (their snapshots or
 * configs differ) takes over anyway, with its own rules: both agents' listeners stay up until the old one closes.
 */
export const TAKEOVER_CONVERGE_MS = 10_000;
/** How long a successor waits for the running agent's answer to `ready` before going on without it. */
export const RELEASE_TIMEOUT_MS = 10_000;
/**
 * A successor counts as ready without a server connection after this long (the servers are down: the node's own
 * Services and DNS must not wait for them, nor the rollout).
 */
export const TUNNEL_READY_GRACE_MS = 15_000;
/** A successor re-establishes the running agent's tunnel links for up to this long before it says ready. */
export const LINK_WARM_MS = 3000;
/** At most this many peer links are re-established before ready (the rest open on first use). */
export const MAX_WARM_LINKS = 64;
/** A draining agent ends once no TCP connection is open, no DNS answer is owed and no UDP datagram passed for this long. */
export const UDP_DRAIN_QUIET_MS = 1000;
export const DRAIN_POLL_MS = 100;
/**
 * While a successor takes over, a server session of ours that drops (the server replaced it with the successor's:
 * one session per node) is not re-dialled, or the two agents would take the session from each other in turns. Looked
 * at this often — well within the reconnect backoff's 0.5 s minimum.
 */
export const SERVER_YIELD_POLL_MS = 100;
export const TCP_MIGRATE_REQ = '/proc/sys/net/ipv4/tcp_migrate_req';

/** The parts of the agent a takeover works on (undefined when not running: dns off, intercept none, ...). */
export interface TakeoverParts {
  log: Logger;
  admin: AdminServer;
  socket: HandoffSocket;
  drainMs: number;
  interceptor?: { check(): Promise<boolean>; claim(): Promise<void>; release(): Promise<void>; resume(): void };
  ports?: ListenerPorts;
  proxy?: Proxier;
  dns?: DnsHandle;
  tunnel?: {
    status(): { peers: { node: string; path: string }[] };
    link(node: string): Promise<unknown>;
    servers: readonly { readonly connected: boolean; start(): void; stop(): void }[];
  };
  /** Stops the cluster source (a handed-over agent follows no more changes). */
  stopCluster(): Promise<void>;
  /**
   * Entry points into the mesh (SOCKS5, the ingress gateway): bound alongside the successor's (SO_REUSEPORT); on `go`
   * they stop accepting and their open connections are drained like the proxy's.
   */
  entries?: readonly { stopAccepting(): void; openConnections(): number }[];
}

/**
 * Makes the kernel move connections queued on a closing SO_REUSEPORT listener to another listener of its group
 * (Linux >= 5.14). Without it, connections accepted by the kernel but not yet by us when a listener closes are reset.
 * Best effort: a container's read-only /proc/sys refuses (the chart sets it from an init container instead).
 */
export function enableTcpMigrateReq(log: Logger): boolean {
  try {
    if (readFileSync(TCP_MIGRATE_REQ, 'utf8').trim() === '1') return true;
    writeFileSync(TCP_MIGRATE_REQ, '1');
    log.info({ sysctl: 'net.ipv4.tcp_migrate_req' }, 'enabled: queued connections of closing listeners move to the successor');
    return true;
  } catch (e) {
    log.warn({ err: (e as Error).message, sysctl: 'net.ipv4.tcp_migrate_req' }, 'cannot enable; connections still queued on a closing listener are reset (set it on the node)');
    return false;
  }
}

export class Takeover {
  private readonly p: TakeoverParts;
  /** A successor said hello and has not finished (go) or gone away. */
  private successor: Peer | undefined;
  private settled: (() => void) | undefined;
  private handed = false;
  private drain: Promise<void> | undefined;
  /** Called once a handover's drain is over: the process ends (exit 0). */
  onDrained: () => void = () => {};

  constructor(p: TakeoverParts) {
    this.p = p;
  }

  /** False while a successor is taking over (readiness check `handover`). */
  serving(): boolean {
    return !this.successor && !this.handed;
  }

  get handedOver(): boolean {
    return this.handed;
  }

  /** From now on successors are welcomed (the agent is fully started). */
  acceptSuccessors(): void {
    this.p.socket.onHello = (peer, hello) => this.onHello(peer, hello);
  }

  /**
   * A stop (SIGTERM) while a successor is taking over waits up to the drain time for it to finish, then drains.
   * Resolves true when the agent handed over (nothing may be cleaned up), false for a plain stop.
   */
  async beforeStop(): Promise<boolean> {
    this.p.socket.onHello = undefined;
    if (this.successor && !this.handed) {
      await Promise.race([new Promise<void>((r) => { this.settled = r; }), sleep(this.p.drainMs)]);
    }
    if (this.handed) await this.drain;
    return this.handed;
  }

  private onHello(peer: Peer, hello: Extract<Message, { t: 'hello' }>): void {
    const { log } = this.p;
    if (this.successor || this.handed) {
      peer.send({ t: 'busy' });
      peer.close();
      return;
    }
    this.successor = peer;
    log.info({ pid: hello.pid, version: hello.version }, 'an agent is taking over from this one');
    const peers = (this.p.tunnel?.status().peers ?? []).filter((x) => x.path !== 'connecting').map((x) => x.node);
    peer.send({ t: 'welcome', v: HANDOFF_VERSION, addresses: addedAddresses(), peers });
    const servers = this.p.tunnel?.servers ?? [];
    const yielded = new Set<(typeof servers)[number]>();
    const yieldTimer = setInterval(() => {
      for (const s of servers) {
        if (s.connected || yielded.has(s)) continue;
        s.stop();
        yielded.add(s);
      }
    }, SERVER_YIELD_POLL_MS);
    yieldTimer.unref();
    let released = false;
    let served = new Set<string>();
    peer.onMessage((m) => {
      if (m.t === 'ready' && !released) {
        released = true;
        served = new Set(m.udp);
        void (async () => {
          await this.p.interceptor?.release();
          this.p.ports?.setWritable(false);
          peer.send({ t: 'released' });
        })();
      } else if (m.t === 'go' && released && !this.handed) {
        this.handed = true;
        clearInterval(yieldTimer);
        this.drain = this.handOver(peer, served);
        void this.drain.then(() => this.onDrained());
        this.settled?.();
      }
    });
    peer.onClose(() => {
      if (this.handed) return;
      log.warn('the agent taking over went away before it took over; carrying on');
      this.successor = undefined;
      clearInterval(yieldTimer);
      for (const s of yielded) s.start();
      if (released) {
        this.p.ports?.setWritable(true);
        this.p.interceptor?.resume();
      }
      this.settled?.();
    });
  }

  /** `go`: stop accepting, let what is in flight finish, then end (no rule or address is removed). */
  private async handOver(peer: Peer, served: ReadonlySet<string>): Promise<void> {
    const { log } = this.p;
    const t0 = performance.now();
    keepLocalAddresses(true);
    enableTcpMigrateReq(log);
    let relayed = 0;
    let dropped = 0;
    const relay: UdpRelay = {
      has: (local) => served.has(local),
      send: (local, data, port, to) => {
        if (peer.send({ t: 'udp', local, to, port, data: data.toString('base64') })) relayed++;
        else dropped++;
      },
    };
    await this.p.admin.close();
    const entries = this.p.entries ?? [];
    for (const e of entries) e.stopAccepting();
    await Promise.all([this.p.dns?.stopAccepting(relay), this.p.proxy?.stopAccepting(relay)]);
    await this.p.stopCluster();
    log.info({ drainMs: this.p.drainMs }, 'handed over: stopped accepting, draining');
    const end = t0 + this.p.drainMs;
    for (;;) {
      const now = performance.now();
      const quietSince = Math.max(t0, this.p.proxy?.lastUdpActivity() ?? 0);
      const entryConns = entries.reduce((n, e) => n + e.openConnections(), 0);
      const idle = (this.p.proxy?.openConnections() ?? 0) === 0 && entryConns === 0 && !(this.p.dns?.busy() ?? false) && now - quietSince >= UDP_DRAIN_QUIET_MS;
      if (idle || now >= end) {
        log.info({ ms: Math.round(now - t0), open: this.p.proxy?.openConnections() ?? 0, entryConnections: entryConns, relayedDatagrams: relayed, droppedDatagrams: dropped, timedOut: !idle }, 'drain done');
        return;
      }
      await sleep(DRAIN_POLL_MS);
    }
  }

  /**
   * The successor's side, run once the agent started alongside the one in `pred`. Resolves once this agent has
   * taken over (or the old one went away, or this one is stopping: `stopping`).
   */
  async takeOver(pred: Predecessor, stopping: () => boolean): Promise<void> {
    const { log, admin } = this.p;
    const { peer, welcome } = pred;
    let lost = false;
    peer.onClose(() => { lost = true; });
    const t0 = performance.now();
    // Links the running agent has: up again (relay at once, punch in parallel) before this one says ready.
    if (this.p.tunnel && welcome.peers.length) {
      const t = this.p.tunnel;
      await Promise.race([Promise.allSettled(welcome.peers.slice(0, MAX_WARM_LINKS).map((n) => t.link(n))), sleep(LINK_WARM_MS)]);
    }
    for (;;) {
      if (lost || stopping()) break;
      this.p.proxy?.kick(); // re-reads the port table for service ports the running agent may just have added
      await this.p.proxy?.settle();
      await this.p.interceptor?.check();
      const r = admin.ready();
      if (r.ok) break;
      if (performance.now() - t0 > TAKEOVER_CONVERGE_MS && r.failing.every((f) => f === 'proxy')) {
        log.warn({ why: this.p.proxy?.notReadyReason() }, 'the running agent\'s rules still differ from ours; taking over with ours');
        break;
      }
      await sleep(TAKEOVER_POLL_MS);
    }
    if (stopping()) return;
    if (!lost) {
      peer.send({ t: 'ready', udp: servedUdp() });
      const m = await peer.next(RELEASE_TIMEOUT_MS);
      if (m?.t !== 'released') log.warn({ reply: m?.t ?? 'none' }, 'the running agent did not release the rules; taking over anyway');
    }
    try {
      await this.p.interceptor?.claim();
    } catch (e) {
      log.error({ err: (e as Error).message }, 'applying the interception rules after the takeover failed; retrying');
    }
    this.p.ports?.setWritable(true);
    keepLocalAddresses(false);
    this.p.socket.takePath();
    peer.onMessage((m) => {
      if (m.t === 'udp') sendFrom(m.local, Buffer.from(m.data, 'base64'), m.port, m.to);
    });
    peer.send({ t: 'go' });
    log.info({ ms: Math.round(performance.now() - t0), predecessorGone: lost }, 'took over from the running agent');
    this.acceptSuccessors();
  }
}
