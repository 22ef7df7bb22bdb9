// Starts the node-local DNS: makes sure dns.listen exists on the host (dummy interface), picks upstreams, wires
// handler + forwarder + metrics + listeners. Returns a handle whose stop() undoes all of it.
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import type { Registry } from 'prom-client';
import { ConfigError, parseHostPort, type AgentConfig } from '@edgemesh/common/config';
import type { Budgets } from '@edgemesh/common/budget';
import type { FdPressure } from '@edgemesh/common/fds';
import type { Logger } from '@edgemesh/common/log';
import type { ServiceIPTable, Snapshot } from '../cluster/types.ts';
import { acquireLocalAddress } from '../intercept/localaddr.ts';
import { ClientAcl, clientRanges, type AclInputs } from './acl.ts';
import type { UdpRelay } from '../handoff/udp.ts';
import { normDomain } from './answer.ts';
import { chooseUpstreams, Forwarder, parseUpstream } from './forward.ts';
import { DnsHandler } from './handler.ts';
import { createDnsMetrics } from './metrics.ts';
import { RateLimiter } from './rrl.ts';
import { DnsServer } from './server.ts';

export const RESOLV_CONF = '/etc/resolv.conf';
/** This host's interface addresses (DNS clients) are re-read this often, never per query. */
export const LOCAL_ADDR_REFRESH_MS = 30_000;

export interface DnsDeps {
  cfg: AgentConfig;
  log: Logger;
  registry: Registry;
  snapshot: () => Snapshot;
  ips: ServiceIPTable & { readonly version: number; inFakePool?(ip: string): boolean };
  /** dns.listen is held by the agent we take over from: bind alongside it. */
  shared?: boolean;
  /** Tests: per-upstream timeout and an alternative resolv.conf. */
  upstreamTimeoutMs?: number;
  resolvConfPath?: string;
  /** The process's budgets and descriptor pressure (agent.budgets, agent.fds). */
  budgets?: Budgets;
  fds?: FdPressure;
  /** Tests: this host's interface addresses instead of os.networkInterfaces(). */
  interfaces?: () => AclInputs['interfaces'];
}

function readInterfaces(): AclInputs['interfaces'] {
  return Object.values(networkInterfaces()).flatMap((l) => l ?? []);
}

/**
 * Keeps the client list current: rebuilt when this node's Node object (addresses, podCIDRs) changes in the snapshot or
 * the host's interface addresses change (read every LOCAL_ADDR_REFRESH_MS). Logs each change once.
 */
export class ClientList {
  private acl: ClientAcl;
  private snap: Snapshot | undefined;
  private sig = '';
  private ifaces: AclInputs['interfaces'] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly d: {
    nodeName: string; allowCIDRs: readonly string[]; snapshot: () => Snapshot; log: Logger; interfaces: () => AclInputs['interfaces'];
    /** dns.listen's address: a host process asking it directly uses it as its source (it is on this host). */
    listenHost: string;
  };

  constructor(d: ClientList['d']) {
    this.d = d;
    this.readInterfaces();
    this.acl = this.build(d.snapshot());
  }

  /** Re-reads the interface addresses now (after this agent added its own) and every LOCAL_ADDR_REFRESH_MS. */
  start(): void {
    this.refresh();
    this.timer = setInterval(() => this.refresh(), LOCAL_ADDR_REFRESH_MS);
    this.timer.unref();
  }

