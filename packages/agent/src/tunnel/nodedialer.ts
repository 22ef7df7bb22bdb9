// The NodeDialer (nodeaccess/access.ts) for other nodes: a node-access stream through the tunnel (direct when punched,
// relay otherwise). The far agent decides whether we may reach that port and dials its own loopback; its refusal
// comes back as the DialError code of its ERR (forbidden, refused, timeout, ...), which the SOCKS5 server turns
// into a reply code (socks5/destination.ts replyForDialCode).
import type { Duplex } from 'node:stream';
import type { NodeDialer } from '../nodeaccess/access.ts';
import { dialDeadline } from '../proxy/dialer.ts';
import type { Tunnel } from './tunnel.ts';
import { NODE_ACCESS_DIAL_MS } from './timers.ts';

export class TunnelNodeDialer implements NodeDialer {
  private readonly tunnel: Tunnel;
  constructor(tunnel: Tunnel) {
    this.tunnel = tunnel;
  }

  dialNode(node: string, port: number, signal: AbortSignal): Promise<Duplex> {
    return this.tunnel.openNode(node, port, dialDeadline(NODE_ACCESS_DIAL_MS, signal));
  }
}
