// Serving-side authorization: whether this node serves a stream a peer opened, decided here whatever the caller
// claims. Pure, over plain data: the caller's node name as the link authenticated it, this node's own snapshot, the
// target the OPEN names. Served only:
//   - to callers that are Nodes of the cluster in this node's own snapshot (and never "ourselves" over a link);
//   - for an endpoint of the named Service (address, port and protocol; no open proxy: target.ts);
//   - on THIS node (endpoint nodeName = self: a peer can never make us pivot into another node or site);
//   - that is ready, or serving and terminating (kube-proxy's fallback);
//   - at an address that is not loopback, unspecified, multicast/broadcast/reserved or link-local (169.254.169.254
//     is the cloud metadata service);
//   - within the Service's strict scope (routing/routing.ts decides the mode and the caller's tier): strict-node is
//     never served to a remote caller; strict-group only to callers in this node's group (SuperEdge label scopes:
//     sharing a listed label value). Prefer and cluster modes serve any cluster node.
// A refusal is answered with the protocol's `forbidden` code (ERR 4) and counted by reason.
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import type { Snapshot } from '../cluster/types.ts';
import type { DialTarget } from '../proxy/dialer.ts';
import { nodeTier, routingMode, type RoutingDefault } from '../routing/routing.ts';
import { findEndpoint } from './target.ts';

/** Why a stream was refused (the `reason` label of edgemesh_tunnel_serve_refused_total). */
export type ServeRefusal = 'not-a-node' | 'unknown-service' | 'not-an-endpoint' | 'other-node' | 'not-ready' | 'address' | 'strict-node' | 'strict-group';
export const SERVE_REFUSALS: readonly ServeRefusal[] = ['not-a-node', 'unknown-service', 'not-an-endpoint', 'other-node', 'not-ready', 'address', 'strict-node', 'strict-group'];

export type ServeDecision = { ok: true } | { ok: false; reason: ServeRefusal; message: string };

export interface ServeRequest {
  /** The caller's node name as the link authenticated it. */
  readonly caller: string;
  readonly target: Pick<DialTarget, 'serviceKey' | 'protocol' | 'ip' | 'port'>;
}

export interface ServePolicy {
  /** This node's name. */
  readonly self: string;
  readonly routingDefault: RoutingDefault;
  /**
   * Serve loopback endpoint addresses. Only for tests that run every "node" on one host's loopback; the agent never
   * sets it.
   */
  readonly allowLoopback?: boolean;
}

/** Address classes never served (whatever the snapshot says: an endpoint object is cluster input, not proof). */
const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');
const NEVER = new BlockList();
NEVER.addSubnet('0.0.0.0', 8, 'ipv4'); // "this network", 0.0.0.0 unspecified
NEVER.addSubnet('169.254.0.0', 16, 'ipv4'); // link-local (cloud metadata)
NEVER.addSubnet('224.0.0.0', 4, 'ipv4'); // multicast
NEVER.addSubnet('240.0.0.0', 4, 'ipv4'); // reserved, 255.255.255.255 broadcast
NEVER.addAddress('::', 'ipv6'); // unspecified
NEVER.addSubnet('fe80::', 10, 'ipv6'); // link-local
NEVER.addSubnet('ff00::', 8, 'ipv6'); // multicast

/** Why `ip` is never a served address (undefined: it may be). IPv4-mapped IPv6 is judged as the IPv4 inside. */
export function forbiddenAddress(ip: string, allowLoopback = false): string | undefined {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip)?.[1];
  const addr = mapped ?? ip;
  const type = isIPv4(addr) ? 'ipv4' : isIPv6(addr) ? 'ipv6' : undefined;
  if (!type) return 'not an IP address';
  if (!allowLoopback && LOOPBACK.check(addr, type)) return 'a loopback address';
  if (NEVER.check(addr, type)) return 'an unspecified, link-local, multicast or reserved address';
  return undefined;
}

const refuse = (reason: ServeRefusal, message: string): ServeDecision => ({ ok: false, reason, message });

export function authorizeServe(snap: Snapshot, policy: ServePolicy, req: ServeRequest): ServeDecision {
  const { caller, target: t } = req;
  const where = `${t.ip}:${t.port}/${t.protocol}`;
  if (caller === policy.self || !snap.nodes.has(caller)) return refuse('not-a-node', `caller ${caller} is not a node of the cluster`);
  const found = findEndpoint(snap, t);
  if (!('endpoint' in found)) return refuse(found.unknownService ? 'unknown-service' : 'not-an-endpoint', found.reason);
  const ep = found.endpoint;
  if (ep.nodeName !== policy.self) return refuse('other-node', `${where} of ${t.serviceKey} is not on this node`);
  if (!ep.ready && !(ep.serving && ep.terminating)) return refuse('not-ready', `${where} of ${t.serviceKey} is not ready`);
  const bad = forbiddenAddress(t.ip, policy.allowLoopback);
  if (bad) return refuse('address', `${t.ip} is ${bad}`);
  const svc = snap.services.get(t.serviceKey)!;
  const m = routingMode(svc, policy.routingDefault).mode;
  if (m.mode === 'strict') {
    if (m.scope.kind === 'node') return refuse('strict-node', `${t.serviceKey} is node-local (strict-node): not served to other nodes`);
    const me = snap.nodes.get(policy.self);
    // A node without a group is its own scope under strict group routing (as planRoutes does).
    const groupless = m.scope.kind === 'group' && me?.group === undefined;
    if (groupless || nodeTier(caller, me, policy.self, snap.nodes, m.scope) !== 'group') {
      return refuse('strict-group', `${t.serviceKey} is group-local (strict-group): ${caller} is not in this node's group`);
    }
  }
  return { ok: true };
}
