// The tunnel's metrics, registered once and shared by its parts (names and labels are the admin API's contract;
// README "Metrics"). Gauges read their values from the parts when scraped.
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export interface TunnelMetrics {
  peersRefused: Counter;
  streams: Counter;
  bytes: Counter;
  served: Counter;
  /** Streams refused by serving-side authorization (authorize.ts), by reason. */
  serveRefused: Counter<'reason'>;
  links: Counter;
  failovers: Counter;
  resumes: Counter;
  sessionsReset: Counter;
  attempts: Counter;
  outcomes: Counter;
  ttd: Histogram;
  spoofed: Counter;
  roams: Counter;
  malformed: Counter;
  birthday: Counter;
  /** Set by the owners of the values gauges report. */
  natType: () => string;
  peerPaths: () => string[];
  serversConnected: () => number;
}

export function createTunnelMetrics(registry: Registry): TunnelMetrics {
  const r = [registry];
  const m: TunnelMetrics = {
    peersRefused: new Counter({ name: 'edgemesh_tunnel_peer_refused_total', help: 'Links and rendezvous refused because the peer did not prove its node identity, by reason', labelNames: ['reason'], registers: r }),
    streams: new Counter({ name: 'edgemesh_tunnel_streams_opened_total', help: 'Streams opened to peers by path and outcome', labelNames: ['path', 'outcome'], registers: r }),
    bytes: new Counter({ name: 'edgemesh_tunnel_bytes_total', help: 'Bytes on peer links (inside Noise) by path and direction', labelNames: ['path', 'direction'], registers: r }),
    served: new Counter({ name: 'edgemesh_tunnel_streams_served_total', help: 'Streams peers opened to us by outcome', labelNames: ['outcome'], registers: r }),
    serveRefused: new Counter({ name: 'edgemesh_tunnel_serve_refused_total', help: 'Streams peers opened to us that this node refused to serve (serving-side authorization), by reason', labelNames: ['reason'], registers: r }),
    links: new Counter({ name: 'edgemesh_tunnel_links_total', help: 'Peer links established by path and side', labelNames: ['path', 'side'], registers: r }),
    failovers: new Counter({ name: 'edgemesh_tunnel_failovers_total', help: 'Direct paths given up (peer unanswered) - traffic back on the relay', registers: r }),
    resumes: new Counter({ name: 'edgemesh_tunnel_session_moves_total', help: 'Times a peer session moved its streams to another link, by the path it moved to', labelNames: ['path'], registers: r }),
    sessionsReset: new Counter({ name: 'edgemesh_tunnel_sessions_reset_total', help: 'Peer sessions whose streams were reset, by reason (timeout = no link within the resume bound)', labelNames: ['reason'], registers: r }),
    attempts: new Counter({ name: 'edgemesh_tunnel_punch_attempts_total', help: 'Hole-punch attempts by role', labelNames: ['role'], registers: r }),
    outcomes: new Counter({ name: 'edgemesh_tunnel_punch_outcomes_total', help: 'Hole-punch outcomes (direct, failed, relay-only, birthday-*)', labelNames: ['outcome'], registers: r }),
    ttd: new Histogram({ name: 'edgemesh_tunnel_time_to_direct_seconds', help: 'From rendezvous to a direct Noise link', buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10], registers: r }),
    spoofed: new Counter({ name: 'edgemesh_tunnel_pings_rejected_total', help: 'Punch/heartbeat packets dropped (bad MAC, replay, unknown peer)', labelNames: ['reason'], registers: r }),
    roams: new Counter({ name: 'edgemesh_tunnel_roams_total', help: 'Times a peer\'s direct address changed and we followed it', registers: r }),
    malformed: new Counter({ name: 'edgemesh_tunnel_udp_malformed_total', help: 'Unrecognised UDP packets on the tunnel socket', registers: r }),
    birthday: new Counter({ name: 'edgemesh_tunnel_birthday_attempts_total', help: 'Birthday-mode punch attempts by our role (hard = symmetric side)', labelNames: ['role'], registers: r }),
    natType: () => 'unknown',
    peerPaths: () => [],
    serversConnected: () => 0,
  };
  new Gauge({ name: 'edgemesh_tunnel_nat_type', help: 'Detected NAT type (1 for the current one)', labelNames: ['type'], registers: r, collect() { for (const t of ['open', 'cone', 'symmetric', 'unknown']) this.set({ type: t }, t === m.natType() ? 1 : 0); } });
  new Gauge({
    name: 'edgemesh_tunnel_peers', help: 'Peers by current path', labelNames: ['path'], registers: r,
    collect() {
      const counts: Record<string, number> = { direct: 0, relay: 0, connecting: 0 };
      for (const p of m.peerPaths()) counts[p] = (counts[p] ?? 0) + 1;
      for (const [k, v] of Object.entries(counts)) this.set({ path: k }, v);
    },
  });
  new Gauge({ name: 'edgemesh_tunnel_servers_connected', help: 'Servers this agent is connected to', registers: r, collect() { this.set(m.serversConnected()); } });
  return m;
}
