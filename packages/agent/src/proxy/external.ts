// Where traffic from outside the cluster reaches a Service port (proxy.nodePorts): its nodePort on every address of
// this node, its externalIPs and its load balancer's ingress IPs, as kube-proxy intercepts them. Pure: the proxier
// turns these into interception rules pointing at a listener.
import { isIP } from 'node:net';
import type { Service, ServicePort } from '../cluster/types.ts';
import { NODE_LOCAL } from '../intercept/rules.ts';

export type ExternalKind = 'nodePort' | 'externalIP' | 'loadBalancer';

export interface ExternalDestination {
  /** An IPv4 address, or NODE_LOCAL (every local address of this node) for the nodePort. */
  readonly ip: string;
  readonly port: number;
  readonly kind: ExternalKind;
}

/**
 * The external destinations of one service port: its nodePort (NodePort and LoadBalancer Services) and, on the
 * service port itself, every IPv4 externalIP and load-balancer ingress IP (each once; IPv6 is not intercepted yet).
 */
export function externalDestinations(svc: Service, sp: ServicePort): ExternalDestination[] {
  const out: ExternalDestination[] = [];
  if (sp.nodePort !== undefined && (svc.type === 'NodePort' || svc.type === 'LoadBalancer')) out.push({ ip: NODE_LOCAL, port: sp.nodePort, kind: 'nodePort' });
  const seen = new Set<string>();
  const add = (ips: readonly string[] | undefined, kind: ExternalKind) => {
    for (const ip of ips ?? []) {
      if (isIP(ip) !== 4 || seen.has(ip)) continue;
      seen.add(ip);
      out.push({ ip, port: sp.port, kind });
    }
  };
  add(svc.externalIPs, 'externalIP');
  if (svc.type === 'LoadBalancer') add(svc.loadBalancerIPs, 'loadBalancer');
  return out;
}

/**
 * Whether external traffic to this Service needs a listener of its own: with externalTrafficPolicy Local it is
 * routed strictly to this node's endpoints while the Service IP keeps the Service's routing; otherwise the external
 * destinations lead to the Service port's own listener (same routing, balancer and affinity, as kube-proxy's
 * KUBE-EXT chains jump to the Service's chain).
 */
export function needsExternalListener(svc: Service): boolean {
  return svc.externalTrafficPolicy === 'Local';
}
