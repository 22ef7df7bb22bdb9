// Relay streams and rendezvous between an agent of this server and an agent of a mesh peer. A cross-server relay
// stream has two halves: the agent's relay stream here (rid, the agent's numbers) and a mesh stream on the link (mid,
// the opener server's numbers). Frames are forwarded with only the stream id changed; the bytes stay the agents'
// Noise ciphertext. Both servers police both directions with FlowWindows (the agents' 8 MiB relay window, end to end:
// CREDIT travels back the whole way), so neither an agent nor a compromised peer server can make us hold more than a
// window per stream and direction; the link's FairWriter shares the link between streams round-robin.
import type { Frame } from '@edgemesh/common/tunnel/frame';
import { decodeStreamFrame, encodeCredit, encodeEnd, encodeReset, FlowWindow, type StreamFrame } from '@edgemesh/common/tunnel/streams';
import { decodeControl, MAX_DATA_CHUNK, RELAY_STREAM_TYPES, RELAY_WINDOW_BYTES, T } from '@edgemesh/common/tunnel/protocol';
import { FRAME_HEADER_BYTES } from '@edgemesh/common/tunnel/frame';
import { B, RELAY_OPEN_ANSWER_TIMEOUT_MS, type StreamLeases } from '../limits.ts';
import type { AgentEnd, RelayPort } from './port.ts';
import type { MeshLink } from './link.ts';
import { decodeMid, decodeOpen, decodeOpenFail, decodeRendezvous, encodeOpen, encodeOpened, encodeOpenFail, encodeRendezvous, M, MESH_STREAM_TYPES } from './frames.ts';

/** Mesh streams one link may carry at once (both directions): the relay's own total is the tighter bound normally. */
export const MAX_STREAMS_PER_LINK = 32_768;
/** When a link's queues hold this much, the agents feeding it are paused (as relay.ts pauses at a full socket). */
export const LINK_QUEUE_PAUSE_BYTES = 16 * 1024 * 1024;
/** An OPEN forwarded to a peer server must be answered within this (then OPEN_FAIL no-peer to the agent). */
export const MESH_OPEN_TIMEOUT_MS = 10_000;

export interface MeshStream {
  rid: number;
  mid: number;
  link: MeshLink;
  agent: AgentEnd;
  /** The agent here sends (checked here), and receives from the far agent (checked here too: the peer is policed). */
  out: FlowWindow;
  in: FlowWindow;
  leases: StreamLeases;
  /** Opener side: the agent's OPEN request id until the peer answered. */
  req: number | undefined;
  openedAt: number;
}

const finished = (s: MeshStream): boolean => s.out.ended && s.out.ack === s.out.next && s.in.ended && s.in.ack === s.in.next;

export interface ForwardEvents {
  refuse(budget: string, fields?: Record<string, unknown>): void;
  forwarded(dir: 'out' | 'in', bytes: number): void;
  rendezvous(outcome: string): void;
  streams(n: number): void;
  malformed(what: string): void;
}

/** A DATA frame with another stream id, the payload after the id shared (no copy of the ciphertext). */
function retag(type: number, id: number, payload: Buffer): Buffer[] {
  const h = Buffer.allocUnsafe(FRAME_HEADER_BYTES + 4);
  h[0] = type;
  h.writeUInt32BE(payload.length, 1);
  h.writeUInt32BE(id >>> 0, 5);
  return [h, payload.subarray(4)];
}

export class MeshForwarder {
  private readonly port: RelayPort;
  private readonly ev: ForwardEvents;
  private readonly byRid = new Map<number, MeshStream>();
  private readonly byLink = new Map<MeshLink, Map<number, MeshStream>>();
  private readonly byAgent = new Map<AgentEnd, Set<MeshStream>>();
  /** Agents paused because a link they feed is full, per link. */
  private readonly feeders = new Map<MeshLink, Set<AgentEnd>>();

  constructor(port: RelayPort, ev: ForwardEvents) {
    this.port = port;
    this.ev = ev;
  }

  get size(): number {
    return this.byRid.size;
  }

