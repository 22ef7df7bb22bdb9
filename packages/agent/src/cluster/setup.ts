// Wires a cluster source, the model and the offline state file together (used by the Agent and the bench).
import type { Registry } from 'prom-client';
import { Counter, Gauge } from 'prom-client';
import type { AgentConfig } from '@edgemesh/common/config';
import type { Logger } from '@edgemesh/common/log';
import type { ClusterModel } from './model.ts';
import type { ClusterSource } from './types.ts';
import { FileSource } from './file.ts';
import { applyState, loadState, STATE_FIRST_WRITE_DELAY_MS, StateWriter } from './state.ts';

export interface ClusterRuntime {
  readonly source: ClusterSource;
  /** Whether a last good state was loaded from stateDir at start. */
  readonly offlineLoaded: boolean;
  synced(): boolean;
  stop(): Promise<void>;
}

export interface ClusterSetupOptions {
  cfg: Pick<AgentConfig, 'stateDir' | 'cluster'> & { gateway?: Pick<AgentConfig['gateway'], 'enabled'> };
  model: ClusterModel;
  log: Logger;
  registry?: Registry;
  /** Persist the last good state (default true). */
  persist?: boolean;
}

/** Loads the last good state into the model, then starts the configured source and the state writer. */
export async function startCluster(opts: ClusterSetupOptions): Promise<ClusterRuntime> {
  const { cfg, model, registry } = opts;
  const log = opts.log.child({ module: 'cluster' });
  const loaded = await loadState(cfg.stateDir, log);
  if (loaded) {
    applyState(model, loaded.state);
    model.flush();
    log.info({ savedAt: loaded.savedAt, from: loaded.source, services: loaded.state.services.length }, 'loaded the last good cluster state');
  }
  let source: ClusterSource;
  if (cfg.cluster.source === 'file') {
    source = new FileSource({ dir: cfg.cluster.manifestsDir, log });
  } else {
    // Loaded lazily: the file source never pays for the Kubernetes client.
    const { KubeSource, loadKubeConfig } = await import('./kube.ts');
    source = new KubeSource({ kubeConfig: loadKubeConfig(cfg.cluster.kubeconfig), log, offlineLoaded: !!loaded, registry, gateway: cfg.gateway?.enabled });
  }
  const writer = new StateWriter({
    stateDir: cfg.stateDir, log, source: cfg.cluster.source, read: () => model.rawState(), version: () => model.changes, live: () => source.live(),
    firstWriteDelayMs: STATE_FIRST_WRITE_DELAY_MS,
  });
  if (loaded) writer.markWritten(model.rawState());
  const unsubscribe = opts.persist === false ? () => {} : model.subscribe(writer.onSnapshot);
  if (registry) {
    new Gauge({ name: 'edgemesh_cluster_services', help: 'Services in the current cluster snapshot', registers: [registry], collect() { this.set(model.snapshot().services.size); } });
    new Gauge({
      name: 'edgemesh_cluster_endpoints', help: 'Endpoints in the current cluster snapshot', registers: [registry],
      collect() { let n = 0; for (const l of model.snapshot().endpoints.values()) n += l.length; this.set(n); },
    });
    new Gauge({ name: 'edgemesh_cluster_synced', help: '1 when the cluster source has synced', registers: [registry], collect() { this.set(source.synced() ? 1 : 0); } });
    const rejected = new Counter({ name: 'edgemesh_cluster_rejected_objects_total', help: 'Objects that failed normalisation', labelNames: ['kind'], registers: [registry] });
    const prev = model.onReject;
    model.onReject = (kind, key, reason) => { rejected.inc({ kind }); prev(kind, key, reason); };
  }
  await source.start(model);
  // Off the start path (STATE_FIRST_WRITE_DELAY_MS); stop() still writes a pending state.
  if (source.live()) writer.changed();
  log.info({ source: cfg.cluster.source, synced: source.synced() }, 'cluster source started');
  return {
    source,
    offlineLoaded: !!loaded,
    synced: () => source.synced(),
    async stop() {
      unsubscribe();
      await source.stop();
      await writer.stop();
    },
  };
}
