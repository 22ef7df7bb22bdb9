// A hand-made agent for server tests and the abuse tools: the legacy HELLO/AUTH handshake with a token, then control
// messages and relay stream frames written by hand (so a test can misbehave on purpose).
import { connect, type Socket } from 'node:net';
import { encodeFrame, FrameDecoder, type Frame } from '../../packages/common/src/tunnel/frame.ts';
import { agentProof, ControlMac, keyTranscript, newNonce, sessionKey } from '../../packages/common/src/tunnel/auth.ts';
import { generateKeyPair, signRaw } from '../../packages/common/src/tunnel/ed25519.ts';
import { PROTOCOL_VERSION, T, parseJson } from '../../packages/common/src/tunnel/protocol.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

export class RawAgent {
  sock!: Socket;
  mac!: ControlMac;
  frames: Frame[] = [];
  closed = false;
  private msgs: { type: number; body: Record<string, unknown> | undefined }[] = [];

  /** Connects and authenticates as `node` with `token`; rejects when the server refuses or closes. */
  static async connect(node: string, port: number, host: string, token: string, opts: { localAddress?: string; timeoutMs?: number } = {}): Promise<RawAgent> {
    const r = new RawAgent();
    const kp = generateKeyPair();
    const an = newNonce();
    const ms = opts.timeoutMs ?? 10_000;
    r.sock = connect({ port, host, localAddress: opts.localAddress });
    const dec = new FrameDecoder();
    r.sock.on('data', (c: Buffer) => { try { r.frames.push(...dec.push(c)); } catch { r.sock.destroy(); } });
    r.sock.on('close', () => { r.closed = true; });
    r.sock.on('error', () => {});
    try {
      r.sock.write(encodeFrame(T.HELLO, Buffer.from(JSON.stringify({ v: PROTOCOL_VERSION, nonce: an.toString('base64') }))));
      await until(() => r.frames.length > 0 || r.closed, ms, 'CHALLENGE');
      if (r.closed) throw new Error('closed before CHALLENGE');
      const ch = parseJson(r.frames.shift()!.payload)!;
      const sn = Buffer.from(ch.nonce as string, 'base64');
      r.sock.write(encodeFrame(T.AUTH, Buffer.from(JSON.stringify({
        node, key: kp.publicKey.toString('base64'), proof: agentProof(token, an, sn, node, kp.publicKey).toString('base64'),
        sig: signRaw(kp.secretKey, keyTranscript(an, sn, node)).toString('base64'),
      }))));
      r.mac = new ControlMac(sessionKey(token, an, sn), 'agent');
      await until(() => r.frames.some((f) => f.type === T.WELCOME) || r.closed, ms, 'WELCOME');
      if (!r.take(T.WELCOME)) throw new Error('no WELCOME');
      return r;
    } catch (e) {
      r.sock.destroy();
      throw e;
    }
  }

  control(type: number, body: object): void {
    this.sock.write(encodeFrame(type, this.mac.seal(type, Buffer.from(JSON.stringify(body)))));
  }

  /** Control messages in arrival order (MACs carry a sequence number, so they are opened in order). */
  take(type: number): Record<string, unknown> | undefined {
    for (const f of this.frames.splice(0)) {
      if (f.type === T.DATA || f.type === T.CREDIT || f.type === T.END || f.type === T.RESET) this.frames.push(f);
      else this.msgs.push({ type: f.type, body: parseJson(this.mac.open(f.type, f.payload) ?? Buffer.alloc(0)) });
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
