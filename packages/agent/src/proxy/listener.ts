// What the TCP and UDP listeners share: the context they run in, which dialer reaches a picked endpoint, and the
// bookkeeping when a connection/session opens or its endpoint fails (metrics, outlier detection).
import type { Logger } from '@edgemesh/common/log';
import { choosePath, DirectRanges, reachOf } from './choose.ts';
import { DialError, type DialTarget, type Dialer } from './dialer.ts';
import { codeOf } from './direct.ts';
import type { FlatDialer, FlatPaths } from './flat.ts';
import { endpointMetricLabel, type ProxyMetrics } from './metrics.ts';
import type { Pick, PortState } from './portstate.ts';

export interface ListenerContext {
  log: Logger;
  metrics: ProxyMetrics;
  dialers: { direct: Dialer; tunnel?: Dialer };
  thisNode: string;
  srcGroup: () => string;
  /** proxy.directCIDRs: reachability per node and the dialer of the flat path (absent: no ranges configured). */
  flat?: { paths: FlatPaths; dialer: FlatDialer };
  /** Set on the listener of one headless endpoint's mesh IP: its name, for the per-endpoint metric. */
  meshEndpoint?: string;
}

/** The dialer for a picked endpoint (choose.ts decides: direct, flat with fallback, or the tunnel). */
export function dialerFor(ctx: ListenerContext, pick: Pick): Dialer {
  const node = pick.endpoint.nodeName;
  const haveTunnel = !!ctx.dialers.tunnel;
  if (!ctx.flat) return choosePath(reachOf(node, pick.ip, ctx.thisNode, NO_RANGES), haveTunnel, true) === 'tunnel' ? ctx.dialers.tunnel! : ctx.dialers.direct;
  const { paths, dialer } = ctx.flat;
  const path = choosePath(reachOf(node, pick.ip, ctx.thisNode, paths.ranges), haveTunnel, node === undefined || paths.nodeFlat(node));
  return path === 'tunnel' ? ctx.dialers.tunnel! : path === 'flat' ? dialer : ctx.dialers.direct;
}

const NO_RANGES = new DirectRanges([]);

/** The dial target for a picked endpoint of this service port. */
export function targetOf(st: PortState, pick: Pick, protocol: 'tcp' | 'udp'): DialTarget {
  return { serviceKey: st.service.key, protocol, ip: pick.ip, port: pick.port, nodeName: pick.endpoint.nodeName };
}

/** Counts a TCP connection or UDP session that reached its endpoint (by groups and tier; spillover when it spilled). */
export function countOpened(ctx: ListenerContext, st: PortState, pick: Pick, protocol: 'tcp' | 'udp'): void {
  const service = st.service.key;
  ctx.metrics.connections.inc({ service, protocol, src_group: ctx.srcGroup(), dst_group: pick.dstGroup, tier: pick.tier });
  if (ctx.meshEndpoint !== undefined) ctx.metrics.endpointConnections.inc({ service, endpoint: endpointMetricLabel(ctx.meshEndpoint), protocol });
  if (pick.spilledFrom) ctx.metrics.spillover.inc({ service, from_tier: pick.spilledFrom, to_tier: pick.stepTier });
}

/** Records a failed connect/channel to endpoint `key`: metric by code, and outlier detection (which may eject it). */
export function recordFailure(ctx: ListenerContext, st: PortState, key: string, err: unknown): void {
  const service = st.service.key;
  const code = err instanceof DialError ? err.code : codeOf(err as NodeJS.ErrnoException);
  ctx.metrics.dialFailures.inc({ service, code });
  ctx.log.debug({ service, endpoint: key, code }, 'endpoint failed');
  if (st.outliers.recordFailure(key, st.total) > 0) {
    ctx.metrics.ejections.inc({ service });
    ctx.log.warn({ service, endpoint: key }, 'endpoint ejected after consecutive failures');
  }
}
