// The Dialer the proxy uses for endpoints on other nodes: a stream through the tunnel (direct when punched, relay
// otherwise), already answered OK by the remote agent.
import type { Duplex } from 'node:stream';
import { DialError, type DatagramChannel, type Dialer, type DialTarget } from '../proxy/dialer.ts';
import { streamDatagramChannel } from './datagram.ts';
import type { Tunnel } from './tunnel.ts';

export class TunnelDialer implements Dialer {
  private readonly tunnel: Tunnel;
  constructor(tunnel: Tunnel) {
    this.tunnel = tunnel;
  }

  private node(t: DialTarget): string {
    if (!t.nodeName) throw new DialError('no-route', `endpoint ${t.ip}:${t.port} has no node: dial it directly`);
    return t.nodeName;
  }

  async dialTcp(t: DialTarget, signal?: AbortSignal): Promise<Duplex> {
    return this.tunnel.open(this.node(t), { protocol: 'tcp', serviceKey: t.serviceKey, ip: t.ip, port: t.port }, signal);
  }

  async openUdp(t: DialTarget, signal?: AbortSignal): Promise<DatagramChannel> {
    const s = await this.tunnel.open(this.node(t), { protocol: 'udp', serviceKey: t.serviceKey, ip: t.ip, port: t.port }, signal);
    return streamDatagramChannel(s);
  }
}
