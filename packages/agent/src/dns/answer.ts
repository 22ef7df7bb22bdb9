// Pure: the answer for one question about the cluster, from (snapshot, ServiceIPTable, question). No sockets here.
// Names under dns.domain follow the Kubernetes DNS spec, schema 1.1.0 (dns-version TXT, A/AAAA, headless incl.
// hostnames, SRV, ExternalName CNAME, NXDOMAIN/NODATA with the zone SOA); PTR for every IP the table hands out and for
// headless endpoint addresses. A headless endpoint this node reaches through the mesh is answered by its mesh IP
// (the table's endpointIP) wherever the spec puts its address. `undefined` means "not ours": forwarded upstream.
import type { Answer, SoaAnswer } from 'dns-packet';
import type { Endpoint, Service, ServiceIPTable, Snapshot } from '../cluster/types.ts';

/** The Kubernetes DNS specification schema this zone follows (kubernetes/dns docs/specification.md §1, §2.2). */
export const DNS_SCHEMA_VERSION = '1.1.0';
export const SOA_REFRESH_S = 7200;
export const SOA_RETRY_S = 1800;
export const SOA_EXPIRE_S = 86400;

export type Rcode = 'NOERROR' | 'FORMERR' | 'SERVFAIL' | 'NXDOMAIN' | 'NOTIMP' | 'REFUSED';
export const RCODE: Record<Rcode, number> = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 };

export interface ZoneView {
  readonly snap: Snapshot;
  readonly ips: ServiceIPTable;
  /** Lower case, without leading/trailing dots, e.g. `cluster.local`. */
  readonly domain: string;
  readonly ttl: number;
  /** Reverse names for IPs in this predicate that nobody holds get NXDOMAIN instead of being forwarded (fake pool). */
  readonly ownsIP?: (ip: string) => boolean;
}

export interface ClusterResult {
  rcode: Rcode;
  /** Authoritative (inside dns.domain). */
  aa: boolean;
  answers: Answer[];
  authorities: Answer[];
  additionals: Answer[];
  /** ExternalName: the CNAME target the server should resolve and append (when the question is not CNAME). */
  chase?: string;
}

/** Normalises a question name: lower case, no trailing dot. */
export function normName(name: string): string {
  const n = name.toLowerCase();
  return n.endsWith('.') ? n.slice(0, -1) : n;
}

/** Normalises dns.domain: lower case, no leading or trailing dots. */
export function normDomain(domain: string): string {
  return domain.toLowerCase().replace(/^\.+|\.+$/g, '');
}

/** A Service's DNS name, `<name>.<namespace>.svc.<domain>`, lower case. */
function serviceName(s: Service, domain: string): string {
  return `${s.name}.${s.namespace}.svc.${domain}`.toLowerCase();
}

/** Splits `name` into labels relative to the domain; undefined when outside it. */
function relLabels(name: string, domain: string): string[] | undefined {
  if (name === domain) return [];
  if (name.length > domain.length && name.endsWith(domain) && name[name.length - domain.length - 1] === '.') {
    return name.slice(0, name.length - domain.length - 1).split('.');
  }
  return undefined;
}

export function soaRecord(z: ZoneView): SoaAnswer {
  return {
    name: z.domain, type: 'SOA', class: 'IN', ttl: z.ttl,
    data: { mname: `ns.dns.${z.domain}`, rname: `hostmaster.${z.domain}`, serial: z.snap.version >>> 0, refresh: SOA_REFRESH_S, retry: SOA_RETRY_S, expire: SOA_EXPIRE_S, minimum: z.ttl },
  };
}

const result = (z: ZoneView, rcode: Rcode, answers: Answer[] = [], additionals: Answer[] = []): ClusterResult => ({
  rcode, aa: true, answers, authorities: answers.length > 0 || (rcode !== 'NOERROR' && rcode !== 'NXDOMAIN') ? [] : [soaRecord(z)], additionals,
});
const nxdomain = (z: ZoneView) => result(z, 'NXDOMAIN');
const nodata = (z: ZoneView) => result(z, 'NOERROR');

