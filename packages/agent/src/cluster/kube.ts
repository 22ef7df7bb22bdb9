// Kubernetes source: @kubernetes/client-node 2.x list+watch informers (ListWatch, what makeInformer builds, so the
// watch timeout can be set) for Services, EndpointSlices (discovery.k8s.io/v1), Nodes and Istio DestinationRules (with
// the gateway on: also Istio Gateways and VirtualServices, v1 then v1beta1, and kubernetes.io/tls Secrets),
// each under a supervisor:
// - The informer relists by itself on 410 Gone (HTTP 410 or an ERROR event with code 410) and reconnects by itself
//   after its client-side watch inactivity timeout (a silent watch). On any other failure it emits `error` and stops:
//   the supervisor restarts it after a jittered backoff (1 s -> 30 s), resuming from the last resourceVersion.
// - A watchdog restarts an informer from scratch (fresh list) when it shows no sign of life (no connect, no event,
//   no successful list) for KUBE_WATCHDOG_MS, which catches a list request that hangs forever.
// - Every successful list replace()s its kind in the model, so objects deleted while disconnected (or present only
//   in the loaded offline state) disappear; watch events become upsert()/remove().
// - DestinationRules: networking.istio.io/v1, then v1beta1; an absent CRD (404) means "no rules", is rechecked every
//   KUBE_CRD_RECHECK_MS and never blocks readiness.
//
// Readiness rule (synced()): every core kind (Service, EndpointSlice, Node) has listed successfully since start, OR
// a last good state was loaded at start and every core kind that has not listed yet has failed at least once (the API
// is unreachable or refusing us): then the agent serves the loaded state and reports ready. live() is only the first.
import { CoreV1Api, CustomObjectsApi, DiscoveryV1Api, KubeConfig, ListWatch, Watch, type KubernetesObject, type KubernetesListObject } from '@kubernetes/client-node';
import { Counter, type Registry } from 'prom-client';
import { backoff, type Backoff } from '@edgemesh/common/backoff';
import { ConfigError } from '@edgemesh/common/config';
import type { Logger } from '@edgemesh/common/log';
import type { ClusterSource, ModelSink, RawObject, ResourceKind } from './types.ts';

export const KUBE_RESTART_MIN_MS = 1000;
export const KUBE_RESTART_MAX_MS = 30_000;
/** The client's watch inactivity timeout: a watch silent this long is reconnected from its resourceVersion. */
export const KUBE_WATCH_IDLE_MS = 30_000;
/** No connect, event or list for this long: the informer is restarted from a fresh list. > KUBE_WATCH_IDLE_MS. */
export const KUBE_WATCHDOG_MS = 90_000;
/** How often the watchdog looks. */
export const KUBE_WATCHDOG_TICK_MS = 5000;
/** A missing DestinationRule CRD is looked for again this often. */
export const KUBE_CRD_RECHECK_MS = 60_000;
/** Cap for client-node's own reconnect delay after a watch the server closed cleanly. */
export const KUBE_RECONNECT_MAX_MS = 30_000;

export interface KubeTiming {
  restartMinMs: number;
  restartMaxMs: number;
  watchIdleMs: number;
  watchdogMs: number;
  watchdogTickMs: number;
  crdRecheckMs: number;
  reconnectMaxMs: number;
  random?: () => number;
}

export const DEFAULT_KUBE_TIMING: KubeTiming = {
  restartMinMs: KUBE_RESTART_MIN_MS,
  restartMaxMs: KUBE_RESTART_MAX_MS,
  watchIdleMs: KUBE_WATCH_IDLE_MS,
  watchdogMs: KUBE_WATCHDOG_MS,
  watchdogTickMs: KUBE_WATCHDOG_TICK_MS,
  crdRecheckMs: KUBE_CRD_RECHECK_MS,
  reconnectMaxMs: KUBE_RECONNECT_MAX_MS,
};

/**
 * `cluster.kubeconfig`: empty = in-cluster service account; `http(s)://host:port` = that API server without
 * credentials (KubeEdge's metaServer, http://127.0.0.1:10550); anything else = a kubeconfig file path.
 */
