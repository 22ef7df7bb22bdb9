// Normalises raw Kubernetes objects into the immutable model and publishes consistent snapshots.
// Normalisation is pure; ClusterModel holds the raw objects and coalesces changes into one snapshot per tick.
import { isIP } from 'node:net';
import type { DestinationRule, Endpoint, EndpointPort, IstioGateway, ModelSink, NodeInfo, Protocol, RawObject, ResourceKind, Service, ServicePort, Snapshot, TlsSecret, VirtualService } from './types.ts';
import { normalizeGateway, normalizeTlsSecret, normalizeVirtualService, referencedSecrets, slimSecret } from './istio.ts';
import { DEFAULT_AFFINITY_TIMEOUT_S, OPT_OUT_LABEL, SERVICE_NAME_LABEL } from './types.ts';

type Obj = Record<string, unknown>;
const asObj = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});
const asArr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const asStr = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
const asStrMap = (v: unknown): Record<string, string> => {
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(asObj(v))) if (typeof val === 'string') out[k] = val;
  return Object.freeze(out);
};
const proto = (v: unknown): Protocol => (v === 'UDP' || v === 'SCTP' ? v : 'TCP');
/**
 * An exact-size copy of an array built by push() or filter(), which leave spare capacity (a 1-element array grown by
 * push holds 17 slots): the model keeps tens of thousands of small arrays, so this is megabytes with 5,000 Services.
 */
const exact = <T>(a: readonly T[]): T[] => a.slice();

export class ManifestError extends Error {}

const NO_IPS: readonly string[] = Object.freeze([]);
/** The IP addresses of a list (anything else, e.g. a hostname, dropped), deduplicated, frozen; empty lists shared. */
function ipList(v: readonly unknown[]): readonly string[] {
  const out = [...new Set(v.map(asStr).filter((s): s is string => !!s && isIP(s) !== 0))];
  return out.length ? Object.freeze(out) : NO_IPS;
}

/** An object's metadata, name and namespace (default `default`, as kubectl does). Throws when the name is missing. */
function meta(obj: RawObject, kind: ResourceKind): { md: Obj; name: string; namespace: string } {
  const md = asObj(obj.metadata);
  const name = asStr(md.name);
  if (!name) throw new ManifestError(`${kind} without metadata.name`);
  return { md, name, namespace: asStr(md.namespace) ?? 'default' };
}

/** `namespace/name`, or just the name for cluster-scoped Nodes. */
export function objectKey(obj: RawObject, kind: ResourceKind = 'Service'): string {
  const { name, namespace } = meta(obj, kind);
  return kind === 'Node' ? name : `${namespace}/${name}`;
}

export const RESOURCE_KINDS: readonly ResourceKind[] = ['Service', 'EndpointSlice', 'Node', 'DestinationRule', 'Gateway', 'VirtualService', 'Secret'];

/** Returns the normalised Service, or undefined when it opts out of the mesh. Throws ManifestError when malformed. */
export function normalizeService(obj: RawObject): Service | undefined {
  const s = normalizeServiceObject(obj);
  return isOptedOut(s) ? undefined : s;
}

/** True for a Service labelled with OPT_OUT_LABEL (EdgeMesh's opt-out). */
export function isOptedOut(s: Service): boolean {
  return s.labels[OPT_OUT_LABEL] !== undefined;
}