const namespaces = new WeakMap<Snapshot, Set<string>>();
function namespaceSet(snap: Snapshot): Set<string> {
  let s = namespaces.get(snap);
  if (!s) {
    s = new Set([...snap.services.values(), ...(snap.optedOut?.values() ?? [])].map((v) => v.namespace.toLowerCase()));
    namespaces.set(snap, s);
  }
  return s;
}

/** Service lookup by lower-cased labels (names are DNS-1035 lower case in Kubernetes; be lenient anyway). */
const lowerIndex = new WeakMap<Snapshot, Map<string, Service>>();
function findService(snap: Snapshot, ns: string, name: string): Service | undefined {
  const s = snap.services.get(`${ns}/${name}`) ?? snap.optedOut?.get(`${ns}/${name}`);
  if (s) return s;
  let idx = lowerIndex.get(snap);
  if (!idx) {
    idx = new Map();
    for (const v of [...snap.services.values(), ...(snap.optedOut?.values() ?? [])]) if (v.key !== v.key.toLowerCase()) idx.set(v.key.toLowerCase(), v);
    lowerIndex.set(snap, idx);
  }
  return idx.get(`${ns}/${name}`);
}

const isV6 = (ip: string) => ip.includes(':');

function addrRecords(owner: string, ips: readonly string[], qtype: string, ttl: number): Answer[] {
  const out: Answer[] = [];
  for (const ip of ips) {
    const v6 = isV6(ip);
    if (qtype === 'A' || qtype === 'ANY' ? !v6 : false) out.push({ name: owner, type: 'A', class: 'IN', ttl, data: ip });
    if (qtype === 'AAAA' || qtype === 'ANY' ? v6 : false) out.push({ name: owner, type: 'AAAA', class: 'IN', ttl, data: ip });
  }
  return out;
}

function readyEndpoints(snap: Snapshot, key: string): Endpoint[] {
  return (snap.endpoints.get(key) ?? []).filter((e) => e.ready && !e.terminating);
}

/** True for a name dns-packet can encode: labels of 1-63 bytes, at most 253 characters, no empty label. */
export function isDnsName(n: string): boolean {
  const t = n.endsWith('.') ? n.slice(0, -1) : n;
  if (t.length === 0 || t.length > 253 || Buffer.byteLength(t) !== t.length) return false;
  return t.split('.').every((l) => l.length >= 1 && l.length <= 63);
}

const isLabel = (l: string) => l.length >= 1 && l.length <= 63 && !l.includes('.') && Buffer.byteLength(l) === l.length;

/** The per-endpoint label of a headless endpoint: its hostname, else its address with dots/colons as dashes. */
export function endpointLabel(ep: Endpoint): string {
  const h = ep.hostname !== undefined && isLabel(ep.hostname) ? ep.hostname : undefined;
  return (h ?? ep.address.replace(/[.:]/g, '-')).toLowerCase();
}

function uniq(list: string[]): string[] {
  return [...new Set(list)];
}

function serviceIPs(z: ZoneView, s: Service): string[] {
  if (s.headless) return uniq(readyEndpoints(z.snap, s.key).flatMap((e) => endpointAddrs(z, s, e)));
  return [...handedOut(z, s)];
}

/** The mesh IP standing for a headless endpoint on this node's behalf, if it has one (never for opted-out Services). */
function meshIPOf(z: ZoneView, s: Service, e: Endpoint): string | undefined {
  if (z.snap.services.get(s.key) !== s) return undefined;
  const m = z.ips.endpointIP(s.key, endpointLabel(e));
  return m && m.address === e.address ? m.ip : undefined;
}

/** What DNS answers for one endpoint of a headless Service: its mesh IP, else its own addresses. */
function endpointAddrs(z: ZoneView, s: Service, e: Endpoint): readonly string[] {
  const m = meshIPOf(z, s, e);
  return m !== undefined ? [m] : e.addresses;
}

