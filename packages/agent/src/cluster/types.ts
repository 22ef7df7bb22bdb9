// The normalised, immutable cluster model every agent module consumes. Plain data only.
import type { SecretMaterial } from './secret.ts';

export type Protocol = 'TCP' | 'UDP' | 'SCTP';

export interface ServicePort {
  readonly name: string;
  readonly protocol: Protocol;
  readonly port: number;
  /** Number, or a named container port resolved through the endpoints' port names. */
  readonly targetPort: number | string;
  /** spec.ports[].nodePort of a NodePort or LoadBalancer Service (absent otherwise). */
  readonly nodePort?: number;
}

export interface Service {
  /** `namespace/name` */
  readonly key: string;
  readonly namespace: string;
  readonly name: string;
  readonly type: 'ClusterIP' | 'NodePort' | 'LoadBalancer' | 'ExternalName';
  /** spec.clusterIPs (or clusterIP), without "None". Empty for headless and ExternalName. */
  readonly clusterIPs: readonly string[];
  readonly headless: boolean;
  /** spec.externalName for type ExternalName. */
  readonly externalName?: string;
  readonly ports: readonly ServicePort[];
  /** Selector-less Services have endpoints managed by hand (EndpointSlices without a controller). */
  readonly selector?: Readonly<Record<string, string>>;
  readonly sessionAffinity: 'None' | 'ClientIP';
  /** ClientIP affinity timeout; Kubernetes default 10800 s. */
  readonly affinityTimeoutSeconds: number;
  /** spec.trafficDistribution, e.g. PreferClose, PreferSameZone, PreferSameNode. */
  readonly trafficDistribution?: string;
  readonly internalTrafficPolicy: 'Cluster' | 'Local';
  /**
   * spec.externalTrafficPolicy: how traffic from outside (nodePorts, externalIPs, load-balancer IPs) is routed;
   * `Local` = endpoints on the receiving node only. Absent = Cluster.
   */
  readonly externalTrafficPolicy?: 'Cluster' | 'Local';
  /** spec.externalIPs (IPv4 and IPv6 as written; the proxy intercepts the IPv4 ones when proxy.nodePorts is on). */
  readonly externalIPs?: readonly string[];
  /**
   * status.loadBalancer.ingress[].ip of a LoadBalancer Service, without entries whose ipMode is `Proxy` (the load
   * balancer forwards to the nodePorts itself and expects to see the traffic, as kube-proxy leaves them alone).
   */
  readonly loadBalancerIPs?: readonly string[];
  readonly labels: Readonly<Record<string, string>>;
  readonly annotations: Readonly<Record<string, string>>;
}

export interface EndpointPort {
  readonly name: string;
  readonly port: number;
  readonly protocol: Protocol;
}

export interface Endpoint {
  /** First address of the EndpointSlice endpoint (the one traffic goes to). */
  readonly address: string;
  readonly addresses: readonly string[];
  readonly addressType: 'IPv4' | 'IPv6';
  readonly nodeName?: string;
  readonly zone?: string;
  readonly hostname?: string;
  /** conditions.ready: nil counts as true (Kubernetes semantics), except while terminating. */
  readonly ready: boolean;
  readonly serving: boolean;
  readonly terminating: boolean;
  /** Ports of the slice this endpoint came from. */
  readonly ports: readonly EndpointPort[];
  /** The EndpointSlice it came from (`namespace/name`). */
  readonly slice: string;
}

export interface NodeInfo {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  /** The node's group: value of the first `routing.groupLabels` label present, else undefined. */
  readonly group?: string;
  readonly addresses: readonly string[];
  /** spec.podCIDRs (else spec.podCIDR): the ranges this node's pods get their IPs from (DNS answers them). */
  readonly podCIDRs?: readonly string[];
}

