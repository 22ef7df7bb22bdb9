// A hand-made agent for server tests and the abuse tools: TLS 1.3 (no certificate check: these are about the server),
// bootstrap enrollment with a fresh node key bound to the TLS session, then control messages and relay stream frames
// written by hand (so a test can misbehave on purpose).
import { connect as tcpConnect } from 'node:net';
import { connect, type TLSSocket } from 'node:tls';
import { encodeFrame, FrameDecoder, type Frame } from '../../packages/common/src/tunnel/frame.ts';
import { signWithContext } from '../../packages/common/src/identity/keys.ts';
import { nodeKey } from '../../packages/common/src/identity/testca.ts';
import { ENROLL_PROOF_CONTEXT, enrollProofMessage } from '../../packages/common/src/identity/enrollproof.ts';
import { PROTOCOL_VERSION, T, parseJson } from '../../packages/common/src/tunnel/protocol.ts';
import { ENROLL_BINDING_BYTES, ENROLL_EXPORTER_LABEL } from '../../packages/server/src/relay.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

export class RawAgent {
  sock!: TLSSocket;
  frames: Frame[] = [];
  closed = false;
  private msgs: { type: number; body: Record<string, unknown> | undefined }[] = [];

  /** Connects and signs in as `node` with the bootstrap `token`; rejects when the server refuses or closes. */
  static async connect(node: string, port: number, host: string, token: string, opts: { localAddress?: string; timeoutMs?: number } = {}): Promise<RawAgent> {
    const r = new RawAgent();
    const key = nodeKey();
    const ms = opts.timeoutMs ?? 10_000;
    r.sock = connect({ socket: tcpConnect({ port, host, localAddress: opts.localAddress }), rejectUnauthorized: false, minVersion: 'TLSv1.3' });
    const dec = new FrameDecoder();
    r.sock.on('data', (c: Buffer) => { try { r.frames.push(...dec.push(c)); } catch { r.sock.destroy(); } });
    r.sock.on('close', () => { r.closed = true; });
    r.sock.on('error', () => {});
    try {
      let secure = false;
      r.sock.once('secureConnect', () => { secure = true; });
      await until(() => secure || r.closed, ms, 'TLS');
      if (r.closed) throw new Error('closed during the TLS handshake');
      const binding = r.sock.exportKeyingMaterial(ENROLL_BINDING_BYTES, ENROLL_EXPORTER_LABEL, Buffer.alloc(0));
      const sig = signWithContext(key.privateKey, ENROLL_PROOF_CONTEXT, enrollProofMessage(binding, 'bootstrap', node));
      r.control(T.ENROLL, { v: PROTOCOL_VERSION, method: 'bootstrap', name: node, key: key.publicKey.toString('base64'), token, sig: sig.toString('base64') });
      await until(() => r.frames.some((f) => f.type === T.WELCOME || f.type === T.ENROLL_FAIL) || r.closed, ms, 'WELCOME');
      if (!r.take(T.WELCOME)) throw new Error('no WELCOME');
      return r;
    } catch (e) {
      r.sock.destroy();
      throw e;
    }
  }

  control(type: number, body: object): void {
    this.sock.write(encodeFrame(type, Buffer.from(JSON.stringify(body))));
  }

  /** Control messages in arrival order. */
  take(type: number): Record<string, unknown> | undefined {
    for (const f of this.frames.splice(0)) {
      if (f.type === T.DATA || f.type === T.CREDIT || f.type === T.END || f.type === T.RESET) this.frames.push(f);
      else this.msgs.push({ type: f.type, body: parseJson(f.payload) });
    }
    const i = this.msgs.findIndex((m) => m.type === type);
    return i < 0 ? undefined : this.msgs.splice(i, 1)[0].body;
  }

  /** Waits for a control message of `type`. */
  async next(type: number, ms = 10_000): Promise<Record<string, unknown>> {
    let m: Record<string, unknown> | undefined;
    await until(() => (m ??= this.take(type)) !== undefined || this.closed, ms, `message ${type}`);
    if (!m) throw new Error(`closed before message ${type}`);
    return m;
  }

  /** OPEN to `to`: resolves with {rid} or {fail: code}. */
  async open(req: number, to: string, ms = 10_000): Promise<{ rid?: number; fail?: string }> {
    this.control(T.OPEN, { req, to });
    let out: { rid?: number; fail?: string } | undefined;
    await until(() => {
      this.take(-1); // moves every arrived control message into msgs
      const i = this.msgs.findIndex((m) => (m.type === T.OPENED || m.type === T.OPEN_FAIL) && m.body?.req === req);
      if (i >= 0) {
        const m = this.msgs.splice(i, 1)[0];
        out = m.type === T.OPENED ? { rid: m.body!.rid as number } : { fail: m.body!.code as string };
      }
      return out !== undefined || this.closed;
    }, ms, `answer to OPEN ${req}`);
    if (!out) throw new Error('closed before the answer to OPEN');
    return out;
  }

  close(): void {
    this.sock.destroy();
  }
}
