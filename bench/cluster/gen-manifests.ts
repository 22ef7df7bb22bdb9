// Writes N Services with E endpoints each (one EndpointSlice per Service) as multi-document YAML files into DIR.
// usage: npx node bench/cluster/gen-manifests.ts DIR [services=5000] [endpointsPerService=3] [files=50]
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** `headless`: clusterIP None (no proxy listener: the memory bench separates the listeners' share that way). */
export function serviceDoc(i: number, endpoints: number, port = 80, headless = false): string {
  const ns = `ns${i % 20}`;
  const name = `svc-${i}`;
  const ip = `10.${96 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`;
  const eps = Array.from({ length: endpoints }, (_, e) => `  - addresses: ["10.${(i >> 8) & 255}.${i & 255}.${e + 1}"]\n    nodeName: edge-${(i + e) % 50}\n    zone: zone-${e % 3}\n    conditions: {ready: true}`).join('\n');
  return `apiVersion: v1
kind: Service
metadata:
  name: ${name}
  namespace: ${ns}
  labels: {app: ${name}}
spec:
  clusterIP: ${headless ? 'None' : ip}
  ports:
  - {name: http, port: ${port}, targetPort: 8080, protocol: TCP}
  selector: {app: ${name}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ${name}-abcde
  namespace: ${ns}
  labels: {kubernetes.io/service-name: ${name}}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
${eps}
`;
}

/** File k gets Services k, k+files, k+2*files, ... Written via temp + rename so watchers never see half a file. */
export function generate(dir: string, services: number, endpoints: number, files: number, headless = false): void {
  mkdirSync(dir, { recursive: true });
  for (let f = 0; f < files; f++) {
    const docs: string[] = [];
    for (let i = f; i < services; i += files) docs.push(serviceDoc(i, endpoints, 80, headless));
    const tmp = join(dir, `.svc-${f}.yaml.tmp`);
    writeFileSync(tmp, docs.join('---\n'));
    renameSync(tmp, join(dir, `svc-${f}.yaml`));
  }
}

if (import.meta.main) {
  const [dir, s = '5000', e = '3', f = '50'] = process.argv.slice(2);
  if (!dir) {
    console.error('usage: node bench/cluster/gen-manifests.ts DIR [services] [endpointsPerService] [files]');
    process.exit(2);
  }
  generate(dir, Number(s), Number(e), Number(f));
  console.log(`wrote ${s} Services x ${e} endpoints into ${f} files in ${dir}`);
}
