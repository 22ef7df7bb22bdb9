// Mutual authentication on the agent<->server connection. The cluster token is never sent: each side proves it
// holds the token with an HMAC over both nonces (bound to the role, so a proof cannot be reflected), and after the
// handshake both derive a session key that MACs every control message (with a per-direction sequence number, so
// an on-path attacker can neither forge a "peer key" nor replay a message).
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export const NONCE_BYTES = 32;
export const CONTROL_MAC_BYTES = 16;
export const PROTOCOL_VERSION = 1;

export const newNonce = (): Buffer => randomBytes(NONCE_BYTES);

function hmac(key: string | Buffer, ...parts: (string | Buffer)[]): Buffer {
  const h = createHmac('sha256', key);
  for (const p of parts) {
    const b = typeof p === 'string' ? Buffer.from(p) : p;
    const len = Buffer.allocUnsafe(4);
    len.writeUInt32BE(b.length);
    h.update(len).update(b);
  }
  return h.digest();
}

/** The server's proof: it knows the token (answers the agent's nonce). */
export function serverProof(token: string, agentNonce: Buffer, serverNonce: Buffer): Buffer {
  return hmac(token, 'edgemesh/server/v1', agentNonce, serverNonce);
}

/** The agent's proof, binding the node name and its static public key. */
export function agentProof(token: string, agentNonce: Buffer, serverNonce: Buffer, node: string, publicKey: Buffer): Buffer {
  return hmac(token, 'edgemesh/agent/v1', agentNonce, serverNonce, node, publicKey);
}

/** What the agent signs with its static key to show the server it owns the key it registers. */
export function keyTranscript(agentNonce: Buffer, serverNonce: Buffer, node: string): Buffer {
  return hmac('edgemesh/key-proof/v1', agentNonce, serverNonce, node);
}

export function sessionKey(token: string, agentNonce: Buffer, serverNonce: Buffer): Buffer {
  return hmac(token, 'edgemesh/session/v1', agentNonce, serverNonce);
}

export function safeEqual(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** MACs and checks control messages in one direction. `dir` is 'a2s' or 's2a'. */
export class ControlMac {
  private sendSeq = 0n;
  private recvSeq = 0n;
  private readonly key: Buffer;
  private readonly sendDir: string;
  private readonly recvDir: string;
  constructor(key: Buffer, role: 'agent' | 'server') {
    this.key = key;
    this.sendDir = role === 'agent' ? 'a2s' : 's2a';
    this.recvDir = role === 'agent' ? 's2a' : 'a2s';
  }

  private mac(dir: string, seq: bigint, type: number, body: Buffer): Buffer {
    const s = Buffer.allocUnsafe(9);
    s.writeBigUInt64BE(seq);
    s[8] = type;
    return hmac(this.key, dir, s, body).subarray(0, CONTROL_MAC_BYTES);
  }

  /** Returns body || mac. */
  seal(type: number, body: Buffer): Buffer {
    const m = this.mac(this.sendDir, this.sendSeq++, type, body);
    return Buffer.concat([body, m]);
  }

  /** Returns the body, or undefined when the MAC is wrong (forged, replayed or reordered). */
  open(type: number, payload: Buffer): Buffer | undefined {
    if (payload.length < CONTROL_MAC_BYTES) return undefined;
    const body = payload.subarray(0, payload.length - CONTROL_MAC_BYTES);
    const got = payload.subarray(payload.length - CONTROL_MAC_BYTES);
    const want = this.mac(this.recvDir, this.recvSeq, type, body);
    if (!safeEqual(got, want)) return undefined;
    this.recvSeq++;
    return body;
  }
}
