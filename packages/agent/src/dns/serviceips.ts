// The IPs the agent hands out for Services, shared by DNS (answers, PTR) and the proxy (what to intercept).
// clusterIP mode: spec.clusterIPs. fake mode: one IPv4 per Service from proxy.fakeCIDR, stable across restarts
// (persisted in stateDir), first choice from a hash of the Service key, collisions resolved by linear probing,
// released only after the Service has been gone for FAKE_IP_GRACE_MS. Allocation is a pure function (reconcileFake).
// In both modes (with the tunnel on), every endpoint of a headless Service that this node cannot reach as it is (on
// another node, outside proxy.directCIDRs) gets a mesh IP of its own from the same pool, by the same rules, keyed
// `namespace/service/<hostname or dashed address>` (meshEndpoints decides which, a pure function).
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError } from '@edgemesh/common/config';
import { writeFileAtomicSync } from '@edgemesh/common/fsutil';
import type { Logger } from '@edgemesh/common/log';
import type { Endpoint, EndpointIP, Service, ServiceIPTable, Snapshot } from '../cluster/types.ts';
import { DirectRanges, needsMeshIP, reachOf } from '../proxy/choose.ts';
import { endpointLabel } from './answer.ts';

/** A fake IP stays reserved for a Service this long after it disappeared (so a quick re-create keeps its IP). */
export const FAKE_IP_GRACE_MS = 10 * 60_000;
/** Name of the fake-IP table file in stateDir. */
export const FAKE_IP_FILE = 'fake-ips.json';
const FILE_FORMAT = 1;

export interface Ipv4Range {
  /** Network address as an unsigned 32-bit integer. */
  readonly network: number;
  readonly prefix: number;
  /** Number of addresses in the block (including network and broadcast). */
  readonly size: number;
}

export function ipv4ToInt(ip: string): number | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(ip);
  if (!m) return undefined;
  let n = 0;
  for (let i = 1; i <= 4; i++) {
    const o = Number(m[i]);
    if (o > 255) return undefined;
    n = n * 256 + o;
  }
  return n;
}

