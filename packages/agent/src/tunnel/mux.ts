// A session: the streams between two nodes, independent of the links (transports) that carry them. One link is
// current (we send on it); frames are taken from any link of the session. When the session moves to another link
// (the current one died, a better one came up, the peer moved), it sends ATTACH there with the state of every
// stream (bytes received and acknowledged); the peer answers with its own, and each side resends from what the
// other received (TunnelStream.resumeFrom) and repairs what was lost with the old link: an OPEN, OK or RESET.
import type { DialErrorCode } from '../proxy/dialer.ts';
import { DialError } from '../proxy/dialer.ts';
import { decodeStreamFrame, encodeCredit, encodeData, encodeEnd, encodeReset } from '@edgemesh/common/tunnel/streams';
import type { Clock } from './clock.ts';
import {
  ATTACH_REPLY, ATTACH_REQUEST, decodeAttach, decodeErr, decodeId, decodeOpen, encodeAttach, encodeErr, encodeOk, encodeOpen, L,
  LINK_STREAM_TYPES, S, type AttachEntry, type OpenHeader,
} from './linkproto.ts';
import { TunnelStream, type StreamIO } from './stream.ts';

/** How many streams one session carries at once (ours and the peer's, also while the peer's dial is under way). */
export const MAX_STREAMS_PER_SESSION = 8192;

/** What a session needs from a link. */
export interface SessionLink {
  readonly id: number;
  readonly closed: boolean;
  send(frame: Buffer): void;
  /** A buffer for the next frame, sent at once (Link.alloc: Noise encrypts it in place). */
  alloc?(len: number): Buffer;
}

export type IncomingHandler = (h: OpenHeader, accept: () => TunnelStream, reject: (code: DialErrorCode, message: string) => void) => void;

interface Opening {
  stream: TunnelStream;
  header: OpenHeader;
  deadlineAt: number;
  /** The link the OPEN last went out on (the path the stream was opened on). */
  via: SessionLink | undefined;
  resolve: (r: { stream: TunnelStream; via: SessionLink | undefined }) => void;
  reject: (e: Error) => void;
}

export class Session {
  readonly localSid: Buffer;
  /** The peer's session id, from the first HELLO (a different one later means the peer lost this session). */
  remoteSid: Buffer | undefined;
  private readonly clock: Clock;
  private readonly odd: boolean; // the odd side's move wins a tie (onAttach)
  private link: SessionLink | undefined;
  /** The peer's state arrived on the current link (its ATTACH): data may flow. */
  private resumed = false;
  private readonly streams = new Map<number, TunnelStream>();
  private readonly opening = new Map<number, Opening>();
  /** Streams the peer opened whose local dial is under way; true once the peer gave up on one. */
  private readonly answering = new Map<number, boolean>();
  /** Our ATTACH seq when each stream opened on both sides (an ATTACH and an OK can take different links). */
  private readonly openAt = new WeakMap<TunnelStream, number>();
  private nextId: number;
  // ATTACH request seqs are a Lamport clock over both sides' moves (request(), onAttach): ours last sent, the peer's
  // newest seen, and the move that put the session on its current link (its seq; whether the odd side made it).
  private seq = 0;
  private peerSeq = 0;
  private move = { seq: 0, odd: false };
  private closedErr: Error | undefined;
  onIncoming: IncomingHandler = (_h, _a, reject) => reject('refused', 'no handler');
  /** The session moved to `link` because the peer asked (its ATTACH request arrived there). */
  onFollow: (link: SessionLink) => void = () => {};
  /** The peer answered on the current link: streams flow again. */
  onResumed: (link: SessionLink) => void = () => {};
  onProtocolError: (link: SessionLink, why: string) => void = () => {};

  /** `odd`: this side numbers its streams 1, 3, 5... (the side with the smaller node name). `after`: a session this
   *  one replaces; its numbers are not used again, so a late frame for an old stream cannot hit a new one. */
  constructor(o: { localSid: Buffer; odd: boolean; clock: Clock; after?: Session }) {
    this.localSid = o.localSid;
    this.clock = o.clock;
    this.odd = o.odd;
    this.nextId = o.after ? o.after.nextId : o.odd ? 1 : 2;
  }

  get current(): SessionLink | undefined { return this.link; }

  get isResumed(): boolean { return this.resumed && !!this.link && !this.link.closed; }

  get size(): number { return this.streams.size + this.opening.size + this.answering.size; }

  get closed(): boolean { return this.closedErr !== undefined; }

  // ---------- links ----------