/** Normalises any Service, opted out or not. Throws ManifestError when malformed. */
export function normalizeServiceObject(obj: RawObject): Service {
  const { md, name, namespace } = meta(obj, 'Service');
  const labels = asStrMap(md.labels);
  const spec = asObj(obj.spec);
  const type = (['ClusterIP', 'NodePort', 'LoadBalancer', 'ExternalName'] as const).find((t) => t === spec.type) ?? 'ClusterIP';
  const rawIPs = exact(asArr(spec.clusterIPs).map(asStr).filter((s): s is string => !!s));
  const ip0 = asStr(spec.clusterIP);
  const ips = rawIPs.length ? rawIPs : ip0 ? [ip0] : [];
  const headless = type !== 'ExternalName' && ips.length > 0 && ips[0] === 'None';
  const ports: ServicePort[] = asArr(spec.ports).map((p, i) => {
    const po = asObj(p);
    const port = po.port;
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) {
      throw new ManifestError(`Service ${namespace}/${name}: spec.ports[${i}].port must be an integer 1-65535`);
    }
    const tp = po.targetPort;
    const targetPort = typeof tp === 'number' ? tp : typeof tp === 'string' && tp !== '' ? (/^\d+$/.test(tp) ? Number(tp) : tp) : port;
    const base = { name: asStr(po.name) ?? '', protocol: proto(po.protocol), port, targetPort };
    // Only NodePort and LoadBalancer Services have node ports (the API server clears them for other types).
    const np = po.nodePort;
    const hasNodePort = (type === 'NodePort' || type === 'LoadBalancer') && typeof np === 'number' && Number.isInteger(np) && np >= 1 && np <= 65535;
    return Object.freeze(hasNodePort ? { ...base, nodePort: np } : base);
  });
  const cfg = asObj(asObj(spec.sessionAffinityConfig).clientIP);
  const timeout = typeof cfg.timeoutSeconds === 'number' ? cfg.timeoutSeconds : DEFAULT_AFFINITY_TIMEOUT_S;
  const selector = spec.selector && typeof spec.selector === 'object' ? asStrMap(spec.selector) : undefined;
  return Object.freeze({
    key: `${namespace}/${name}`,
    namespace,
    name,
    type,
    clusterIPs: Object.freeze(type === 'ExternalName' || headless ? [] : exact(ips.filter((ip) => ip !== 'None'))),
    headless,
    externalName: type === 'ExternalName' ? asStr(spec.externalName) : undefined,
    ports: Object.freeze(ports),
    selector: selector && Object.keys(selector).length ? selector : undefined,
    sessionAffinity: spec.sessionAffinity === 'ClientIP' ? 'ClientIP' : 'None',
    affinityTimeoutSeconds: timeout,
    trafficDistribution: asStr(spec.trafficDistribution),
    internalTrafficPolicy: spec.internalTrafficPolicy === 'Local' ? 'Local' : 'Cluster',
    externalTrafficPolicy: spec.externalTrafficPolicy === 'Local' ? 'Local' : 'Cluster',
    externalIPs: ipList(asArr(spec.externalIPs)),
    loadBalancerIPs: type === 'LoadBalancer'
      ? ipList(asArr(asObj(asObj(obj.status).loadBalancer).ingress).map(asObj).filter((i) => i.ipMode !== 'Proxy').map((i) => i.ip))
      : NO_IPS,
    labels,
    annotations: asStrMap(md.annotations),
  } satisfies Service);
}

export interface NormalizedSlice {
  readonly key: string;
  readonly serviceKey: string;
  readonly endpoints: readonly Endpoint[];
}

/** Normalises an EndpointSlice. Slices without the service-name label are not tied to any Service (undefined). */
export function normalizeSlice(obj: RawObject): NormalizedSlice | undefined {
  const { md, name, namespace } = meta(obj, 'EndpointSlice');
  const svc = asStrMap(md.labels)[SERVICE_NAME_LABEL];
  if (!svc) return undefined;
  const addressType = obj.addressType === 'IPv6' ? 'IPv6' : obj.addressType === 'FQDN' ? undefined : 'IPv4';
  if (!addressType) return undefined; // FQDN slices are deprecated and carry no IPs
  const key = `${namespace}/${name}`;
  const ports: EndpointPort[] = asArr(obj.ports).map((p) => {
    const po = asObj(p);
    return Object.freeze({ name: asStr(po.name) ?? '', port: typeof po.port === 'number' ? po.port : 0, protocol: proto(po.protocol) });
  }).filter((p) => p.port > 0);
  const slicePorts = Object.freeze(exact(ports));
  const endpoints: Endpoint[] = [];
  for (const e of asArr(obj.endpoints)) {
    const eo = asObj(e);
    const addresses = exact(asArr(eo.addresses).map(asStr).filter((s): s is string => !!s));
    if (!addresses.length) continue;
    const cond = asObj(eo.conditions);
    const terminating = cond.terminating === true;
    // Kubernetes: a nil ready means ready, unless terminating; serving defaults to ready.
    const ready = cond.ready === undefined || cond.ready === null ? !terminating : cond.ready === true;
    const serving = cond.serving === undefined || cond.serving === null ? ready : cond.serving === true;
    endpoints.push(Object.freeze({
      address: addresses[0],
      addresses: Object.freeze(addresses),
      addressType,
      nodeName: asStr(eo.nodeName),
      zone: asStr(eo.zone),
      hostname: asStr(eo.hostname),
      ready,
      serving,
      terminating,
      ports: slicePorts,
      slice: key,
    } satisfies Endpoint));
  }
  return Object.freeze({ key, serviceKey: `${namespace}/${svc}`, endpoints: Object.freeze(exact(endpoints)) });
}

