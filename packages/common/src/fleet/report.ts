// The fleet report: the small summary every agent sends its servers on the control connection (REPORT message), and
// the zod schema both ends share. The agent builds it (packages/agent/src/fleet/report.ts) and keeps it under the
// limits below; the server validates whatever arrives against the same schema and limits (hostile input).
import { z } from 'zod';

export const REPORT_VERSION = 1;

/** At most this many peers in one report (a node talks to a few dozen peers; 1,000 covers a whole large site). */
export const MAX_REPORT_PEERS = 1000;
/** At most this many strict-empty Services in one report (each one is a warning line in the fleet view). */
export const MAX_REPORT_WARNINGS = 200;
/** At most this many failing readiness checks named (the agent has four today). */
export const MAX_REPORT_CHECKS = 16;
/** A report's JSON is at most this many bytes (a peer takes ~90 bytes: about 700 peers fit; the busiest are kept). */
export const MAX_REPORT_BYTES = 64 * 1024;

/** Kubernetes object names (node names are DNS subdomains) and label values are far shorter than this. */
const MAX_NAME = 253;
const name = z.string().min(1).max(MAX_NAME);
const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

export const natTypeSchema = z.enum(['cone', 'symmetric', 'open', 'unknown']);
export type FleetNatType = z.infer<typeof natTypeSchema>;
export const peerPathSchema = z.enum(['direct', 'relay', 'connecting']);
export type PeerPath = z.infer<typeof peerPathSchema>;

export const reportPeerSchema = z.object({
  node: name,
  /** The peer's group as this agent's cluster model has it (null: the node has no group label). */
  group: name.nullable(),
  path: peerPathSchema,
  rttMs: z.number().min(0).max(3_600_000).nullable(),
  /** Bytes on the peer's open links since they came up (inside Noise; both directions). */
  bytesIn: count,
  bytesOut: count,
});
export type ReportPeer = z.infer<typeof reportPeerSchema>;

export const strictEmptySchema = z.object({
  /** `namespace/name` */
  service: name,
  /** node: strict-node routing (only this node's endpoints count); group: strict-group or SuperEdge topologyKeys. */
  scope: z.enum(['node', 'group']),
});
export type StrictEmpty = z.infer<typeof strictEmptySchema>;

/** Unknown keys are dropped, not refused: a newer agent may send more than this server knows (rolling upgrades). */
export const fleetReportSchema = z.object({
  v: z.literal(REPORT_VERSION),
  version: z.string().min(1).max(64),
  group: name.nullable(),
  nat: z.object({ type: natTypeSchema, mapped: z.string().max(64).nullable() }),
  ready: z.boolean(),
  /** Names of the failing readiness checks (empty when ready). */
  notReady: z.array(z.string().min(1).max(64)).max(MAX_REPORT_CHECKS),
  peers: z.array(reportPeerSchema).max(MAX_REPORT_PEERS),
  strictEmpty: z.array(strictEmptySchema).max(MAX_REPORT_WARNINGS),
  /** How many peers / strict-empty Services were left out to stay within the limits. */
  omitted: z.object({ peers: count, strictEmpty: count }),
});
export type FleetReport = z.infer<typeof fleetReportSchema>;

export type ParseResult = { ok: true; report: FleetReport } | { ok: false; reason: 'too-large' | 'invalid'; detail: string };

/** Validates a report received from the network. `bytes` is the size of its JSON as it arrived. */
export function parseReport(value: unknown, bytes: number): ParseResult {
  if (bytes > MAX_REPORT_BYTES) return { ok: false, reason: 'too-large', detail: `${bytes} bytes > ${MAX_REPORT_BYTES}` };
  const r = fleetReportSchema.safeParse(value);
  if (!r.success) {
    const issue = r.error.issues[0];
    return { ok: false, reason: 'invalid', detail: issue ? `${issue.path.join('.') || '(report)'}: ${issue.message}` : 'invalid' };
  }
  return { ok: true, report: r.data };
}
