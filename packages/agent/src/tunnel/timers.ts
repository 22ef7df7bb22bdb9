// Every timer of the tunnel in one place, with its unit and the reason for its value, and the pure arithmetic of the
// dial deadline (how much of the caller's time each step may use). Modules import from here; nothing else in tunnel/
// holds a duration.

// ---------- server connection ----------
/** Reconnect backoff to a server, jittered (common/backoff): fast after a blip, bounded so a fleet does not hammer a
 *  restarting server. */
export const RECONNECT_MIN_MS = 500;
export const RECONNECT_MAX_MS = 30_000;
/** TCP connect + mutual authentication must finish within this (a few RTTs; anything slower is a broken path). */
export const CONNECT_TIMEOUT_MS = 10_000;
/** The server pings every 10 s; silent this long (3 pings + slack) = the connection is dead. */
export const SERVER_IDLE_MS = 35_000;
/** TCP keepalive on the server connection: below common NAT idle timeouts for TCP (~30-60 s on home routers). */
export const SERVER_KEEPALIVE_MS = 15_000;
/** A draining server's DRAIN names a window to reconnect in (spread by its agent count); we reconnect at a random
 *  moment in it, but never wait longer than this: a long hint from a hostile or buggy server cannot park us. */
export const DRAIN_RECONNECT_MAX_MS = 10_000;
/** After a DRAIN the server's IP is tried last among the addresses the server's name resolves to (a Service name with
 *  several A records, a headless Service) for this long: longer than any drain (its pod is gone by then), short enough
 *  that a replica restarted on the same IP is used again. */
export const DRAINED_AVOID_MS = 300_000;
/** The server answers OPEN from memory; no answer this long = it is stuck or gone. */
export const OPEN_TIMEOUT_MS = 10_000;

// ---------- links (Noise over a transport) ----------
/** Noise XX handshake plus our HELLO: three messages and one more each way, over the slowest path (a relay). */
export const HANDSHAKE_TIMEOUT_MS = 10_000;
/** RTT probe on relay and TCP links (shown in /status); also keeps an idle relay link's NAT mappings warm. A UDX link
 *  has the direct path's heartbeats instead (link.ts). */
export const LINK_PING_MS = 5_000;
/** A link that was sent an OPEN and has been silent this long gets a PING at once, so the dial's fallback can tell a
 *  dead path from a slow remote dial. */
export const LINK_PROBE_IDLE_MS = 250;

// ---------- sessions (resumable streams) ----------
/** A session with no transport for this long resets its streams: long enough to reconnect to a restarted server or
 *  re-punch after roaming (a few seconds), short enough that a peer that is really gone frees its streams. */
export const SESSION_RESUME_MS = 30_000;
/** After sending ATTACH on a link, the peer's ATTACH must come back within this; else the link is dropped and the
 *  next one tried (an ATTACH is answered at once, so this is RTT plus a busy event loop). */
export const ATTACH_TIMEOUT_MS = 5_000;

// ---------- dial deadline ----------
/** Default dial deadline when the caller gives none (tests, tools): the proxy's per-attempt connect timeout. */
export const DEFAULT_DIAL_MS = 3_000;
/** Deadline of a node-access dial (SOCKS5 `<node>:<port>`): there is no other endpoint to try, so it gets what a
 *  first stream to a new peer needs (relay OPEN, Noise handshake, the far loopback dial) with room, and stays under
 *  the SOCKS5 server's connect timeout (10 s) so the client hears our reason rather than a timeout. */
export const NODE_ACCESS_DIAL_MS = 8_000;
/** Open on the relay instead when the direct path has not answered within this share of the remaining time. */
export const DIRECT_FALLBACK_SHARE = 1 / 3;
/** The far side's local dial must leave time for its answer to travel back: one RTT and this much slack. */
export const REMOTE_ANSWER_SLACK_MS = 50;
/** The far side never dials longer than this, whatever the caller allows (a local connect is one LAN RTT). */
export const REMOTE_DIAL_MAX_MS = 10_000;

/** How long to wait for the direct path before trying the relay, given the time left on the caller's deadline. */
export function directFallbackMs(remainingMs: number): number {
  return Math.max(0, Math.floor(remainingMs * DIRECT_FALLBACK_SHARE));
}

/** The far side's local dial timeout from the caller's remaining time (carried in the stream header) and the RTT. */
export function remoteDialMs(callerRemainingMs: number, rttMs: number | null): number {
  const left = callerRemainingMs - (rttMs ?? 0) - REMOTE_ANSWER_SLACK_MS;
  return Math.max(0, Math.min(REMOTE_DIAL_MAX_MS, Math.floor(left)));
}

