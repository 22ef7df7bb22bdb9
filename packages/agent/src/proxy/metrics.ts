// Proxy metrics (prom-client), registered once per registry.
import { Counter, Gauge, type Registry } from 'prom-client';

export interface ProxyMetrics {
  connections: Counter<'service' | 'protocol' | 'src_group' | 'dst_group' | 'tier'>;
  bytes: Counter<'service' | 'direction'>;
  active: Gauge<'service' | 'protocol'>;
  refused: Counter<'service' | 'protocol' | 'reason'>;
  dialFailures: Counter<'service' | 'code'>;
  spillover: Counter<'service' | 'from_tier' | 'to_tier'>;
  strictEmpty: Gauge;
  ejections: Counter<'service'>;
  udpSessions: Gauge;
  udpDropped: Counter<'service' | 'reason'>;
  listeners: Gauge<'protocol'>;
  /** Per-endpoint mesh IPs (headless Services): connections and sessions per endpoint. */
  endpointConnections: Counter<'service' | 'endpoint' | 'protocol'>;
  /** proxy.directCIDRs: direct dials to another node's endpoint that found no route (the tunnel took over). */
  flatFallbacks: Counter<'reason'>;
  flatNodesDown: Gauge;
}

export function createProxyMetrics(registry: Registry): ProxyMetrics {
  const r = [registry];
  return {
    connections: new Counter({ name: 'edgemesh_proxy_connections_total', help: 'Proxied TCP connections and UDP sessions by Service, caller group, endpoint group and routing tier', labelNames: ['service', 'protocol', 'src_group', 'dst_group', 'tier'], registers: r }),
    bytes: new Counter({ name: 'edgemesh_proxy_bytes_total', help: 'Bytes proxied per Service; direction in = client to endpoint, out = endpoint to client', labelNames: ['service', 'direction'], registers: r }),
    active: new Gauge({ name: 'edgemesh_proxy_active', help: 'Open proxied TCP connections / UDP sessions', labelNames: ['service', 'protocol'], registers: r }),
    refused: new Counter({ name: 'edgemesh_proxy_refused_total', help: 'Connections reset / datagrams refused: strict_empty, no_endpoint, dial_failed, limit', labelNames: ['service', 'protocol', 'reason'], registers: r }),
    dialFailures: new Counter({ name: 'edgemesh_proxy_dial_failures_total', help: 'Failed connects to endpoints by error code', labelNames: ['service', 'code'], registers: r }),
    spillover: new Counter({ name: 'edgemesh_proxy_spillover_total', help: 'Connections served by a later tier than the preferred one (prefer routing)', labelNames: ['service', 'from_tier', 'to_tier'], registers: r }),
    strictEmpty: new Gauge({ name: 'edgemesh_proxy_strict_empty_scope_services', help: 'Strict-routed Services with no usable endpoint in scope from this node', registers: r }),
    ejections: new Counter({ name: 'edgemesh_proxy_ejections_total', help: 'Endpoints ejected by passive outlier detection', labelNames: ['service'], registers: r }),
    udpSessions: new Gauge({ name: 'edgemesh_proxy_udp_sessions', help: 'UDP sessions in the session tables', registers: r }),
    udpDropped: new Counter({ name: 'edgemesh_proxy_udp_dropped_total', help: 'Datagrams dropped: no_endpoint, pending_full, send_error', labelNames: ['service', 'reason'], registers: r }),
    listeners: new Gauge({ name: 'edgemesh_proxy_listeners', help: 'Service-port listeners open', labelNames: ['protocol'], registers: r }),
    endpointConnections: new Counter({ name: 'edgemesh_proxy_endpoint_connections_total', help: 'TCP connections and UDP sessions to one endpoint of a headless Service through its mesh IP (series dropped when the endpoint goes)', labelNames: ['service', 'endpoint', 'protocol'], registers: r }),
    flatFallbacks: new Counter({ name: 'edgemesh_proxy_flat_fallbacks_total', help: 'Direct dials to another node\'s endpoint in proxy.directCIDRs that found no route (timeout, unreachable): the node is reached through the tunnel for a while', labelNames: ['reason'], registers: r }),
    flatNodesDown: new Gauge({ name: 'edgemesh_proxy_flat_nodes_unreachable', help: 'Nodes whose endpoints in proxy.directCIDRs are reached through the tunnel now (a direct dial failed recently)', registers: r }),
  };
}

/**
 * Drops every series labelled with `service` (the Service left the cluster), so a long-running agent's /metrics does
 * not grow with Service churn. Connections of that Service still open may write a series again until they end.
 */
export async function forgetServiceSeries(m: ProxyMetrics, service: string): Promise<void> {
  const perService = [m.connections, m.bytes, m.active, m.refused, m.dialFailures, m.spillover, m.ejections, m.udpDropped, m.endpointConnections];
  for (const metric of perService) {
    const { values } = await metric.get();
    for (const v of values) if (v.labels.service === service) (metric as { remove(labels: object): void }).remove(v.labels);
  }
}

/** The `endpoint` label of a headless endpoint: its hostname (a StatefulSet pod's name); an endpoint known only by
 *  its address (DNS label `10-244-1-5`; mesh IPs are given to IPv4 endpoints only) is counted under
 *  ENDPOINT_NO_HOSTNAME — metrics hold no addresses. */
export const ENDPOINT_NO_HOSTNAME = '(no hostname)';
export function endpointMetricLabel(dnsLabel: string): string {
  return /^\d{1,3}(-\d{1,3}){3}$/.test(dnsLabel) ? ENDPOINT_NO_HOSTNAME : dnsLabel;
}

/** Drops the per-endpoint series of one endpoint of a headless Service (its mesh IP was released or it moved here);
 *  the shared series of endpoints without a hostname goes with the Service only. */
export async function forgetEndpointSeries(m: ProxyMetrics, service: string, dnsLabel: string): Promise<void> {
  const endpoint = endpointMetricLabel(dnsLabel);
  if (endpoint === ENDPOINT_NO_HOSTNAME) return;
  const { values } = await m.endpointConnections.get();
  for (const v of values) if (v.labels.service === service && v.labels.endpoint === endpoint) m.endpointConnections.remove(v.labels);
}
