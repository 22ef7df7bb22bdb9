// UDP + TCP listeners on one address and port (dns.listen). Transport only: every message goes to DnsHandler.
// TCP: 2-byte length framing, pipelined queries, idle timeout, connection cap. Malformed input is counted and
// dropped; no exception escapes a socket callback.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, isIP, type Server, type Socket } from 'node:net';
import type { Logger } from '@edgemesh/common/log';
import type { DnsHandler } from './handler.ts';
import { noMetrics, type DnsMetrics } from './metrics.ts';

export const TCP_IDLE_MS = 10_000;
export const MAX_TCP_CONNS = 1000;
/** Unanswered queries one TCP connection may have outstanding (pipelining); more closes the connection. */
export const MAX_TCP_PENDING = 100;
/** A TCP client that does not read its replies is dropped once this much is queued for it. */
export const MAX_TCP_QUEUED_BYTES = 1 << 20;
/** Requested UDP receive buffer (the kernel caps it at net.core.rmem_max): absorbs bursts while the loop is busy. */
export const UDP_RCVBUF_BYTES = 4 << 20;
/** With port 0, UDP and TCP must end up on the same ephemeral port; this many tries. */
const BIND_TRIES = 10;

export interface DnsServerOptions {
  host: string;
  port: number;
  handler: DnsHandler;
  log: Logger;
  metrics?: DnsMetrics;
}

export class DnsServer {
  private readonly opts: DnsServerOptions;
  private readonly metrics: DnsMetrics;
  private udp: UdpSocket | undefined;
  private tcp: Server | undefined;
  private readonly conns = new Set<Socket>();
  private boundPort = 0;

  constructor(opts: DnsServerOptions) {
    this.opts = opts;
    this.metrics = opts.metrics ?? noMetrics;
  }

  /** True while both listeners are bound. */
  get listening(): boolean {
    return this.udp !== undefined && this.tcp?.listening === true;
  }

  get port(): number {
    return this.boundPort;
  }

  async start(): Promise<{ host: string; port: number }> {
    let lastErr: unknown;
    for (let i = 0; i < (this.opts.port === 0 ? BIND_TRIES : 1); i++) {
      const udp = await this.bindUdp(this.opts.port);
      const port = udp.address().port;
      try {
        this.tcp = await this.bindTcp(port);
        this.udp = udp;
        this.boundPort = port;
        this.opts.log.info({ dns: `${this.opts.host}:${port}` }, 'DNS listening (udp+tcp)');
        return { host: this.opts.host, port };
      } catch (e) {
        lastErr = e;
        udp.close();
      }
    }
    throw lastErr;
  }

  private bindUdp(port: number): Promise<UdpSocket> {
    return new Promise((resolve, reject) => {
      const sock = createSocket({ type: isIP(this.opts.host) === 6 ? 'udp6' : 'udp4', recvBufferSize: UDP_RCVBUF_BYTES });
      sock.once('error', reject);
      sock.bind(port, this.opts.host, () => {
        sock.off('error', reject);
        sock.on('error', (e) => this.opts.log.warn({ err: e.message }, 'DNS UDP socket error'));
        sock.on('message', (msg, rinfo) => this.onDatagram(sock, msg, rinfo.port, rinfo.address));
        resolve(sock);
      });
    });
  }

  private onDatagram(sock: UdpSocket, msg: Buffer, port: number, address: string): void {
    let r: Buffer | null | Promise<Buffer | null>;
    try {
      r = this.opts.handler.handle(msg, false);
    } catch (e) {
      this.metrics.malformed('udp');
      this.opts.log.debug({ err: (e as Error).message }, 'DNS handler failed on a datagram');
      return;
    }
    if (r === null) return;
    if (r instanceof Promise) {
      r.then((b) => { if (b && this.udp) sock.send(b, port, address); }, (e: Error) => this.opts.log.debug({ err: e.message }, 'DNS async answer failed'));
    } else {
      sock.send(r, port, address);
    }
  }

  private bindTcp(port: number): Promise<Server> {
    return new Promise((resolve, reject) => {
      const srv = createServer({ noDelay: true }, (c) => this.onConn(c));
      srv.maxConnections = MAX_TCP_CONNS;
      srv.once('error', reject);
      srv.listen(port, this.opts.host, () => {
        srv.off('error', reject);
        srv.on('error', (e) => this.opts.log.warn({ err: e.message }, 'DNS TCP server error'));
        resolve(srv);
      });
    });
  }

  private onConn(c: Socket): void {
    this.conns.add(c);
    c.setTimeout(TCP_IDLE_MS, () => c.destroy());
    c.on('close', () => this.conns.delete(c));
    c.on('error', () => c.destroy());
    let buf: Buffer = Buffer.alloc(0);
    let pending = 0;
    const reply = (b: Buffer | null) => {
      pending--;
      if (!b || c.destroyed) return;
      if (c.writableLength > MAX_TCP_QUEUED_BYTES) {
        c.destroy();
        return;
      }
      const len = Buffer.allocUnsafe(2);
      len.writeUInt16BE(b.length);
      c.write(Buffer.concat([len, b]));
    };
    c.on('data', (d: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      while (buf.length >= 2) {
        const n = buf.readUInt16BE(0);
        if (buf.length < 2 + n) break;
        const msg = buf.subarray(2, 2 + n);
        buf = buf.subarray(2 + n);
        if (++pending > MAX_TCP_PENDING) {
          c.destroy();
          return;
        }
        let r: Buffer | null | Promise<Buffer | null>;
        try {
          r = this.opts.handler.handle(Buffer.from(msg), true);
        } catch {
          r = null;
          this.metrics.malformed('tcp');
        }
        if (r instanceof Promise) r.then(reply, () => reply(null));
        else reply(r);
      }
    });
  }

  async close(): Promise<void> {
    const udp = this.udp;
    const tcp = this.tcp;
    this.udp = undefined;
    this.tcp = undefined;
    for (const c of this.conns) c.destroy();
    if (udp) await new Promise<void>((r) => udp.close(() => r()));
    if (tcp) await new Promise<void>((r) => tcp.close(() => r()));
  }
}