/** The IPs to answer for a non-headless Service: the table's (intercepted by the proxy), or for a Service that opted
 *  out of the mesh its own ClusterIPs (served by kube-proxy or whatever else handles it). */
function handedOut(z: ZoneView, s: Service): readonly string[] {
  return z.snap.services.get(s.key) === s ? z.ips.ipsFor(s.key) : s.clusterIPs;
}

/** SRV records (+ address records for the additional section) for a Service, for one port or all named ports. */
function srvRecords(z: ZoneView, s: Service, owner: string, svcName: string, portName?: string, proto?: string): { answers: Answer[]; additionals: Answer[] } | undefined {
  const ports = s.ports.filter((p) => p.name !== '' && (portName === undefined || (p.name.toLowerCase() === portName && p.protocol.toLowerCase() === proto)));
  if (!ports.length) return undefined;
  const answers: Answer[] = [];
  const additionals: Answer[] = [];
  if (s.headless) {
    const eps = readyEndpoints(z.snap, s.key);
    for (const p of ports) {
      const targets = eps.map((e) => ({ e, port: e.ports.find((ep) => ep.name === p.name && ep.protocol === p.protocol)?.port ?? (typeof p.targetPort === 'number' ? p.targetPort : undefined) }))
        .filter((t): t is { e: Endpoint; port: number } => t.port !== undefined);
      const weight = targets.length ? Math.max(1, Math.floor(100 / targets.length)) : 0;
      for (const t of targets) {
        const target = `${endpointLabel(t.e)}.${svcName}`;
        answers.push({ name: owner, type: 'SRV', class: 'IN', ttl: z.ttl, data: { priority: 0, weight, port: t.port, target } });
        additionals.push(...addrRecords(target, endpointAddrs(z, s, t.e), 'ANY', z.ttl));
      }
    }
  } else {
    const ips = handedOut(z, s);
    if (!ips.length) return { answers: [], additionals: [] };
    const weight = Math.max(1, Math.floor(100 / ports.length));
    for (const p of ports) answers.push({ name: owner, type: 'SRV', class: 'IN', ttl: z.ttl, data: { priority: 0, weight, port: p.port, target: svcName } });
    additionals.push(...addrRecords(svcName, ips, 'ANY', z.ttl));
  }
  return { answers, additionals: dedupeRecords(additionals) };
}

