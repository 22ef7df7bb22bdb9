// Starts the node-local DNS: makes sure dns.listen exists on the host (dummy interface), picks upstreams, wires
// handler + forwarder + metrics + listeners. Returns a handle whose stop() undoes all of it.
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import type { Registry } from 'prom-client';
import { ConfigError, parseHostPort, type AgentConfig } from '@edgemesh/common/config';
import type { Logger } from '@edgemesh/common/log';
import type { ServiceIPTable, Snapshot } from '../cluster/types.ts';
import { acquireLocalAddress } from '../intercept/localaddr.ts';
import { normDomain } from './answer.ts';
import { chooseUpstreams, Forwarder, parseUpstream } from './forward.ts';
import { DnsHandler } from './handler.ts';
import { createDnsMetrics } from './metrics.ts';
import { DnsServer } from './server.ts';

export const RESOLV_CONF = '/etc/resolv.conf';

export interface DnsDeps {
  cfg: AgentConfig;
  log: Logger;
  registry: Registry;
  snapshot: () => Snapshot;
  ips: ServiceIPTable & { readonly version: number; inFakePool?(ip: string): boolean };
  /** Tests: per-upstream timeout and an alternative resolv.conf. */
  upstreamTimeoutMs?: number;
  resolvConfPath?: string;
}

export interface DnsHandle {
  server: DnsServer;
  handler: DnsHandler;
  forwarder: Forwarder;
  address: { host: string; port: number };
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
  const lease = await acquireLocalAddress(hp.host, d.log);
  const server = new DnsServer({ host: hp.host, port: hp.port, handler, log: d.log, metrics });
  let address: { host: string; port: number };
  try {
    address = await server.start();
  } catch (e) {
    await lease.release();
    throw e;
  }
  d.log.info({ upstreams: upstreams.map((u) => u.key), domain }, 'DNS ready');
  return {
    server, handler, forwarder, address,
    async stop() {
      forwarder.close();
      await server.close();
      await lease.release();
    },
  };
}