/** A consistent view of the cluster. Never mutated after publication. */
export interface Snapshot {
  /** Increases by one for every published snapshot. */
  readonly version: number;
  readonly services: ReadonlyMap<string, Service>;
  /** Endpoints per Service key, merged from all of the Service's EndpointSlices. */
  readonly endpoints: ReadonlyMap<string, readonly Endpoint[]>;
  readonly nodes: ReadonlyMap<string, NodeInfo>;
  /**
   * Services that opt out of the mesh (label OPT_OUT_LABEL), by key: never proxied nor intercepted, but DNS still
   * answers them with their ClusterIPs (another proxy such as kube-proxy serves them), as EdgeMesh's CoreDNS does.
   * Their endpoints are in `endpoints` too (headless answers).
   */
  readonly optedOut?: ReadonlyMap<string, Service>;
  /** Istio DestinationRules by `namespace/name` (kubernetes source watches them when the CRD exists). */
  readonly destinationRules: ReadonlyMap<string, DestinationRule>;
  /** Istio Gateways by `namespace/name` (the gateway module serves those selecting this node). */
  readonly gateways?: ReadonlyMap<string, IstioGateway>;
  /** Istio VirtualServices by `namespace/name`. */
  readonly virtualServices?: ReadonlyMap<string, VirtualService>;
  /**
   * kubernetes.io/tls Secrets by `namespace/name` — only those some Gateway names in `tls.credentialName` (in the
   * Gateway's namespace). Other Secrets a source delivers stay inside the model: never in a snapshot, /status or the
   * offline state file. The material is wrapped (SecretMaterial) so a logged or serialised snapshot shows no key.
   */
  readonly tlsSecrets?: ReadonlyMap<string, TlsSecret>;
}

/** The part of an Istio DestinationRule (networking.istio.io) the load balancer uses. */
export interface DestinationRule {
  readonly key: string;
  readonly namespace: string;
  /** spec.host as written: `svc`, `svc.ns`, `svc.ns.svc.cluster.local`, ... (matched to a Service by the LB). */
  readonly host: string;
  /** spec.trafficPolicy.loadBalancer.simple */
  readonly simple?: 'ROUND_ROBIN' | 'RANDOM' | 'LEAST_REQUEST' | 'LEAST_CONN' | 'PASSTHROUGH';
  /** spec.trafficPolicy.loadBalancer.consistentHash */
  readonly consistentHash?: { readonly httpHeaderName?: string; readonly useSourceIp?: boolean };
}

/** One `spec.servers[]` entry of an Istio Gateway. */
export interface GatewayServer {
  readonly port: number;
  /** port.protocol upper-cased: HTTP, HTTPS, TLS, TCP (others are kept so the planner can say they are unsupported). */
  readonly protocol: string;
  readonly portName?: string;
  /** hosts as written: `host`, `*.example.com`, `*`, `ns/host`, `./host`, `*\/host`. */
  readonly hosts: readonly string[];
  readonly tls?: {
    /** SIMPLE | PASSTHROUGH | MUTUAL | ISTIO_MUTUAL | AUTO_PASSTHROUGH (as written, upper-cased). */
    readonly mode?: string;
    /** A kubernetes.io/tls Secret in the Gateway's namespace. */
    readonly credentialName?: string;
    readonly httpsRedirect?: boolean;
  };
}

/** An Istio `networking.istio.io` Gateway (v1, v1beta1, v1alpha3 have the same shape). */
export interface IstioGateway {
  readonly key: string;
  readonly namespace: string;
  readonly name: string;
  readonly selector: Readonly<Record<string, string>>;
  readonly servers: readonly GatewayServer[];
}

export type StringMatch = { readonly exact: string } | { readonly prefix: string } | { readonly regex: string };

export interface RouteDestination {
  /** destination.host as written (`svc`, `svc.ns`, `svc.ns.svc.cluster.local`, or something outside the mesh). */
  readonly host: string;
  readonly port?: number;
  readonly subset?: string;
  /** Relative weight (Istio: percent; a single destination without weight gets 100). */
  readonly weight: number;
}

export interface HttpMatch {
  readonly uri?: StringMatch;
  readonly ignoreUriCase: boolean;
  readonly headers: Readonly<Record<string, StringMatch>>;
  readonly port?: number;
  readonly gateways: readonly string[];
  /** Conditions we do not evaluate (a match carrying one never matches): field names. */
  readonly unsupported: readonly string[];
}

export interface HttpRoute {
  readonly name?: string;
  /** Empty: matches every request. */
  readonly match: readonly HttpMatch[];
  readonly route: readonly RouteDestination[];
  readonly rewriteUri?: string;
  readonly timeoutMs?: number;
  /** Route-level fields we do not implement (redirect, fault, mirror, ...): the planner warns. */
  readonly unsupported: readonly string[];
}

export interface L4Match {
  readonly port?: number;
  readonly sniHosts: readonly string[];
  readonly gateways: readonly string[];
}

/** A `tcp` or `tls` route of a VirtualService. */
export interface L4Route {
  readonly match: readonly L4Match[];
  readonly route: readonly RouteDestination[];
}

