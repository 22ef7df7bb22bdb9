// A tiny authoritative DNS server (UDP + TCP on one port) for tests and the DNS bench: answers from a record map,
// NXDOMAIN with an SOA otherwise, TC over UDP when the answer does not fit 512 bytes, optional per-name delay.
// Counts the queries it receives per transport.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type Server, type Socket } from 'node:net';
import dnsPacket from 'dns-packet';
import type { Answer, Packet } from 'dns-packet';

export interface UpstreamOptions {
  records: Record<string, Answer[]>;
  delayMs?: Record<string, number>;
  soaMinimum?: number;
  host?: string;
  /** Fixed port (default: an ephemeral one). */
  port?: number;
}

export interface TestUpstream {
  port: number;
  host: string;
  counts: { udp: number; tcp: number; byName: Map<string, number> };
  close(): Promise<void>;
}

export async function startUpstream(o: UpstreamOptions): Promise<TestUpstream> {
  const host = o.host ?? '127.0.0.1';
  const counts = { udp: 0, tcp: 0, byName: new Map<string, number>() };
  const answer = (msg: Buffer, tcp: boolean): { buf: Buffer; delay: number } | undefined => {
    let q: ReturnType<typeof dnsPacket.decode>;
    try {
      q = dnsPacket.decode(msg);
    } catch {
      return undefined;
    }
    const qq = q.questions?.[0];
    if (!qq) return undefined;
    const name = qq.name.toLowerCase();
    counts.byName.set(name, (counts.byName.get(name) ?? 0) + 1);
    const recs = (o.records[name] ?? []).filter((r) => r.type === qq.type || r.type === 'CNAME');
    const known = name in o.records;
    const res: Packet = {
      type: 'response', id: q.id, flags: dnsPacket.AUTHORITATIVE_ANSWER | (q.flags ?? 0) & dnsPacket.RECURSION_DESIRED | (known ? 0 : 3),
      questions: q.questions, answers: recs,
      authorities: recs.length ? [] : [{ name: name.split('.').slice(-1)[0] || '.', type: 'SOA', ttl: 3600, data: { mname: 'ns.test', rname: 'h.test', serial: 1, refresh: 1, retry: 1, expire: 1, minimum: o.soaMinimum ?? 60 } }],
    };
    let buf = dnsPacket.encode(res);
    if (!tcp && buf.length > 512) buf = dnsPacket.encode({ ...res, flags: (res.flags ?? 0) | dnsPacket.TRUNCATED_RESPONSE, answers: [], authorities: [] });
    return { buf, delay: o.delayMs?.[name] ?? 0 };
  };
  const onUdp = (udp: UdpSocket) => (msg: Buffer, rinfo: { port: number; address: string }) => {
    counts.udp++;
    const r = answer(msg, false);
    if (!r) return;
    const send = () => udp.send(r.buf, rinfo.port, rinfo.address);
    if (r.delay) setTimeout(send, r.delay);
    else send();
  };
  const onTcp = (c: Socket) => {
    let buf = Buffer.alloc(0);
    c.on('error', () => c.destroy());
    c.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const msg = buf.subarray(2, 2 + buf.readUInt16BE(0));
        buf = buf.subarray(2 + msg.length);
        counts.tcp++;
        const r = answer(msg, true);
        if (!r) continue;
        const len = Buffer.alloc(2);
        len.writeUInt16BE(r.buf.length);
        c.write(Buffer.concat([len, r.buf]));
      }
    });
  };
  // UDP on an ephemeral port, TCP on the same number (retry when that TCP port happens to be taken).
  let udp: UdpSocket | undefined;
  let tcp: Server | undefined;
  for (let i = 0; i < 10 && !tcp; i++) {
    const u = createSocket('udp4');
    u.on('message', onUdp(u));
    await new Promise<void>((res) => u.bind(o.port ?? 0, host, () => res()));
    const t = createServer(onTcp);
    try {
      await new Promise<void>((res, rej) => {
        t.once('error', rej);
        t.listen(u.address().port, host, () => res());
      });
      udp = u;
      tcp = t;
    } catch {
      u.close();
    }
  }
  if (!udp || !tcp) throw new Error('could not bind UDP and TCP on one port');
  const port = udp.address().port;
  const [u, t] = [udp, tcp];
  return {
    port, host, counts,
    async close() {
      await new Promise<void>((r) => u.close(() => r()));
      await new Promise<void>((r) => t.close(() => r()));
    },
  };
}