export function loadKubeConfig(value: string, env: NodeJS.ProcessEnv = process.env): KubeConfig {
  const kc = new KubeConfig();
  if (value === '') {
    if (!env.KUBERNETES_SERVICE_HOST || !env.KUBERNETES_SERVICE_PORT) {
      throw new ConfigError('cluster.kubeconfig', 'empty means in-cluster config, but KUBERNETES_SERVICE_HOST/PORT are not set (give a kubeconfig path or a metaServer URL)');
    }
    kc.loadFromCluster();
    return kc;
  }
  if (/^https?:\/\//.test(value)) {
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      throw new ConfigError('cluster.kubeconfig', `not a valid URL: ${value.replace(/\/\/[^/@]*@/, '//[credentials hidden]@')}`);
    }
    kc.loadFromClusterAndUser({ name: 'direct', server: url.origin, skipTLSVerify: false }, { name: 'anonymous' });
    return allowPlainHttp(kc);
  }
  try {
    kc.loadFromFile(value);
  } catch (e) {
    throw new ConfigError('cluster.kubeconfig', `cannot load kubeconfig ${value}: ${(e as Error).message.split('\n')[0]}`);
  }
  if (!kc.getCurrentCluster()) throw new ConfigError('cluster.kubeconfig', `kubeconfig ${value} has no current cluster`);
  return allowPlainHttp(kc);
}

/**
 * client-node 2.x refuses `http://` servers unless skipTLSVerify is set. For a plain-http server (KubeEdge's
 * metaServer on loopback) there is no TLS to verify, so setting it changes nothing else; https servers are untouched.
 */
function allowPlainHttp(kc: KubeConfig): KubeConfig {
  kc.clusters = kc.clusters.map((c) => (c.server.startsWith('http:') && !c.skipTLSVerify ? { ...c, skipTLSVerify: true } : c));
  return kc;
}

/** HTTP status of a client-node error (ApiException.code, watch Error.statusCode), if any. */
export function statusOf(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown } | undefined;
  if (typeof e?.code === 'number') return e.code;
  if (typeof e?.statusCode === 'number') return e.statusCode;
  return undefined;
}

/** A short, secret-free reason for logs. */
export function reasonOf(err: unknown): string {
  const st = statusOf(err);
  if (st !== undefined) return `HTTP ${st}`;
  const e = err as { cause?: { code?: string; message?: string }; code?: string; message?: string; name?: string };
  return e?.cause?.code ?? e?.cause?.message ?? (typeof e?.code === 'string' ? e.code : undefined) ?? e?.message ?? String(err);
}

/** Drops metadata.managedFields (large, unused) so the model and the state file stay small. */
function slim(obj: KubernetesObject): RawObject {
  const md = obj.metadata as Record<string, unknown> | undefined;
  if (!md || md.managedFields === undefined) return obj as RawObject;
  const { managedFields: _drop, ...rest } = md;
  return { ...(obj as object), metadata: rest } as RawObject;
}

/**
 * A Watch that refuses to start once its informer generation is retired (client-node may call it after stop, e.g.
 * when a list or a reconnect delay finishes after stop()), and that never throws.
 */
class GuardedWatch extends Watch {
  alive = true;
  override async watch(path: string, q: Record<string, string | number | boolean | undefined>, cb: (phase: string, apiObj: any, watchObj?: any) => void, done: (err: any) => void): Promise<AbortController> {
    if (!this.alive) return new AbortController();
    try {
      return await super.watch(path, q, cb, done);
    } catch (e) {
      // Thrown before the request (e.g. an exec credential plugin failing): inside the informer's reconnect path this
      // would be an unhandled rejection. Report it through `done`, so the informer emits `error` and we restart.
      setImmediate(() => done(e));
      return new AbortController();
    }
  }
}

type Lister = () => Promise<KubernetesListObject<KubernetesObject>>;

