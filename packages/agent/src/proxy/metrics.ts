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
  };
}

/**
 * Drops every series labelled with `service` (the Service left the cluster), so a long-running agent's /metrics does
 * not grow with Service churn. Connections of that Service still open may write a series again until they end.
 */
export async function forgetServiceSeries(m: ProxyMetrics, service: string): Promise<void> {
  const perService = [m.connections, m.bytes, m.active, m.refused, m.dialFailures, m.spillover, m.ejections, m.udpDropped];
  for (const metric of perService) {
    const { values } = await metric.get();
    for (const v of values) if (v.labels.service === service) (metric as { remove(labels: object): void }).remove(v.labels);
  }
}