  private add(s: MeshStream): void {
    this.byRid.set(s.rid, s);
    let l = this.byLink.get(s.link);
    if (!l) this.byLink.set(s.link, l = new Map());
    l.set(s.mid, s);
    let a = this.byAgent.get(s.agent);
    if (!a) this.byAgent.set(s.agent, a = new Set());
    a.add(s);
    this.ev.streams(this.byRid.size);
  }

  private forget(s: MeshStream): void {
    if (this.byRid.get(s.rid) !== s) return;
    s.leases.release();
    this.byRid.delete(s.rid);
    this.byLink.get(s.link)?.delete(s.mid);
    const a = this.byAgent.get(s.agent);
    a?.delete(s);
    if (a && !a.size) this.byAgent.delete(s.agent);
    s.link.writer.drop(s.mid);
    this.ev.streams(this.byRid.size);
  }

  /** Resets a stream on both halves (or only towards the side that did not send the reset). */
  private reset(s: MeshStream, toAgent: boolean, toLink: boolean): void {
    if (toAgent) this.port.write(s.agent, encodeReset(RELAY_STREAM_TYPES, s.rid));
    if (toLink) s.link.control(encodeReset(MESH_STREAM_TYPES, s.mid));
    if (s.req !== undefined && toAgent) {
      // never answered: the agent is still waiting for OPENED
      this.port.openFailed(s.agent, s.req, 'no-peer');
    }
    this.forget(s);
  }

  // ---------- agent side ----------

  /** Agent `a` opens a relay stream to `to`, which is on the peer behind `link`. */
  open(a: AgentEnd, req: number, to: string, link: MeshLink): void {
    const streams = this.byLink.get(link);
    if ((streams?.size ?? 0) >= MAX_STREAMS_PER_LINK) {
      this.ev.refuse('mesh_streams_per_link', { peer: link.peerId });
      return this.port.openFailed(a, req, 'limit');
    }
    const leases = this.port.admit(a.node, to);
    if (!leases) return this.port.openFailed(a, req, 'limit');
    const s: MeshStream = {
      rid: this.port.allocRid(), mid: link.allocMid(), link, agent: a, out: new FlowWindow(RELAY_WINDOW_BYTES), in: new FlowWindow(RELAY_WINDOW_BYTES),
      leases, req, openedAt: Date.now(),
    };
    this.add(s);
    link.control(encodeOpen(s.mid, a.node, to));
  }

  /** A relay stream frame from agent `a` for a rid of ours. */
  agentFrame(a: AgentEnd, f: Frame, sf: StreamFrame): boolean {
    const s = this.byRid.get(sf.id);
    if (!s) return false;
    if (s.agent !== a) return true; // another agent's stream id: dropped
    switch (sf.kind) {
      case 'data': {
        if (s.req !== undefined) return true; // not opened yet: the agent cannot know the rid
        const v = s.out.data(sf.offset, sf.bytes.length);
        if (!v.ok || v.skip !== 0) {
          this.ev.refuse('mesh_credit_violation', { node: a.node });
          this.reset(s, true, true);
          return true;
        }
        if (this.isTarget(s)) s.leases.answered(); // the target spoke: no longer an unanswered open
        this.ev.forwarded('out', sf.bytes.length);
        s.link.data(s.mid, retag(M.DATA, s.mid, f.payload));
        if (s.link.writer.queuedBytes > LINK_QUEUE_PAUSE_BYTES) this.pauseFeeder(s.link, a);
        return true;
      }
      case 'credit':
        if (s.in.acknowledge(sf.ack)) s.link.control(encodeCredit(MESH_STREAM_TYPES, s.mid, sf.ack));
        break;
      case 'end':
        if (!s.out.end(sf.fin)) {
          this.ev.refuse('mesh_credit_violation', { node: a.node });
          this.reset(s, true, true);
          return true;
        }
        s.link.data(s.mid, encodeEnd(MESH_STREAM_TYPES, s.mid, sf.fin)); // in order behind its DATA
        break;
      case 'reset':
        this.reset(s, false, true);
        return true;
    }
    if (finished(s)) this.forget(s);
    return true;
  }

