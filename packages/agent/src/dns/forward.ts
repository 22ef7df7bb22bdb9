// Forwarding for names outside the cluster: upstreams from config or /etc/resolv.conf (never the agent itself),
// UDP first and TCP when truncated, a fresh random query ID and source port per upstream query, per-upstream timeout
// and failover, SERVFAIL when all fail; an LRU response cache honouring TTLs with negative caching from the SOA
// minimum (RFC 2308), and one upstream query for many identical concurrent questions (singleflight).
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { connect } from 'node:net';
import { randomInt } from 'node:crypto';
import { isIP } from 'node:net';
import dnsPacket from 'dns-packet';
import type { Answer, SoaAnswer } from 'dns-packet';
import { LRUCache } from 'lru-cache';
import { ConfigError } from '@edgemesh/common/config';
import type { Logger } from '@edgemesh/common/log';
import { normName } from './answer.ts';
import { EDNS_UDP_SIZE } from './wire.ts';

/** How long one upstream gets to answer before the next is tried. */
export const UPSTREAM_TIMEOUT_MS = 2000;
/** An upstream that timed out is tried after the healthy ones for this long. */
export const UPSTREAM_PENALTY_MS = 30_000;
/** Cached answers live at most this long whatever their TTL says. */
export const MAX_CACHE_TTL_S = 3600;
/** Negative answers (NXDOMAIN/NODATA) are cached at most this long (RFC 2308 recommends 1-3 hours max; we are a stub cache). */
export const MAX_NEGATIVE_TTL_S = 300;
export const CACHE_MAX_ENTRIES = 10_000;
/** Distinct questions waiting on upstreams at once (each holds a socket for up to a timeout per upstream); beyond
 *  this a new question gets SERVFAIL at once, so a flood of random names cannot exhaust file descriptors. */
export const MAX_INFLIGHT_QUESTIONS = 1000;

export interface Upstream {
  readonly host: string;
  readonly port: number;
  /** `host:port` / `[v6]:port` */
  readonly key: string;
}

