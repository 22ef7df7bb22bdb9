// Kubernetes source: list + watch (cluster/kubeclient.ts, a thin client over node:http/https) for Services,
// EndpointSlices (discovery.k8s.io/v1), Nodes and Istio DestinationRules (with the gateway on: also Istio Gateways
// and VirtualServices, v1 then v1beta1, and kubernetes.io/tls Secrets), each kind under a supervisor:
// - A list (paginated) replace()s its kind in the model, so objects deleted while disconnected (or present only in
//   the loaded offline state) disappear; then a watch from the list's resourceVersion (with bookmarks) turns events
//   into upsert()/remove(). 410 Gone (HTTP 410 or an ERROR event with code 410) relists. A watch the server ends
//   cleanly, or one silent for the inactivity timeout (KUBE_WATCH_IDLE_MS), is reopened from the last
//   resourceVersion. Any other failure stops the run: the supervisor restarts it after a jittered backoff
//   (1 s -> 30 s), resuming from the last resourceVersion.
// - A watchdog restarts a kind from scratch (fresh list) when it shows no sign of life (no connect, no event, no
//   successful list) for KUBE_WATCHDOG_MS, which catches a request that hangs forever.
// - DestinationRules: networking.istio.io/v1, then v1beta1; an absent CRD (404) means "no rules", is rechecked every
//   KUBE_CRD_RECHECK_MS and never blocks readiness.
//
// Readiness rule (synced()): every core kind (Service, EndpointSlice, Node) has listed successfully since start, OR
// a last good state was loaded at start and every core kind that has not listed yet has failed at least once (the API
// is unreachable or refusing us): then the agent serves the loaded state and reports ready. live() is only the first.
import { Counter, type Registry } from 'prom-client';
import { readFileSync } from 'node:fs';
import { backoff, type Backoff } from '@edgemesh/common/backoff';
import { ConfigError } from '@edgemesh/common/config';
import type { Logger } from '@edgemesh/common/log';
import type { ClusterSource, ModelSink, RawObject, ResourceKind } from './types.ts';
import { get, inClusterConnection, KubeConfig, KubeHttpError, kubeconfigConnection, list, readEvents } from './kubeclient.ts';

export { KubeConfig };