  /** Moves the session to `link`: ATTACH with our state; data waits for the peer's. */
  attach(link: SessionLink): void {
    if (this.closedErr) return;
    this.link = link;
    this.resumed = false;
    this.request(link);
    // Opens that never went out go now, behind the ATTACH (the peer takes them in order).
    for (const [id, o] of this.opening) if (!o.via) this.sendOpen(id);
  }

  /** `link` is gone (or any link, without an argument): nothing is sent until the next attach. Opens that went out
   *  on it go again (at once on the current link; the peer ignores an OPEN it already has). */
  detach(link?: SessionLink): void {
    if (link) this.distrust(link);
    if (link && this.link !== link) return;
    this.link = undefined;
    this.resumed = false;
  }

  /** What was sent on `link` may never arrive (it died, or stopped answering): resend its opens elsewhere. */
  distrust(link: SessionLink): void {
    for (const [id, o] of this.opening) {
      if (o.via !== link) continue;
      o.via = undefined;
      if (this.link !== link) this.sendOpen(id);
    }
  }

  /** An ATTACH request on `link` (a move there, or asking again there), numbered past every seq either side used. */
  private request(link: SessionLink): void {
    this.seq = Math.max(this.seq, this.peerSeq) + 1;
    this.move = { seq: this.seq, odd: this.odd };
    link.send(encodeAttach({ flags: ATTACH_REQUEST, seq: this.seq, entries: this.entries() }));
  }

  private canSend(): boolean { return this.resumed && !!this.link && !this.link.closed; }

  /** Control frames go on the current link as soon as our ATTACH went before them. */
  private sendCtl(frame: Buffer): void {
    if (this.link && !this.link.closed) this.link.send(frame);
  }

  private entries(): AttachEntry[] {
    const out: AttachEntry[] = [];
    for (const id of this.opening.keys()) out.push({ id, state: S.OPENING, recv: 0, ack: 0 });
    for (const id of this.answering.keys()) out.push({ id, state: S.ANSWERING, recv: 0, ack: 0 });
    for (const [id, s] of this.streams) {
      if (this.opening.has(id)) continue;
      const r = s.received;
      out.push({ id, state: S.OPEN, recv: r.recv, ack: r.ack });
    }
    return out;
  }

  // ---------- streams ----------

  private streamIO(id: number, self: () => TunnelStream): StreamIO {
    const t = LINK_STREAM_TYPES;
    return {
      canSend: () => this.canSend() && !this.opening.has(id),
      data: (off, b) => {
        const link = this.link!;
        link.send(encodeData(t, id, off, b, link.alloc && ((n) => link.alloc!(n))));
      },
      credit: (ack) => this.link!.send(encodeCredit(t, id, ack)),
      end: (fin) => this.link!.send(encodeEnd(t, id, fin)),
      reset: () => this.link!.send(encodeReset(t, id)),
      closed: () => { if (this.streams.get(id) === self()) this.streams.delete(id); },
    };
  }

  private makeStream(id: number): TunnelStream {
    const s: TunnelStream = new TunnelStream(this.streamIO(id, () => s));
    this.streams.set(id, s);
    return s;
  }

  private allocId(): number {
    const id = this.nextId;
    this.nextId += 2;
    if (this.nextId > 0xfffffff0) this.nextId -= 0xfffffff0 - 2;
    return id;
  }

  /** The peer restarted before answering these opens: the next session (to the new peer) asks again. */
  moveOpenings(next: Session): void {
    for (const [id, o] of this.opening) {
      this.streams.delete(id);
      next.adoptOpening(o);
    }
    this.opening.clear();
  }

  private adoptOpening(o: Opening): void {
    const id = this.allocId();
    o.stream.rebind(this.streamIO(id, () => o.stream));
    o.via = undefined;
    this.streams.set(id, o.stream);
    this.opening.set(id, o);
    this.sendOpen(id);
  }

  /** Opens a stream; `answered` resolves once the far side said OK (over whichever link carries the session then). */
  open(header: OpenHeader, deadlineAt: number): { stream: TunnelStream | undefined; answered: Promise<{ stream: TunnelStream; via: SessionLink | undefined }> } {
    if (this.closedErr) return { stream: undefined, answered: Promise.reject(new DialError('unreachable', this.closedErr.message)) };
    if (this.size >= MAX_STREAMS_PER_SESSION) return { stream: undefined, answered: Promise.reject(new DialError('unreachable', 'too many streams to this peer')) };
    const id = this.allocId();
    const stream = this.makeStream(id);
    const answered = new Promise<{ stream: TunnelStream; via: SessionLink | undefined }>((resolve, reject) => {
      this.opening.set(id, { stream, header, deadlineAt, via: undefined, resolve, reject });
      this.sendOpen(id);
    });
    return { stream, answered };
  }

