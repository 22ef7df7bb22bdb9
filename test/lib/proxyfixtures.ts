// Raw Kubernetes objects for proxy tests (Service, EndpointSlice, Node) — plain JSON shapes the model normalises.
import type { RawObject } from '../../packages/agent/src/cluster/types.ts';

export interface SvcSpec {
  name: string;
  namespace?: string;
  ip: string;
  ports: { name?: string; port: number; protocol?: 'TCP' | 'UDP'; targetPort?: number; nodePort?: number }[];
  annotations?: Record<string, string>;
  spec?: Record<string, unknown>;
}

export function service(s: SvcSpec): RawObject {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: s.name, namespace: s.namespace ?? 'default', annotations: s.annotations ?? {} },
    spec: { clusterIP: s.ip, clusterIPs: [s.ip], ports: s.ports.map((p) => ({ name: p.name ?? '', port: p.port, protocol: p.protocol ?? 'TCP', targetPort: p.targetPort ?? p.port, ...(p.nodePort ? { nodePort: p.nodePort } : {}) })), ...(s.spec ?? {}) },
  };
}

export interface EpSpec { ip: string; node?: string; ready?: boolean; terminating?: boolean; hostname?: string }

export function slice(svc: string, ports: { name?: string; port: number; protocol?: 'TCP' | 'UDP' }[], eps: EpSpec[], namespace = 'default', suffix = '1'): RawObject {
  return {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name: `${svc}-${suffix}`, namespace, labels: { 'kubernetes.io/service-name': svc } },
    addressType: 'IPv4',
    ports: ports.map((p) => ({ name: p.name ?? '', port: p.port, protocol: p.protocol ?? 'TCP' })),
    endpoints: eps.map((e) => ({ addresses: [e.ip], nodeName: e.node, ...(e.hostname ? { hostname: e.hostname } : {}), conditions: { ready: e.ready ?? true, terminating: e.terminating ?? false } })),
  };
}

export function node(name: string, labels: Record<string, string> = {}): RawObject {
  return { apiVersion: 'v1', kind: 'Node', metadata: { name, labels: { 'kubernetes.io/hostname': name, ...labels } }, status: { addresses: [] } };
}