export const KUBE_RESTART_MIN_MS = 1000;
export const KUBE_RESTART_MAX_MS = 30_000;
/** Watch inactivity timeout: a watch silent this long is reconnected from its resourceVersion. */
export const KUBE_WATCH_IDLE_MS = 30_000;
/** No connect, event or list for this long: the informer is restarted from a fresh list. > KUBE_WATCH_IDLE_MS. */
export const KUBE_WATCHDOG_MS = 90_000;
/** How often the watchdog looks. */
export const KUBE_WATCHDOG_TICK_MS = 5000;
/** A missing DestinationRule CRD is looked for again this often. */
export const KUBE_CRD_RECHECK_MS = 60_000;
/** Delay before reopening a watch the server closed cleanly (or that went silent): no reconnect storm. */
export const KUBE_RECONNECT_MAX_MS = 1000;

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
  if (value === '') {
    if (!env.KUBERNETES_SERVICE_HOST || !env.KUBERNETES_SERVICE_PORT) {
      throw new ConfigError('cluster.kubeconfig', 'empty means in-cluster config, but KUBERNETES_SERVICE_HOST/PORT are not set (give a kubeconfig path or a metaServer URL)');
    }
    return new KubeConfig(inClusterConnection(env));
  }
  if (/^https?:\/\//.test(value)) {
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      throw new ConfigError('cluster.kubeconfig', `not a valid URL: ${value.replace(/\/\/[^/@]*@/, '//[credentials hidden]@')}`);
    }
    // No credentials; plain http has no TLS to verify (KubeEdge's metaServer on loopback).
    return new KubeConfig({ server: url.origin, skipTLSVerify: url.protocol === 'http:' });
  }
  let text: string;
  try {
    text = readFileSync(value, 'utf8');
  } catch (e) {
    throw new ConfigError('cluster.kubeconfig', `cannot load kubeconfig ${value}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return new KubeConfig(kubeconfigConnection(text, value));
}

/** HTTP status of a failed request (KubeHttpError.statusCode), if any. */
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
function slim(obj: Record<string, unknown>): RawObject {
  const md = obj.metadata as Record<string, unknown> | undefined;
  if (!md || md.managedFields === undefined) return obj as RawObject;
  const { managedFields: _drop, ...rest } = md;
  return { ...(obj as object), metadata: rest } as RawObject;
}

/** Istio CRDs: an absent one (404 on every version) means "none", rechecked every KUBE_CRD_RECHECK_MS. */
const ISTIO_KINDS: ReadonlySet<ResourceKind> = new Set(['DestinationRule', 'Gateway', 'VirtualService']);

interface KindSpec {
  kind: ResourceKind;
  core: boolean;
  /** Candidate collection paths; the next is tried on 404 (Istio API versions). */
  variants: { path: string; version: string; fieldSelector?: string }[];
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

/** How one watch ended: the server closed it, it went silent, or its resourceVersion is too old (relist). */
type WatchEnd = 'closed' | 'idle' | 'gone';

/** Supervises one kind: list, then watch, again and again; restarts with backoff on failure. */
class KindWatcher {
  readonly spec: KindSpec;
  state: WatcherState = 'idle';
  listedOnce = false;
  failedOnce = false;
  lastActivity = Date.now();
  restarts = 0;
  private variant = 0;
  /** The current run; aborting it ends its requests (a retired run never touches the model). */
  private run: AbortController | undefined;
  /** Where the next watch starts; undefined = list first. */
  resourceVersion: string | undefined;
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
    if (fresh) this.resourceVersion = undefined;
    this.retire();
    const run = new AbortController();
    this.run = run;
    this.loop(run.signal).catch((e: unknown) => this.onError(run, e));
  }

  private retire(): void {
    this.run?.abort();
    this.run = undefined;
  }

  private async loop(signal: AbortSignal): Promise<void> {
    const { path, fieldSelector } = this.spec.variants[this.variant];
    const query: Record<string, string> = fieldSelector ? { fieldSelector } : {};
    const { kind } = this.spec;
    const sink = this.src.sink!;
    for (;;) {
      if (this.resourceVersion === undefined) {
        const res = await list(this.src.connection, path, signal, query);
        if (signal.aborted) return;
        // The relist is the truth: replace the kind (drops objects deleted meanwhile or known only from the state file).
        sink.replace(kind, res.items.map(slim));
        this.listedOnce = true;
        this.resourceVersion = res.resourceVersion;
        this.alive();
        this.log.debug({ kind, items: res.items.length, resourceVersion: res.resourceVersion }, 'listed');
      }
      const end = await this.watch(path, query, signal);
      if (signal.aborted) return;
      if (end === 'gone') {
        this.resourceVersion = undefined;
        continue;
      }
      await sleep(this.src.timing.reconnectMaxMs, signal);
      if (signal.aborted) return;
    }
  }

  /** One watch from this.resourceVersion, until the server ends it, it goes silent, or 410. Throws on other failures. */
  private async watch(path: string, query: Record<string, string>, parent: AbortSignal): Promise<WatchEnd> {
    const { kind } = this.spec;
    const sink = this.src.sink!;
    const ac = new AbortController();
    const onParent = () => ac.abort();
    parent.addEventListener('abort', onParent, { once: true });
    let idle = false;
    let gone = false;
    let idleTimer: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => { idle = true; ac.abort(); }, this.src.timing.watchIdleMs);
    };
    try {
      arm();
      const res = await get(this.src.connection, path, { ...query, watch: 'true', resourceVersion: this.resourceVersion ?? '', allowWatchBookmarks: 'true' }, ac.signal).catch((e: unknown) => {
        if (statusOf(e) === 410) { gone = true; return undefined; }
        throw e;
      });
      if (!res) return 'gone';
      this.lastActivity = Date.now(); // connected
      res.on('data', arm);
      await readEvents(res, (ev) => {
        if (ac.signal.aborted) return;
        const md = (ev.object.metadata ?? {}) as { resourceVersion?: string };
        if (ev.type === 'ERROR') {
          const code = typeof ev.object.code === 'number' ? ev.object.code : 0;
          if (code === 410) { gone = true; res.destroy(); return; }
          throw new KubeHttpError(code, String(ev.object.message ?? 'watch error'));
        }
        if (md.resourceVersion) this.resourceVersion = md.resourceVersion;
        if (ev.type === 'ADDED' || ev.type === 'MODIFIED') sink.upsert(kind, slim(ev.object));
        else if (ev.type === 'DELETED') sink.remove(kind, ev.object as RawObject);
        else if (ev.type !== 'BOOKMARK') return;
        this.alive();
      });
      return gone ? 'gone' : 'closed';
    } catch (e) {
      if (gone) return 'gone';
      if (idle && !parent.aborted) return 'idle';
      throw e;
    } finally {
      clearTimeout(idleTimer);
      parent.removeEventListener('abort', onParent);
      ac.abort();
    }
  }

  /** Proof that the API answers: resets the backoff. */
  private alive(): void {
    this.lastActivity = Date.now();
    if (this.bo.attempts > 0) this.log.info({ kind: this.spec.kind }, 'kubernetes watch recovered');
    this.bo.reset();
  }

  private onError(run: AbortController, err: unknown): void {
    if (run !== this.run || run.signal.aborted || this.state !== 'running') return;
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
    this.retire();
    this.state = 'backoff';
    this.timer = setTimeout(() => this.start(fresh), delay);
  }

  stop(): void {
    this.state = 'stopped';
    clearTimeout(this.timer);
    this.retire();
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => { clearTimeout(t); signal.removeEventListener('abort', done); resolve(); };
    const t = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}

export class KubeSource implements ClusterSource {
  readonly kubeConfig: KubeConfig;
  readonly connection: KubeConfig['connection'];
  readonly log: Logger;
  readonly timing: KubeTiming;
  readonly restarts: Counter<'kind' | 'reason'> | undefined;
  sink: ModelSink | undefined;
  private readonly offlineLoaded: boolean;
  private readonly watchers: KindWatcher[];
  private dog: NodeJS.Timeout | undefined;

  constructor(opts: KubeSourceOptions) {
    this.kubeConfig = opts.kubeConfig;
    this.connection = opts.kubeConfig.connection;
    this.log = opts.log;
    this.offlineLoaded = opts.offlineLoaded;
    this.timing = { ...DEFAULT_KUBE_TIMING, ...opts.timing };
    this.restarts = opts.registry
      ? new Counter({ name: 'edgemesh_cluster_watch_restarts_total', help: 'Kubernetes informer restarts by kind and reason', labelNames: ['kind', 'reason'], registers: [opts.registry] })
      : undefined;
    const specs: KindSpec[] = [
      { kind: 'Service', core: true, variants: [{ path: '/api/v1/services', version: 'v1' }] },
      { kind: 'EndpointSlice', core: true, variants: [{ path: '/apis/discovery.k8s.io/v1/endpointslices', version: 'v1' }] },
      { kind: 'Node', core: true, variants: [{ path: '/api/v1/nodes', version: 'v1' }] },
    ];
    if (opts.destinationRules !== false) {
      specs.push({
        kind: 'DestinationRule',
        core: false,
        variants: ['v1', 'v1beta1'].map((version) => ({ path: `/apis/networking.istio.io/${version}/destinationrules`, version })),
      });
    }
    if (opts.gateway) {
      for (const [kind, plural] of [['Gateway', 'gateways'], ['VirtualService', 'virtualservices']] as const) {
        specs.push({ kind, core: false, variants: ['v1', 'v1beta1'].map((version) => ({ path: `/apis/networking.istio.io/${version}/${plural}`, version })) });
      }
      // TLS Secrets only (the model keeps and shows only those a Gateway references).
      specs.push({ kind: 'Secret', core: false, variants: [{ path: '/api/v1/secrets', version: 'v1', fieldSelector: 'type=kubernetes.io/tls' }] });
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
    this.log.info({ server: this.kubeConfig.getCurrentCluster().server, offlineState: this.offlineLoaded }, 'kubernetes source started');
  }

  synced(): boolean {
    return this.watchers.filter((w) => w.spec.core).every((w) => w.listedOnce || (this.offlineLoaded && w.failedOnce));
  }

  live(): boolean {
    return this.watchers.filter((w) => w.spec.core).every((w) => w.listedOnce);
  }

  /** Per kind: state, listed, restarts, where the next watch starts (for tests and /status debugging). */
  describe(): Record<string, { state: string; listed: boolean; restarts: number; resourceVersion?: string }> {
    return Object.fromEntries(this.watchers.map((w) => [w.spec.kind, { state: w.state, listed: w.listedOnce, restarts: w.restarts, resourceVersion: w.resourceVersion }]));
  }

  async stop(): Promise<void> {
    if (this.dog) clearInterval(this.dog);
    for (const w of this.watchers) w.stop();
  }
}
