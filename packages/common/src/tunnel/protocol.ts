// Server frames: the agent<->server protocol on the TCP connection (frames as frame.ts: [type u8][length u32][payload]).
// The connection is TLS 1.3 (server certificate issued by the cluster CA, pinned by the agent); nothing but the TLS
// handshake happens before it. Every frame type is in SERVER_FRAMES with its direction and payload. Control messages
// are JSON (validated here into typed values, base64 fields already decoded); TLS gives them integrity.
// Relay stream frames (DATA/CREDIT/END/RESET) carry only Noise ciphertext; their layout is streams.ts's.
import { z } from 'zod';
import { MAX_FRAME_BYTES } from './frame.ts';
import type { StreamTypes } from './streams.ts';

export const T = {
  // 1-3 were the shared-token HELLO/CHALLENGE/AUTH of protocol v2: retired, refused.
  ENROLL: 8,
  ENROLL_FAIL: 9,
  CERT: 16,
  REVOCATIONS: 17,
  WELCOME: 4,
  ERROR: 5,
  PING: 6,
  PONG: 7,
  OPEN: 10,
  OPENED: 11,
  OPEN_FAIL: 12,
  INCOMING: 13,
  RENDEZVOUS: 14,
  REPORT: 15,
  /** 18: the server is draining (server/drain.ts); 19 is left free in this control block. Mesh frames use their own. */
  DRAIN: 18,
  DATA: 20,
  CREDIT: 21,
  END: 22,
  RESET: 23,
  // 64-79 (0x40-0x4F) are the server mesh's frames (server/src/mesh/frames.ts), only on server<->server links.
} as const;

/** v2: relay stream frames carry absolute offsets and acknowledgements (streams.ts). v3: TLS 1.3, enrollment and
 *  node certificates instead of the shared-token handshake; rendezvous signed by the sender. */
export const PROTOCOL_VERSION = 3;
/** Enrollment methods an ENROLL may name (server/identity/decide.ts). */
export const ENROLL_METHODS = ['renew', 'join', 'kubernetes', 'bootstrap'] as const;
/** The longest token an ENROLL may carry (a projected ServiceAccount JWT; join and bootstrap tokens are far shorter). */
export const MAX_ENROLL_TOKEN_CHARS = 8192;
/** A node certificate in base64 (MAX_NODE_CERT_BYTES is under 1 kB). */
const MAX_CERT_B64 = 2048;
/** A revocation list in base64, within one frame (~750 kB of list, ~7,000 revoked keys still in their lifetime). */
const MAX_REVOCATIONS_B64 = MAX_FRAME_BYTES - 4096;

export interface FrameSpec { type: number; name: string; dir: 'a->s' | 's->a' | 'both'; payload: string }

/** The table of server frames (docs/tunnel-protocol.md explains each). */
export const SERVER_FRAMES: readonly FrameSpec[] = [
  { type: T.ENROLL, name: 'ENROLL', dir: 'a->s', payload: 'JSON {v, method, name, key, token, sig}: sign-in / enrollment / renewal (sig over the TLS exporter)' },
  { type: T.ENROLL_FAIL, name: 'ENROLL_FAIL', dir: 's->a', payload: 'JSON {reason} (a public reason only); before WELCOME the server closes' },
  { type: T.WELCOME, name: 'WELCOME', dir: 's->a', payload: 'JSON {cert, stunAltPort, observed, stunKey}: the node certificate; the connection is now the node\'s' },
  { type: T.CERT, name: 'CERT', dir: 's->a', payload: 'JSON {cert}: a renewed node certificate' },
  { type: T.REVOCATIONS, name: 'REVOCATIONS', dir: 's->a', payload: 'JSON {body, sig}: the CA-signed revocation list' },
  { type: T.ERROR, name: 'ERROR', dir: 'both', payload: 'JSON {code, message}; the sender closes' },
  { type: T.PING, name: 'PING', dir: 'both', payload: 'JSON {t}' },
  { type: T.PONG, name: 'PONG', dir: 'both', payload: 'JSON {t}' },
  { type: T.OPEN, name: 'OPEN', dir: 'a->s', payload: 'JSON {req, to}: open a relay stream to node `to`' },
  { type: T.OPENED, name: 'OPENED', dir: 's->a', payload: 'JSON {req, rid}: the stream (the peer proves who it is in the link HELLO)' },
  { type: T.OPEN_FAIL, name: 'OPEN_FAIL', dir: 's->a', payload: 'JSON {req, code}' },
  { type: T.INCOMING, name: 'INCOMING', dir: 's->a', payload: 'JSON {rid, from}: a peer opened a relay stream to us (its certificate must name `from`)' },
  { type: T.RENDEZVOUS, name: 'RENDEZVOUS', dir: 'both', payload: 'JSON Rendezvous {sid, reply, mode, cand, nat, streamId, ts, cert, sig} signed by the sender (the server adds from, RTTs)' },
  { type: T.REPORT, name: 'REPORT', dir: 'a->s', payload: 'JSON fleet report (common/fleet/report.ts, at most MAX_REPORT_BYTES)' },
  { type: T.DRAIN, name: 'DRAIN', dir: 's->a', payload: 'JSON {withinMs}: the server is shutting down; reconnect (same address: another replica answers) at a random moment within withinMs' },
  { type: T.DATA, name: 'DATA', dir: 'both', payload: '[rid u32][offset u64][ciphertext]' },
  { type: T.CREDIT, name: 'CREDIT', dir: 'both', payload: '[rid u32][ack u64]' },
  { type: T.END, name: 'END', dir: 'both', payload: '[rid u32][fin u64]' },
  { type: T.RESET, name: 'RESET', dir: 'both', payload: '[rid u32]' },
];