/** Istio CRDs: an absent one (404 on every version) means "none", rechecked every KUBE_CRD_RECHECK_MS. */
const ISTIO_KINDS: ReadonlySet<ResourceKind> = new Set(['DestinationRule', 'Gateway', 'VirtualService']);

interface KindSpec {
  kind: ResourceKind;
  core: boolean;
  /** Candidate (path, list) pairs; the next is tried on 404 (DestinationRule API versions). */
  variants: { path: string; list: Lister; version: string; fieldSelector?: string }[];
}

export interface KubeSourceOptions {
  kubeConfig: KubeConfig;
  log: Logger;
  /** A last good state was loaded before start (enables the offline readiness rule). */
  offlineLoaded: boolean;
  timing?: Partial<KubeTiming>;
  registry?: Registry;
  /** Watch DestinationRules (default true). */
  destinationRules?: boolean;
  /** Watch Istio Gateways + VirtualServices and kubernetes.io/tls Secrets (gateway.enabled; default false). */
  gateway?: boolean;
  /** Watch only these kinds (default all); edgemesh-server watches Nodes only. */
  kinds?: readonly ResourceKind[];
}

type WatcherState = 'idle' | 'running' | 'backoff' | 'absent' | 'stopped';

/** Supervises one informer. */
class KindWatcher {
  readonly spec: KindSpec;
  state: WatcherState = 'idle';
  listedOnce = false;
  failedOnce = false;
  lastActivity = Date.now();
  restarts = 0;
  private variant = 0;
  private informer: ListWatch<KubernetesObject> | undefined;
  private watch: GuardedWatch | undefined;
  private abort: AbortController | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Its attempts are the failures since the last sign of life (0 = healthy). */
  private readonly bo: Backoff;
  private readonly src: KubeSource;

  constructor(src: KubeSource, spec: KindSpec) {
    this.src = src;
    this.spec = spec;
    this.bo = backoff(src.timing.restartMinMs, src.timing.restartMaxMs, src.timing.random);
  }

  private get log(): Logger {
    return this.src.log;
  }

  start(fresh: boolean): void {
    if (this.state === 'stopped') return;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.state = 'running';
    this.lastActivity = Date.now();
    if (fresh || !this.informer) this.create();
    const inf = this.informer!;
    inf.start().catch((e: unknown) => this.onError(inf, e));
  }

  private retire(): void {
    if (this.watch) this.watch.alive = false;
    this.abort?.abort();
    const inf = this.informer;
    this.informer = undefined;
    if (inf) void inf.stop();
  }

  private create(): void {
    this.retire();
    const v = this.spec.variants[this.variant];
    const { kind } = this.spec;
    const watch = new GuardedWatch(this.src.kubeConfig);
    // Private in the typings, public at runtime: the watch inactivity timeout (default 30 s).
    (watch as unknown as { requestTimeoutMs: number }).requestTimeoutMs = this.src.timing.watchIdleMs;
    const abort = new AbortController();
    const sink = this.src.sink!;
    const list: Lister = async () => {
      if (abort.signal.aborted) throw new Error('retired');
      // A list cannot be cancelled in client-node: race it against retirement so a hung one is abandoned.
      let fail = () => {};
      const aborted = new Promise<never>((_, rej) => { fail = () => rej(new Error('retired')); });
      abort.signal.addEventListener('abort', fail, { once: true });
      let res: KubernetesListObject<KubernetesObject>;
      try {
        res = await Promise.race([v.list(), aborted]);
      } finally {
        abort.signal.removeEventListener('abort', fail);
      }
      if (abort.signal.aborted) throw new Error('retired');
      const items = Array.isArray(res?.items) ? res.items : [];
      // The relist is the truth: replace the kind (drops objects deleted meanwhile or known only from the state file).
      sink.replace(kind, items.map(slim));
      this.listedOnce = true;
      this.alive();
      this.log.debug({ kind, items: items.length, resourceVersion: res?.metadata?.resourceVersion }, 'listed');
      return res;
    };
    const reconnectMax = this.src.timing.reconnectMaxMs;
    const inf = new ListWatch<KubernetesObject>(v.path, watch, list, false, undefined, v.fieldSelector, {
      delayFn: (ms: number) => new Promise<void>((r) => {
        const done = () => { clearTimeout(t); abort.signal.removeEventListener('abort', done); r(); };
        const t = setTimeout(done, Math.min(ms, reconnectMax));
        abort.signal.addEventListener('abort', done, { once: true });
      }),
    });
    const current = () => this.informer === inf;
    inf.on('add', (o) => { if (current()) { sink.upsert(kind, slim(o)); this.alive(); } });
    inf.on('update', (o) => { if (current()) { sink.upsert(kind, slim(o)); this.alive(); } });
    inf.on('delete', (o) => { if (current()) { sink.remove(kind, o as RawObject); this.alive(); } });
    inf.on('connect', () => { if (current()) this.lastActivity = Date.now(); });
    inf.on('error', (e) => this.onError(inf, e));
    this.informer = inf;
    this.watch = watch;
    this.abort = abort;
  }

