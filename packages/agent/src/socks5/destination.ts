// Where a SOCKS5 CONNECT goes, and which reply code a failure gets. Pure.
//
// Destination forms, first match wins:
//   1. an IP (address type IPv4/IPv6, or a domain that is an IP literal): a Service IP the agent hands out -> that
//      Service; any other IP -> not allowed (no open proxy).
//   2. `<svc>.<ns>.svc.<domain>` -> Service ns/svc.
//   3. a node of the cluster (its name, case-insensitive) -> node access on that node.
//   4. `<svc>.<ns>.svc` or `<svc>.<ns>` -> Service ns/svc.
//   5. anything else -> host unreachable.
import { isIP } from 'node:net';
import type { Snapshot } from '../cluster/types.ts';
import { DialError, type DialErrorCode } from '../proxy/dialer.ts';
import { ServiceConnectError, type ServiceConnectFailure } from '../proxy/connect.ts';
import { REP, type ReplyCode, type Request } from './codec.ts';

export type Destination =
  | { readonly kind: 'service'; readonly serviceKey: string; readonly port: number }
  | { readonly kind: 'node'; readonly node: string; readonly port: number }
  | { readonly kind: 'refused'; readonly reply: ReplyCode; readonly reason: string };

export interface DestinationContext {
  readonly snapshot: Snapshot;
  /** IP -> Service key (the agent's Service IP table: what DNS answers and the proxy intercepts). */
  readonly serviceForIP: (ip: string) => string | undefined;
  /** Cluster domain (dns.domain), e.g. cluster.local. */
  readonly domain: string;
}

/** Host names we look up: letters, digits, `-`, `_`, `.`; at most 253 characters. */
const NAME_RE = /^[a-z0-9_]([a-z0-9_.-]{0,252})$/;

function serviceByName(ctx: DestinationContext, name: string, ns: string, port: number): Destination {
  const key = `${ns}/${name}`;
  if (ctx.snapshot.services.has(key)) return { kind: 'service', serviceKey: key, port };
  if (ctx.snapshot.optedOut?.has(key)) return { kind: 'refused', reply: REP.NOT_ALLOWED, reason: `Service ${key} opted out of the mesh` };
  return { kind: 'refused', reply: REP.HOST_UNREACHABLE, reason: `no Service ${key}` };
}

export function resolveDestination(req: Pick<Request, 'addressType' | 'host' | 'port'>, ctx: DestinationContext): Destination {
  const { port } = req;
  if (port === 0) return { kind: 'refused', reply: REP.NOT_ALLOWED, reason: 'port 0' };
  let host = req.host;
  if (req.addressType === 'domain') {
    host = host.toLowerCase();
    if (host.endsWith('.')) host = host.slice(0, -1);
  }
  const literal = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  if (req.addressType !== 'domain' || isIP(literal)) {
    const key = ctx.serviceForIP(literal);
    if (key) return { kind: 'service', serviceKey: key, port };
    return { kind: 'refused', reply: REP.NOT_ALLOWED, reason: `${literal} is not a Service IP (the mesh is no open proxy)` };
  }
  if (!NAME_RE.test(host) || host.includes('..')) return { kind: 'refused', reply: REP.HOST_UNREACHABLE, reason: 'not a valid host name' };
  const labels = host.split('.');
  const domain = ctx.domain.toLowerCase().replace(/\.$/, '');
  const suffix = `.svc.${domain}`;
  if (host.endsWith(suffix) && labels.length === 3 + domain.split('.').length) {
    return serviceByName(ctx, labels[0], labels[1], port);
  }
  for (const name of ctx.snapshot.nodes.keys()) {
    if (name.toLowerCase() === host) return { kind: 'node', node: name, port };
  }
  if (labels.length === 3 && labels[2] === 'svc') return serviceByName(ctx, labels[0], labels[1], port);
  if (labels.length === 2) return serviceByName(ctx, labels[0], labels[1], port);
  return { kind: 'refused', reply: REP.HOST_UNREACHABLE, reason: 'neither a node nor a Service of the cluster' };
}

/** The reply code for a failed node-access dial (NodeDialer's DialError codes). */
export function replyForDialCode(code: DialErrorCode | undefined): ReplyCode {
  switch (code) {
    case 'forbidden': return REP.NOT_ALLOWED;
    case 'refused': return REP.CONNECTION_REFUSED;
    case 'no-route': return REP.NETWORK_UNREACHABLE;
    case 'timeout':
    case 'unreachable': return REP.HOST_UNREACHABLE;
    default: return REP.GENERAL_FAILURE;
  }
}

/** The reply code for a failed Service connect (Proxier.connectTcp). */
export function replyForServiceFailure(reason: ServiceConnectFailure, code?: DialErrorCode): ReplyCode {
  switch (reason) {
    case 'no_service': return REP.HOST_UNREACHABLE;
    case 'no_port': return REP.CONNECTION_REFUSED;
    case 'not_proxied': return REP.NOT_ALLOWED;
    // A strict scope with nothing in it: no network path from this node's scope to the Service.
    case 'strict_empty': return REP.NETWORK_UNREACHABLE;
    case 'no_endpoint': return REP.HOST_UNREACHABLE;
    case 'dial_failed': return replyForDialCode(code);
    case 'limit': return REP.GENERAL_FAILURE;
  }
}

/** The reply code for whatever a connect attempt threw. */
export function replyForError(err: unknown): ReplyCode {
  if (err instanceof ServiceConnectError) return replyForServiceFailure(err.reason, err.code);
  if (err instanceof DialError) return replyForDialCode(err.code);
  return REP.GENERAL_FAILURE;
}
