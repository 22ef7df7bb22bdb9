// Which path reaches an endpoint. Pure.
import { BlockList, isIP } from 'node:net';
import { parseCidr } from '@edgemesh/common/config';

export type DialerChoice = 'direct' | 'tunnel';

/**
 * Same node (or unknown node) -> direct; another node -> the tunnel when one is configured, else direct as a fallback
 * (flat networks where pod IPs are routable between nodes).
 */
export function chooseDialer(endpointNode: string | undefined, thisNode: string, haveTunnel: boolean): DialerChoice {
  if (endpointNode === undefined || endpointNode === '' || endpointNode === thisNode) return 'direct';
  return haveTunnel ? 'tunnel' : 'direct';
}

/** `proxy.directCIDRs` as a matcher: endpoint IPs in these ranges are routable from every node (a flat pod network). */
export class DirectRanges {
  readonly cidrs: readonly string[];
  private readonly list = new BlockList();

  /** Malformed entries are skipped (the config schema refuses them at start). */
  constructor(cidrs: readonly string[]) {
    const kept: string[] = [];
    for (const c of cidrs) {
      const p = parseCidr(c);
      if (!p) continue;
      this.list.addSubnet(p.address, p.prefix, p.family === 4 ? 'ipv4' : 'ipv6');
      kept.push(c);
    }
    this.cidrs = Object.freeze(kept);
  }

  get empty(): boolean {
    return this.cidrs.length === 0;
  }

  has(ip: string): boolean {
    if (this.cidrs.length === 0) return false;
    const f = isIP(ip);
    return f !== 0 && this.list.check(ip, f === 4 ? 'ipv4' : 'ipv6');
  }
}

/**
 * Where an endpoint is, seen from this node: `local` (this node, or no node named: dialed as it is), `flat` (another
 * node, its IP in proxy.directCIDRs) or `remote` (another node, reachable only through the mesh).
 */
export type Reach = 'local' | 'flat' | 'remote';

export function reachOf(endpointNode: string | undefined, ip: string, thisNode: string, ranges: DirectRanges): Reach {
  if (endpointNode === undefined || endpointNode === '' || endpointNode === thisNode) return 'local';
  return ranges.has(ip) ? 'flat' : 'remote';
}

/**
 * The path of one dial: `direct` (plain dial: this node, or no tunnel configured), `flat` (plain dial to another node,
 * falling back to the tunnel when it fails — proxy/flat.ts) or `tunnel`. `nodeFlat`: the endpoint's node has not
 * recently failed a direct dial.
 */
export type Path = 'direct' | 'flat' | 'tunnel';

export function choosePath(reach: Reach, haveTunnel: boolean, nodeFlat: boolean): Path {
  if (reach === 'local' || !haveTunnel) return 'direct';
  if (reach === 'flat' && nodeFlat) return 'flat';
  return 'tunnel';
}

/**
 * True when an endpoint needs a mesh IP of its own to be reached from this node (a headless Service's endpoint: its
 * pod IP is not routable from here). Only through the tunnel: without one every endpoint is dialed as it is.
 */
export function needsMeshIP(reach: Reach, haveTunnel: boolean): boolean {
  return reach === 'remote' && haveTunnel;
}
