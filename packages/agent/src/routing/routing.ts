// Group-scoped routing: a pure function from (Service, endpoints, nodes, this node, routing.default) to an ordered
// list of endpoint tiers node -> group -> region -> cluster and a mode (strict or prefer). No I/O, no clock.
//
// Precedence (first input present wins; documented in README "Interception, proxy and routing"):
//  0. external traffic (nodePorts, externalIPs, load-balancer IPs) to a Service with
//     spec.externalTrafficPolicy: Local                           -> strict node (otherwise the list below decides)
//  1. spec.internalTrafficPolicy: Local                          -> strict node
//  2. apps.kubeedge.io/service-topology: range-nodegroup         -> strict group
//  3. openyurt.io/topologyKeys: kubernetes.io/hostname           -> strict node
//                               openyurt.io/nodepool | kubernetes.io/zone | topology.kubernetes.io/zone -> strict group
//  4. topologyKeys: ["<label>", ...] (SuperEdge, JSON array)      -> strict: same value of any listed node label
//  5. service.cilium.io/affinity: local | remote | none          -> prefer group | prefer other groups | cluster
//  6. spec.trafficDistribution: PreferSameNode                   -> prefer node
//                               PreferSameZone | PreferClose     -> prefer group
//  7. routing.default: prefer | strict | cluster                 -> prefer group | strict group | cluster
import type { Endpoint, NodeInfo, Service } from '../cluster/types.ts';

export const KUBEEDGE_TOPOLOGY_ANNOTATION = 'apps.kubeedge.io/service-topology';
export const OPENYURT_TOPOLOGY_ANNOTATION = 'openyurt.io/topologyKeys';
export const SUPEREDGE_TOPOLOGY_ANNOTATION = 'topologyKeys';
export const CILIUM_AFFINITY_ANNOTATION = 'service.cilium.io/affinity';
export const HOSTNAME_LABEL = 'kubernetes.io/hostname';
export const REGION_LABEL = 'topology.kubernetes.io/region';

export type Tier = 'node' | 'group' | 'region' | 'cluster';
export const TIERS: readonly Tier[] = ['node', 'group', 'region', 'cluster'];
export type RoutingDefault = 'prefer' | 'strict' | 'cluster';

export type Scope =
  | { readonly kind: 'node' }
  | { readonly kind: 'group' }
  /** SuperEdge: nodes sharing the value of any of these labels with this node. */
  | { readonly kind: 'labels'; readonly keys: readonly string[] };

export type RoutingMode =
  | { readonly mode: 'strict'; readonly scope: Scope }
  | { readonly mode: 'prefer'; readonly first: 'node' | 'group' }
  /** Cilium `remote`: endpoints outside this node's group first, own group as the fallback. */
  | { readonly mode: 'prefer-remote' }
  | { readonly mode: 'cluster' };

export interface RoutingDecision {
  readonly mode: RoutingMode;
  /** Short name for /status and metrics: strict-node, strict-group, prefer-node, prefer-group, prefer-remote, cluster. */
  readonly label: string;
  /** The input that decided (annotation/field name, or `routing.default`). */
  readonly source: string;
  /** Set when an input was present but unusable (it was ignored). */
  readonly warning?: string;
}

/**
 * Decides the routing mode of a Service from its fields and annotations. `external`: for traffic that arrived from
 * outside (a nodePort, an externalIP, a load-balancer IP), where spec.externalTrafficPolicy: Local comes first. Pure.
 */