  /** Whether the stream is still waiting for its OK. */
  isOpening(s: TunnelStream): boolean {
    for (const o of this.opening.values()) if (o.stream === s) return true;
    return false;
  }

  private sendOpen(id: number): void {
    const o = this.opening.get(id);
    if (!o) return;
    if (!this.link || this.link.closed) return;
    // The far side may use what is left of the caller's time, as of now (a resent OPEN says less than the first).
    o.via = this.link;
    this.link.send(encodeOpen(id, { ...o.header, timeoutMs: Math.max(0, o.deadlineAt - this.clock.now()) }));
  }

  /** Abandons a pending open (deadline or abort): the far side is told, the stream closed. */
  cancel(s: TunnelStream): void {
    for (const [id, o] of this.opening) {
      if (o.stream !== s) continue;
      this.sendCtl(encodeReset(LINK_STREAM_TYPES, id));
      this.failOpen(id, o, new DialError('timeout', 'the dial was abandoned'));
    }
  }

  // ---------- frames ----------

  onFrame(link: SessionLink, type: number, p: Buffer): void {
    if (this.closedErr) return;
    switch (type) {
      case L.ATTACH: {
        const a = decodeAttach(p, MAX_STREAMS_PER_SESSION * 2);
        return a ? this.onAttach(link, a.flags, a.seq, a.entries) : this.onProtocolError(link, 'bad ATTACH');
      }
      case L.OPEN: return this.onOpen(p, link);
      case L.OK: {
        const id = decodeId(p);
        if (id !== undefined) this.established(id);
        return;
      }
      case L.ERR: {
        const e = decodeErr(p);
        const o = e && this.opening.get(e.id);
        if (e && o) this.failOpen(e.id, o, new DialError(e.code, `remote agent: ${e.message || e.code}`));
        return;
      }
      default: {
        const f = decodeStreamFrame(LINK_STREAM_TYPES, type, p);
        if (!f) return this.onProtocolError(link, `unknown or malformed frame type ${type}`);
        if (f.kind === 'reset') return this.onReset(f.id);
        // Data for a stream still opening: the peer accepted it (its OK went on another link, slower than this one).
        if (this.opening.has(f.id)) this.established(f.id);
        const s = this.streams.get(f.id);
        if (!s) return;
        if (f.kind === 'data') s.onData(f.offset, f.bytes);
        else if (f.kind === 'credit') s.onCredit(f.ack);
        else s.onEnd(f.fin);
      }
    }
  }

  private established(id: number): void {
    const o = this.opening.get(id);
    if (!o) return;
    this.opening.delete(id);
    this.openAt.set(o.stream, this.seq);
    o.resolve({ stream: o.stream, via: o.via });
    o.stream.transmit();
  }

  private onReset(id: number): void {
    const o = this.opening.get(id);
    if (o) return this.failOpen(id, o, new DialError('refused', 'stream reset'));
    if (this.answering.has(id)) this.answering.set(id, true);
    this.streams.get(id)?.onReset();
  }

  private onOpen(p: Buffer, link: SessionLink): void {
    const m = decodeOpen(p);
    if (!m) return this.onProtocolError(link, 'short OPEN');
    const { id, header } = m;
    // The answer goes back the way the OPEN came (it is quickest there: the session may just be moving to a link the
    // opener cannot read yet), else on the current link.
    const answer = (frame: Buffer) => (!link.closed ? link.send(frame) : this.sendCtl(frame));
    if ((id & 1) === (this.nextId & 1)) return this.onProtocolError(link, 'bad stream id');
    if (this.answering.has(id)) return; // the same OPEN again (resent after a move): the dial is under way
    if (this.streams.has(id)) return answer(encodeOk(id)); // our OK was lost with the old link
    if (!header) return answer(encodeErr(id, 'forbidden', 'bad header'));
    if (this.size >= MAX_STREAMS_PER_SESSION) return answer(encodeErr(id, 'refused', 'too many streams to this peer'));
    this.answering.set(id, false);
    this.onIncoming(
      header,
      () => {
        const gaveUp = this.answering.get(id) === true || this.closedErr !== undefined;
        this.answering.delete(id);
        const s = this.makeStream(id);
        this.openAt.set(s, this.seq);
        if (gaveUp) {
          // Accepted after the caller gave up (or the session died): close at once, so whoever holds the stream
          // releases its socket.
          s.abort();
          return s;
        }
        answer(encodeOk(id));
        return s;
      },
      (code, message) => {
        if (!this.answering.has(id)) return;
        this.answering.delete(id);
        answer(encodeErr(id, code, message));
      },
    );
  }

