// A small cluster for DNS tests (unit and integration): ClusterIP, dual-stack, headless, ExternalName Services.
import type { RawObject } from '../cluster/types.ts';

export function fixtureObjects(): { services: RawObject[]; slices: RawObject[] } {
  const svc = (name: string, spec: Record<string, unknown>, ns = 'default'): RawObject => ({ kind: 'Service', metadata: { name, namespace: ns }, spec });
  const slice = (name: string, svcName: string, endpoints: unknown[], ports: unknown[], addressType = 'IPv4'): RawObject => ({
    kind: 'EndpointSlice', metadata: { name, namespace: 'default', labels: { 'kubernetes.io/service-name': svcName } }, addressType, endpoints, ports,
  });
  return {
    services: [
      svc('web', { clusterIP: '10.96.0.10', clusterIPs: ['10.96.0.10'], ports: [{ name: 'http', port: 80, protocol: 'TCP' }, { name: 'dns', port: 53, protocol: 'UDP' }] }),
      svc('dual', { clusterIPs: ['10.96.0.11', 'fd00::11'], ports: [{ port: 80 }] }),
      svc('db', { clusterIP: 'None', ports: [{ name: 'pg', port: 5432 }] }),
      svc('ext', { type: 'ExternalName', externalName: 'example.org' }),
      svc('alias', { type: 'ExternalName', externalName: 'web.default.svc.cluster.local' }),
      svc('other', { clusterIP: '10.96.1.1', ports: [{ port: 8080 }] }, 'prod'),
    ],
    slices: [
      slice('db-1', 'db', [
        { addresses: ['10.244.1.5'], hostname: 'db-0', conditions: { ready: true } },
        { addresses: ['10.244.2.6'], conditions: { ready: true } },
        { addresses: ['10.244.3.7'], hostname: 'db-2', conditions: { ready: false } },
      ], [{ name: 'pg', port: 15432, protocol: 'TCP' }]),
    ],
  };
}