// ---------- serving side ----------
/** A UDP flow carried over a stream with no datagram either way for this long is closed (UDP has no close; QUIC
 *  and DNS clients re-open; longer than the proxy's own 60 s session idle so the proxy decides first). */
export const UDP_IDLE_MS = 120_000;

// ---------- UDP socket, STUN, NAT ----------
/** STUN request retransmits (RFC 8489 uses 500 ms RTO doubling; the server is one hop away in most sites). */
export const STUN_RETRIES_MS: readonly number[] = [0, 250, 750];
/** No STUN answer within this = UDP blocked or the server down (NAT type unknown). */
export const STUN_TIMEOUT_MS = 1_500;
/** STUN answers older than this are refreshed (Tailscale: 27 s, under the 30 s UDP conntrack timeout). */
export const STUN_FRESH_MS = 27_000;
/** The UDP socket is closed within this on stop, even if udx-native hangs. */
export const SOCKET_CLOSE_TIMEOUT_MS = 2_000;
/** A birthday socket that lost is closed this much later, so its last packets leave. */
export const SPARE_SOCKET_CLOSE_MS = 100;

// ---------- direct path (Tailscale's numbers) ----------
/** Heartbeat on the active direct path. */
export const HEARTBEAT_MS = 2_000;
/** The direct path is trusted this long after the last authenticated answer (3 heartbeats + slack). */
export const PATH_TIMEOUT_MS = 6_500;
/** After following the peer to a new address, the UDX stream must confirm the move (every packet sent before it
 *  acknowledged) within this: UDX's minimum RTO (1 s) plus a retransmit's round trip and a busy event loop. Packets
 *  that went to a mapping the NAT forgot are retransmitted there for ever (the stream times out after ~13 s). */
export const ROAM_CONFIRM_MS = 2_500;
/** Heartbeats and upgrade checks run this often (well under HEARTBEAT_MS). */
export const TICK_MS = 250;

// ---------- punching ----------
/** Pinging every candidate stops after this long without a pong: the peer stays on the relay. */
export const PUNCH_TIMEOUT_MS = 6_000;
/** With exactly one symmetric side, peer-reflexive learning works within a few RTTs or not at all (port-restricted
 *  filtering): the normal punch is cut short and birthday mode follows. */
export const SHORT_PUNCH_MS = 1_500;
/** After the punch window, the Noise handshake over the chosen path gets this much longer. */
export const PUNCH_HANDSHAKE_SLACK_MS = 4_000;
/** A punch attempt ends at the latest this long after it started (schedule + handshake + the rendezvous' travel). */
export const PUNCH_SESSION_MS = PUNCH_TIMEOUT_MS + PUNCH_HANDSHAKE_SLACK_MS + 2_000;
/** After the last scheduled ping, wait this long for a late pong before calling the punch failed. */
export const PUNCH_GRACE_MS = 500;
/** The responder never waits longer than this for the synchronised start. */
export const MAX_START_DELAY_MS = 1_000;
/** Try to upgrade a relayed peer again this often (Tailscale: 60 s). */
export const UPGRADE_RETRY_MS = 60_000;
/** Right after losing a direct path, re-punch this soon, then back off (doubling) up to UPGRADE_RETRY_MS: a path that
 *  was blackholed for a while comes back within seconds of healing, without punching every second for ever. */
export const REPUNCH_AFTER_FAILOVER_MS = 1_000;

// ---------- birthday mode ----------
/** Probes from the easy side are sent in batches, one batch this often. */
export const BIRTHDAY_BATCH_MS = 40;
/** A birthday attempt gives up after this (1600 probes at 8 per 40 ms take 8 s). */
export const BIRTHDAY_TIMEOUT_MS = 12_000;
/** The easy side starts probing this long after the hard side's first (low-TTL) round, so the mappings exist. */
export const BIRTHDAY_HEAD_START_MS = 200;

// ---------- peer paths ----------
/** While a session waits for a transport, a relay link that could not be opened is tried again this often (a server
 *  may be reconnecting, or the peer not yet registered). */
export const RELINK_RETRY_MS = 1_000;

// ---------- TCP transport (tcplink.ts, peertcp.ts) ----------
/** A TCP link is pinged this often (the UDX path's heartbeat): the kernel retransmits for minutes on a path a
 *  firewall started to drop, so silence, not an error, is how a dead TCP path shows. */
export const TCP_HEARTBEAT_MS = HEARTBEAT_MS;
/** A TCP link not heard from for this long is closed and the session moves to UDX or the relay (as PATH_TIMEOUT_MS). */
export const TCP_SILENT_MS = PATH_TIMEOUT_MS;
/** After a TCP dial to a peer failed, it is not dialed again for this long (a rendezvous comes with every punch
 *  attempt, up to one a second after a failover: a peer that does not answer on TCP is not dialed on each). */
export const TCP_REDIAL_MS = 30_000;
