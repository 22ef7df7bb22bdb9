// Who the node-local DNS answers: this node's own addresses (every interface address, the loopback range, the
// Node object's status.addresses), the pod CIDRs of this node (its Node object's spec.podCIDRs) and dns.allowCIDRs.
// Everyone else gets REFUSED (UDP) or has the connection closed at accept (TCP), so the agent is no open resolver and
// no amplifier for whoever can reach dns.listen. The range list is a pure function of plain data; matching uses
// Node's BlockList behind a small per-address cache (the hot path is one Map lookup).
import { BlockList, isIP } from 'node:net';
import { parseCidr } from '@edgemesh/common/config';

/** Per-address decisions kept; the cache is cleared when it grows past this (spoofed sources cannot grow memory). */
export const ACL_CACHE_MAX = 8192;

export interface AclInputs {
  /** Addresses of this host's interfaces (os.networkInterfaces()): `address` plus whether the interface is internal. */
  readonly interfaces: readonly { address: string; internal: boolean; cidr?: string | null }[];
  /** This node's Node object, when the cluster knows it. */
  readonly node?: { readonly addresses: readonly string[]; readonly podCIDRs?: readonly string[] };
  /** dns.allowCIDRs */
  readonly allowCIDRs: readonly string[];
}

export interface ClientRange {
  readonly address: string;
  readonly prefix: number;
  readonly family: 4 | 6;
  /** Why it is a client (for /status and logs). */
  readonly why: 'local' | 'loopback' | 'node' | 'podCIDR' | 'allowCIDRs';
}

/** Strips an IPv4-mapped IPv6 prefix (`::ffff:10.0.0.1` from a dual-stack socket) and a zone id. */
export function normalizeAddress(a: string): string {
  const pct = a.indexOf('%');
  const s = pct >= 0 ? a.slice(0, pct) : a;
  return s.length > 7 && s.charCodeAt(0) === 58 /* : */ && s.slice(0, 7).toLowerCase() === '::ffff:' && s.includes('.') ? s.slice(7) : s;
}

function host(address: string, why: ClientRange['why']): ClientRange | undefined {
  const a = normalizeAddress(address);
  const f = isIP(a);
  if (f === 0) return undefined;
  return { address: a, prefix: f === 4 ? 32 : 128, family: f as 4 | 6, why };
}

function range(cidr: string, why: ClientRange['why']): ClientRange | undefined {
  const c = parseCidr(cidr);
  return c ? { ...c, address: normalizeAddress(c.address), why } : undefined;
}

/**
 * The ranges DNS answers. Interface addresses count as single hosts (their subnet is other machines), except internal
 * (loopback) interfaces, whose whole range is this host. Malformed entries (a Node with a bad podCIDR) are skipped.
 */
export function clientRanges(inp: AclInputs): ClientRange[] {
  const out: (ClientRange | undefined)[] = [];
  for (const i of inp.interfaces) out.push(i.internal && i.cidr ? range(i.cidr, 'loopback') : host(i.address, 'local'));
  for (const a of inp.node?.addresses ?? []) out.push(host(a, 'node'));
  for (const c of inp.node?.podCIDRs ?? []) out.push(range(c, 'podCIDR'));
  for (const c of inp.allowCIDRs) out.push(range(c, 'allowCIDRs'));
  const seen = new Set<string>();
  return out.filter((r): r is ClientRange => {
    if (!r) return false;
    const k = `${r.address}/${r.prefix}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

/** A matcher over client ranges: `isClient(address)` for a packet's source address. */
export class ClientAcl {
  readonly ranges: readonly ClientRange[];
  private readonly list = new BlockList();
  private readonly cache = new Map<string, boolean>();

  constructor(ranges: readonly ClientRange[]) {
    this.ranges = ranges;
    for (const r of ranges) this.list.addSubnet(r.address, r.prefix, r.family === 4 ? 'ipv4' : 'ipv6');
  }

  isClient(address: string): boolean {
    const hit = this.cache.get(address);
    if (hit !== undefined) return hit;
    const a = normalizeAddress(address);
    const f = isIP(a);
    const ok = f !== 0 && this.list.check(a, f === 4 ? 'ipv4' : 'ipv6');
    if (this.cache.size >= ACL_CACHE_MAX) this.cache.clear();
    this.cache.set(address, ok);
    return ok;
  }
}