  /** Target side of a stream: the agent here was opened to (it answered when it first sends DATA). */
  private readonly targets = new WeakSet<MeshStream>();
  private isTarget(s: MeshStream): boolean {
    return this.targets.has(s);
  }

  agentDown(a: AgentEnd): void {
    for (const s of [...(this.byAgent.get(a) ?? [])]) this.reset(s, false, true);
    for (const set of this.feeders.values()) set.delete(a);
  }

  holds(a: AgentEnd): boolean {
    for (const set of this.feeders.values()) if (set.has(a)) return true;
    return false;
  }

  private pauseFeeder(link: MeshLink, a: AgentEnd): void {
    let set = this.feeders.get(link);
    if (!set) this.feeders.set(link, set = new Set());
    if (set.has(a)) return;
    set.add(a);
    this.port.pause(a);
  }

  /** The link's socket drained: queued DATA goes out, and feeders resume once the queues are below half. */
  drained(link: MeshLink): void {
    link.writer.flush();
    const set = this.feeders.get(link);
    if (!set || link.writer.queuedBytes > LINK_QUEUE_PAUSE_BYTES / 2) return;
    this.feeders.delete(link);
    for (const a of set) if (!this.holds(a)) this.port.resume(a);
  }

  // ---------- link side ----------

  /** A frame on `link` for a mesh stream or an open; false when it is not one of ours (the caller counts it). */
  linkFrame(link: MeshLink, f: Frame, knows: (node: string) => boolean): boolean {
    switch (f.type) {
      case M.OPEN: {
        const m = decodeOpen(f.payload);
        if (!m) return false;
        return this.peerOpen(link, m.mid, m.from, m.to, knows), true;
      }
      case M.OPENED: {
        const mid = decodeMid(f.payload);
        const s = mid !== undefined ? this.byLink.get(link)?.get(mid) : undefined;
        if (!s || s.req === undefined) return mid !== undefined;
        const req = s.req;
        s.req = undefined;
        this.port.opened(s.agent, req, s.rid);
        return true;
      }
      case M.OPEN_FAIL: {
        const m = decodeOpenFail(f.payload);
        const s = m ? this.byLink.get(link)?.get(m.mid) : undefined;
        if (!m) return false;
        if (!s || s.req === undefined) return true;
        const req = s.req;
        s.req = undefined;
        this.forget(s);
        this.port.openFailed(s.agent, req, m.code);
        return true;
      }
      case M.DATA: case M.CREDIT: case M.END: case M.RESET:
        return this.peerStreamFrame(link, f);
      default:
        return false;
    }
  }

  private peerOpen(link: MeshLink, mid: number, from: string, to: string, knows: (node: string) => boolean): void {
    const streams = this.byLink.get(link);
    if (streams?.has(mid) || mid % 2 === link.ownParity) {
      this.ev.malformed('open-id');
      return void link.control(encodeOpenFail(mid, 'limit'));
    }
    const target = this.port.agent(to);
    if (!target || !knows(from)) {
      if (!knows(from)) this.ev.refuse('mesh_unknown_sender', { peer: link.peerId });
      return void link.control(encodeOpenFail(mid, 'no-peer'));
    }
    if ((streams?.size ?? 0) >= MAX_STREAMS_PER_LINK) {
      this.ev.refuse('mesh_streams_per_link', { peer: link.peerId });
      return void link.control(encodeOpenFail(mid, 'limit'));
    }
    const leases = this.port.admit(from, to);
    if (!leases) return void link.control(encodeOpenFail(mid, 'limit'));
    const s: MeshStream = {
      rid: this.port.allocRid(), mid, link, agent: target, out: new FlowWindow(RELAY_WINDOW_BYTES), in: new FlowWindow(RELAY_WINDOW_BYTES),
      leases, req: undefined, openedAt: Date.now(),
    };
    this.targets.add(s);
    this.add(s);
    link.control(encodeOpened(mid));
    this.port.incoming(target, s.rid, from);
  }