export interface VirtualService {
  readonly key: string;
  readonly namespace: string;
  readonly name: string;
  readonly hosts: readonly string[];
  /** spec.gateways as written (`name`, `ns/name`, `mesh`); empty = mesh only (not bound to any Gateway). */
  readonly gateways: readonly string[];
  readonly http: readonly HttpRoute[];
  readonly tcp: readonly L4Route[];
  readonly tls: readonly L4Route[];
}

/** A kubernetes.io/tls Secret a Gateway references (certificate chain and private key, PEM). */
export interface TlsSecret {
  readonly key: string;
  readonly namespace: string;
  readonly name: string;
  readonly cert: SecretMaterial;
  readonly privateKey: SecretMaterial;
  /** sha256 of cert and key (hex, first 16): tells a changed Secret apart without looking at it. */
  readonly fingerprint: string;
}

export type ResourceKind = 'Service' | 'EndpointSlice' | 'Node' | 'DestinationRule' | 'Gateway' | 'VirtualService' | 'Secret';

/** Raw Kubernetes objects as sources deliver them (JSON shape of the API). */
export type RawObject = Record<string, unknown> & { kind?: string; metadata?: { name?: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string>; resourceVersion?: string } };

/** What a source feeds the model. */
export interface ModelSink {
  /** Replaces every object of a kind (a relist or a full directory read). */
  replace(kind: ResourceKind, objects: readonly RawObject[]): void;
  upsert(kind: ResourceKind, obj: RawObject): void;
  remove(kind: ResourceKind, obj: RawObject): void;
}

/** A cluster source: feeds a ModelSink, reports when it has synced every kind at least once. */
export interface ClusterSource {
  start(sink: ModelSink): Promise<void>;
  /**
   * True once every core kind has been listed (or the directory read) since start. The kubernetes source also counts a
   * last good state loaded at start while the API is unreachable (rule in kube.ts); the file source never does.
   */
  synced(): boolean;
  /** True when the model content comes from the live origin (fully listed/read), i.e. worth persisting. */
  live(): boolean;
  stop(): Promise<void>;
}

/** Label that opts a Service out of EdgeMesh (same as kubeedge/edgemesh). */
export const OPT_OUT_LABEL = 'service.edgemesh.kubeedge.io/service-proxy-name';
/** Label that ties an EndpointSlice to its Service. */
export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';
export const DEFAULT_AFFINITY_TIMEOUT_S = 10800;

/**
 * The IPs the agent hands out for Services (clusterIP mode: spec.clusterIPs; fake mode: one fake IP per Service).
 * DNS answers from it and the proxy intercepts exactly these IPs. Implemented in dns/serviceips.ts.
 */
export interface ServiceIPTable {
  /** IPs for a Service key (`ns/name`); empty when the Service gets none (headless, ExternalName, unknown). */
  ipsFor(serviceKey: string): readonly string[];
  /** Reverse lookup for PTR and interception: IP -> Service key. */
  serviceFor(ip: string): string | undefined;
  /** Every Service key with its IPs. */
  entries(): ReadonlyMap<string, readonly string[]>;
  /** Called after the table changed (a Service came, went, or its IP changed). Returns an unsubscribe function. */
  onChange(fn: () => void): () => void;
  /** The mesh IP of a headless Service's endpoint, by its label (hostname, else dashed address); undefined: none. */
  endpointIP(serviceKey: string, label: string): EndpointIP | undefined;
  /** Reverse lookup of a mesh IP (PTR). */
  endpointFor(ip: string): EndpointIP | undefined;
  /** Every per-endpoint mesh IP, by `namespace/service/label` (the proxy intercepts them). */
  endpointIPs(): ReadonlyMap<string, EndpointIP>;
  /** The mesh IP standing for pod IP `podIP` in `namespace` (`<a-b-c-d>.<ns>.pod` names), if it backs one. */
  podMeshIP(namespace: string, podIP: string): EndpointIP | undefined;
}

/**
 * A mesh IP of one endpoint of a headless Service: an address from the fake pool standing for a pod this node cannot
 * reach as it is (on another node, outside proxy.directCIDRs). DNS answers it instead of the pod IP; the proxy
 * intercepts every port of the endpoint on it and connects to exactly that endpoint.
 */
export interface EndpointIP {
  readonly serviceKey: string;
  /** The endpoint's DNS label: its hostname, else its dashed address. */
  readonly label: string;
  readonly ip: string;
  /** The endpoint's own address the mesh IP stands for. */
  readonly address: string;
  readonly nodeName: string;
}
