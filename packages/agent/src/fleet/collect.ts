// What the fleet report needs from the running tunnel: each peer's path and RTT (as /status shows them) and the bytes
// on its open links (PeerPaths.linkBytes). Reads the tunnel's state only.
import type { Tunnel } from '../tunnel/tunnel.ts';
import type { PeerState } from './report.ts';

export function tunnelPeers(t: Tunnel): PeerState[] {
  return t.peerStatus().map((p) => {
    const { bytesIn, bytesOut } = t.peers.get(p.node)?.linkBytes() ?? { bytesIn: 0, bytesOut: 0 };
    return { node: p.node, path: p.path, rttMs: p.rttMs, bytesIn, bytesOut };
  });
}