  private peerStreamFrame(link: MeshLink, f: Frame): boolean {
    const sf = decodeStreamFrame(MESH_STREAM_TYPES, f.type, f.payload);
    if (!sf || (sf.kind === 'data' && sf.bytes.length > MAX_DATA_CHUNK)) return false;
    const s = this.byLink.get(link)?.get(sf.id);
    if (!s) return true; // late frames of a closed stream
    switch (sf.kind) {
      case 'data': {
        const v = s.in.data(sf.offset, sf.bytes.length);
        if (!v.ok || v.skip !== 0) {
          this.ev.refuse('mesh_credit_violation', { peer: link.peerId });
          this.reset(s, true, true);
          return true;
        }
        if (!this.isTarget(s)) s.leases.answered(); // the far target spoke
        this.ev.forwarded('in', sf.bytes.length);
        const [h, rest] = retag(T.DATA, s.rid, f.payload);
        this.port.writev(s.agent, [h, rest]);
        return true;
      }
      case 'credit':
        if (s.out.acknowledge(sf.ack)) this.port.write(s.agent, encodeCredit(RELAY_STREAM_TYPES, s.rid, sf.ack));
        break;
      case 'end':
        if (!s.in.end(sf.fin)) {
          this.ev.refuse('mesh_credit_violation', { peer: link.peerId });
          this.reset(s, true, true);
          return true;
        }
        this.port.write(s.agent, encodeEnd(RELAY_STREAM_TYPES, s.rid, sf.fin));
        break;
      case 'reset':
        this.reset(s, true, false);
        return true;
    }
    if (finished(s)) this.forget(s);
    return true;
  }

  /** The link is gone: its streams are reset towards the agents (their sessions move to another relay link). */
  linkDown(link: MeshLink): void {
    for (const s of [...(this.byLink.get(link)?.values() ?? [])]) this.reset(s, true, false);
    this.byLink.delete(link);
    const set = this.feeders.get(link);
    this.feeders.delete(link);
    for (const a of set ?? []) if (!this.holds(a)) this.port.resume(a);
  }

  /** Opens not answered by the peer server in time (the agent hears no-peer), and streams whose target has not sent
   *  anything within the relay's answer deadline (reset on both halves, as relay.ts does for local streams). */
  sweep(now: number): void {
    for (const s of [...this.byRid.values()]) {
      if (s.req !== undefined && now - s.openedAt > MESH_OPEN_TIMEOUT_MS) {
        this.ev.refuse('mesh_open_deadline', { peer: s.link.peerId });
        this.reset(s, true, true);
      } else if (s.leases.pending && now - s.openedAt > RELAY_OPEN_ANSWER_TIMEOUT_MS) {
        this.ev.refuse(B.openDeadline, { peer: s.link.peerId, node: s.agent.node });
        this.reset(s, true, true);
      }
    }
  }

  // ---------- rendezvous ----------

  /** Forwards an agent's rendezvous to the peer server that has `to` (the signed offer as the agent sent it). */
  rendezvousOut(a: AgentEnd, to: string, offer: Buffer, link: MeshLink): void {
    link.control(encodeRendezvous({ from: a.node, to, rttFromMs: a.rttMs + link.rttMs, offer }));
    this.ev.rendezvous('forwarded-out');
  }

  /** A rendezvous from a peer server for an agent here. */
  rendezvousIn(link: MeshLink, payload: Buffer, knows: (node: string) => boolean): void {
    const m = decodeRendezvous(payload);
    if (!m) return void this.ev.malformed('rendezvous');
    const peer = this.port.agent(m.to);
    if (!peer) return void this.ev.rendezvous('no-peer');
    if (!knows(m.from)) {
      this.ev.refuse('mesh_unknown_sender', { peer: link.peerId });
      return;
    }
    const r = decodeControl(T.RENDEZVOUS, m.offer);
    if (!r) return void this.ev.malformed('rendezvous');
    const { sid, reply, mode, cand, nat, streamId, ts, cert, sig } = r;
    this.ev.rendezvous('forwarded-in');
    this.port.rendezvous(peer, { sid, reply, mode, cand, nat, streamId, ts, cert, sig, from: m.from, rttFromMs: m.rttFromMs, rttToMs: peer.rttMs });
  }

  status(): { streams: number } {
    return { streams: this.byRid.size };
  }
}