function dedupeRecords(list: Answer[]): Answer[] {
  const seen = new Set<string>();
  return list.filter((a) => {
    const k = `${a.name}|${a.type}|${String((a as { data?: unknown }).data)}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

/**
 * Answers a question under the cluster domain or a reverse name the agent knows. `qname` as asked (any case);
 * owner names in the answer use the asked spelling so stub resolvers match them.
 */
export function answerCluster(z: ZoneView, qname: string, qtype: string, qclass: string): ClusterResult | undefined {
  const name = normName(qname);
  const owner = qname.endsWith('.') ? qname.slice(0, -1) : qname;
  const rel = relLabels(name, z.domain);
  if (rel === undefined) return answerReverse(z, name, owner, qtype, qclass);
  if (qclass !== 'IN' && qclass !== 'ANY') return { rcode: 'REFUSED', aa: false, answers: [], authorities: [], additionals: [] };

  if (rel.length === 0) {
    if (qtype === 'SOA' || qtype === 'ANY') return result(z, 'NOERROR', [{ ...soaRecord(z), name: owner }]);
    if (qtype === 'NS') return result(z, 'NOERROR', [{ name: owner, type: 'NS', class: 'IN', ttl: z.ttl, data: `ns.dns.${z.domain}` }]);
    return nodata(z);
  }
  const last = rel[rel.length - 1];
  if (last === 'svc') return answerSvc(z, rel.slice(0, -1), owner, qtype);
  if (last === 'pod') {
    // `a-b-c-d.<ns>.pod.<domain>` -> a.b.c.d ("pods insecure" as in CoreDNS's default Kubernetes config).
    if (rel.length === 1 || (rel.length === 2)) return nodata(z);
    if (rel.length !== 3) return nxdomain(z);
    const ip = rel[0].replace(/-/g, '.');
    if (!/^(\d{1,3}\.){3}\d{1,3}$/.test(ip) || ip.split('.').some((o) => Number(o) > 255)) return nxdomain(z);
    // A pod this node reaches only through the mesh: its mesh IP when it backs a headless Service in that namespace.
    const mesh = z.ips.podMeshIP(rel[1], ip);
    const recs = addrRecords(owner, [mesh?.ip ?? ip], qtype, z.ttl);
    return recs.length ? result(z, 'NOERROR', recs) : nodata(z);
  }
  if (rel.length === 1 && last === 'dns-version') {
    // §2.2: the schema version record.
    if (qtype !== 'TXT' && qtype !== 'ANY') return nodata(z);
    return result(z, 'NOERROR', [{ name: owner, type: 'TXT', class: 'IN', ttl: z.ttl, data: [DNS_SCHEMA_VERSION] }]);
  }
  if (rel.length === 1 && last === 'dns') return nodata(z);
  if (rel.length === 2 && rel[0] === 'ns' && rel[1] === 'dns') return nodata(z);
  return nxdomain(z);
}

function answerSvc(z: ZoneView, rel: string[], owner: string, qtype: string): ClusterResult {
  // rel is relative to `svc.<domain>`: [], [ns], [svc, ns], [label, svc, ns], [_port, _proto, svc, ns]
  if (rel.length === 0) return nodata(z);
  const ns = rel[rel.length - 1];
  if (rel.length === 1) return namespaceSet(z.snap).has(ns) ? nodata(z) : nxdomain(z);
  const s = findService(z.snap, ns, rel[rel.length - 2]);
  if (!s) return nxdomain(z);
  const svcName = serviceName(s, z.domain);
  if (!isDnsName(svcName)) return nxdomain(z); // a name from a manifest that DNS cannot carry

  if (rel.length === 2) {
    if (s.type === 'ExternalName') {
      if (!s.externalName || !isDnsName(s.externalName)) return nodata(z);
      const target = normName(s.externalName);
      const rec: Answer = { name: owner, type: 'CNAME', class: 'IN', ttl: z.ttl, data: target };
      return { ...result(z, 'NOERROR', [rec]), chase: qtype === 'CNAME' ? undefined : target };
    }
    if (qtype === 'SRV') {
      const srv = srvRecords(z, s, owner, svcName);
      return srv && srv.answers.length ? result(z, 'NOERROR', srv.answers, srv.additionals) : nodata(z);
    }
    // §2.4.1: a headless Service without ready endpoints is NXDOMAIN.
    if (s.headless && readyEndpoints(z.snap, s.key).length === 0) return nxdomain(z);
    const recs = addrRecords(owner, serviceIPs(z, s), qtype, z.ttl);
    return recs.length ? result(z, 'NOERROR', recs) : nodata(z);
  }
  if (rel.length === 3) {
    // <hostname|dashed-ip>.<svc>.<ns>.svc: a headless endpoint
    if (!s.headless) return nxdomain(z);
    const dashed = (a: string) => a.replace(/[.:]/g, '-').toLowerCase() === rel[0];
    const named = (e: Endpoint) => e.hostname !== undefined && isLabel(e.hostname);
    const eps = readyEndpoints(z.snap, s.key).filter((e) => (named(e) ? e.hostname!.toLowerCase() === rel[0] : e.addresses.some(dashed)));
    if (!eps.length) return nxdomain(z);
    const addrs = (e: Endpoint): readonly string[] => {
      if (named(e)) return endpointAddrs(z, s, e);
      const m = meshIPOf(z, s, e); // the label of an unnamed endpoint is its first address, dashed
      return m !== undefined && dashed(e.address) ? [m] : e.addresses.filter(dashed);
    };
    const recs = addrRecords(owner, uniq(eps.flatMap(addrs)), qtype, z.ttl);
    return recs.length ? result(z, 'NOERROR', recs) : nodata(z);
  }
  if (rel.length === 4 && rel[0].startsWith('_') && rel[1].startsWith('_')) {
    const proto = rel[1].slice(1);
    if (proto !== 'tcp' && proto !== 'udp' && proto !== 'sctp') return nxdomain(z);
    const srv = srvRecords(z, s, owner, svcName, rel[0].slice(1), proto);
    if (!srv) return nxdomain(z);
    if (qtype !== 'SRV' && qtype !== 'ANY') return nodata(z);
    return srv.answers.length ? result(z, 'NOERROR', srv.answers, srv.additionals) : nodata(z);
  }
  return nxdomain(z);
}

/** Parses `d.c.b.a.in-addr.arpa` / nibble `...ip6.arpa` into an IP string (IPv6 in Node's compressed form). */
export function reverseToIP(name: string): string | undefined {
  if (name.endsWith('.in-addr.arpa')) {
    const parts = name.slice(0, -'.in-addr.arpa'.length).split('.');
    if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255 || (p.length > 1 && p[0] === '0'))) return undefined;
    return parts.reverse().join('.');
  }
  if (name.endsWith('.ip6.arpa')) {
    const nib = name.slice(0, -'.ip6.arpa'.length).split('.');
    if (nib.length !== 32 || nib.some((n) => !/^[0-9a-f]$/.test(n))) return undefined;
    const hex = nib.reverse().join('');
    const groups = hex.match(/.{4}/g)!.map((g) => g.replace(/^0+(?=.)/, ''));
    return compressV6(groups);
  }
  return undefined;
}

function compressV6(groups: string[]): string {
  // Longest run of >= 2 zero groups becomes '::' (RFC 5952), matching how Node and Kubernetes print addresses.
  let best = -1, bestLen = 0;
  for (let i = 0; i < 8;) {
    if (groups[i] !== '0') { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen && j - i >= 2) { best = i; bestLen = j - i; }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

const headlessReverse = new WeakMap<Snapshot, Map<string, string[]>>();
function headlessIndex(z: ZoneView): Map<string, string[]> {
  let idx = headlessReverse.get(z.snap);
  if (!idx) {
    idx = new Map();
    for (const s of z.snap.services.values()) {
      if (!s.headless) continue;
      for (const e of readyEndpoints(z.snap, s.key)) {
        for (const a of e.addresses) {
          const list = idx.get(a) ?? [];
          list.push(`${endpointLabel(e)}.${serviceName(s, z.domain)}`);
          idx.set(a, list);
        }
      }
    }
    headlessReverse.set(z.snap, idx);
  }
  return idx;
}

function answerReverse(z: ZoneView, name: string, owner: string, qtype: string, qclass: string): ClusterResult | undefined {
  const ip = reverseToIP(name);
  if (ip === undefined || (qclass !== 'IN' && qclass !== 'ANY')) return undefined;
  const targets: string[] = [];
  const key = z.ips.serviceFor(ip);
  const s = key !== undefined ? z.snap.services.get(key) : undefined;
  if (s) targets.push(serviceName(s, z.domain));
  const m = z.ips.endpointFor(ip);
  const hs = m !== undefined ? z.snap.services.get(m.serviceKey) : undefined;
  if (m && hs) targets.push(`${m.label}.${serviceName(hs, z.domain)}`);
  targets.push(...(headlessIndex(z).get(ip) ?? []));
  const valid = targets.filter(isDnsName); // names from manifests that DNS cannot carry are left out
  if (!valid.length) {
    if (z.ownsIP?.(ip)) return nxdomain(z);
    return undefined;
  }
  if (qtype !== 'PTR' && qtype !== 'ANY') return nodata(z);
  return result(z, 'NOERROR', uniq(valid).map((t): Answer => ({ name: owner, type: 'PTR', class: 'IN', ttl: z.ttl, data: t })));
}
