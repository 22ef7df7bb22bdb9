// Per service-port decision state: the routing plan, the balancer and the outlier detector. Picking an endpoint is a
// function of this state and the caller (no sockets here), so it is unit-tested without a network.
import { endpointPort } from '../cluster/model.ts';
import type { Endpoint, NodeInfo, Service, ServicePort } from '../cluster/types.ts';
import { Balancer } from '../lb/balancer.ts';
import type { Rng } from '../lb/hash.ts';
import { OutlierDetector } from '../lb/outlier.ts';
import type { LbPolicy } from '../lb/policy.ts';
import { planRoutes, selectTier, type RoutingDefault, type RoutingPlan, type Tier } from '../routing/routing.ts';

export interface Pick {
  readonly endpoint: Endpoint;
  readonly key: string;
  readonly ip: string;
  readonly port: number;
  /** Where the endpoint sits relative to this node. */
  readonly tier: Tier;
  /** The routing step used (differs from the first step when traffic spilled). */
  readonly stepTier: Tier;
  readonly spilledFrom?: Tier;
  readonly dstGroup: string;
}

export interface PortStateUpdate {
  service: Service;
  port: ServicePort;
  endpoints: readonly Endpoint[];
  nodes: ReadonlyMap<string, NodeInfo>;
  thisNode: string;
  routingDefault: RoutingDefault;
  policy: LbPolicy;
  /** The listener serves traffic from outside (nodePorts, externalIPs, load-balancer IPs): externalTrafficPolicy applies. */
  external?: boolean;
}

export const endpointKey = (ip: string, port: number) => (ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`);

export class PortState {
  service!: Service;
  port!: ServicePort;
  plan!: RoutingPlan;
  balancer!: Balancer;
  nodes: ReadonlyMap<string, NodeInfo> = new Map();
  /** The Service's endpoints as last given (to skip recomputing when a snapshot did not touch them). */
  sourceEndpoints: readonly Endpoint[] = [];
  /** Endpoints of the plan that have a port for this service port. */
  total = 0;
  readonly outliers: OutlierDetector;
  private readonly rng?: Rng;
  private readonly now?: () => number;
  private balancerId = '';
  /** Sorted candidate keys per endpoint list (the plan's lists are stable between updates). */
  private candidates = new WeakMap<readonly Endpoint[], { byKey: Map<string, Endpoint>; keys: string[] }>();

  constructor(u: PortStateUpdate, opts: { rng?: Rng; now?: () => number; outliers?: OutlierDetector } = {}) {
    this.rng = opts.rng;
    this.now = opts.now;
    this.outliers = opts.outliers ?? new OutlierDetector({ now: opts.now });
    this.update(u);
  }

  /** Recomputes the plan; keeps balancer state unless the policy or affinity changed. */
  update(u: PortStateUpdate): void {
    this.service = u.service;
    this.port = u.port;
    this.nodes = u.nodes;
    this.sourceEndpoints = u.endpoints;
    const eps = u.endpoints.filter((e) => endpointPort(e, u.port) !== undefined && e.addressType === 'IPv4');
    this.plan = planRoutes({ service: u.service, endpoints: eps, nodes: u.nodes, thisNode: u.thisNode, routingDefault: u.routingDefault, external: u.external });
    this.total = eps.length;
    const affinity = u.service.sessionAffinity === 'ClientIP' ? u.service.affinityTimeoutSeconds : undefined;
    const id = JSON.stringify([u.policy, affinity]);
    if (id !== this.balancerId) {
      this.balancerId = id;
      this.balancer = new Balancer({ policy: u.policy, affinitySeconds: affinity, rng: this.rng, now: this.now });
    }
    this.outliers.retain(new Set(eps.map((e) => endpointKey(e.address, endpointPort(e, u.port)!))));
  }

  /**
   * Picks an endpoint for a caller, skipping the endpoint keys in `exclude` (endpoints that already failed for this
   * connection). By key, not by object: an update between attempts brings new Endpoint objects for the same ones.
   */
  pick(clientIP: string, headerValue: string | undefined, exclude?: ReadonlySet<string>): Pick | undefined {
    const keyOf = (e: Endpoint) => endpointKey(e.address, endpointPort(e, this.port)!);
    const excluded = exclude?.size ? new Set([...this.plan.tierOf.keys()].filter((e) => exclude.has(keyOf(e)))) : undefined;
    const sel = selectTier(this.plan, (e) => !this.outliers.isEjected(keyOf(e)), excluded);
    if (!sel) return undefined;
    let c = this.candidates.get(sel.endpoints);
    if (!c) {
      const byKey = new Map<string, Endpoint>();
      for (const e of sel.endpoints) byKey.set(keyOf(e), e);
      c = { byKey, keys: [...byKey.keys()].sort() };
      this.candidates.set(sel.endpoints, c);
    }
    const { byKey, keys } = c;
    const key = this.balancer.pick(keys, { clientIP, headerValue });
    const endpoint = byKey.get(key)!;
    const dstGroup = (endpoint.nodeName !== undefined ? this.nodes.get(endpoint.nodeName)?.group : undefined) ?? 'none';
    return { endpoint, key, ip: endpoint.address, port: endpointPort(endpoint, this.port)!, tier: this.plan.tierOf.get(endpoint) ?? sel.tier, stepTier: sel.tier, spilledFrom: sel.spilledFrom, dstGroup };
  }

  /**
   * Keys of the endpoints the routing plan may send new traffic to (any step); sessions to others are stale: out of
   * a strict scope, no longer ready while ready ones exist, or gone.
   */
  liveKeys(): Set<string> {
    const out = new Set<string>();
    for (const step of this.plan.steps) for (const e of step.endpoints) out.add(endpointKey(e.address, endpointPort(e, this.port)!));
    return out;
  }

  /** The HTTP header the policy hashes on, if any. */
  get hashHeader(): string | undefined {
    return this.balancer.policy.kind === 'maglev' ? this.balancer.policy.header : undefined;
  }
}

const HEAD_END = Buffer.from('\r\n\r\n');

/** True when the blank line ending a request head is in `chunk` or straddles `before` (what was read so far) and it. */
export function headComplete(before: Buffer, chunk: Buffer): boolean {
  if (chunk.includes(HEAD_END)) return true;
  const k = Math.min(before.length, HEAD_END.length - 1);
  return k > 0 && Buffer.concat([before.subarray(before.length - k), chunk.subarray(0, HEAD_END.length - 1)]).includes(HEAD_END);
}

/** Extracts a header value from the start of an HTTP/1 request, or undefined. `name` is lower case. Pure. */
export function headerFromRequestHead(head: Buffer, name: string): string | undefined {
  const text = head.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  const lines = (end >= 0 ? text.slice(0, end) : text).split('\r\n').slice(1);
  for (const l of lines) {
    const i = l.indexOf(':');
    if (i > 0 && l.slice(0, i).trim().toLowerCase() === name) return l.slice(i + 1).trim();
  }
  return undefined;
}