/**
 * Normalised forms a source already made of its raw objects to check them (the file source: to name the file of a bad
 * document), keyed by the object: put() takes them instead of normalising the same object again. With 5,000 Services
 * x 3 endpoints the second pass was a tenth of the file source's start, and every scan re-put the unchanged files'
 * objects (replace() takes the union of all files). Only for objects nobody modifies afterwards (the file source's own
 * parsed copies); an entry goes with its object. null: a slice normalizeSlice() leaves out.
 */
const prenormalized = new WeakMap<RawObject, Service | NormalizedSlice | null>();

/**
 * normalizeServiceObject() or normalizeSlice() of an object its source will not modify, remembered for the model's
 * put() of that same object. Throws ManifestError when malformed.
 */
export function prenormalize(kind: 'Service' | 'EndpointSlice', obj: RawObject): Service | NormalizedSlice | undefined {
  const n = kind === 'Service' ? normalizeServiceObject(obj) : normalizeSlice(obj);
  prenormalized.set(obj, n ?? null);
  return n;
}

export function normalizeNode(obj: RawObject, groupLabels: readonly string[]): NodeInfo {
  const { md, name } = meta(obj, 'Node');
  const labels = asStrMap(md.labels);
  const group = groupOf(labels, groupLabels);
  const addresses = asArr(asObj(obj.status).addresses).map((a) => asStr(asObj(a).address)).filter((s): s is string => !!s);
  const spec = asObj(obj.spec);
  const single = asStr(spec.podCIDR);
  const listed = asArr(spec.podCIDRs).map(asStr).filter((s): s is string => !!s);
  const podCIDRs = listed.length ? listed : single ? [single] : [];
  return Object.freeze({ name, labels, group, addresses: Object.freeze(addresses), podCIDRs: Object.freeze(podCIDRs) });
}

/** The node's group: the value of the first label in `groupLabels` that the node carries. */
export function groupOf(labels: Readonly<Record<string, string>>, groupLabels: readonly string[]): string | undefined {
  for (const l of groupLabels) {
    const v = labels[l];
    if (v) return v;
  }
  return undefined;
}

export function normalizeDestinationRule(obj: RawObject): DestinationRule {
  const { name, namespace } = meta(obj, 'DestinationRule');
  const spec = asObj(obj.spec);
  const host = asStr(spec.host);
  if (!host) throw new ManifestError(`DestinationRule ${namespace}/${name}: spec.host is missing`);
  const lb = asObj(asObj(spec.trafficPolicy).loadBalancer);
  const simple = (['ROUND_ROBIN', 'RANDOM', 'LEAST_REQUEST', 'LEAST_CONN', 'PASSTHROUGH'] as const).find((v) => v === lb.simple);
  const ch = lb.consistentHash === undefined ? undefined : asObj(lb.consistentHash);
  return Object.freeze({
    key: `${namespace}/${name}`,
    namespace,
    host,
    simple,
    consistentHash: ch && Object.freeze({ httpHeaderName: asStr(ch.httpHeaderName), useSourceIp: ch.useSourceIp === true ? true : undefined }),
  });
}

/** Resolves a Service port's targetPort on an endpoint (named ports through the slice's port names). */
export function endpointPort(ep: Endpoint, sp: ServicePort): number | undefined {
  if (ep.ports.length === 0) return typeof sp.targetPort === 'number' ? sp.targetPort : undefined;
  // EndpointSlice ports are named after the Service port name (the controller resolves targetPort for us).
  const byName = ep.ports.find((p) => p.name === sp.name && p.protocol === sp.protocol);
  if (byName) return byName.port;
  if (typeof sp.targetPort === 'string') return ep.ports.find((p) => p.name === sp.targetPort && p.protocol === sp.protocol)?.port;
  return ep.ports.length === 1 && sp.name === '' ? ep.ports[0].port : undefined;
}

type Listener = (snap: Snapshot, prev: Snapshot) => void;

