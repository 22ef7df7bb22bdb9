// The names both servers serve in bench/dns.
export const CLUSTER_SERVICES = 500;
export const FORWARDED_NAMES = 500;
export const FORWARD_ZONE = 'bench.example';

export function benchService(i: number): { name: string; namespace: string; ip: string; fqdn: string } {
  const name = `svc${i}`;
  const namespace = `ns${i % 10}`;
  const ip = `10.96.${((i + 1) >> 8) & 255}.${(i + 1) & 255}`;
  return { name, namespace, ip, fqdn: `${name}.${namespace}.svc.cluster.local` };
}

export function forwardedName(i: number): { fqdn: string; ip: string } {
  return { fqdn: `host${i}.${FORWARD_ZONE}`, ip: `198.18.${(i >> 8) & 255}.${i & 255}` };
}
