// STUN Binding server on UDP: the TCP listen port and stunAltPort. Answers only requests carrying a valid
// MESSAGE-INTEGRITY (a key this server hands to signed-in agents in WELCOME), so it is no open reflector; the answers are
// signed too. Anything else is counted and dropped.
import { hkdfSync, randomBytes, type KeyObject } from 'node:crypto';
import { createSocket, type Socket } from 'node:dgram';
import type { Registry } from 'prom-client';
import { Counter } from 'prom-client';
import type { Logger } from '@edgemesh/common/log';
import { BINDING_REQUEST, bindingSuccess, decodeStun } from '@edgemesh/common/tunnel/stun';

/** MESSAGE-INTEGRITY key length (bytes): HMAC-SHA1's, as RFC 8489 uses it. */
export const STUN_KEY_BYTES = 20;

/** The STUN integrity key: derived from the cluster CA's private key (HKDF-SHA256, its own label), so every server of
 *  a mesh — replicas behind one Service, where an agent's STUN packet may reach another replica than its TCP
 *  connection — answers the key it handed out; random per process for a server without the CA key. One-way: the key
 *  (which every signed-in agent holds) says nothing about the CA key. */
export function stunKeyFor(caKey: KeyObject | undefined): Buffer {
  if (!caKey) return randomBytes(STUN_KEY_BYTES);
  return Buffer.from(hkdfSync('sha256', caKey.export({ type: 'pkcs8', format: 'der' }), Buffer.alloc(0), 'edgemesh stun integrity key v1', STUN_KEY_BYTES));
}

export interface StunServerOptions {
  host: string;
  /** [main port (0 = the TCP port given to start), alt port] */
  ports: number[];
  /** MESSAGE-INTEGRITY key (20 bytes), told to signed-in agents only. */
  key: Buffer;
  log: Logger;
  registry: Registry;
}

export class StunServer {
  private readonly opts: StunServerOptions;
  private readonly key: Buffer;
  private readonly sockets: Socket[] = [];
  private readonly m: { req: Counter };

  constructor(opts: StunServerOptions) {
    this.opts = opts;
    this.key = opts.key;
    this.m = { req: new Counter({ name: 'edgemesh_server_stun_requests_total', help: 'STUN packets by outcome', labelNames: ['outcome'], registers: [opts.registry] }) };
  }

  ports(): number[] {
    return this.sockets.map((s) => s.address().port);
  }

  async start(mainPort: number): Promise<void> {
    const ports = [mainPort, this.opts.ports[1] ?? 0];
    for (const port of ports) {
      const fam = this.opts.host.includes(':') ? 'udp6' : 'udp4';
      const s = createSocket({ type: fam });
      s.on('message', (msg, rinfo) => this.onMessage(s, msg, rinfo.address, rinfo.port));
      s.on('error', (e) => this.opts.log.warn({ err: e.message }, 'STUN socket error'));
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.bind(port, this.opts.host || undefined, () => { s.off('error', reject); resolve(); });
      });
      this.sockets.push(s);
    }
  }

  /** Pure-ish handler (exposed for fuzz tests): returns the answer or undefined. */
  answer(msg: Buffer, host: string, port: number): Buffer | undefined {
    const m = decodeStun(msg, this.key);
    if (!m) {
      this.m.req.inc({ outcome: 'malformed' });
      return undefined;
    }
    if (m.type !== BINDING_REQUEST) {
      this.m.req.inc({ outcome: 'not-binding' });
      return undefined;
    }
    if (!m.integrity) {
      this.m.req.inc({ outcome: 'unauthenticated' });
      return undefined;
    }
    this.m.req.inc({ outcome: 'ok' });
    return bindingSuccess(m.txid, { host: host.replace(/^::ffff:/, ''), port }, this.key);
  }

  private onMessage(s: Socket, msg: Buffer, host: string, port: number): void {
    const out = this.answer(msg, host, port);
    if (out) s.send(out, port, host);
  }

  async stop(): Promise<void> {
    for (const s of this.sockets.splice(0)) await new Promise<void>((r) => s.close(() => r()));
  }
}
