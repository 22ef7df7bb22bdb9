// One DNS message in, one reply out (or nothing for malformed input). Transport-free so it is tested without sockets.
// Hot path: replies are encoded once and cached by the query's bytes after the ID; a repeat query costs a lookup, a
// copy and a 2-byte ID patch (plus TTL patches for forwarded answers as they age). Cluster answers are keyed on the
// cluster generation (snapshot + Service IP table version), so any change invalidates them.
import dnsPacket from 'dns-packet';
import type { Answer, RecordType } from 'dns-packet';
import { LRUCache } from 'lru-cache';
import type { ServiceIPTable, Snapshot } from '../cluster/types.ts';
import { answerCluster, normDomain, RCODE, type ClusterResult, type ZoneView } from './answer.ts';
import { ageRecords, type Forwarder, type ForwardQuestion } from './forward.ts';
import { noMetrics, type DnsMetrics } from './metrics.ts';
import { encodeReply, errorReply, maxReplySize, parseQuery, patchReply, type ParsedQuery, type Reply } from './wire.ts';

export const FAST_CACHE_MAX = 20_000;
/** Queries longer than this are not used as fast-cache keys (a normal query is well under 300 bytes). */
export const FAST_KEY_MAX_BYTES = 512;
/** ExternalName -> ExternalName chains are followed at most this deep. */
export const MAX_CNAME_CHAIN = 8;
const BADVERS = 16;

interface FastEntry {
  wire: Buffer;
  type: string;
  rcode: number;
  source: 'cluster' | 'forward';
  /** Cluster generation for cluster answers; -1 for forwarded ones. */
  gen: number;
  ttlOffsets?: number[];
  fetchedAt: number;
  expiresAt: number;
}

export interface HandlerOptions {
  domain: string;
  ttl: number;
  snapshot: () => Snapshot;
  ips: ServiceIPTable & { readonly version: number };
  forwarder?: Forwarder;
  ownsIP?: (ip: string) => boolean;
  metrics?: DnsMetrics;
  fastCacheMax?: number;
  now?: () => number;
}

export class DnsHandler {
  private readonly opts: HandlerOptions;
  private readonly domain: string;
  private readonly metrics: DnsMetrics;
  private readonly fast: LRUCache<string, FastEntry>;
  private readonly now: () => number;
  private gen = 0;
  private genSnap: Snapshot | undefined;
  private genIps = -1;
  private zone: ZoneView | undefined;

  constructor(opts: HandlerOptions) {
    this.opts = opts;
    this.domain = normDomain(opts.domain);
    this.metrics = opts.metrics ?? noMetrics;
    this.fast = new LRUCache({ max: opts.fastCacheMax ?? FAST_CACHE_MAX });
    this.now = opts.now ?? Date.now;
  }

  /** The current cluster view; a new generation when the snapshot or the IP table changed. */
  private view(): ZoneView {
    const snap = this.opts.snapshot();
    if (snap !== this.genSnap || this.opts.ips.version !== this.genIps || !this.zone) {
      this.genSnap = snap;
      this.genIps = this.opts.ips.version;
      this.gen++;
      this.zone = { snap, ips: this.opts.ips, domain: this.domain, ttl: this.opts.ttl, ownsIP: this.opts.ownsIP };
    }
    return this.zone;
  }

  /** Handles one message. null = drop (malformed). A Promise only when the answer needs an upstream. */
  handle(msg: Buffer, tcp: boolean): Buffer | null | Promise<Buffer | null> {
    const zone = this.view();
    let key: string | undefined;
    if (msg.length >= 12 && msg.length <= FAST_KEY_MAX_BYTES) {
      key = (tcp ? 'T' : 'U') + msg.toString('latin1', 2);
      const e = this.fast.get(key);
      if (e) {
        const now = this.now();
        if (e.source === 'cluster' ? e.gen === this.gen : e.expiresAt > now) {
          this.metrics.cache('answer', true);
          this.metrics.query(e.type, e.rcode, e.source);
          return patchReply(e.wire, msg.readUInt16BE(0), e.ttlOffsets, Math.floor((now - e.fetchedAt) / 1000));
        }
        this.fast.delete(key);
      }
      this.metrics.cache('answer', false);
    }
    const parsed = parseQuery(msg);
    if (parsed.kind === 'malformed') {
      this.metrics.malformed(tcp ? 'tcp' : 'udp');
      return null;
    }
    if (parsed.kind === 'error') {
      this.metrics.query('OTHER', parsed.rcode, 'error');
      return errorReply(parsed.id, parsed.flags, parsed.rcode);
    }
    const q = parsed.q;
    const max = maxReplySize(q, tcp);
    if (q.edns && q.edns.version > 0) return this.finish(q, { rcode: BADVERS, aa: false, answers: [], authorities: [], additionals: [] }, max, 'error');

    let cluster: ClusterResult | undefined;
    try {
      cluster = answerCluster(zone, q.name, q.type, q.class);
    } catch {
      cluster = { rcode: 'SERVFAIL', aa: false, answers: [], authorities: [], additionals: [] };
    }
    if (cluster) {
      if (cluster.chase) return this.chase(q, cluster, max, zone);
      const reply: Reply = { rcode: RCODE[cluster.rcode], aa: cluster.aa, answers: cluster.answers, authorities: cluster.authorities, additionals: cluster.additionals };
      let enc;
      try {
        enc = encodeReply(q, reply, max);
      } catch {
        return this.finish(q, { rcode: RCODE.SERVFAIL, aa: false, answers: [], authorities: [], additionals: [] }, max, 'cluster');
      }
      if (enc.truncated) this.metrics.truncated();
      if (key) this.fast.set(key, { wire: enc.wire, type: q.type, rcode: reply.rcode, source: 'cluster', gen: this.gen, fetchedAt: 0, expiresAt: 0 });
      this.metrics.query(q.type, reply.rcode, 'cluster');
      return enc.wire;
    }
    return this.forward(q, max, key);
  }

