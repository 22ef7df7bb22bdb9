// Normalises the Istio `networking.istio.io` kinds the ingress gateway serves — Gateway and VirtualService (v1,
// v1beta1 and v1alpha3 share one shape) — and the kubernetes.io/tls Secrets Gateways reference. Pure.
//
// Secrets: only type kubernetes.io/tls with both `tls.crt` and `tls.key` (in `data`, base64, or `stringData`) are
// accepted; the material is wrapped in SecretMaterial at once. Error messages name keys and fields, never values.
// `slimSecret` is what the model keeps as the raw object (for the offline state file): name, namespace, type and the
// two data keys — never annotations, where `kubectl apply` leaves a plaintext copy of the whole Secret.
import { createHash } from 'node:crypto';
import { ManifestError } from './model.ts';
import { SecretMaterial } from './secret.ts';
import type { GatewayServer, HttpMatch, HttpRoute, IstioGateway, L4Match, L4Route, RawObject, RouteDestination, StringMatch, TlsSecret, VirtualService } from './types.ts';

type Obj = Record<string, unknown>;
const asObj = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});
const asArr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const asStr = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
const strList = (v: unknown): string[] => asArr(v).map(asStr).filter((s): s is string => !!s);
const isPort = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 65535;

function meta(obj: RawObject, kind: string): { md: Obj; name: string; namespace: string } {
  const md = asObj(obj.metadata);
  const name = asStr(md.name);
  if (!name) throw new ManifestError(`${kind} without metadata.name`);
  return { md, name, namespace: asStr(md.namespace) ?? 'default' };
}

export const TLS_SECRET_TYPE = 'kubernetes.io/tls';

/** Largest certificate chain or key we take from a Secret (Kubernetes caps a whole Secret at 1 MiB). */
export const MAX_TLS_SECRET_BYTES = 256 * 1024;

export function normalizeGateway(obj: RawObject): IstioGateway {
  const { name, namespace } = meta(obj, 'Gateway');
  const where = `Gateway ${namespace}/${name}`;
  const spec = asObj(obj.spec);
  const selector: Record<string, string> = {};
  for (const [k, v] of Object.entries(asObj(spec.selector))) if (typeof v === 'string') selector[k] = v;
  const servers: GatewayServer[] = asArr(spec.servers).map((raw, i) => {
    const so = asObj(raw);
    const port = asObj(so.port);
    if (!isPort(port.number)) throw new ManifestError(`${where}: spec.servers[${i}].port.number must be an integer 1-65535`);
    const protocol = asStr(port.protocol)?.toUpperCase();
    if (!protocol) throw new ManifestError(`${where}: spec.servers[${i}].port.protocol is missing`);
    const hosts = strList(so.hosts);
    if (!hosts.length) throw new ManifestError(`${where}: spec.servers[${i}].hosts is empty`);
    const t = so.tls === undefined ? undefined : asObj(so.tls);
    const tls = t && Object.freeze({
      mode: asStr(t.mode)?.toUpperCase(),
      credentialName: asStr(t.credentialName),
      httpsRedirect: t.httpsRedirect === true ? true : undefined,
    });
    return Object.freeze({ port: port.number, protocol, portName: asStr(port.name), hosts: Object.freeze(hosts), tls });
  });
  return Object.freeze({ key: `${namespace}/${name}`, namespace, name, selector: Object.freeze(selector), servers: Object.freeze(servers) });
}

function stringMatch(v: unknown, where: string): StringMatch | undefined {
  if (v === undefined) return undefined;
  const o = asObj(v);
  if (typeof o.exact === 'string') return Object.freeze({ exact: o.exact });
  if (typeof o.prefix === 'string') return Object.freeze({ prefix: o.prefix });
  if (typeof o.regex === 'string') return Object.freeze({ regex: o.regex });
  throw new ManifestError(`${where}: expected exact, prefix or regex`);
}