export const RELAY_STREAM_TYPES: StreamTypes = { DATA: T.DATA, CREDIT: T.CREDIT, END: T.END, RESET: T.RESET };

/** Types whose payload is a JSON control message. */
export const CONTROL_TYPES: ReadonlySet<number> = new Set([T.ENROLL, T.ENROLL_FAIL, T.WELCOME, T.CERT, T.REVOCATIONS, T.ERROR, T.PING, T.PONG, T.OPEN, T.OPENED, T.OPEN_FAIL, T.INCOMING, T.RENDEZVOUS, T.REPORT, T.DRAIN]);

/** Relay flow control: a sender may have this many unacknowledged bytes per relay stream and direction. A relay stream
 *  carries a whole peer link (its streams have their own windows inside), so this bounds the link at window/RTT. */
export const RELAY_WINDOW_BYTES = 8 * 1024 * 1024;
/** Data frames are cut to at most this many bytes. */
export const MAX_DATA_CHUNK = 64 * 1024;
/** The longest reconnect window a DRAIN may name (the agent clamps it further: tunnel/timers.ts). */
export const MAX_DRAIN_WINDOW_MS = 60_000;
/** Candidates a rendezvous may carry (each side's LAN addresses + its STUN address). */
export const MAX_CANDIDATES = 16;

export const NODE_NAME_RE = /^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$/;

// ---------- typed control messages ----------

const b64 = (len?: number, maxChars = 4096) => z.string().max(maxChars).transform((s, ctx) => {
  const b = Buffer.from(s, 'base64');
  if (len !== undefined && b.length !== len) {
    ctx.addIssue({ code: 'custom', message: `expected ${len} bytes` });
    return z.NEVER;
  }
  return b;
});
const u32 = z.number().int().min(0).max(0xffffffff);
const nodeName = z.string().regex(NODE_NAME_RE);
const hostPort = z.object({ host: z.string().max(64), port: z.number().int().min(0).max(65535).optional() });

export const NAT_TYPES = ['open', 'cone', 'symmetric', 'unknown'] as const;
export type NatType = (typeof NAT_TYPES)[number];

const candidate = z.object({
  host: z.string().regex(/^[0-9a-fA-F.:]{2,45}$/),
  port: z.number().int().min(1).max(65535),
  kind: z.enum(['lan', 'stun', 'prflx']).catch('prflx'),
});
/** Candidates beyond MAX_CANDIDATES and malformed ones are dropped, never the whole message. */
const candidates = z.array(z.unknown()).max(256).transform((xs) => xs.slice(0, MAX_CANDIDATES).flatMap((c) => {
  const r = candidate.safeParse(c);
  return r.success ? [r.data] : [];
}));

