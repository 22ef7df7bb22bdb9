// Message types of the agent<->server protocol (frames, see frame.ts). Control messages carry JSON followed by a
// ControlMac trailer once authenticated; relay data frames are [rid u32][bytes] and carry only ciphertext.

export const T = {
  HELLO: 1, // agent -> server {v, nonce}
  CHALLENGE: 2, // server -> agent {nonce, proof}
  AUTH: 3, // agent -> server {node, key, proof, sig}
  WELCOME: 4, // server -> agent {stunAltPort}
  ERROR: 5, // either way {code, message}; the sender closes
  PING: 6, // {t}
  PONG: 7, // {t}
  OPEN: 10, // agent -> server {req, to}: open a relay stream to node `to`
  OPENED: 11, // server -> opener {req, rid, key}
  OPEN_FAIL: 12, // server -> opener {req, code}
  INCOMING: 13, // server -> target {rid, from, key}
  RENDEZVOUS: 14, // agent -> server {to, sid, cand}; server -> peer {from, key, sid, cand, delayMs}
  REPORT: 15, // agent -> server: the fleet report (common/src/fleet/report.ts), at most MAX_REPORT_BYTES of JSON
  DATA: 20, // [rid][bytes]
  CREDIT: 21, // [rid][bytes u32]
  END: 22, // [rid]
  RESET: 23, // [rid]
} as const;

/** Types whose payload is JSON + MAC (after the handshake). */
export const CONTROL_TYPES: ReadonlySet<number> = new Set([T.WELCOME, T.ERROR, T.PING, T.PONG, T.OPEN, T.OPENED, T.OPEN_FAIL, T.INCOMING, T.RENDEZVOUS, T.REPORT]);

/** Relay flow control: a sender may have this many unacknowledged bytes per relay stream and direction. A relay stream
 *  carries a whole peer link (its streams have their own windows inside), so this bounds the link at window/RTT. */
export const RELAY_WINDOW_BYTES = 8 * 1024 * 1024;
/** Data frames are cut to at most this many bytes. */
export const MAX_DATA_CHUNK = 64 * 1024;

export const NODE_NAME_RE = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$/;

export interface Candidate { host: string; port: number; kind: 'lan' | 'stun' }
export interface RendezvousInfo { cand: Candidate[]; nat: 'cone' | 'symmetric' | 'open' | 'unknown'; port: number }

export function parseJson(b: Buffer): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(b.toString('utf8')) as unknown;
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
