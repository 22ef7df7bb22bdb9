// What a PeerPaths is given and what it reports: the seams between one peer's state and the rest of the tunnel
// (types only; tunnel.ts provides the real ones, unit tests fakes).
import type { Logger } from '@edgemesh/common/log';
import type { RawKeyPair } from '@edgemesh/common/tunnel/ed25519';
import type { ControlInput, T } from '@edgemesh/common/tunnel/protocol';
import type { DialErrorCode } from '../proxy/dialer.ts';
import type { Clock } from './clock.ts';
import type { Transport } from './link.ts';
import type { NodeAccessHeader, StreamHeader } from './linkproto.ts';
import type { TunnelBudgets } from './limits.ts';
import type { TunnelMetrics } from './metrics.ts';
import type { TunnelStream } from './stream.ts';
import type { DirectEnv } from './udptypes.ts';
import type { PeerIdentity } from './identity.ts';
import type { TcpPeer } from './tcplink.ts';

/** How the tunnel dials a peer over TCP (tunnel.ts: dialTcpLink with our link certificate). */
export interface TcpEnv {
  dial(node: string, targets: readonly { host: string; port: number }[]): Promise<TcpPeer>;
  /** Our IPv4 subnets (CIDR): a peer's LAN candidate inside one is on our LAN. */
  subnets(): readonly string[];
}

/** What PeerDirect sends; the tunnel signs it (rendezvous.ts) and adds ts, cert, sig. */
export type RendezvousOut = Omit<ControlInput<typeof T.RENDEZVOUS>, 'ts' | 'cert' | 'sig'>;

export interface PeerEnv {
  self: string;
  keyPair: RawKeyPair;
  clock: Clock;
  log: Logger;
  metrics: TunnelMetrics;
  /** Our certificate and the check of peers' (identity.ts). */
  identity: PeerIdentity;
  /** A relay stream to the peer through the first connected server that has it. */
  openRelay(node: string): Promise<{ stream: Transport['stream']; server: string }>;
  /** Sends a rendezvous request through every connected server (the peer answers the first copy); false if none. */
  rendezvous(msg: RendezvousOut): boolean;
  /** The serving side for streams the peer opens (`peer`: its node name as the link authenticated it; `rttMs`: the
   *  link's, so the answer comes back in time). */
  serve: (peer: string, h: StreamHeader, accept: () => TunnelStream, reject: (code: DialErrorCode, message: string) => void, rttMs: number | null) => void;
  /** The serving side for node-access streams the peer opens (`peer`: its name, as the link authenticated it). */
  serveNode: (peer: string, h: NodeAccessHeader, accept: () => TunnelStream, reject: (code: DialErrorCode, message: string) => void, rttMs: number | null) => void;
  /** The TCP transport (tcplink.ts); absent = no TCP links. */
  tcp?: TcpEnv;
  /** The UDP side; absent = relay only. */
  direct?: DirectEnv;
  upgradeRetryMs?: number;
  /** Budgets for links per peer, punch sessions and birthday sockets (limits.ts); absent = unlimited (unit tests). */
  budgets?: TunnelBudgets;
}

export interface PeerStatus { node: string; path: 'direct' | 'relay' | 'connecting'; transport: 'udx' | 'tcp' | 'relay' | null; remote: string | null; rttMs: number | null }
