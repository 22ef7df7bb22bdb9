// The server's heartbeat on the hot path: every PING_INTERVAL_MS it writes a PING to every signed-in agent (tens of
// thousands in one loop) and reads as many PONGs back. Measured under bench/server, encoding each PING (an object,
// JSON, two buffers) and validating each PONG (JSON.parse, then the zod schema) were the relay's own share of the
// heartbeat CPU; these do the same work once per millisecond and without the parser for the agent's exact reply.
import { encodeFrame } from '@edgemesh/common/tunnel/frame';
import { decodeControl, encodeControl, T } from '@edgemesh/common/tunnel/protocol';

/**
 * PING frames by the millisecond: the frame of the current millisecond is built once and shared by every agent pinged
 * in it (a write never modifies the buffer it is given). Each agent still gets `t` = the time it was pinged, as when
 * every PING was encoded on its own.
 */
export class PingFrames {
  private t = -1;
  private frame: Buffer = Buffer.alloc(0);

  /** The PING frame for time `now` (ms). */
  at(now: number): Buffer {
    if (now !== this.t) {
      this.t = now;
      this.frame = encodeFrame(T.PING, encodeControl(T.PING, { t: now }));
    }
    return this.frame;
  }
}

/** `{"t":N}` with N a non-negative integer of at most 16 digits: what an agent echoes of our PING (JSON.stringify). */
const CANONICAL_PONG = /^\{"t":(0|[1-9][0-9]{0,15})\}$/;
/** Longest body CANONICAL_PONG can match: `{"t":` + 16 digits + `}`. */
const CANONICAL_PONG_MAX_BYTES = 22;

/**
 * The `t` of a PONG body, or undefined when it is not a valid PONG. The agent's exact reply is read without
 * JSON.parse and the schema; anything else (other spacing, extra fields, a fraction) goes through decodeControl, so
 * what is accepted and what `t` is are exactly as with decodeControl(T.PONG, body).
 */
export function pongTime(body: Buffer): number | undefined {
  if (body.length <= CANONICAL_PONG_MAX_BYTES) {
    const m = CANONICAL_PONG.exec(body.toString('latin1'));
    if (m) return Number(m[1]);
  }
  return decodeControl(T.PONG, body)?.t;
}