function destinations(v: unknown, where: string): RouteDestination[] {
  const list = asArr(v);
  return list.map((raw, i) => {
    const r = asObj(raw);
    const d = asObj(r.destination);
    const host = asStr(d.host);
    if (!host) throw new ManifestError(`${where}.route[${i}].destination.host is missing`);
    const pn = asObj(d.port).number;
    if (pn !== undefined && !isPort(pn)) throw new ManifestError(`${where}.route[${i}].destination.port.number must be an integer 1-65535`);
    const w = r.weight;
    if (w !== undefined && (typeof w !== 'number' || !Number.isInteger(w) || w < 0)) throw new ManifestError(`${where}.route[${i}].weight must be a non-negative integer`);
    // Istio: a lone destination without weight takes all traffic; several without weights share it evenly.
    const weight = typeof w === 'number' ? w : list.length === 1 ? 100 : 1;
    return Object.freeze({ host, port: isPort(pn) ? pn : undefined, subset: asStr(d.subset), weight });
  });
}

/** Protobuf JSON duration (`5s`, `0.5s`, `250ms`, `1m`) in ms; undefined when absent or malformed. */
export function parseDuration(v: unknown): number | undefined {
  if (typeof v !== 'string') return undefined;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(v.trim());
  if (!m) return undefined;
  const n = Number(m[1]) * ({ ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const)[m[2] as 'ms' | 's' | 'm' | 'h'];
  return Number.isFinite(n) ? Math.round(n) : undefined;
}

const HTTP_MATCH_KNOWN = new Set(['uri', 'headers', 'port', 'ignoreUriCase', 'gateways', 'name']);
const HTTP_ROUTE_KNOWN = new Set(['name', 'match', 'route', 'rewrite', 'timeout']);

function httpRoute(raw: unknown, where: string): HttpRoute {
  const r = asObj(raw);
  const match: HttpMatch[] = asArr(r.match).map((m, j) => {
    const mo = asObj(m);
    const w = `${where}.match[${j}]`;
    const headers: Record<string, StringMatch> = {};
    for (const [k, v] of Object.entries(asObj(mo.headers))) headers[k.toLowerCase()] = stringMatch(v, `${w}.headers.${k}`)!;
    if (mo.port !== undefined && !isPort(mo.port)) throw new ManifestError(`${w}.port must be an integer 1-65535`);
    return Object.freeze({
      uri: stringMatch(mo.uri, `${w}.uri`),
      ignoreUriCase: mo.ignoreUriCase === true,
      headers: Object.freeze(headers),
      port: isPort(mo.port) ? mo.port : undefined,
      gateways: Object.freeze(strList(mo.gateways)),
      unsupported: Object.freeze(Object.keys(mo).filter((k) => !HTTP_MATCH_KNOWN.has(k)).sort()),
    });
  });
  const rw = asObj(r.rewrite);
  const unsupported = Object.keys(r).filter((k) => !HTTP_ROUTE_KNOWN.has(k));
  if (Object.keys(rw).some((k) => k !== 'uri')) unsupported.push('rewrite');
  return Object.freeze({
    name: asStr(r.name),
    match: Object.freeze(match),
    route: Object.freeze(destinations(r.route, where)),
    rewriteUri: typeof rw.uri === 'string' ? rw.uri : undefined,
    timeoutMs: parseDuration(r.timeout),
    unsupported: Object.freeze(unsupported.sort()),
  });
}

function l4Route(raw: unknown, where: string): L4Route {
  const r = asObj(raw);
  const match: L4Match[] = asArr(r.match).map((m, j) => {
    const mo = asObj(m);
    if (mo.port !== undefined && !isPort(mo.port)) throw new ManifestError(`${where}.match[${j}].port must be an integer 1-65535`);
    return Object.freeze({ port: isPort(mo.port) ? mo.port : undefined, sniHosts: Object.freeze(strList(mo.sniHosts).map((h) => h.toLowerCase())), gateways: Object.freeze(strList(mo.gateways)) });
  });
  return Object.freeze({ match: Object.freeze(match), route: Object.freeze(destinations(r.route, where)) });
}

export function normalizeVirtualService(obj: RawObject): VirtualService {
  const { name, namespace } = meta(obj, 'VirtualService');
  const where = `VirtualService ${namespace}/${name}`;
  const spec = asObj(obj.spec);
  const hosts = strList(spec.hosts).map((h) => h.toLowerCase());
  if (!hosts.length) throw new ManifestError(`${where}: spec.hosts is empty`);
  return Object.freeze({
    key: `${namespace}/${name}`,
    namespace,
    name,
    hosts: Object.freeze(hosts),
    gateways: Object.freeze(strList(spec.gateways)),
    http: Object.freeze(asArr(spec.http).map((r, i) => httpRoute(r, `${where}: spec.http[${i}]`))),
    tcp: Object.freeze(asArr(spec.tcp).map((r, i) => l4Route(r, `${where}: spec.tcp[${i}]`))),
    tls: Object.freeze(asArr(spec.tls).map((r, i) => l4Route(r, `${where}: spec.tls[${i}]`))),
  });
}

/** The Secret field `name` from data (base64) or stringData (plain; wins, as the API server merges it). */
function secretField(obj: RawObject, field: string, where: string): Buffer | undefined {
  const sd = asObj(obj.stringData)[field];
  if (typeof sd === 'string' && sd !== '') return Buffer.from(sd, 'utf8');
  const d = asObj(obj.data)[field];
  if (d === undefined) return undefined;
  if (typeof d !== 'string' || !/^[A-Za-z0-9+/\s]*={0,2}\s*$/.test(d)) throw new ManifestError(`${where}: data.${field} is not base64`);
  return Buffer.from(d, 'base64');
}

/**
 * A kubernetes.io/tls Secret, or undefined for any other Secret (ignored, not an error). Throws ManifestError when a
 * TLS Secret lacks its certificate or key.
 */
export function normalizeTlsSecret(obj: RawObject): TlsSecret | undefined {
  const { name, namespace } = meta(obj, 'Secret');
  if (obj.type !== TLS_SECRET_TYPE) return undefined;
  const where = `Secret ${namespace}/${name}`;
  const cert = secretField(obj, 'tls.crt', where);
  const key = secretField(obj, 'tls.key', where);
  if (!cert?.length || !key?.length) throw new ManifestError(`${where}: a kubernetes.io/tls Secret needs tls.crt and tls.key`);
  if (cert.length > MAX_TLS_SECRET_BYTES || key.length > MAX_TLS_SECRET_BYTES) throw new ManifestError(`${where}: tls.crt or tls.key larger than ${MAX_TLS_SECRET_BYTES} bytes`);
  const fingerprint = createHash('sha256').update(cert).update('\0').update(key).digest('hex').slice(0, 16);
  return Object.freeze({ key: `${namespace}/${name}`, namespace, name, cert: new SecretMaterial(cert), privateKey: new SecretMaterial(key), fingerprint });
}

/** The raw form kept for the offline state file: nothing but what normalizeTlsSecret reads. */
export function slimSecret(s: TlsSecret): RawObject {
  return {
    apiVersion: 'v1', kind: 'Secret', type: TLS_SECRET_TYPE,
    metadata: { name: s.name, namespace: s.namespace },
    data: { 'tls.crt': s.cert.reveal().toString('base64'), 'tls.key': s.privateKey.reveal().toString('base64') },
  };
}

/** Secret keys (`namespace/name`) the Gateways name in `tls.credentialName` (a Secret of the Gateway's namespace). */
export function referencedSecrets(gateways: Iterable<IstioGateway>): Set<string> {
  const out = new Set<string>();
  for (const g of gateways) for (const s of g.servers) if (s.tls?.credentialName) out.add(`${g.namespace}/${s.tls.credentialName}`);
  return out;
}
