// Which transport carries a peer's session, decided over plain data (no sockets): kernel TCP with TLS 1.3 when the
// peer answers on TCP (same LAN, a public or forwarded address), else the punched UDX path, else a relay through a
// server. TCP is preferred when it works: the kernel does segmentation, checksums and retransmission, and OpenSSL's
// AES-GCM is far cheaper per byte than the userspace UDX stream with Noise (bench/tunnel measures both in one run).
// UDX stays up beside it as the warm fallback: when the TCP link closes, the session moves to UDX (or the relay).
import { BlockList, isIPv4 } from 'node:net';
import { addrKey, choosePath, type Addr, type Candidate } from './punch.ts';

export type TransportChoice = 'tcp' | 'udx' | 'relay' | 'none';

export interface TransportState {
  /** A TCP link is up and authenticated. */
  tcp: boolean;
  /** A punched UDX link is up. */
  udx: boolean;
  /** The UDX link did not answer a dial within its share of the deadline (PeerPaths.suspectDirect). */
  udxSuspect: boolean;
  /** A relay link is up. */
  relay: boolean;
}

/**
 * The transport the session should be on. A TCP link is never "suspect": TCP retransmits by itself, so a TCP link
 * that stops answering is closed (PeerPaths) rather than kept beside another; while it is up it wins.
 */
export function chooseTransport(s: TransportState): TransportChoice {
  if (s.tcp) return 'tcp';
  const p = choosePath({ direct: s.udx, directSuspect: s.udxSuspect, relay: s.relay });
  return p === 'direct' ? 'udx' : p;
}

/** At most this many of the peer's addresses are dialed over TCP at once (a rendezvous carries at most 8 unicast
 *  candidates; the LAN ones come first, and a host has a few interfaces at most). */
export const MAX_TCP_DIAL_TARGETS = 4;

const KIND_ORDER: Record<Candidate['kind'], number> = { lan: 0, stun: 1, prflx: 2 };

/** Whether `ip` (IPv4) is inside one of `cidrs` (`a.b.c.d/n`; others are ignored). */
export function inSubnets(ip: string, cidrs: readonly string[]): boolean {
  if (!isIPv4(ip)) return false;
  const bl = new BlockList();
  for (const c of cidrs) {
    const [net, bits] = c.split('/');
    if (isIPv4(net) && Number(bits) >= 0 && Number(bits) <= 32) bl.addSubnet(net, Number(bits), 'ipv4');
  }
  return bl.check(ip, 'ipv4');
}

/**
 * The peer's addresses worth a TCP dial, best first (the TCP listener has the UDP port's number): its LAN candidates
 * inside one of our own subnets (`ourSubnets`: a peer on our LAN), and when the peer has a public address (`peerNat`
 * `open`: its interface address is public) its other candidates too. A peer behind a NAT is not dialed on its
 * mapping (a NAT does not forward unsolicited TCP; a port forward cannot be told from here), so NATed pairs make no
 * TCP attempt at all and stay on UDX. Duplicates and port 0 are dropped.
 */
export function tcpDialTargets(cand: readonly Candidate[], o: { ourSubnets: readonly string[]; peerNat: string }, max = MAX_TCP_DIAL_TARGETS): Addr[] {
  const seen = new Set<string>();
  const out: Addr[] = [];
  for (const c of [...cand].sort((a, b) => KIND_ORDER[a.kind] - KIND_ORDER[b.kind])) {
    if (!(c.port > 0 && c.port < 65536)) continue;
    if (c.kind === 'prflx' || !(o.peerNat === 'open' || (c.kind === 'lan' && inSubnets(c.host, o.ourSubnets)))) continue;
    const k = addrKey(c);
    if (seen.has(k)) continue;
    seen.add(k);
    out.push({ host: c.host, port: c.port });
    if (out.length >= max) break;
  }
  return out;
}

/** Whether to dial the peer over TCP now: not while a TCP link is up or a dial is under way, and not again within
 *  `retryMs` of a failed one (a rendezvous comes with every punch attempt; a peer that does not answer on TCP is
 *  not dialed on each of them). */
export function shouldDialTcp(s: { haveTcp: boolean; dialing: boolean; lastFailedAt: number; now: number; retryMs: number; targets: number }): boolean {
  return !s.haveTcp && !s.dialing && s.targets > 0 && s.now - s.lastFailedAt >= s.retryMs;
}

/**
 * Both nodes may dial each other at once: each then holds two TCP links. Both keep the same one, the link dialed by
 * the node with the smaller name; two links dialed by the same side: the newer (the dialer gave the older one up).
 */
export function keepTcpLink(self: string, peer: string, existingDialedBySelf: boolean, newDialedBySelf: boolean): 'existing' | 'new' {
  if (existingDialedBySelf === newDialedBySelf) return 'new';
  const selfSmaller = self < peer;
  return newDialedBySelf === selfSmaller ? 'new' : 'existing';
}