const EMPTY: Snapshot = Object.freeze({ version: 0, services: new Map(), endpoints: new Map(), nodes: new Map(), destinationRules: new Map() });

/**
 * Holds what the sources delivered and publishes a new immutable Snapshot once per event-loop turn when anything
 * changed. Normalisation happens on arrival, so a malformed object is rejected at the edge (the caller logs it).
 */
export class ClusterModel implements ModelSink {
  private services = new Map<string, Service>();
  private optedOut = new Map<string, Service>();
  private slices = new Map<string, NormalizedSlice>();
  private nodes = new Map<string, NodeInfo>();
  private rules = new Map<string, DestinationRule>();
  private gateways = new Map<string, IstioGateway>();
  private virtualServices = new Map<string, VirtualService>();
  /** Every TLS Secret delivered; only those a Gateway references reach a snapshot or the state file. */
  private secrets = new Map<string, TlsSecret>();
  /** The accepted raw objects per kind and key, for the offline last-good-state file. */
  private readonly raw = new Map<ResourceKind, Map<string, RawObject>>(RESOURCE_KINDS.map((k) => [k, new Map()]));
  private current: Snapshot = EMPTY;
  private changeCount = 0;
  private dirty = false;
  private scheduled = false;
  private readonly listeners = new Set<Listener>();
  private readonly groupLabels: readonly string[];
  /** Called for objects that fail normalisation (kind, key or '?', reason). */
  onReject: (kind: ResourceKind, key: string, reason: string) => void = () => {};
  /** Called when a subscriber throws (the others still see the snapshot). */
  onListenerError: (err: unknown) => void = () => {};

  constructor(groupLabels: readonly string[]) {
    this.groupLabels = groupLabels;
  }

  snapshot(): Snapshot {
    return this.current;
  }

  /** Changes arrived that are not published as a snapshot yet (they will be at the end of this event-loop turn). */
  get pending(): boolean {
    return this.dirty;
  }

  /** Counts accepted changes (replace, and upsert/remove that changed something): equal counts, equal rawState(). */
  get changes(): number {
    return this.changeCount;
  }