  private onAttach(link: SessionLink, flags: number, seq: number, entries: AttachEntry[]): void {
    if (flags & ATTACH_REQUEST) {
      if (seq <= this.peerSeq) return; // an old request arriving late over a slower link
      this.peerSeq = seq;
      // Moves can cross, each side asking on another link: both end where the later one by seq (a tie: the odd side's)
      // went. The peer's request moves us only when later than the move that put us on our link; else we answer it
      // there and stay, and our request, on its way, moves the peer (docs/tunnel-protocol.md, Moving).
      const later = seq > this.move.seq || (seq === this.move.seq && !this.odd && !this.move.odd);
      if (later) {
        this.move = { seq, odd: !this.odd };
        if (this.link !== link) this.onFollow(this.link = link);
      }
      link.send(encodeAttach({ flags: ATTACH_REPLY, seq, entries: this.entries() }));
      if (this.link !== link) return;
    } else if (!(flags & ATTACH_REPLY) || link !== this.link || seq !== this.seq) {
      return; // a reply to an attach we have moved on from
    }
    this.resumed = true;
    // A stream the peer did not list may be newer than its entries: ask again without pausing (resends are dropped by
    // offset); only the answer to a request sent after a stream opened proves the peer dropped it.
    if (this.reconcile(entries, flags & ATTACH_REQUEST ? 0 : seq)) this.request(link);
    this.onResumed(link);
  }

  /** Brings our streams in line with the peer's view (its ATTACH): resend, repair, or drop what it lost. `answers`:
   *  the seq of our request it replies to (0: the peer's own request). True when a drop is uncertain. */
  private reconcile(entries: AttachEntry[], answers: number): boolean {
    let unsure = false;
    const peer = new Map(entries.map((e) => [e.id, e]));
    for (const [id, o] of [...this.opening]) {
      const pe = peer.get(id);
      if (pe?.state === S.OPEN) {
        this.established(id); // its OK was lost
        o.stream.resumeFrom(pe.recv, pe.ack);
      } else if (!pe && !o.via) {
        this.sendOpen(id); // it never got our OPEN (not sent yet, or sent on a link that died); else it is on its way
      }
    }
    for (const [id, gaveUp] of [...this.answering]) if (!gaveUp && !peer.has(id)) this.answering.set(id, true);
    for (const [id, s] of [...this.streams]) {
      if (this.opening.has(id)) continue;
      const pe = peer.get(id);
      if (!pe) {
        // The peer no longer has it: both ENDs were exchanged and it finished, or it reset it (the RESET was lost).
        if (s.bothEnded) s.abort(undefined, true);
        else if ((this.openAt.get(s) ?? 0) < answers) s.abort(new Error('stream lost by the peer'));
        else unsure = true;
        continue;
      }
      if (pe.state === S.OPENING) this.sendCtl(encodeOk(id)); // our OK was lost
      s.resumeFrom(pe.recv, pe.ack);
    }
    for (const pe of entries) {
      if (this.streams.has(pe.id) || this.opening.has(pe.id) || this.answering.has(pe.id)) continue;
      // A stream of the peer's we never heard of (its OPEN will come again: our ATTACH does not list it), or one we
      // dropped while it could not hear us: tell it now.
      if (pe.state !== S.OPENING) this.sendCtl(encodeReset(LINK_STREAM_TYPES, pe.id));
    }
    return unsure;
  }

  /** Fails the opens still waiting when no link can be had (the peer is unreachable). */
  failOpening(err: DialError): void {
    for (const [id, o] of [...this.opening]) this.failOpen(id, o, err);
  }

  private failOpen(id: number, o: Opening, err: DialError): void {
    this.opening.delete(id);
    this.streams.delete(id);
    o.stream.abort();
    o.reject(err);
  }

  /** The session is over (gave up re-attaching, the peer restarted, the node left): every stream ends. */
  close(err: Error): void {
    if (this.closedErr) return;
    this.closedErr = err;
    this.link = undefined;
    this.failOpening(new DialError('unreachable', err.message));
    for (const id of this.answering.keys()) this.answering.set(id, true);
    for (const s of [...this.streams.values()]) s.abort(err);
    this.streams.clear();
  }
}