  private finish(q: ParsedQuery, r: Reply, max: number, source: 'cluster' | 'forward' | 'error'): Buffer {
    const enc = encodeReply(q, r, max);
    if (enc.truncated) this.metrics.truncated();
    this.metrics.query(q.type, r.rcode & 0xf, source);
    return enc.wire;
  }

  private servfail(q: ParsedQuery, max: number): Buffer {
    return this.finish(q, { rcode: RCODE.SERVFAIL, aa: false, answers: [], authorities: [], additionals: [] }, max, 'forward');
  }

  private async forward(q: ParsedQuery, max: number, key: string | undefined): Promise<Buffer | null> {
    const fw = this.opts.forwarder;
    if (!fw || !fw.upstreams.length) return this.servfail(q, max);
    const fq: ForwardQuestion = { questionBytes: q.questionBytes, name: q.name, type: q.type, class: q.class, do: q.edns?.do ?? false, cd: q.cd };
    const a = await fw.resolve(fq);
    let enc;
    try {
      enc = encodeReply(q, { rcode: a.rcode, aa: false, ad: a.ad, answers: a.answers, authorities: a.authorities, additionals: a.additionals }, max);
    } catch {
      return this.servfail(q, max); // an upstream record we cannot re-encode
    }
    if (enc.truncated) this.metrics.truncated();
    if (key && a.expiresAt > 0) {
      this.fast.set(key, { wire: enc.wire, type: q.type, rcode: a.rcode, source: 'forward', gen: -1, ttlOffsets: enc.ttlOffsets, fetchedAt: a.fetchedAt, expiresAt: a.expiresAt });
    }
    this.metrics.query(q.type, a.rcode, 'forward');
    return patchReply(enc.wire, q.id, enc.ttlOffsets, Math.floor((this.now() - a.fetchedAt) / 1000));
  }

  /** ExternalName: the CNAME, then the target's records (from the cluster or upstream), like a recursive server. */
  private async chase(q: ParsedQuery, first: ClusterResult, max: number, zone: ZoneView): Promise<Buffer | null> {
    try {
      const answers: Answer[] = [...first.answers];
      let target = first.chase;
      let rcode = 0;
      let authorities: Answer[] = [];
      for (let depth = 0; target && depth < MAX_CNAME_CHAIN; depth++) {
        const cur: string = target;
        target = undefined;
        const next = answerCluster(zone, cur, q.type, 'IN');
        if (next) {
          answers.push(...next.answers);
          rcode = RCODE[next.rcode];
          authorities = next.answers.length ? [] : next.authorities;
          target = next.chase;
          continue;
        }
        const fw = this.opts.forwarder;
        if (!fw || !fw.upstreams.length) { rcode = RCODE.SERVFAIL; break; }
        const questionBytes = dnsPacket.encode({ questions: [{ name: cur, type: q.type as RecordType, class: 'IN' }] }).subarray(12);
        const a = await fw.resolve({ questionBytes, name: cur, type: q.type, class: 'IN', do: false, cd: false });
        answers.push(...ageRecords(a.answers, Math.floor((this.now() - a.fetchedAt) / 1000)));
        rcode = a.rcode;
        authorities = a.answers.length ? [] : a.authorities;
      }
      return this.finish(q, { rcode, aa: true, answers, authorities, additionals: [] }, max, 'cluster');
    } catch {
      // As on the synchronous path: a failure anywhere while following the chain answers SERVFAIL, never silence.
      return this.servfail(q, max);
    }
  }
}
