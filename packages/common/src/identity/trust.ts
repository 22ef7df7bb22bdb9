// How an agent decides which CA to trust (kubeadm's CA pinning): `tunnel.caFile` (a PEM the operator gave it),
// `tunnel.caHash` (sha256 of the CA's public key: the server sends its CA certificate in the TLS chain and the agent
// checks its hash), or neither: trust on first use, the first CA seen is kept in the agent's stateDir (warned).
// A CA learned through caHash or TOFU is kept in `<stateDir>/ca.crt` too, and later starts verify against it.
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomicSync } from '../fsutil.ts';
import { caHashOf, checkServerLeaf, loadCa, parseCaHash, CaError, type ClusterCa, type ServerChainRefusal } from './ca.ts';

/** The CA an agent learned (caHash or TOFU) is kept here in its stateDir. */
export const AGENT_CA_FILE = 'ca.crt';

export type CaTrust =
  /** tunnel.caFile */
  | { readonly mode: 'file'; readonly ca: ClusterCa }
  /** tunnel.caHash; `ca` once a CA with that hash was pinned in stateDir. */
  | { readonly mode: 'hash'; readonly hash: string; readonly ca?: ClusterCa }
  /** neither: the CA kept in stateDir from the first connection, if any. */
  | { readonly mode: 'tofu'; readonly ca?: ClusterCa };

export interface TrustConfig {
  caFile: string;
  caHash: string;
  stateDir: string;
}

export class TrustError extends Error {
  readonly key: string;
  constructor(key: string, message: string) {
    super(message);
    this.key = key;
  }
}

function readPinned(stateDir: string): ClusterCa | undefined {
  const file = join(stateDir, AGENT_CA_FILE);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new TrustError('stateDir', `cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    return loadCa(text);
  } catch (e) {
    throw new TrustError('stateDir', `${file} is not a usable CA certificate (${(e as Error).message}); remove it to pin again`);
  }
}

/**
 * Resolves the agent's trust at start. Throws TrustError naming the config key (exit 2): unreadable or non-CA caFile,
 * malformed caHash, both set, or a CA pinned in stateDir that contradicts caHash. `warning` is set for TOFU.
 */
export function resolveCaTrust(cfg: TrustConfig): { trust: CaTrust; warning?: string } {
  if (cfg.caFile && cfg.caHash) throw new TrustError('tunnel.caHash', 'set tunnel.caFile or tunnel.caHash, not both');
  if (cfg.caFile) {
    let text: string;
    try {
      text = readFileSync(cfg.caFile, 'utf8');
    } catch (e) {
      throw new TrustError('tunnel.caFile', `cannot read ${cfg.caFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    try {
      return { trust: { mode: 'file', ca: loadCa(text) } };
    } catch (e) {
      throw new TrustError('tunnel.caFile', `${cfg.caFile}: ${(e as CaError).message}`);
    }
  }
  const pinned = readPinned(cfg.stateDir);
  if (cfg.caHash) {
    if (!parseCaHash(cfg.caHash)) throw new TrustError('tunnel.caHash', 'expected sha256:<64 hex digits> (the SHA-256 of the CA\'s SubjectPublicKeyInfo)');
    const hash = cfg.caHash.trim().toLowerCase();
    if (pinned && pinned.hash !== hash) throw new TrustError('tunnel.caHash', `the CA kept in ${join(cfg.stateDir, AGENT_CA_FILE)} has ${pinned.hash}, not the configured hash (remove that file if the cluster CA really changed)`);
    return { trust: { mode: 'hash', hash, ca: pinned } };
  }
  if (pinned) return { trust: { mode: 'tofu', ca: pinned }, warning: `no tunnel.caFile or tunnel.caHash: trusting the CA pinned at first use in ${join(cfg.stateDir, AGENT_CA_FILE)} (${pinned.hash})` };
  return { trust: { mode: 'tofu' }, warning: 'no tunnel.caFile or tunnel.caHash: the first server\'s CA will be trusted and pinned (trust on first use); set tunnel.caHash to avoid that' };
}

export type ChainRefusal = ServerChainRefusal | 'empty-chain' | 'no-ca-in-chain' | 'ca-hash-mismatch' | 'ca-changed';

export type ChainResult = { ok: true; ca: ClusterCa; learned: boolean } | { ok: false; reason: ChainRefusal };

/**
 * Verifies the certificate chain a server presented (DER, leaf first, as TLS delivers it) before anything secret is
 * sent. With a known CA (caFile, or pinned earlier) the leaf must be issued by it. With caHash and nothing pinned, the
 * chain must contain a self-signed CA with that hash that issued the leaf. TOFU with nothing pinned takes the chain's
 * self-signed CA that issued the leaf. `learned` says the CA is new and should be pinned (pinCa) once the channel
 * works. Pure apart from signature checks.
 */
export function verifyServerChain(trust: CaTrust, chain: readonly Uint8Array[], now: number): ChainResult {
  if (chain.length === 0) return { ok: false, reason: 'empty-chain' };
  const known = trust.ca;
  if (known) {
    const r = checkServerLeaf(chain[0], known, now);
    if (!r.ok) return { ok: false, reason: r.reason === 'not-issued-by-ca' && trust.mode !== 'file' ? 'ca-changed' : r.reason };
    return { ok: true, ca: known, learned: false };
  }
  let candidate: ClusterCa | undefined;
  for (const der of chain.slice(1)) {
    let c: ClusterCa;
    try {
      c = loadCa(new X509Certificate(der).toString());
    } catch {
      continue;
    }
    if (trust.mode === 'hash' && c.hash !== trust.hash) continue;
    candidate = c;
    break;
  }
  if (!candidate) return { ok: false, reason: trust.mode === 'hash' ? 'ca-hash-mismatch' : 'no-ca-in-chain' };
  const r = checkServerLeaf(chain[0], candidate, now);
  if (!r.ok) return { ok: false, reason: r.reason };
  return { ok: true, ca: candidate, learned: true };
}

/** Keeps a CA learned through caHash or TOFU in the agent's stateDir (0600, atomic). */
export function pinCa(stateDir: string, ca: ClusterCa): string {
  const file = join(stateDir, AGENT_CA_FILE);
  writeFileAtomicSync(file, ca.certPem.endsWith('\n') ? ca.certPem : ca.certPem + '\n');
  return file;
}

export { caHashOf };
