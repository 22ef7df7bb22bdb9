// Pure decisions of the server mesh: which addresses to dial, which of two links to the same peer stays, which mesh
// stream ids a side allocates. No I/O; tested without sockets (decide.test.ts).
import { isIP } from 'node:net';

export type LinkDirection = 'out' | 'in';

/**
 * Two servers may dial each other. A link that is already established (its HELLO arrived) stays: the newcomer is
 * closed, so a peer that comes back and dials a server that already reached it never resets streams on a live link.
 * Two links both still starting (the two servers dialled at once) are decided by ids: both sides keep the one the
 * server with the lower id dialled. `existing` / `candidate` directions are from the local side's point of view. In the
 * rare mixed case (established on one side only) both may be closed; both redial with jittered backoff and converge.
 * 'self' when the peer is this very server (a DNS record or peer entry of our own).
 */
export function keepLink(localId: string, peerId: string, existing: { direction: LinkDirection; established: boolean } | undefined, candidate: LinkDirection): 'candidate' | 'existing' | 'self' {
  if (localId === peerId) return 'self';
  if (existing === undefined) return 'candidate';
  if (existing.established) return 'existing';
  const preferred: LinkDirection = localId < peerId ? 'out' : 'in';
  return candidate === preferred && existing.direction !== preferred ? 'candidate' : 'existing';
}

/** Mesh stream ids: the side with the lower server id allocates odd ids, the other even (never the same id twice). */
export function firstStreamId(localId: string, peerId: string): number {
  return localId < peerId ? 1 : 2;
}

/** `host:port` with IPv6 hosts bracketed. */
export function hostPortString(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * The addresses to dial: the configured peers, then each address the mesh DNS name resolved to (with our own listen
 * port), without our own addresses, each once, sorted (a stable order: logs and tests see the same list).
 */
export function meshTargets(peers: readonly string[], dnsAddresses: readonly string[], own: ReadonlySet<string>, port: number): string[] {
  const out = new Set<string>();
  for (const p of peers) out.add(p);
  for (const a of dnsAddresses) {
    const bare = a.replace(/^::ffff:/, '');
    if (own.has(bare) || own.has(a)) continue;
    out.add(hostPortString(bare, port));
  }
  return [...out].sort();
}