  /** Proof that the API answers: resets the backoff. */
  private alive(): void {
    this.lastActivity = Date.now();
    if (this.bo.attempts > 0) this.log.info({ kind: this.spec.kind }, 'kubernetes watch recovered');
    this.bo.reset();
  }

  private onError(inf: ListWatch<KubernetesObject>, err: unknown): void {
    if (inf !== this.informer || this.state !== 'running') return;
    const status = statusOf(err);
    const { kind } = this.spec;
    if (status === 404 && ISTIO_KINDS.has(kind)) {
      if (this.variant + 1 < this.spec.variants.length) {
        this.variant++;
        this.start(true);
        return;
      }
      // CRD absent: no rules. Look again later; never part of readiness.
      this.src.sink!.replace(kind, []);
      this.listedOnce = true;
      this.variant = 0;
      this.retire();
      this.state = 'absent';
      this.log.info({ kind }, `${kind} CRD not installed; checking again later`);
      this.timer = setTimeout(() => this.start(true), this.src.timing.crdRecheckMs);
      return;
    }
    this.failedOnce = true;
    this.scheduleRestart(false, reasonOf(err));
  }

  /** Watchdog: no sign of life for too long. */
  check(now: number): void {
    if (this.state !== 'running') return;
    if (now - this.lastActivity < this.src.timing.watchdogMs) return;
    this.failedOnce = true;
    this.scheduleRestart(true, `no list, connect or event for ${this.src.timing.watchdogMs} ms`);
  }

  private scheduleRestart(fresh: boolean, reason: string): void {
    const first = this.bo.attempts === 0;
    const delay = this.bo.next();
    this.restarts++;
    this.src.restarts?.inc({ kind: this.spec.kind, reason: fresh ? 'watchdog' : 'error' });
    const fields = { kind: this.spec.kind, reason, retryInMs: delay, attempt: this.bo.attempts };
    if (first) this.log.warn(fields, 'kubernetes watch failed; restarting with backoff');
    else this.log.debug(fields, 'kubernetes watch still failing');
    if (fresh) this.retire();
    this.state = 'backoff';
    this.timer = setTimeout(() => this.start(fresh), delay);
  }

  stop(): void {
    this.state = 'stopped';
    clearTimeout(this.timer);
    this.retire();
  }
}

export class KubeSource implements ClusterSource {
  readonly kubeConfig: KubeConfig;
  readonly log: Logger;
  readonly timing: KubeTiming;
  readonly restarts: Counter<'kind' | 'reason'> | undefined;
  sink: ModelSink | undefined;
  private readonly offlineLoaded: boolean;
  private readonly watchers: KindWatcher[];
  private dog: NodeJS.Timeout | undefined;

