// The Dialer the proxy uses for endpoints on other nodes: a stream through the tunnel (direct when punched, relay
// otherwise), already answered OK by the remote agent, within the proxy's dial deadline.
import type { Duplex } from 'node:stream';
import { DialError, dialDeadline, type DatagramChannel, type Deadline, type Dialer, type DialTarget } from '../proxy/dialer.ts';
import { streamDatagramChannel } from './datagram.ts';
import type { Tunnel } from './tunnel.ts';
import { DEFAULT_DIAL_MS } from './timers.ts';

export class TunnelDialer implements Dialer {
  private readonly tunnel: Tunnel;
  constructor(tunnel: Tunnel) {
    this.tunnel = tunnel;
  }

  private node(t: DialTarget): string {
    if (!t.nodeName) throw new DialError('no-route', `endpoint ${t.ip}:${t.port} has no node: dial it directly`);
    return t.nodeName;
  }

  async dialTcp(t: DialTarget, deadline: Deadline = dialDeadline(DEFAULT_DIAL_MS)): Promise<Duplex> {
    return this.tunnel.open(this.node(t), { ...t, protocol: 'tcp' }, deadline);
  }

  async openUdp(t: DialTarget, deadline: Deadline = dialDeadline(DEFAULT_DIAL_MS)): Promise<DatagramChannel> {
    return streamDatagramChannel(await this.tunnel.open(this.node(t), { ...t, protocol: 'udp' }, deadline));
  }
}
