// What the fleet report needs from the running tunnel: each peer's path and RTT (as /status shows them) and the bytes
// on its open links. Reads the tunnel's state only.
import type { Tunnel } from '../tunnel/tunnel.ts';
import type { PeerState } from './report.ts';

export function tunnelPeers(t: Tunnel): PeerState[] {
  return t.peerStatus().map((p) => {
    const peer = t.peers.get(p.node);
    let bytesIn = 0;
    let bytesOut = 0;
    for (const l of peer ? [peer.direct, ...peer.relays] : []) {
      if (!l || l.closed) continue;
      bytesIn += l.bytesIn;
      bytesOut += l.bytesOut;
    }
    return { node: p.node, path: p.path, rttMs: p.rttMs, bytesIn, bytesOut };
  });
}
