// Connecting to a service port "as if intercepted", for the agent's other entry points (SOCKS5, the ingress gateway):
// the same routing plan, balancer, outlier detection, dialer choice (same node direct, other nodes through the
// tunnel) and proxy metrics as that service port's TCP listener — but the caller gets the connected upstream stream
// (and decides how to answer its own client) instead of a spliced client socket.
import type { Duplex } from 'node:stream';
import type { Tier } from '../routing/routing.ts';
import { DialError, dialDeadline, type DialErrorCode } from './dialer.ts';
import { countOpened, dialerFor, recordFailure, targetOf, type ListenerContext } from './listener.ts';
import type { PortState } from './portstate.ts';
import { MAX_DIAL_ATTEMPTS } from './tcp.ts';

/**
 * Why no connection was made. no_service: no such Service; no_port: it has no such TCP port; not_proxied: the mesh
 * does not proxy it (headless, ExternalName, opted out, or its listener is not open yet); strict_empty / no_endpoint /
 * dial_failed / limit: as the proxy's own refusals (edgemesh_proxy_refused_total).
 */
export type ServiceConnectFailure = 'no_service' | 'no_port' | 'not_proxied' | 'strict_empty' | 'no_endpoint' | 'dial_failed' | 'limit';

export class ServiceConnectError extends Error {
  readonly reason: ServiceConnectFailure;
  /** The last endpoint's dial error code (dial_failed). */
  readonly code: DialErrorCode | undefined;
  constructor(reason: ServiceConnectFailure, message: string, code?: DialErrorCode) {
    super(message);
    this.reason = reason;
    this.code = code;
  }
}

export interface ServiceConnection {
  /** Connected to the endpoint (directly, or a tunnel stream the far agent answered OK). */
  readonly upstream: Duplex;
  /** `ip:port` of the endpoint. */
  readonly endpoint: string;
  readonly nodeName: string | undefined;
  readonly tier: Tier;
}

export interface ConnectFrom {
  /** The original client's address: balancing (source-IP hash, affinity) works on it. */
  readonly clientIP: string;
  /** Value of the header a consistent-hash policy hashes on, when the caller has it (an HTTP request). */
  readonly headerValue?: string;
  /** The caller gave up (its client went away). */
  readonly signal?: AbortSignal;
}

/**
 * Picks an endpoint of the service port and connects to it, up to MAX_DIAL_ATTEMPTS endpoints (each a different
 * one), each attempt within `dialTimeoutMs`. The balancer's in-flight count is released when the upstream closes.
 * Throws ServiceConnectError (counted in edgemesh_proxy_refused_total like the listener's resets).
 */
export async function dialServicePort(st: PortState, ctx: ListenerContext, dialTimeoutMs: number, from: ConnectFrom): Promise<ServiceConnection> {
  const svc = st.service.key;
  const tried = new Set<string>();
  let lastCode: DialErrorCode | undefined;
  for (let attempt = 0; attempt < MAX_DIAL_ATTEMPTS && !from.signal?.aborted; attempt++) {
    const pick = st.pick(from.clientIP, from.headerValue, tried);
    if (!pick) break;
    const dialer = dialerFor(ctx, pick);
    st.balancer.started(pick.key);
    const target = targetOf(st, pick, 'tcp');
    // One deadline per attempt (the tunnel shares it out, see proxy/dialer.ts), ending early when the caller gives up.
    const deadline = dialDeadline(dialTimeoutMs, from.signal);
    let upstream: Duplex;
    try {
      upstream = await dialer.dialTcp(target, deadline);
    } catch (e) {
      st.balancer.ended(pick.key);
      tried.add(pick.key);
      lastCode = e instanceof DialError ? e.code : 'unreachable';
      recordFailure(ctx, st, pick.key, e);
      continue;
    }
    st.outliers.recordSuccess(pick.key);
    countOpened(ctx, st, pick, 'tcp');
    const key = pick.key;
    upstream.once('close', () => st.balancer.ended(key));
    if (from.signal?.aborted) {
      upstream.destroy();
      break;
    }
    return { upstream, endpoint: key, nodeName: pick.endpoint.nodeName, tier: pick.tier };
  }
  if (from.signal?.aborted) throw new ServiceConnectError('dial_failed', `${svc}:${st.port.port}: the caller gave up`, 'timeout');
  const reason = tried.size ? 'dial_failed' : st.plan.emptyScope ? 'strict_empty' : 'no_endpoint';
  ctx.metrics.refused.inc({ service: svc, protocol: 'tcp', reason });
  throw new ServiceConnectError(reason, reason === 'dial_failed' ? `${svc}:${st.port.port}: every endpoint tried failed (${lastCode})` : `${svc}:${st.port.port}: no usable endpoint (${reason})`, lastCode);
}