export function routingMode(svc: Service, def: RoutingDefault, external = false): RoutingDecision {
  const a = svc.annotations;
  let warning: string | undefined;
  if (external && svc.externalTrafficPolicy === 'Local') return decision({ mode: 'strict', scope: { kind: 'node' } }, 'spec.externalTrafficPolicy');
  if (svc.internalTrafficPolicy === 'Local') return decision({ mode: 'strict', scope: { kind: 'node' } }, 'spec.internalTrafficPolicy');
  const ke = a[KUBEEDGE_TOPOLOGY_ANNOTATION];
  if (ke !== undefined) {
    if (ke.trim() === 'range-nodegroup') return decision({ mode: 'strict', scope: { kind: 'group' } }, KUBEEDGE_TOPOLOGY_ANNOTATION);
    warning = `${KUBEEDGE_TOPOLOGY_ANNOTATION}: unknown value ${JSON.stringify(ke)}`;
  }
  const oy = a[OPENYURT_TOPOLOGY_ANNOTATION];
  if (oy !== undefined) {
    const v = oy.trim();
    if (v === HOSTNAME_LABEL) return decision({ mode: 'strict', scope: { kind: 'node' } }, OPENYURT_TOPOLOGY_ANNOTATION, warning);
    if (v === 'openyurt.io/nodepool' || v === 'kubernetes.io/zone' || v === 'topology.kubernetes.io/zone') {
      return decision({ mode: 'strict', scope: { kind: 'group' } }, OPENYURT_TOPOLOGY_ANNOTATION, warning);
    }
    warning ??= `${OPENYURT_TOPOLOGY_ANNOTATION}: unknown value ${JSON.stringify(oy)}`;
  }
  const se = a[SUPEREDGE_TOPOLOGY_ANNOTATION];
  if (se !== undefined) {
    const keys = parseKeyList(se);
    if (keys) {
      if (keys.length === 1 && keys[0] === HOSTNAME_LABEL) return decision({ mode: 'strict', scope: { kind: 'node' } }, SUPEREDGE_TOPOLOGY_ANNOTATION, warning);
      return decision({ mode: 'strict', scope: { kind: 'labels', keys } }, SUPEREDGE_TOPOLOGY_ANNOTATION, warning);
    }
    warning ??= `${SUPEREDGE_TOPOLOGY_ANNOTATION}: expected a JSON array of label keys, got ${JSON.stringify(se)}`;
  }
  const ci = a[CILIUM_AFFINITY_ANNOTATION];
  if (ci !== undefined) {
    const v = ci.trim().toLowerCase();
    if (v === 'local') return decision({ mode: 'prefer', first: 'group' }, CILIUM_AFFINITY_ANNOTATION, warning);
    if (v === 'remote') return decision({ mode: 'prefer-remote' }, CILIUM_AFFINITY_ANNOTATION, warning);
    if (v === 'none') return decision({ mode: 'cluster' }, CILIUM_AFFINITY_ANNOTATION, warning);
    warning ??= `${CILIUM_AFFINITY_ANNOTATION}: unknown value ${JSON.stringify(ci)}`;
  }
  const td = svc.trafficDistribution;
  if (td === 'PreferSameNode') return decision({ mode: 'prefer', first: 'node' }, 'spec.trafficDistribution', warning);
  if (td === 'PreferSameZone' || td === 'PreferClose') return decision({ mode: 'prefer', first: 'group' }, 'spec.trafficDistribution', warning);
  const src = 'routing.default';
  if (def === 'strict') return decision({ mode: 'strict', scope: { kind: 'group' } }, src, warning);
  if (def === 'prefer') return decision({ mode: 'prefer', first: 'group' }, src, warning);
  return decision({ mode: 'cluster' }, src, warning);
}

function parseKeyList(s: string): string[] | undefined {
  try {
    const v: unknown = JSON.parse(s);
    if (Array.isArray(v) && v.length > 0 && v.every((k) => typeof k === 'string' && k !== '')) return v as string[];
  } catch {
    // fall through
  }
  return undefined;
}

function decision(mode: RoutingMode, source: string, warning?: string): RoutingDecision {
  return warning ? { mode, label: modeLabel(mode), source, warning } : { mode, label: modeLabel(mode), source };
}

export function modeLabel(m: RoutingMode): string {
  if (m.mode === 'strict') return `strict-${m.scope.kind === 'labels' ? 'group' : m.scope.kind}`;
  if (m.mode === 'prefer') return `prefer-${m.first}`;
  return m.mode;
}