  refresh(): void {
    this.readInterfaces();
    this.acl = this.build(this.d.snapshot());
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** The current matcher (one identity check per call when nothing changed). */
  current(): ClientAcl {
    const snap = this.d.snapshot();
    if (snap !== this.snap) this.acl = this.build(snap);
    return this.acl;
  }

  private readInterfaces(): void {
    try {
      this.ifaces = this.d.interfaces();
    } catch (e) {
      // EMFILE (getifaddrs needs a socket): keep the last list.
      this.d.log.warn({ err: (e as Error).message }, 'cannot read the interface addresses; keeping the last list');
    }
  }

  private build(snap: Snapshot): ClientAcl {
    this.snap = snap;
    const node = snap.nodes.get(this.d.nodeName);
    const ranges = clientRanges({ interfaces: [...this.ifaces, { address: this.d.listenHost, internal: false }], node, allowCIDRs: this.d.allowCIDRs });
    const sig = ranges.map((r) => `${r.address}/${r.prefix}`).join(',');
    if (sig === this.sig) return this.acl;
    this.sig = sig;
    const by = (w: string) => ranges.filter((r) => r.why === w).map((r) => `${r.address}/${r.prefix}`);
    const fields = { node: this.d.nodeName, podCIDRs: by('podCIDR'), allowCIDRs: by('allowCIDRs'), local: by('local').length + by('node').length };
    if (!node) this.d.log.info(fields, 'DNS answers this host and dns.allowCIDRs only: this node is not in the cluster snapshot (yet)');
    else if (!node.podCIDRs?.length) this.d.log.warn(fields, 'DNS answers this host and dns.allowCIDRs only: the Node has no spec.podCIDRs (set dns.allowCIDRs to the pod ranges if your CNI does not use them)');
    else this.d.log.info(fields, 'DNS clients');
    return new ClientAcl(ranges);
  }
}

export interface DnsHandle {
  server: DnsServer;
  handler: DnsHandler;
  forwarder: Forwarder;
  address: { host: string; port: number };
  clients: ClientList;
  /** A handoff: stop taking new queries, answer the ones under way (UDP replies through `relay`). */
  stopAccepting(relay: UdpRelay | undefined): Promise<void>;
  /** Questions still being answered or TCP connections still open. */
  busy(): boolean;
  stop(): Promise<void>;
}

/** Checks the dns.* keys beyond the schema; throws ConfigError naming the key. Returns the parsed listen and domain. */
export function validateDnsConfig(cfg: AgentConfig): { host: string; port: number; domain: string } {
  const hp = parseHostPort(cfg.dns.listen, false);
  if (!hp || !isIP(hp.host)) throw new ConfigError('dns.listen', `expected IP:PORT, got ${JSON.stringify(cfg.dns.listen)}`);
  const domain = normDomain(cfg.dns.domain);
  if (!/^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/.test(domain)) throw new ConfigError('dns.domain', `${JSON.stringify(cfg.dns.domain)} is not a DNS name`);
  cfg.dns.upstream.forEach((u, i) => parseUpstream(u, `dns.upstream[${i}]`));
  return { host: hp.host, port: hp.port, domain };
}

export async function startDns(d: DnsDeps): Promise<DnsHandle> {
  const { domain, ...hp } = validateDnsConfig(d.cfg);

  let resolvText: string | undefined;
  if (!d.cfg.dns.upstream.length) {
    try {
      resolvText = readFileSync(d.resolvConfPath ?? RESOLV_CONF, 'utf8');
    } catch (e) {
      d.log.warn({ file: d.resolvConfPath ?? RESOLV_CONF, err: (e as Error).message }, 'cannot read resolv.conf: names outside the cluster get SERVFAIL');
    }
  }
  const localIPs = new Set(Object.values(networkInterfaces()).flatMap((l) => (l ?? []).map((a) => a.address)));
  const upstreams = chooseUpstreams(d.cfg.dns.upstream, resolvText, { host: hp.host, port: hp.port }, localIPs);
  if (!upstreams.length) d.log.warn('no DNS upstream (dns.upstream empty and none usable in resolv.conf): names outside the cluster get SERVFAIL');
  const metrics = createDnsMetrics(d.registry);
  const forwarder = new Forwarder({ upstreams, timeoutMs: d.upstreamTimeoutMs, log: d.log, hooks: { onUpstream: (u, s, o) => metrics.upstream(u, s, o), onCache: (hit) => metrics.cache('forward', hit) } });
  const handler = new DnsHandler({
    domain, ttl: d.cfg.dns.ttlSeconds, snapshot: d.snapshot, ips: d.ips, forwarder, metrics,
    ownsIP: d.ips.inFakePool ? (ip) => d.ips.inFakePool!(ip) : undefined,
  });
  const clients = new ClientList({ nodeName: d.cfg.nodeName, allowCIDRs: d.cfg.dns.allowCIDRs, snapshot: d.snapshot, log: d.log, interfaces: d.interfaces ?? readInterfaces, listenHost: hp.host });
  const { rrl, tcp } = d.cfg.dns;
  const lease = await acquireLocalAddress(hp.host, d.log);
  const server = new DnsServer({
    host: hp.host, port: hp.port, handler, log: d.log, metrics, budgets: d.budgets, fds: d.fds,
    acl: () => clients.current(),
    rrl: new RateLimiter({ rate: rrl.responsesPerSecond, slip: rrl.slip, windowSeconds: rrl.windowSeconds }),
    tcp: { maxConnections: tcp.maxConnections, maxPerSource: tcp.maxPerSource },
    shared: d.shared,
  });
  let address: { host: string; port: number };
  try {
    address = await server.start();
  } catch (e) {
    await lease.release();
    throw e;
  }
  clients.start();
  d.log.info({ upstreams: upstreams.map((u) => u.key), domain }, 'DNS ready');
  return {
    server, handler, forwarder, address, clients,
    stopAccepting: (relay) => server.stopAccepting(relay),
    busy: () => server.pending > 0 || server.tcpConnections > 0,
    async stop() {
      clients.stop();
      forwarder.close();
      await server.close();
      await lease.release();
    },
  };
}
