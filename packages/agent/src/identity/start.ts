// The agent's identity at start: CA trust (tunnel.caFile / tunnel.caHash / first use), the credentials the config
// names, and a check that there is something to sign in with. Every problem is a ConfigError naming the key (exit 2).
import { ConfigError } from '@edgemesh/common/config';
import type { Logger } from '@edgemesh/common/log';
import type { RawKeyPair } from '@edgemesh/common/tunnel/ed25519';
import { resolveCaTrust, TrustError } from '@edgemesh/common/identity/trust';
import { AgentIdentity } from './agentidentity.ts';
import { enrollmentPlan, loadNodeCert, readCredentials } from './enroll.ts';

export interface AgentIdentityConfig {
  nodeName: string;
  stateDir: string;
  tunnel: { tokenFile: string; joinTokenFile: string; serviceAccountTokenFile: string; caFile: string; caHash: string };
}

export function startAgentIdentity(cfg: AgentIdentityConfig, keyPair: RawKeyPair, log: Logger, env: NodeJS.ProcessEnv = process.env): AgentIdentity {
  let trust;
  try {
    const r = resolveCaTrust({ caFile: cfg.tunnel.caFile, caHash: cfg.tunnel.caHash, stateDir: cfg.stateDir });
    trust = r.trust;
    if (r.warning) log.warn(r.warning);
  } catch (e) {
    if (e instanceof TrustError) throw new ConfigError(e.key, e.message);
    throw e;
  }
  const creds = readCredentials(cfg, env);
  const cert = loadNodeCert(cfg.stateDir, cfg.nodeName, keyPair.publicKey);
  if (enrollmentPlan(cert, creds).length === 0) {
    throw new ConfigError('tunnel.joinTokenFile', 'no node certificate yet and nothing to enroll with: set tunnel.joinTokenFile (edgemesh-server token create), tunnel.serviceAccountTokenFile or tunnel.tokenFile');
  }
  return new AgentIdentity({
    node: cfg.nodeName, stateDir: cfg.stateDir, keyPair, trust, log,
    credentials: () => readCredentials(cfg, env),
  });
}
