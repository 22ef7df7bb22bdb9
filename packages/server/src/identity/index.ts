// The server's identity at start: stateDir (0700), bootstrap token (only when enabled; ≥128 bits), the cluster CA
// (given, or created once in stateDir), a fresh TLS certificate for the control channel, the Node names, the
// Enroller. Everything here fails at start with a ConfigError naming the key (exit 2).
import { createHash } from 'node:crypto';
import type { Registry } from 'prom-client';
import { ConfigError, readToken, type ServerConfig } from '@edgemesh/common/config';
import { ensureStateDir } from '@edgemesh/common/fsutil';
import type { Logger } from '@edgemesh/common/log';
import { CaError, issueServerCert, loadOrCreateCa, type ClusterCa, type ServerCert } from '@edgemesh/common/identity/ca';
import { renewAt } from '@edgemesh/common/identity/renewal';
import { Enroller } from './enroller.ts';
import { startClusterNodes, type ClusterNodes } from './nodes.ts';
import { KubeTokenReviewer } from './tokenreview.ts';

export interface ServerIdentity {
  readonly ca: ClusterCa;
  /** The current TLS certificate of the control channel (chainPem + keyPem for tls.createServer / setSecureContext). */
  serverCert(): ServerCert;
  /** Called with each renewed server certificate (at half life); the control channel calls setSecureContext. */
  onServerCert(fn: (c: ServerCert) => void): void;
  readonly enroller: Enroller;
  readonly cluster: ClusterNodes;
  /** The bootstrap token when bootstrap enrollment is on (the legacy handshake uses it until the control channel is wired). */
  readonly bootstrapToken: string | undefined;
  stop(): Promise<void>;
}

export async function startServerIdentity(cfg: ServerConfig, log: Logger, registry?: Registry, now: () => number = Date.now): Promise<ServerIdentity> {
  try {
    ensureStateDir(cfg.stateDir);
  } catch (e) {
    throw new ConfigError('stateDir', `cannot create ${cfg.stateDir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const bootstrapToken = cfg.enrollment.bootstrapToken ? readToken(cfg.tokenFile, 'tokenFile') : undefined;
  let ca: ClusterCa;
  try {
    const r = await loadOrCreateCa({ stateDir: cfg.stateDir, now: now(), certFile: cfg.caFile || undefined, keyFile: cfg.caKeyFile || undefined });
    ca = r.ca;
    log.info({ caFile: r.certFile, caHash: ca.hash, created: r.created }, r.created ? 'created the cluster CA' : 'loaded the cluster CA');
  } catch (e) {
    if (e instanceof CaError) throw new ConfigError(cfg.caFile ? 'caFile' : 'stateDir', e.message);
    throw e;
  }
  let cert = await issueServerCert(ca, { now: now() });
  const certListeners: ((c: ServerCert) => void)[] = [];
  let renewTimer: NodeJS.Timeout | undefined;
  const scheduleRenew = () => {
    renewTimer = setTimeout(() => {
      issueServerCert(ca, { now: now() }).then((c) => {
        cert = c;
        for (const fn of certListeners) fn(c);
        scheduleRenew();
      }, (e: unknown) => {
        log.error({ err: e }, 'cannot renew the server TLS certificate; retrying in a minute');
        renewTimer = setTimeout(scheduleRenew, 60_000);
        renewTimer.unref();
      });
    }, Math.max(0, renewAt(cert) - now()));
    renewTimer.unref();
  };
  scheduleRenew();
  const cluster = await startClusterNodes(cfg, log);
  let reviewer: KubeTokenReviewer | undefined;
  if (cfg.enrollment.serviceAccounts.length) {
    const { loadKubeConfig } = await import('@edgemesh/agent/cluster/kube');
    reviewer = new KubeTokenReviewer(loadKubeConfig(cfg.cluster.kubeconfig));
  }
  if (!cfg.enrollment.bootstrapToken && !cfg.enrollment.serviceAccounts.length) log.info('enrollment by join token only (edgemesh-server token create)');
  const enroller = new Enroller({
    stateDir: cfg.stateDir, ca, cluster, log: log.child({ module: 'enroll' }), reviewer, registry, now,
    policy: {
      bootstrapToken: cfg.enrollment.bootstrapToken,
      bootstrapTokenHash: bootstrapToken ? createHash('sha256').update(bootstrapToken, 'utf8').digest() : undefined,
      serviceAccounts: cfg.enrollment.serviceAccounts,
    },
  });
  enroller.start();
  return {
    ca, enroller, cluster, bootstrapToken,
    serverCert: () => cert,
    onServerCert: (fn) => { certListeners.push(fn); },
    async stop() {
      clearTimeout(renewTimer);
      enroller.stop();
      await cluster.stop();
    },
  };
}