/** Where an endpoint sits relative to this node. Disjoint: an endpoint is in exactly one tier. */
export function tierOf(ep: Endpoint, me: NodeInfo | undefined, myName: string, nodes: ReadonlyMap<string, NodeInfo>, scope?: Scope): Tier {
  return nodeTier(ep.nodeName, me, myName, nodes, scope);
}

/** Where node `name` sits relative to this node (the serving side asks it of a caller, tunnel/authorize.ts). */
export function nodeTier(name: string | undefined, me: NodeInfo | undefined, myName: string, nodes: ReadonlyMap<string, NodeInfo>, scope?: Scope): Tier {
  if (name !== undefined && name === myName) return 'node';
  const their = name === undefined ? undefined : nodes.get(name);
  if (!their || !me) return 'cluster';
  if (sameGroup(me, their, scope)) return 'group';
  const r = me.labels[REGION_LABEL];
  if (r !== undefined && r !== '' && their.labels[REGION_LABEL] === r) return 'region';
  return 'cluster';
}

function sameGroup(me: NodeInfo, them: NodeInfo, scope?: Scope): boolean {
  if (scope?.kind === 'labels') return scope.keys.some((k) => me.labels[k] !== undefined && me.labels[k] !== '' && them.labels[k] === me.labels[k]);
  return me.group !== undefined && them.group === me.group;
}

export interface RoutingInput {
  readonly service: Service;
  readonly endpoints: readonly Endpoint[];
  readonly nodes: ReadonlyMap<string, NodeInfo>;
  readonly thisNode: string;
  readonly routingDefault: RoutingDefault;
  /** Routing for traffic from outside (nodePorts, externalIPs, load-balancer IPs): see routingMode. */
  readonly external?: boolean;
}

export interface TierSet {
  readonly tier: Tier;
  /** Endpoints usable in this step: ready ones; in strict mode, serving-terminating ones when no endpoint is ready. */
  readonly endpoints: readonly Endpoint[];
}

export interface RoutingPlan {
  readonly decision: RoutingDecision;
  /** Ordered steps (may be empty): strict has one (the scope); prefer walks them in order; cluster has one. */
  readonly steps: readonly TierSet[];
  /** Endpoint counts per tier (all usable endpoints, whatever the mode), for /status. */
  readonly counts: Readonly<Record<Tier, number>>;
  /** Strict and nothing usable in scope: callers must refuse (reset) at once. */
  readonly emptyScope: boolean;
  /** Tier of every usable endpoint (by address), for metrics. */
  readonly tierOf: ReadonlyMap<Endpoint, Tier>;
}

const usable = (e: Endpoint) => e.ready || e.serving;

/** Ready endpoints, or serving-terminating ones when none is ready (kube-proxy's fallback). */
function readyFirst(eps: readonly Endpoint[]): Endpoint[] {
  const ready = eps.filter((e) => e.ready);
  return ready.length ? ready : eps.filter((e) => e.serving && e.terminating);
}

