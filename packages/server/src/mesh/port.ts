// What the mesh needs of the relay (relay.ts implements it) and what the relay calls on the mesh: the seam between
// the two, so relay.ts stays the agent side and the mesh never sees a relay connection's internals.
import type { Frame } from '@edgemesh/common/tunnel/frame';
import type { StreamFrame } from '@edgemesh/common/tunnel/streams';
import type { ControlInput, ControlMessage, T } from '@edgemesh/common/tunnel/protocol';
import type { StreamLeases } from '../limits.ts';

/** A signed-in agent's connection, opaque to the mesh. */
export interface AgentEnd {
  readonly node: string;
  readonly rttMs: number;
}

export interface RelayPort {
  /** The agent signed in here under `node` (undefined when it is not connected to this server). */
  agent(node: string): AgentEnd | undefined;
  /** Every agent signed in here (the full presence set a new mesh link gets). */
  agentNodes(): string[];
  /** A relay stream id for an agent of this server, never one in use by the relay's own streams. */
  allocRid(): number;
  /** The relay-stream budgets (per pair, per target, total, unanswered per opener), shared with local streams. */
  admit(opener: string, target: string): StreamLeases | undefined;
  /** Writes a frame to an agent (bounded by the relay's backlog rule). */
  write(a: AgentEnd, frame: Buffer): void;
  /** Writes the parts of one frame as one socket write (one run of TLS records, no copy here). */
  writev(a: AgentEnd, parts: Buffer[]): void;
  incoming(to: AgentEnd, rid: number, from: string): void;
  opened(a: AgentEnd, req: number, rid: number): void;
  openFailed(a: AgentEnd, req: number, code: string): void;
  rendezvous(to: AgentEnd, msg: ControlInput<typeof T.RENDEZVOUS>): void;
  /** Stops reading from an agent until resume (the mesh link it feeds is full). */
  pause(a: AgentEnd): void;
  resume(a: AgentEnd): void;
}

/** The relay's calls into the mesh (all synchronous, never throwing for network input). */
export interface MeshHooks {
  /** OPEN to a node not connected here: true when a mesh peer has it (the mesh answers the agent later). */
  open(a: AgentEnd, req: number, to: string): boolean;
  /** A relay stream frame for a rid the relay does not know: true when it is a mesh stream (handled). */
  streamFrame(a: AgentEnd, f: Frame, sf: StreamFrame): boolean;
  /** RENDEZVOUS to a node not connected here: true when forwarded to the peer server that has it. */
  rendezvous(a: AgentEnd, m: ControlMessage<typeof T.RENDEZVOUS>): boolean;
  agentUp(node: string): void;
  /** The agent's connection is gone: its mesh streams are reset; `gone` when the node is no longer connected here. */
  agentDown(a: AgentEnd, gone: boolean): void;
  /** Whether `a` feeds a mesh link that is full (the relay keeps it paused). */
  holds(a: AgentEnd): boolean;
  /** Whether a mesh peer has `node` (for the relay's no-peer decision before it tries). */
  has(node: string): boolean;
}