const rendezvousBody = {
  sid: z.string().regex(/^[0-9a-f]{16}$/),
  reply: z.boolean().optional(),
  mode: z.enum(['normal', 'birthday']).catch('normal'),
  cand: candidates,
  nat: z.enum(NAT_TYPES).catch('unknown'),
  streamId: u32,
  /** The sender's clock (ms) when it signed: the receiver refuses offers too old or too far ahead. */
  ts: z.number().int().min(0),
  /** The sender's node certificate and its node key's signature over the offer (agent tunnel/rendezvous.ts). */
  cert: b64(undefined, MAX_CERT_B64),
  sig: b64(64),
};

const SCHEMAS = {
  [T.ENROLL]: z.object({ v: z.number(), method: z.enum(ENROLL_METHODS), name: z.string().max(253), key: b64(32), token: z.string().max(MAX_ENROLL_TOKEN_CHARS), sig: b64(64) }),
  [T.ENROLL_FAIL]: z.object({ reason: z.string().max(64) }),
  [T.WELCOME]: z.object({ cert: b64(undefined, MAX_CERT_B64), stunAltPort: z.number().int().min(0).max(65535).catch(0), observed: hostPort.optional(), stunKey: b64(20) }),
  [T.CERT]: z.object({ cert: b64(undefined, MAX_CERT_B64) }),
  [T.REVOCATIONS]: z.object({ body: b64(undefined, MAX_REVOCATIONS_B64), sig: b64(64) }),
  [T.ERROR]: z.object({ code: z.string().max(64), message: z.string().max(1024).catch('') }),
  [T.PING]: z.object({ t: z.number() }),
  [T.PONG]: z.object({ t: z.number() }),
  [T.OPEN]: z.object({ req: u32, to: z.string().max(253) }),
  [T.OPENED]: z.object({ req: u32, rid: u32 }),
  [T.OPEN_FAIL]: z.object({ req: u32, code: z.string().max(64) }),
  [T.INCOMING]: z.object({ rid: u32, from: nodeName }),
  /** Agent -> server: `to` names the peer. */
  [T.RENDEZVOUS]: z.object({ to: z.string().max(253).optional(), ...rendezvousBody, from: nodeName.optional(),
    rttFromMs: z.number().min(0).max(60_000).catch(0).optional(), rttToMs: z.number().min(0).max(60_000).catch(0).optional() }),
  /** Any JSON object here: the server's fleet store validates it against the report schema (and counts what fails). */
  [T.REPORT]: z.record(z.string(), z.unknown()),
  [T.DRAIN]: z.object({ withinMs: z.number().int().min(0).max(MAX_DRAIN_WINDOW_MS) }),
} as const;

type Schemas = typeof SCHEMAS;
/** Frame types whose payload is a JSON control message. */
export type ControlType = keyof Schemas;
/** The decoded (typed) control message of a frame type. */
export type ControlMessage<K extends keyof Schemas> = z.output<Schemas[K]>;
/** What a control message of a type is encoded from (Buffers as base64 by encodeControl). */
export type ControlInput<K extends keyof Schemas> = { [F in keyof z.input<Schemas[K]>]: NonNullable<z.input<Schemas[K]>[F]> extends string ? z.input<Schemas[K]>[F] | Buffer : z.input<Schemas[K]>[F] };

/** A rendezvous as an agent sends it (to the server: `to`) or receives it (from the server: `from`, RTTs). */
export type Rendezvous = ControlMessage<typeof T.RENDEZVOUS>;
export interface RendezvousCandidate { host: string; port: number; kind: 'lan' | 'stun' | 'prflx' }

export function encodeControl<K extends keyof Schemas>(_type: K, msg: ControlInput<K>): Buffer {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(msg)) out[k] = Buffer.isBuffer(v) ? v.toString('base64') : v;
  return Buffer.from(JSON.stringify(out));
}

/** Validates a control message; undefined when the JSON or any field is wrong. */
export function decodeControl<K extends keyof Schemas>(type: K, body: Buffer): ControlMessage<K> | undefined {
  const raw = parseJson(body);
  if (!raw) return undefined;
  const r = SCHEMAS[type].safeParse(raw);
  return r.success ? (r.data as ControlMessage<K>) : undefined;
}

export function parseJson(b: Buffer): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(b.toString('utf8')) as unknown;
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