const fmt = (host: string, port: number) => (host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`);

/** Parses `ip`, `ip:port`, `[v6]` or `[v6]:port`. Throws ConfigError naming `key`. */
export function parseUpstream(s: string, key = 'dns.upstream'): Upstream {
  let host = s.trim();
  let port = 53;
  const br = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(host);
  if (br) {
    host = br[1];
    if (br[2]) port = Number(br[2]);
  } else if (isIP(host) !== 6) {
    const m = /^([^:]+):(\d{1,5})$/.exec(host);
    if (m) {
      host = m[1];
      port = Number(m[2]);
    }
  }
  if (!isIP(host)) throw new ConfigError(key, `${JSON.stringify(s)} is not an IP address (optionally with :port)`);
  if (port < 1 || port > 65535) throw new ConfigError(key, `${JSON.stringify(s)}: port out of range`);
  return { host, port, key: fmt(host, port) };
}

/** The `nameserver` lines of a resolv.conf, in order. */
export function parseResolvConf(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    if (m && isIP(m[1])) out.push(m[1]);
  }
  return out;
}

/**
 * Upstreams from config, else from resolv.conf; drops the agent's own listen address (a loop) and duplicates.
 * `self` is the DNS listen address; a wildcard listen host drops every loopback/own nameserver on the same port.
 */
export function chooseUpstreams(configured: readonly string[], resolvConf: string | undefined, self: { host: string; port: number }, localIPs: ReadonlySet<string> = new Set()): Upstream[] {
  const list = configured.length ? configured.map((s) => parseUpstream(s)) : parseResolvConf(resolvConf ?? '').map((s) => parseUpstream(s, 'resolv.conf'));
  const wildcard = self.host === '0.0.0.0' || self.host === '::' || self.host === '';
  const seen = new Set<string>();
  return list.filter((u) => {
    if (seen.has(u.key)) return false;
    seen.add(u.key);
    if (u.port !== self.port) return true;
    if (u.host === self.host) return false;
    if (wildcard && (localIPs.has(u.host) || u.host.startsWith('127.') || u.host === '::1')) return false;
    return true;
  });
}

export interface ForwardAnswer {
  rcode: number;
  ad: boolean;
  answers: Answer[];
  authorities: Answer[];
  additionals: Answer[];
  /** When these records were fetched (ms); the caller ages TTLs by now - fetchedAt. */
  fetchedAt: number;
  /** Absolute expiry (ms) when cached; 0 when not cacheable. */
  expiresAt: number;
}

export interface ForwardQuestion {
  /** Raw question bytes (name + type + class) as the client sent them. */
  questionBytes: Buffer;
  name: string;
  type: string;
  class: string;
  do: boolean;
  cd: boolean;
}

export interface ForwarderHooks {
  /** `upstream` is the upstream's position in the list ("0", "1", …), never its address (metrics hold no addresses). */
  onUpstream?: (upstream: string, seconds: number, outcome: 'ok' | 'timeout' | 'error' | 'rcode') => void;
  onCache?: (hit: boolean) => void;
}

/** Pure: how long (seconds) a response may be cached; 0 = not at all. */
export function cacheTtl(rcode: number, answers: readonly Answer[], authorities: readonly Answer[]): number {
  if (rcode !== 0 && rcode !== 3) return 0;
  const relevant = answers.filter((a) => a.type !== 'OPT');
  if (rcode === 0 && relevant.length) {
    let min = MAX_CACHE_TTL_S;
    for (const a of relevant) min = Math.min(min, (a as { ttl?: number }).ttl ?? 0);
    return Math.max(0, min);
  }
  // NXDOMAIN or NODATA: the SOA's TTL capped by its minimum field (RFC 2308 §5); no SOA, no caching.
  const soa = authorities.find((a): a is SoaAnswer => a.type === 'SOA');
  if (!soa) return 0;
  return Math.max(0, Math.min(soa.ttl ?? 0, soa.data.minimum ?? 0, MAX_NEGATIVE_TTL_S));
}

/** Pure: the records with TTLs aged by `seconds` (never below 0). */
export function ageRecords(list: readonly Answer[], seconds: number): Answer[] {
  if (seconds <= 0) return list as Answer[];
  return list.map((a) => (a.type === 'OPT' ? a : { ...a, ttl: Math.max(0, ((a as { ttl?: number }).ttl ?? 0) - seconds) } as Answer));
}

class UpstreamError extends Error {
  readonly outcome: 'timeout' | 'error' | 'rcode';
  constructor(outcome: 'timeout' | 'error' | 'rcode', msg: string) {
    super(msg);
    this.outcome = outcome;
  }
}

function buildQuery(id: number, fq: ForwardQuestion): Buffer {
  const opt = dnsPacket.encode({ type: 'query', id: 0, flags: 0, additionals: [{ name: '.', type: 'OPT', udpPayloadSize: EDNS_UDP_SIZE, extendedRcode: 0, ednsVersion: 0, flags: fq.do ? 0x8000 : 0, flag_do: fq.do, options: [] }] }).subarray(12);
  const b = Buffer.allocUnsafe(12 + fq.questionBytes.length + opt.length);
  b.writeUInt16BE(id, 0);
  b.writeUInt16BE(0x0100 | (fq.cd ? 0x0010 : 0), 2); // RD (+CD)
  b.writeUInt16BE(1, 4);
  b.writeUInt16BE(0, 6);
  b.writeUInt16BE(0, 8);
  b.writeUInt16BE(1, 10);
  fq.questionBytes.copy(b, 12);
  opt.copy(b, 12 + fq.questionBytes.length);
  return b;
}


/** Validates an upstream response against our query: ID, QR, and the same question (case-insensitive). */
function checkResponse(buf: Buffer, id: number, fq: ForwardQuestion): dnsPacket.DecodedPacket | undefined {
  if (buf.length < 12 || buf.readUInt16BE(0) !== id || !(buf[2] & 0x80)) return undefined;
  let p: dnsPacket.DecodedPacket;
  try {
    p = dnsPacket.decode(buf);
  } catch {
    return undefined;
  }
  const q = p.questions?.[0];
  if (!q || normName(q.name) !== normName(fq.name) || String(q.type) !== fq.type) return undefined;
  return p;
}

type Settle = (err?: Error, p?: dnsPacket.DecodedPacket) => void;

interface Exchange {
  /** Settles with the answer, or with an error when `err` is given. */
  settle: Settle;
  /** Settles with an upstream error. */
  fail: (message: string) => void;
  /** True once settled (the socket is released then). */
  settled: () => boolean;
}

/**
 * One query to one upstream on a fresh socket: `open` creates the socket, wires its events to the Exchange and
 * returns the function that releases it. Settles once (answer, error or timeout) and always releases the socket.
 */
function exchange(up: Upstream, transport: string, timeoutMs: number, signal: AbortSignal, open: (x: Exchange) => () => void): Promise<dnsPacket.DecodedPacket> {
  return new Promise((resolve, reject) => {
    const label = `${up.key} (${transport})`;
    if (signal.aborted) return reject(new UpstreamError('error', `${label}: forwarder closed`));
    let finished = false;
    let release: (() => void) | undefined;
    const settle: Settle = (err, p) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      signal.removeEventListener('abort', onClose);
      release?.();
      if (err) reject(err);
      else resolve(p!);
    };
    const onClose = () => settle(new UpstreamError('error', `${label}: forwarder closed`));
    signal.addEventListener('abort', onClose, { once: true });
    const timer = setTimeout(() => settle(new UpstreamError('timeout', `${label}: no answer in ${timeoutMs} ms`)), timeoutMs);
    release = open({ settle, fail: (m) => settle(new UpstreamError('error', `${label}: ${m}`)), settled: () => finished });
    if (finished) release();
  });
}

function udpExchange(up: Upstream, fq: ForwardQuestion, timeoutMs: number, signal: AbortSignal): Promise<dnsPacket.DecodedPacket> {
  return exchange(up, 'udp', timeoutMs, signal, ({ settle, fail, settled }) => {
    const id = randomInt(0, 65536);
    const sock: UdpSocket = createSocket(up.host.includes(':') ? 'udp6' : 'udp4');
    sock.on('error', (e) => fail(e.message));
    sock.on('message', (msg) => {
      const p = checkResponse(msg, id, fq);
      if (p) settle(undefined, p);
    });
    // A connected socket: the kernel drops datagrams from anyone but the upstream, and an ICMP port-unreachable
    // surfaces as ECONNREFUSED at once instead of a timeout.
    // A failed connect (EACCES, ENETUNREACH, EMFILE on bind) comes to this callback, not to 'error'.
    sock.connect(up.port, up.host, (err?: Error) => {
      if (err) return fail(err.message);
      if (settled()) return;
      sock.send(buildQuery(id, fq), (e) => { if (e) fail(e.message); });
    });
    return () => sock.close();
  });
}

function tcpExchange(up: Upstream, fq: ForwardQuestion, timeoutMs: number, signal: AbortSignal): Promise<dnsPacket.DecodedPacket> {
  return exchange(up, 'tcp', timeoutMs, signal, ({ settle, fail }) => {
    const id = randomInt(0, 65536);
    const q = buildQuery(id, fq);
    const sock = connect({ host: up.host, port: up.port });
    let buf = Buffer.alloc(0);
    sock.on('error', (e) => fail(e.message));
    sock.on('close', () => fail('closed before answering'));
    sock.on('connect', () => {
      const len = Buffer.allocUnsafe(2);
      len.writeUInt16BE(q.length);
      sock.write(Buffer.concat([len, q])); // no half-close: some servers drop a connection whose read side ended
    });
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length < 2) return;
      const n = buf.readUInt16BE(0);
      if (buf.length < 2 + n) return;
      const p = checkResponse(buf.subarray(2, 2 + n), id, fq);
      if (p) settle(undefined, p);
      else fail('bad response');
    });
    return () => sock.destroy();
  });
}

export interface ForwarderOptions {
  upstreams: readonly Upstream[];
  timeoutMs?: number;
  cacheMax?: number;
  maxInflight?: number;
  log: Logger;
  hooks?: ForwarderHooks;
  now?: () => number;
}

export class Forwarder {
  readonly upstreams: readonly Upstream[];
  /** Upstream queries sent (UDP and TCP), for tests and status. */
  upstreamQueries = 0;
  private readonly timeoutMs: number;
  private readonly maxInflight: number;
  private readonly cache: LRUCache<string, ForwardAnswer>;
  private readonly inflight = new Map<string, Promise<ForwardAnswer>>();
  private readonly downUntil = new Map<string, number>();
  /** Aborted by close(): in-flight upstream queries release their sockets and timers at once. */
  private readonly closed = new AbortController();
  private readonly log: Logger;
  private readonly hooks: ForwarderHooks;
  private readonly now: () => number;

  constructor(opts: ForwarderOptions) {
    this.upstreams = opts.upstreams;
    this.timeoutMs = opts.timeoutMs ?? UPSTREAM_TIMEOUT_MS;
    this.maxInflight = opts.maxInflight ?? MAX_INFLIGHT_QUESTIONS;
    this.cache = new LRUCache({ max: opts.cacheMax ?? CACHE_MAX_ENTRIES });
    this.log = opts.log;
    this.hooks = opts.hooks ?? {};
    this.now = opts.now ?? Date.now;
  }

  static cacheKey(fq: ForwardQuestion): string {
    return `${normName(fq.name)}|${fq.type}|${fq.class}|${fq.do ? 1 : 0}${fq.cd ? 1 : 0}`;
  }

  /** Answers from the cache, or asks the upstreams (one query for identical concurrent questions). Never rejects. */
  resolve(fq: ForwardQuestion): Promise<ForwardAnswer> {
    const key = Forwarder.cacheKey(fq);
    const hit = this.cache.get(key);
    if (hit) {
      if (hit.expiresAt > this.now()) {
        this.hooks.onCache?.(true);
        return Promise.resolve(hit);
      }
      this.cache.delete(key);
    }
    this.hooks.onCache?.(false);
    let p = this.inflight.get(key);
    if (!p) {
      if (this.inflight.size >= this.maxInflight || this.closed.signal.aborted) return Promise.resolve(this.failure(2));
      p = this.ask(fq).then((a) => {
        if (a.expiresAt > 0) this.cache.set(key, a);
        return a;
      }).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    return p;
  }

  /** Stops forwarding: questions waiting on upstreams get SERVFAIL now, later ones at once; no socket stays open. */
  close(): void {
    this.closed.abort();
  }

  /** Healthy upstreams first (configured order), then the ones in penalty. */
  private order(): Upstream[] {
    const now = this.now();
    const ok = this.upstreams.filter((u) => (this.downUntil.get(u.key) ?? 0) <= now);
    return ok.length === this.upstreams.length ? [...this.upstreams] : [...ok, ...this.upstreams.filter((u) => !ok.includes(u))];
  }

  private async ask(fq: ForwardQuestion): Promise<ForwardAnswer> {
    let last: dnsPacket.DecodedPacket | undefined;
    for (const up of this.order()) {
      if (this.closed.signal.aborted) break;
      const t0 = performance.now();
      try {
        this.upstreamQueries++;
        let p = await udpExchange(up, fq, this.timeoutMs, this.closed.signal);
        if (p.flag_tc) {
          this.upstreamQueries++;
          p = await tcpExchange(up, fq, this.timeoutMs, this.closed.signal);
        }
        const rcode = (p.flags ?? 0) & 0xf;
        this.downUntil.delete(up.key);
        if (rcode === 2 || rcode === 5 || rcode === 4 || rcode === 1) {
          // SERVFAIL / REFUSED / NOTIMP / FORMERR: another upstream may do better.
          this.hooks.onUpstream?.(String(this.upstreams.indexOf(up)), (performance.now() - t0) / 1000, 'rcode');
          last = p;
          continue;
        }
        this.hooks.onUpstream?.(String(this.upstreams.indexOf(up)), (performance.now() - t0) / 1000, 'ok');
        const now = this.now();
        const answers = (p.answers ?? []) as Answer[];
        const authorities = (p.authorities ?? []) as Answer[];
        const additionals = ((p.additionals ?? []) as Answer[]).filter((a) => a.type !== 'OPT');
        const ttl = cacheTtl(rcode, answers, authorities);
        return { rcode, ad: p.flag_ad && fq.do, answers, authorities, additionals, fetchedAt: now, expiresAt: ttl > 0 ? now + ttl * 1000 : 0 };
      } catch (e) {
        const outcome = e instanceof UpstreamError ? e.outcome : 'error';
        this.hooks.onUpstream?.(String(this.upstreams.indexOf(up)), (performance.now() - t0) / 1000, outcome);
        this.downUntil.set(up.key, this.now() + UPSTREAM_PENALTY_MS);
        this.log.debug({ upstream: up.key, err: (e as Error).message }, 'upstream failed');
      }
    }
    const rcode = last ? (last.flags ?? 0) & 0xf : 2;
    return this.failure(rcode === 5 || rcode === 4 || rcode === 1 ? 2 : rcode);
  }

  /** An empty, uncached answer with this rcode. */
  private failure(rcode: number): ForwardAnswer {
    return { rcode, ad: false, answers: [], authorities: [], additionals: [], fetchedAt: this.now(), expiresAt: 0 };
  }
}