/** Computes the routing plan of one Service as seen from this node. Pure. */
export function planRoutes(input: RoutingInput): RoutingPlan {
  const { service, nodes, thisNode } = input;
  const decision = routingMode(service, input.routingDefault, input.external ?? false);
  const m = decision.mode;
  const me = nodes.get(thisNode);
  const scope = m.mode === 'strict' ? m.scope : undefined;
  const byTier: Record<Tier, Endpoint[]> = { node: [], group: [], region: [], cluster: [] };
  const tiers = new Map<Endpoint, Tier>();
  for (const ep of input.endpoints) {
    if (!usable(ep)) continue;
    const t = tierOf(ep, me, thisNode, nodes, scope);
    byTier[t].push(ep);
    tiers.set(ep, t);
  }
  const counts = { node: byTier.node.length, group: byTier.group.length, region: byTier.region.length, cluster: byTier.cluster.length };
  let steps: TierSet[];
  if (m.mode === 'strict') {
    // A node without a group is its own scope under strict group routing.
    const groupless = m.scope.kind === 'group' && me?.group === undefined;
    const inScope = m.scope.kind === 'node' || groupless ? byTier.node : [...byTier.node, ...byTier.group];
    steps = [{ tier: m.scope.kind === 'node' || groupless ? 'node' : 'group', endpoints: readyFirst(inScope) }];
  } else if (m.mode === 'prefer') {
    const order: Tier[] = m.first === 'node' ? ['node', 'group', 'region', 'cluster'] : ['group', 'region', 'cluster'];
    steps = order.map((t) => ({ tier: t, endpoints: (t === 'group' && m.first === 'group' ? [...byTier.node, ...byTier.group] : byTier[t]).filter((e) => e.ready) }));
    // Nothing ready anywhere: serving-terminating endpoints, nearest first, as a last step.
    if (steps.every((s) => s.endpoints.length === 0)) {
      const all = order.flatMap((t) => (t === 'group' && m.first === 'group' ? [...byTier.node, ...byTier.group] : byTier[t]));
      steps.push({ tier: 'cluster', endpoints: readyFirst(all) });
    }
  } else if (m.mode === 'prefer-remote') {
    const local = [...byTier.node, ...byTier.group];
    const remote = [...byTier.region, ...byTier.cluster];
    steps = [{ tier: 'cluster' as Tier, endpoints: remote.filter((e) => e.ready) }, { tier: 'group' as Tier, endpoints: local.filter((e) => e.ready) }];
    if (steps.every((s) => s.endpoints.length === 0)) steps.push({ tier: 'cluster', endpoints: readyFirst([...remote, ...local]) });
  } else {
    steps = [{ tier: 'cluster', endpoints: readyFirst(input.endpoints.filter(usable)) }];
  }
  const emptyScope = m.mode === 'strict' && steps[0].endpoints.length === 0;
  return { decision, steps, counts, emptyScope, tierOf: tiers };
}

export interface Selection {
  /** Endpoints to balance over (already filtered by the caller's health predicate). */
  readonly endpoints: readonly Endpoint[];
  readonly tier: Tier;
  /** Index of the step used: > 0 means traffic spilled past the preferred tier. */
  readonly step: number;
  /** Set when the first step had no healthy endpoint and a later one was used. */
  readonly spilledFrom?: Tier;
}

/**
 * Picks the step to balance over: strict -> the scope (healthy endpoints, else every in-scope one so a passive
 * ejection never empties a strict scope); prefer -> the first step with a healthy endpoint. Undefined: refuse.
 */
export function selectTier(plan: RoutingPlan, healthy: (e: Endpoint) => boolean, exclude?: ReadonlySet<Endpoint>): Selection | undefined {
  const avail = (eps: readonly Endpoint[]) => (exclude?.size ? eps.filter((e) => !exclude.has(e)) : eps);
  for (let i = 0; i < plan.steps.length; i++) {
    const s = plan.steps[i];
    const eps = avail(s.endpoints);
    // The very same array when nothing is filtered out, so callers can cache per-array work.
    const ok = eps.every(healthy) ? eps : eps.filter(healthy);
    if (ok.length) return i === 0 ? { endpoints: ok, tier: s.tier, step: 0 } : { endpoints: ok, tier: s.tier, step: i, spilledFrom: plan.steps[0].tier };
  }
  // Every candidate is ejected: use them anyway rather than refusing (outlier detection is advisory).
  for (let i = 0; i < plan.steps.length; i++) {
    const eps = avail(plan.steps[i].endpoints);
    if (eps.length) return i === 0 ? { endpoints: eps, tier: plan.steps[i].tier, step: 0 } : { endpoints: eps, tier: plan.steps[i].tier, step: i, spilledFrom: plan.steps[0].tier };
  }
  return undefined;
}