  /** Subscribes to published snapshots. Returns an unsubscribe function. */
  subscribe(fn: Listener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  replace(kind: ResourceKind, objects: readonly RawObject[]): void {
    if (kind === 'Service') {
      this.services = new Map();
      this.optedOut = new Map();
    } else if (kind === 'EndpointSlice') this.slices = new Map();
    else if (kind === 'DestinationRule') this.rules = new Map();
    else if (kind === 'Gateway') this.gateways = new Map();
    else if (kind === 'VirtualService') this.virtualServices = new Map();
    else if (kind === 'Secret') this.secrets = new Map();
    else this.nodes = new Map();
    this.raw.get(kind)!.clear();
    for (const o of objects) this.put(kind, o);
    this.markDirty();
  }

  upsert(kind: ResourceKind, obj: RawObject): void {
    if (this.put(kind, obj)) this.markDirty();
  }

  remove(kind: ResourceKind, obj: RawObject): void {
    let key: string;
    try {
      key = objectKey(obj, kind);
    } catch {
      return;
    }
    const map: Map<string, unknown> = kind === 'Service' ? this.services : kind === 'EndpointSlice' ? this.slices : kind === 'DestinationRule' ? this.rules
      : kind === 'Gateway' ? this.gateways : kind === 'VirtualService' ? this.virtualServices : kind === 'Secret' ? this.secrets : this.nodes;
    const hadRaw = this.raw.get(kind)!.delete(key);
    const hadOptedOut = kind === 'Service' && this.optedOut.delete(key);
    if (map.delete(key) || hadRaw || hadOptedOut) this.markDirty();
  }

  /** Publishes pending changes now (sources call this after a synchronous batch; tests use it too). */
  flush(): Snapshot {
    if (this.dirty) this.publish();
    return this.current;
  }

  /**
   * The accepted raw objects (including opted-out Services), for the last-good-state file. Secrets: only those a
   * Gateway references, slimmed to the certificate and key.
   */
  rawState(): RawState {
    const list = (k: ResourceKind) => [...this.raw.get(k)!.values()];
    const wanted = referencedSecrets(this.gateways.values());
    const secrets = [...this.raw.get('Secret')!].filter(([key]) => wanted.has(key)).map(([, o]) => o);
    return {
      services: list('Service'), endpointSlices: list('EndpointSlice'), nodes: list('Node'), destinationRules: list('DestinationRule'),
      gateways: list('Gateway'), virtualServices: list('VirtualService'), secrets,
    };
  }

  /** Returns false when the object was rejected (the previous version, if any, stays). */
  private put(kind: ResourceKind, obj: RawObject): boolean {
    let key = '?';
    try {
      key = objectKey(obj, kind);
      if (kind === 'Service') {
        const s = (prenormalized.get(obj) as Service | undefined) ?? normalizeServiceObject(obj);
        // A Service may opt out (or back in) at any time: it lives in exactly one of the two maps.
        if (isOptedOut(s)) {
          this.services.delete(s.key);
          this.optedOut.set(s.key, s);
        } else {
          this.optedOut.delete(s.key);
          this.services.set(s.key, s);
        }
      } else if (kind === 'EndpointSlice') {
        const s = prenormalized.has(obj) ? (prenormalized.get(obj) as NormalizedSlice | null) ?? undefined : normalizeSlice(obj);
        if (s) this.slices.set(s.key, s);
        else this.slices.delete(key);
      } else if (kind === 'DestinationRule') {
        const r = normalizeDestinationRule(obj);
        this.rules.set(r.key, r);
      } else if (kind === 'Gateway') {
        const g = normalizeGateway(obj);
        this.gateways.set(g.key, g);
      } else if (kind === 'VirtualService') {
        const v = normalizeVirtualService(obj);
        this.virtualServices.set(v.key, v);
      } else if (kind === 'Secret') {
        const t = normalizeTlsSecret(obj);
        // Not a TLS Secret: nothing of it is kept (a source that does not filter by type may deliver any Secret).
        if (!t) {
          const had = this.secrets.delete(key);
          this.raw.get(kind)!.delete(key);
          return had;
        }
        this.secrets.set(t.key, t);
        // Kept raw only in its slim form: never the annotations (kubectl's last-applied copy holds the whole Secret).
        this.raw.get(kind)!.set(key, slimSecret(t));
        return true;
      } else {
        const n = normalizeNode(obj, this.groupLabels);
        this.nodes.set(n.name, n);
      }
      this.raw.get(kind)!.set(key, obj);
      return true;
    } catch (e) {
      this.onReject(kind, key, (e as Error).message);
      return false;
    }
  }

  private markDirty(): void {
    this.changeCount++;
    this.dirty = true;
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      if (this.dirty) this.publish();
    });
  }

  private publish(): void {
    this.dirty = false;
    const endpoints = new Map<string, Endpoint[]>();
    // Deterministic order: slices by key, then endpoints as listed.
    for (const key of [...this.slices.keys()].sort()) {
      const s = this.slices.get(key)!;
      if (!this.services.has(s.serviceKey) && !this.optedOut.has(s.serviceKey)) continue;
      let list = endpoints.get(s.serviceKey);
      if (!list) endpoints.set(s.serviceKey, (list = []));
      list.push(...s.endpoints);
    }
    for (const [k, l] of endpoints) {
      const e = exact(l);
      Object.freeze(e);
      endpoints.set(k, e);
    }
    const prev = this.current;
    const wanted = referencedSecrets(this.gateways.values());
    const tlsSecrets = new Map<string, TlsSecret>();
    for (const k of wanted) {
      const t = this.secrets.get(k);
      if (t) tlsSecrets.set(k, t);
    }
    this.current = Object.freeze({
      version: prev.version + 1,
      services: new Map(this.services),
      optedOut: new Map(this.optedOut),
      endpoints,
      nodes: new Map(this.nodes),
      destinationRules: new Map(this.rules),
      gateways: new Map(this.gateways),
      virtualServices: new Map(this.virtualServices),
      tlsSecrets,
    });
    for (const fn of this.listeners) {
      try {
        fn(this.current, prev);
      } catch (e) {
        // A consumer's bug must not stop the others from seeing the snapshot.
        this.onListenerError(e);
      }
    }
  }
}

/** Serialisable form of the raw state, for the offline last-good-state file. */
export interface RawState {
  services: RawObject[];
  endpointSlices: RawObject[];
  nodes: RawObject[];
  destinationRules: RawObject[];
  gateways: RawObject[];
  virtualServices: RawObject[];
  /** Only Secrets a Gateway references, slimmed (slimSecret). */
  secrets: RawObject[];
}