  constructor(opts: KubeSourceOptions) {
    this.kubeConfig = opts.kubeConfig;
    this.log = opts.log;
    this.offlineLoaded = opts.offlineLoaded;
    this.timing = { ...DEFAULT_KUBE_TIMING, ...opts.timing };
    this.restarts = opts.registry
      ? new Counter({ name: 'edgemesh_cluster_watch_restarts_total', help: 'Kubernetes informer restarts by kind and reason', labelNames: ['kind', 'reason'], registers: [opts.registry] })
      : undefined;
    const core = this.kubeConfig.makeApiClient(CoreV1Api);
    const disc = this.kubeConfig.makeApiClient(DiscoveryV1Api);
    const custom = this.kubeConfig.makeApiClient(CustomObjectsApi);
    const specs: KindSpec[] = [
      { kind: 'Service', core: true, variants: [{ path: '/api/v1/services', version: 'v1', list: () => core.listServiceForAllNamespaces() as Promise<KubernetesListObject<KubernetesObject>> }] },
      { kind: 'EndpointSlice', core: true, variants: [{ path: '/apis/discovery.k8s.io/v1/endpointslices', version: 'v1', list: () => disc.listEndpointSliceForAllNamespaces() as Promise<KubernetesListObject<KubernetesObject>> }] },
      { kind: 'Node', core: true, variants: [{ path: '/api/v1/nodes', version: 'v1', list: () => core.listNode() as Promise<KubernetesListObject<KubernetesObject>> }] },
    ];
    if (opts.destinationRules !== false) {
      specs.push({
        kind: 'DestinationRule',
        core: false,
        variants: ['v1', 'v1beta1'].map((version) => ({
          path: `/apis/networking.istio.io/${version}/destinationrules`,
          version,
          list: () => custom.listClusterCustomObject({ group: 'networking.istio.io', version, plural: 'destinationrules' }) as Promise<KubernetesListObject<KubernetesObject>>,
        })),
      });
    }
    if (opts.gateway) {
      for (const [kind, plural] of [['Gateway', 'gateways'], ['VirtualService', 'virtualservices']] as const) {
        specs.push({
          kind, core: false,
          variants: ['v1', 'v1beta1'].map((version) => ({
            path: `/apis/networking.istio.io/${version}/${plural}`, version,
            list: () => custom.listClusterCustomObject({ group: 'networking.istio.io', version, plural }) as Promise<KubernetesListObject<KubernetesObject>>,
          })),
        });
      }
      // TLS Secrets only (the model keeps and shows only those a Gateway references).
      const fieldSelector = 'type=kubernetes.io/tls';
      specs.push({ kind: 'Secret', core: false, variants: [{ path: '/api/v1/secrets', version: 'v1', fieldSelector, list: () => core.listSecretForAllNamespaces({ fieldSelector }) as Promise<KubernetesListObject<KubernetesObject>> }] });
    }
    this.watchers = specs.filter((s) => !opts.kinds || opts.kinds.includes(s.kind)).map((s) => new KindWatcher(this, s));
  }

  async start(sink: ModelSink): Promise<void> {
    this.sink = sink;
    for (const w of this.watchers) w.start(true);
    this.dog = setInterval(() => {
      const now = Date.now();
      for (const w of this.watchers) w.check(now);
    }, this.timing.watchdogTickMs);
    this.dog.unref();
    this.log.info({ server: this.kubeConfig.getCurrentCluster()?.server, offlineState: this.offlineLoaded }, 'kubernetes source started');
  }

  synced(): boolean {
    return this.watchers.filter((w) => w.spec.core).every((w) => w.listedOnce || (this.offlineLoaded && w.failedOnce));
  }

  live(): boolean {
    return this.watchers.filter((w) => w.spec.core).every((w) => w.listedOnce);
  }

  /** Per kind: state, listed, restarts (for tests and /status debugging). */
  describe(): Record<string, { state: string; listed: boolean; restarts: number }> {
    return Object.fromEntries(this.watchers.map((w) => [w.spec.kind, { state: w.state, listed: w.listedOnce, restarts: w.restarts }]));
  }

  async stop(): Promise<void> {
    if (this.dog) clearInterval(this.dog);
    for (const w of this.watchers) w.stop();
  }
}
