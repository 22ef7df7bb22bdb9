// Which Nodes exist, for enrollment (a name that is not a Node of the cluster cannot enroll). The server reuses the
// agent's cluster sources (a manifests directory, or Kubernetes informers restricted to Nodes) and keeps only the names.
import type { Logger } from '@edgemesh/common/log';
import type { ServerConfig } from '@edgemesh/common/config';
import type { ClusterSource, ModelSink, RawObject, ResourceKind } from '@edgemesh/agent/cluster/types';

/** What enrollment knows about the cluster's Nodes. */
export type ClusterView =
  /** cluster.source none: no Node-name check (warned at start). */
  | { readonly kind: 'any' }
  /** The source has not listed Nodes yet: enrollment waits (refused as retryable). */
  | { readonly kind: 'unsynced' }
  | { readonly kind: 'nodes'; readonly names: ReadonlySet<string> };

/** A ModelSink that keeps the names of Node objects and ignores everything else. */
export class NodeNameSink implements ModelSink {
  readonly names = new Set<string>();
  replace(kind: ResourceKind, objects: readonly RawObject[]): void {
    if (kind !== 'Node') return;
    this.names.clear();
    for (const o of objects) if (o.metadata?.name) this.names.add(o.metadata.name);
  }
  upsert(kind: ResourceKind, obj: RawObject): void {
    if (kind === 'Node' && obj.metadata?.name) this.names.add(obj.metadata.name);
  }
  remove(kind: ResourceKind, obj: RawObject): void {
    if (kind === 'Node' && obj.metadata?.name) this.names.delete(obj.metadata.name);
  }
}

export interface ClusterNodes {
  view(): ClusterView;
  /** For /readyz: the source listed Nodes at least once (always true for none). */
  synced(): boolean;
  stop(): Promise<void>;
}

/** Starts the configured source. `none` warns: any name can then enroll (first come, first pinned). */
export async function startClusterNodes(cfg: Pick<ServerConfig, 'cluster'>, log: Logger): Promise<ClusterNodes> {
  if (cfg.cluster.source === 'none') {
    log.warn('cluster.source is none: any node name can enroll (names are not checked against the cluster\'s Nodes); set cluster.source to kubernetes or file');
    return { view: () => ({ kind: 'any' }), synced: () => true, stop: async () => {} };
  }
  const sink = new NodeNameSink();
  let source: ClusterSource;
  if (cfg.cluster.source === 'file') {
    const { FileSource } = await import('@edgemesh/agent/cluster/file');
    source = new FileSource({ dir: cfg.cluster.manifestsDir, log: log.child({ module: 'cluster' }) });
  } else {
    const { KubeSource, loadKubeConfig } = await import('@edgemesh/agent/cluster/kube');
    source = new KubeSource({ kubeConfig: loadKubeConfig(cfg.cluster.kubeconfig), log: log.child({ module: 'cluster' }), offlineLoaded: false, destinationRules: false, kinds: ['Node'] });
  }
  // The server awaits the first sync before anything listens, and the file source's timers are unref'd (a pending
  // sync never keeps a process alive on its own): hold the event loop open until it is done, or the process exits
  // 13 with the sync unsettled (the built server with cluster.source file did).
  const keepAlive = setInterval(() => {}, 60_000);
  try {
    await source.start(sink);
  } finally {
    clearInterval(keepAlive);
  }
  return {
    view: () => (source.synced() ? { kind: 'nodes', names: sink.names } : { kind: 'unsynced' }),
    synced: () => source.synced(),
    stop: () => source.stop(),
  };
}