export function intToIpv4(n: number): string {
  return `${(n >>> 24) & 255}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

/** Parses an IPv4 CIDR for the fake pool; needs room for at least two usable addresses (/30 or larger). */
export function parseFakeCIDR(cidr: string, key = 'proxy.fakeCIDR'): Ipv4Range {
  const [ip, p] = cidr.split('/');
  const base = ipv4ToInt(ip ?? '');
  const prefix = Number(p);
  if (base === undefined || !Number.isInteger(prefix) || prefix < 0 || prefix > 32) throw new ConfigError(key, `expected an IPv4 CIDR, got ${JSON.stringify(cidr)}`);
  if (prefix > 30) throw new ConfigError(key, `${cidr} is too small: the fake-IP pool needs a /30 or larger block`);
  const size = 2 ** (32 - prefix);
  const network = prefix === 0 ? 0 : base - (base % size);
  return { network, prefix, size };
}

export function inRange(r: Ipv4Range, n: number): boolean {
  return n >= r.network && n < r.network + r.size;
}

/** Usable = not the network and not the broadcast address of the block. */
export function usable(r: Ipv4Range, n: number): boolean {
  return n > r.network && n < r.network + r.size - 1;
}

/** Deterministic first choice for a Service key: an address in the usable part of the block. */
export function firstChoice(r: Ipv4Range, serviceKey: string): number {
  const h = createHash('sha256').update(serviceKey).digest().readUInt32BE(0);
  return r.network + 1 + (h % (r.size - 2));
}

export interface FakeEntry {
  readonly ip: number;
  /** Wall-clock ms when the Service was last seen gone; undefined while it exists. */
  readonly goneSince?: number;
}

export interface ReconcileResult {
  readonly entries: Map<string, FakeEntry>;
  /** Service keys that got no IP because the pool is full. */
  readonly exhausted: string[];
  /** True when anything changed (the caller persists and notifies). */
  readonly changed: boolean;
}

/**
 * Pure: given the previous allocation, the Service keys that want an IP and the time, returns the new allocation.
 * Existing Services keep their IP; Services that came back within the grace period get their old IP back; new ones
 * get hash-first-choice, probing upward (wrapping, skipping network/broadcast) past every reserved address.
 */
export function reconcileFake(prev: ReadonlyMap<string, FakeEntry>, wanted: Iterable<string>, now: number, r: Ipv4Range, graceMs = FAKE_IP_GRACE_MS, reserved: ReadonlySet<number> = new Set()): ReconcileResult {
  const want = new Set(wanted);
  const entries = new Map<string, FakeEntry>();
  // `reserved`: addresses the other table of the same pool holds (Service IPs vs per-endpoint mesh IPs).
  const used = new Set<number>(reserved);
  let changed = false;
  for (const [key, e] of prev) {
    if (!usable(r, e.ip) || used.has(e.ip)) { changed = true; continue; }
    if (want.has(key)) {
      entries.set(key, e.goneSince === undefined ? e : { ip: e.ip });
      if (e.goneSince !== undefined) changed = true;
    } else if (e.goneSince === undefined) {
      entries.set(key, { ip: e.ip, goneSince: now });
      changed = true;
    } else if (now - e.goneSince < graceMs) {
      entries.set(key, e);
    } else {
      changed = true; // released
      continue;
    }
    used.add(e.ip);
  }
  const exhausted: string[] = [];
  const capacity = r.size - 2;
  for (const key of [...want].filter((k) => !entries.has(k)).sort()) {
    if (used.size >= capacity) { exhausted.push(key); continue; }
    let ip = firstChoice(r, key);
    while (used.has(ip)) {
      ip++;
      if (!usable(r, ip)) ip = r.network + 1;
    }
    used.add(ip);
    entries.set(key, { ip });
    changed = true;
  }
  return { entries, exhausted, changed };
}

/** Which Services get an IP from the table: everything with a virtual IP, i.e. not headless and not ExternalName. */
export function wantsIP(s: Service): boolean {
  return !s.headless && s.type !== 'ExternalName';
}

/** Key of a per-endpoint entry: `namespace/service/label`. */
export const meshKey = (serviceKey: string, label: string) => `${serviceKey}/${label}`;

const owners = new WeakMap<readonly Endpoint[], Map<string, Endpoint>>();
/**
 * The endpoint behind each label (hostname, else dashed address) of a Service's endpoints: when two share a label (a
 * StatefulSet pod and its terminating predecessor), the ready one, then the serving one, then the lowest address.
 * IPv4 endpoints only (mesh IPs are IPv4). Pure, memoised per (immutable) endpoint list.
 */
export function labelOwners(eps: readonly Endpoint[]): ReadonlyMap<string, Endpoint> {
  let m = owners.get(eps);
  if (m) return m;
  m = new Map();
  const rank = (e: Endpoint) => (e.ready ? 0 : e.serving ? 1 : 2);
  for (const e of eps) {
    if (e.addressType !== 'IPv4') continue;
    const label = endpointLabel(e);
    const cur = m.get(label);
    if (!cur || rank(e) < rank(cur) || (rank(e) === rank(cur) && e.address < cur.address)) m.set(label, e);
  }
  owners.set(eps, m);
  return m;
}

export interface MeshEndpoint {
  readonly serviceKey: string;
  readonly label: string;
  readonly endpoint: Endpoint;
}

/** Which endpoints get a mesh IP on this node (the tunnel is on): see meshEndpoints. */
export interface MeshEndpointOptions {
  readonly thisNode: string;
  /** proxy.directCIDRs: endpoints in these ranges are reached as they are. */
  readonly directCIDRs: readonly string[];
}

/**
 * Pure: the endpoints of headless Services (in the mesh, not opted out) that need a mesh IP from this node, by key —
 * on another node, outside proxy.directCIDRs, IPv4, with at least one TCP or UDP port to intercept.
 */
export function meshEndpoints(snap: Snapshot, thisNode: string, ranges: DirectRanges): Map<string, MeshEndpoint> {
  const out = new Map<string, MeshEndpoint>();
  for (const svc of snap.services.values()) {
    if (!svc.headless || svc.type === 'ExternalName') continue;
    const eps = snap.endpoints.get(svc.key);
    if (!eps?.length) continue;
    for (const [label, ep] of labelOwners(eps)) {
      if (!needsMeshIP(reachOf(ep.nodeName, ep.address, thisNode, ranges), true)) continue;
      if (!ep.ports.some((p) => p.protocol === 'TCP' || p.protocol === 'UDP')) continue;
      out.set(meshKey(svc.key, label), { serviceKey: svc.key, label, endpoint: ep });
    }
  }
  return out;
}

export interface ServiceIPTableOptions {
  mode: 'clusterIP' | 'fake';
  fakeCIDR: string;
  stateDir: string;
  log: Logger;
  /** Per-endpoint mesh IPs for headless Services (the agent sets it when the tunnel is on); absent = none. */
  meshEndpoints?: MeshEndpointOptions;
  /** Injected clock (tests). */
  now?: () => number;
  graceMs?: number;
}

/** The agent's ServiceIPTable. Feed it snapshots with update(); listeners run after every visible change. */
export class ServiceIPs implements ServiceIPTable {
  readonly mode: 'clusterIP' | 'fake';
  /** Increases by one on every visible change (DNS keys its answer cache on it). */
  version = 0;
  private byKey = new Map<string, readonly string[]>();
  private byIP = new Map<string, string>();
  private fake = new Map<string, FakeEntry>();
  /** Per-endpoint allocations (key meshKey), and what of them is visible: endpoints present now. */
  private meshFake = new Map<string, FakeEntry>();
  private meshByKey = new Map<string, EndpointIP>();
  private meshByIP = new Map<string, EndpointIP>();
  private meshByPod = new Map<string, EndpointIP>();
  private readonly mesh: { thisNode: string; ranges: DirectRanges } | undefined;
  /** The pool: proxy.fakeCIDR in fake mode, and in either mode when per-endpoint mesh IPs are on. */
  private readonly range: Ipv4Range | undefined;
  private readonly file: string;
  private readonly listeners = new Set<() => void>();
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly graceMs: number;
  private persistWarned = false;
  private exhaustedWarned = false;
  private meshExhaustedWarned = false;

  constructor(opts: ServiceIPTableOptions) {
    this.mode = opts.mode;
    this.log = opts.log;
    this.now = opts.now ?? Date.now;
    this.graceMs = opts.graceMs ?? FAKE_IP_GRACE_MS;
    this.file = join(opts.stateDir, FAKE_IP_FILE);
    this.mesh = opts.meshEndpoints ? { thisNode: opts.meshEndpoints.thisNode, ranges: new DirectRanges(opts.meshEndpoints.directCIDRs) } : undefined;
    this.range = opts.mode === 'fake' || this.mesh ? parseFakeCIDR(opts.fakeCIDR) : undefined;
    if (this.range) this.load();
  }

  ipsFor(serviceKey: string): readonly string[] {
    return this.byKey.get(serviceKey) ?? [];
  }

  serviceFor(ip: string): string | undefined {
    return this.byIP.get(ip);
  }

  entries(): ReadonlyMap<string, readonly string[]> {
    return this.byKey;
  }

  onChange(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  endpointIP(serviceKey: string, label: string): EndpointIP | undefined {
    return this.meshByKey.get(meshKey(serviceKey, label));
  }

  endpointFor(ip: string): EndpointIP | undefined {
    return this.meshByIP.get(ip);
  }

  endpointIPs(): ReadonlyMap<string, EndpointIP> {
    return this.meshByKey;
  }

  podMeshIP(namespace: string, podIP: string): EndpointIP | undefined {
    return this.meshByPod.get(`${namespace}|${podIP}`);
  }

  /** True when `ip` is in the pool (fake mode, or per-endpoint mesh IPs on): unallocated addresses get NXDOMAIN. */
  inFakePool(ip: string): boolean {
    const n = ipv4ToInt(ip);
    return this.range !== undefined && n !== undefined && inRange(this.range, n);
  }

  /** Recomputes the table from a snapshot. The empty initial snapshot (version 0) is ignored in fake mode. */
  update(snap: Snapshot): void {
    let next: Map<string, readonly string[]>;
    let mesh = this.meshByKey;
    if (this.range) {
      if (snap.version === 0) return;
      const now = this.now();
      // Services first (their IPs avoid the endpoints' current ones), then endpoints around the Services' new ones.
      // In clusterIP mode no Service holds a pool address: entries from a fake-mode past expire after the grace.
      const wanted = this.mode === 'fake' ? [...snap.services.values()].filter(wantsIP).map((s) => s.key) : [];
      const res = reconcileFake(this.fake, wanted, now, this.range, this.graceMs, ipSet(this.meshFake));
      // Warned once per episode: again when the pool fills up after it had room.
      if (res.exhausted.length && !this.exhaustedWarned) this.log.warn({ services: res.exhausted.slice(0, 10), count: res.exhausted.length }, 'proxy.fakeCIDR is full: some Services get no IP');
      this.exhaustedWarned = res.exhausted.length > 0;
      const want = this.mesh ? meshEndpoints(snap, this.mesh.thisNode, this.mesh.ranges) : new Map<string, MeshEndpoint>();
      const mres = reconcileFake(this.meshFake, want.keys(), now, this.range, this.graceMs, ipSet(res.entries));
      if (mres.exhausted.length && !this.meshExhaustedWarned) this.log.warn({ endpoints: mres.exhausted.slice(0, 10), count: mres.exhausted.length }, 'proxy.fakeCIDR is full: some headless endpoints get no mesh IP (DNS answers their pod IPs)');
      this.meshExhaustedWarned = mres.exhausted.length > 0;
      if (res.changed || mres.changed) {
        this.fake = res.entries;
        this.meshFake = mres.entries;
        this.persist();
      }
      next = new Map();
      if (this.mode === 'fake') {
        for (const [key, e] of this.fake) if (e.goneSince === undefined) next.set(key, Object.freeze([intToIpv4(e.ip)]));
      } else {
        for (const s of snap.services.values()) if (wantsIP(s) && s.clusterIPs.length) next.set(s.key, s.clusterIPs);
      }
      mesh = new Map();
      for (const [key, m] of want) {
        const e = this.meshFake.get(key);
        if (!e || e.goneSince !== undefined) continue; // the pool is full: answered by its pod IP
        const cur = this.meshByKey.get(key);
        const ip = intToIpv4(e.ip);
        const { address, nodeName } = m.endpoint;
        mesh.set(key, cur && cur.ip === ip && cur.address === address && cur.nodeName === nodeName
          ? cur
          : Object.freeze({ serviceKey: m.serviceKey, label: m.label, ip, address, nodeName: nodeName! }));
      }
    } else {
      next = new Map();
      for (const s of snap.services.values()) if (wantsIP(s) && s.clusterIPs.length) next.set(s.key, s.clusterIPs);
    }
    if (sameTable(this.byKey, next) && sameEntries(this.meshByKey, mesh)) return;
    const byIP = new Map<string, string>();
    for (const [key, ips] of next) for (const ip of ips) if (!byIP.has(ip)) byIP.set(ip, key);
    this.byKey = next;
    this.byIP = byIP;
    if (mesh !== this.meshByKey) {
      this.meshByKey = mesh;
      this.meshByIP = new Map([...mesh.values()].map((m) => [m.ip, m]));
      // A pod backing several headless Services: its pod name answers the mesh IP of the first Service by key.
      this.meshByPod = new Map();
      for (const m of [...mesh.values()].sort((a, b) => (a.serviceKey < b.serviceKey ? -1 : a.serviceKey > b.serviceKey ? 1 : 0))) {
        const k = `${m.serviceKey.slice(0, m.serviceKey.indexOf('/'))}|${m.address}`;
        if (!this.meshByPod.has(k)) this.meshByPod.set(k, m);
      }
    }
    this.version++;
    for (const fn of this.listeners) {
      try {
        fn();
      } catch (e) {
        this.log.warn({ err: e }, 'a ServiceIPTable listener failed');
      }
    }
  }

  private load(): void {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') this.log.warn({ file: this.file, err: (e as Error).message }, 'cannot read the fake-IP table; starting empty');
      return;
    }
    try {
      type Entries = Record<string, { ip?: unknown; goneSince?: unknown }>;
      const doc = JSON.parse(text) as { format?: number; services?: Entries; endpoints?: Entries };
      if (doc.format !== FILE_FORMAT || !doc.services || typeof doc.services !== 'object') throw new Error('unknown format');
      const seen = new Set<number>();
      const read = (from: Entries | undefined, into: Map<string, FakeEntry>) => {
        if (!from || typeof from !== 'object') return;
        for (const [key, v] of Object.entries(from)) {
          const n = typeof v?.ip === 'string' ? ipv4ToInt(v.ip) : undefined;
          if (n === undefined || !usable(this.range!, n) || seen.has(n)) continue; // other CIDR or corrupt: dropped
          seen.add(n);
          into.set(key, typeof v.goneSince === 'number' ? { ip: n, goneSince: v.goneSince } : { ip: n });
        }
      };
      read(doc.services, this.fake);
      read(doc.endpoints, this.meshFake);
      this.log.info({ file: this.file, services: this.fake.size, endpoints: this.meshFake.size }, 'loaded the fake-IP table');
    } catch (e) {
      this.log.warn({ file: this.file, err: (e as Error).message }, 'the fake-IP table file is unreadable; starting empty');
    }
  }

  /** Durable atomic write (temp file, fsync, rename): stable fake IPs survive a crash or power cut. */
  private persist(): void {
    const render = (m: ReadonlyMap<string, FakeEntry>) => {
      const out: Record<string, { ip: string; goneSince?: number }> = {};
      for (const [key, e] of [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
        out[key] = e.goneSince === undefined ? { ip: intToIpv4(e.ip) } : { ip: intToIpv4(e.ip), goneSince: e.goneSince };
      }
      return out;
    };
    const doc = { format: FILE_FORMAT, services: render(this.fake), ...(this.meshFake.size ? { endpoints: render(this.meshFake) } : {}) };
    try {
      writeFileAtomicSync(this.file, JSON.stringify(doc, null, 1) + '\n');
      this.persistWarned = false;
    } catch (e) {
      if (!this.persistWarned) this.log.warn({ file: this.file, err: (e as Error).message }, 'cannot persist the fake-IP table; IPs may change on restart');
      this.persistWarned = true;
    }
  }
}

function sameTable(a: ReadonlyMap<string, readonly string[]>, b: ReadonlyMap<string, readonly string[]>): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) {
    const w = b.get(k);
    if (!w || w.length !== v.length || w.some((ip, i) => ip !== v[i])) return false;
  }
  return true;
}

function sameEntries<K, V>(a: ReadonlyMap<K, V>, b: ReadonlyMap<K, V>): boolean {
  if (a === b) return true;
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}

function ipSet(m: ReadonlyMap<string, FakeEntry>): Set<number> {
  return new Set([...m.values()].map((e) => e.ip));
}
