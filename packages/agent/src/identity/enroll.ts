// The agent's side of enrollment that does not depend on the wire: where its certificate lives, which credentials it
// has, and in which order it tries them. The control channel (once wired) runs the plan: for each method, send
// {method, name, key, proof, token} inside TLS and stop at the first certificate.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, readToken } from '@edgemesh/common/config';
import { writeFileAtomicSync } from '@edgemesh/common/fsutil';
import { nodeCertFromPem, nodeCertToPem, type NodeCertificate } from '@edgemesh/common/identity/cert';
import { renewalState } from '@edgemesh/common/identity/renewal';

/** The agent's node certificate in its stateDir (PEM, 0600). */
export const NODE_CERT_FILE = 'node.crt';

export type AgentEnrollMethod = 'renew' | 'join' | 'kubernetes' | 'bootstrap';

export interface AgentCredentials {
  /** tunnel.joinTokenFile's content, if the file is set and exists. */
  readonly joinToken?: string;
  /** tunnel.serviceAccountTokenFile's content (re-read before each attempt: the kubelet rotates it). */
  readonly serviceAccountToken?: string;
  /** The bootstrap token (tunnel.tokenFile / EDGEMESH_TOKEN). */
  readonly bootstrapToken?: string;
}

/** The certificate kept in stateDir, if it is one for this node and key (another one is ignored, not trusted). */
export function loadNodeCert(stateDir: string, name: string, publicKey: Buffer): NodeCertificate | undefined {
  let text: string;
  try {
    text = readFileSync(join(stateDir, NODE_CERT_FILE), 'utf8');
  } catch {
    return undefined;
  }
  try {
    const c = nodeCertFromPem(text);
    return c.name === name && c.publicKey.equals(publicKey) ? c : undefined;
  } catch {
    return undefined;
  }
}

export function saveNodeCert(stateDir: string, cert: NodeCertificate): void {
  writeFileAtomicSync(join(stateDir, NODE_CERT_FILE), nodeCertToPem(cert));
}

/**
 * Reads the credentials the config names. A configured file that cannot be read is a config error naming its key,
 * except the join token file, which may be gone after a successful enrollment (it is used once).
 */
export function readCredentials(cfg: { tunnel: { tokenFile: string; joinTokenFile: string; serviceAccountTokenFile: string } }, env: NodeJS.ProcessEnv = process.env): AgentCredentials {
  let joinToken: string | undefined;
  if (cfg.tunnel.joinTokenFile) {
    try {
      joinToken = readFileSync(cfg.tunnel.joinTokenFile, 'utf8').trim() || undefined;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new ConfigError('tunnel.joinTokenFile', `cannot read ${cfg.tunnel.joinTokenFile}: ${(e as NodeJS.ErrnoException).code}`);
    }
  }
  let serviceAccountToken: string | undefined;
  if (cfg.tunnel.serviceAccountTokenFile) {
    try {
      serviceAccountToken = readFileSync(cfg.tunnel.serviceAccountTokenFile, 'utf8').trim() || undefined;
    } catch (e) {
      throw new ConfigError('tunnel.serviceAccountTokenFile', `cannot read ${cfg.tunnel.serviceAccountTokenFile}: ${(e as NodeJS.ErrnoException).code} (a projected ServiceAccount token with audience edgemesh)`);
    }
  }
  let bootstrapToken: string | undefined;
  if (env.EDGEMESH_TOKEN || cfg.tunnel.tokenFile) {
    try {
      bootstrapToken = readToken(cfg.tunnel.tokenFile, 'tunnel.tokenFile', env);
    } catch (e) {
      // No bootstrap token is fine when another credential exists; a weak one never is.
      if (!(e instanceof ConfigError) || /entropy/.test(e.message) || (!joinToken && !serviceAccountToken)) throw e;
    }
  }
  return { joinToken, serviceAccountToken, bootstrapToken };
}

/**
 * The order in which to try: the pinned key first when the agent holds a certificate for it (also an expired one: the
 * pin, not the certificate, is the credential), then the join token, the Kubernetes token, the bootstrap token.
 * Empty when there is nothing to try (a config error at start).
 */
export function enrollmentPlan(cert: NodeCertificate | undefined, creds: AgentCredentials): AgentEnrollMethod[] {
  const plan: AgentEnrollMethod[] = [];
  if (cert) plan.push('renew');
  if (creds.joinToken) plan.push('join');
  if (creds.serviceAccountToken) plan.push('kubernetes');
  if (creds.bootstrapToken) plan.push('bootstrap');
  return plan;
}

/** What to do with the certificate at `now`: nothing until half life, renew, or re-enroll (expired). */
export function certAction(cert: NodeCertificate | undefined, now: number): 'enroll' | 'renew' | 'none' {
  if (!cert) return 'enroll';
  const s = renewalState(cert, now);
  return s === 'valid' ? 'none' : s === 'renew' ? 'renew' : 'enroll';
}
