// The server against hand-made clients: relay credit enforced (a sender ignoring credit gets its stream reset),
// forged control messages drop the connection, unknown frames are counted, oversized frames drop the connection.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { encodeFrame, FrameDecoder, type Frame } from '../packages/common/src/tunnel/frame.ts';
import { encodeData } from '../packages/common/src/tunnel/streams.ts';
import { agentProof, ControlMac, keyTranscript, newNonce, sessionKey } from '../packages/common/src/tunnel/auth.ts';
import { generateKeyPair, signRaw } from '../packages/common/src/tunnel/ed25519.ts';
import { MAX_DATA_CHUNK, PROTOCOL_VERSION, RELAY_STREAM_TYPES, RELAY_WINDOW_BYTES, T, parseJson } from '../packages/common/src/tunnel/protocol.ts';
import { TEST_TOKEN, makeSnapshot, startServer, startTunnel, waitFor } from './lib/tunnel-fixture.ts';
import type { EdgemeshServer } from '../packages/server/src/main.ts';
import { MAX_SOCKET_BUFFER_BYTES, RelayServer } from '../packages/server/src/relay.ts';
import { Registry } from 'prom-client';
import { silentLogger } from '../packages/common/src/log.ts';

let server: EdgemeshServer;
let port: number;
before(async () => { ({ server, port } = await startServer()); });
after(async () => { await server.stop(); });

class RawAgent {
  sock!: Socket;
  mac!: ControlMac;
  frames: Frame[] = [];
  closed = false;
  static async connect(node: string, serverPort = port): Promise<RawAgent> {
    const r = new RawAgent();
    const kp = generateKeyPair();
    const an = newNonce();
    r.sock = connect(serverPort, '127.0.0.1');
    const dec = new FrameDecoder();
    r.sock.on('data', (c: Buffer) => r.frames.push(...dec.push(c)));
    r.sock.on('close', () => { r.closed = true; });
    r.sock.on('error', () => {});
    r.sock.write(encodeFrame(T.HELLO, Buffer.from(JSON.stringify({ v: PROTOCOL_VERSION, nonce: an.toString('base64') }))));
    await waitFor(() => r.frames.length > 0);
    const ch = parseJson(r.frames.shift()!.payload)!;
    const sn = Buffer.from(ch.nonce as string, 'base64');
    r.sock.write(encodeFrame(T.AUTH, Buffer.from(JSON.stringify({
      node, key: kp.publicKey.toString('base64'), proof: agentProof(TEST_TOKEN, an, sn, node, kp.publicKey).toString('base64'),
      sig: signRaw(kp.secretKey, keyTranscript(an, sn, node)).toString('base64'),
    }))));
    r.mac = new ControlMac(sessionKey(TEST_TOKEN, an, sn), 'agent');
    await waitFor(() => r.frames.some((f) => f.type === T.WELCOME));
    assert.ok(r.take(T.WELCOME), 'WELCOME with a good MAC');
    return r;
  }
  control(type: number, body: object): void {
    this.sock.write(encodeFrame(type, this.mac.seal(type, Buffer.from(JSON.stringify(body)))));
  }
  private msgs: { type: number; body: Record<string, unknown> | undefined }[] = [];
  /** Control messages in arrival order (MACs carry a sequence number, so they are opened in order). */
  take(type: number): Record<string, unknown> | undefined {
    for (const f of this.frames.splice(0)) {
      if (f.type === T.DATA || f.type === T.CREDIT || f.type === T.END || f.type === T.RESET) this.frames.push(f);
      else this.msgs.push({ type: f.type, body: parseJson(this.mac.open(f.type, f.payload) ?? Buffer.alloc(0)) });
    }
    const i = this.msgs.findIndex((m) => m.type === type);
    return i < 0 ? undefined : this.msgs.splice(i, 1)[0].body;
  }
}

test('a sender that ignores its relay credit gets the stream reset', async () => {
  const a = await RawAgent.connect('raw-a');
  const b = await RawAgent.connect('raw-b');
  a.control(T.OPEN, { req: 1, to: 'raw-b' });
  let opened: Record<string, unknown> | undefined;
  await waitFor(() => (opened ??= a.take(T.OPENED)) !== undefined);
  const rid = opened!.rid as number;
  const chunk = Buffer.alloc(MAX_DATA_CHUNK);
  for (let sent = 0; sent <= RELAY_WINDOW_BYTES; sent += chunk.length) a.sock.write(encodeData(RELAY_STREAM_TYPES, rid, sent, chunk));
  await waitFor(() => a.frames.some((f) => f.type === T.RESET) && b.frames.some((f) => f.type === T.RESET), 10_000, 'resets');
  assert.match(await server.registry.getSingleMetricAsString('edgemesh_server_credit_violations_total'), / [1-9]/);
  a.sock.destroy();
  b.sock.destroy();
});

test('a control message with a bad MAC drops the connection; unknown frame types are counted', async () => {
  const a = await RawAgent.connect('raw-c');
  a.sock.write(encodeFrame(99, Buffer.from('x')));
  const forged = Buffer.concat([Buffer.from(JSON.stringify({ req: 7, to: 'x' })), Buffer.alloc(16)]);
  a.sock.write(encodeFrame(T.OPEN, forged));
  await waitFor(() => a.closed, 10_000, 'dropped');
  // The client can see its socket closed before the server's own close handler has run: wait for the server's side.
  await waitFor(() => !server.relay.agents.has('raw-c'), 10_000, 'the server to forget raw-c');
  assert.match(await server.registry.getSingleMetricAsString('edgemesh_server_malformed_frames_total'), / [2-9]|\d\d/);
});

test('an oversized frame drops the connection before anything is allocated', async () => {
  const s = connect(port, '127.0.0.1');
  let closed = false;
  s.on('close', () => { closed = true; });
  s.on('error', () => {});
  s.resume();
  const b = Buffer.alloc(5);
  b[0] = T.HELLO;
  b.writeUInt32BE(0xfffffff0, 1);
  s.write(b);
  await waitFor(() => closed, 10_000, 'dropped');
});

test('before authentication a frame bigger than a handshake message drops the connection at once', async () => {
  const s = connect(port, '127.0.0.1');
  let closed = false;
  s.on('close', () => { closed = true; });
  s.on('error', () => {});
  s.resume();
  const b = Buffer.alloc(5 + 1000);
  b[0] = T.HELLO;
  b.writeUInt32BE(64 * 1024, 1); // well under MAX_FRAME_BYTES; the rest never comes
  s.write(b);
  await waitFor(() => closed, 10_000, 'dropped');
});

test('an agent paused because its peer stopped reading is resumed when that peer goes away', async () => {
  const a = await RawAgent.connect('feed-a');
  const b = await RawAgent.connect('feed-b');
  b.sock.pause(); // b never reads: the server's socket to b fills up
  const chunk = Buffer.alloc(MAX_DATA_CHUNK);
  // Several streams' worth of credit: well past the server's socket buffer limit plus the kernel's buffers.
  const rids: number[] = [];
  for (let i = 0; i < 5; i++) {
    a.control(T.OPEN, { req: 100 + i, to: 'feed-b' });
    let opened: Record<string, unknown> | undefined;
    await waitFor(() => (opened ??= a.take(T.OPENED)) !== undefined, 10_000, 'OPENED');
    rids.push(opened!.rid as number);
  }
  for (const rid of rids) {
    for (let sent = 0; sent + chunk.length <= RELAY_WINDOW_BYTES; sent += chunk.length) a.sock.write(encodeData(RELAY_STREAM_TYPES, rid, sent, chunk));
  }
  // The server stops reading a once its socket to b holds more than MAX_SOCKET_BUFFER_BYTES: wait for exactly that
  // state on the server's side (not for a's send buffer to look still for a while).
  const serverSide = (node: string) => server.relay.agents.get(node)?.conn.sock;
  await waitFor(() => serverSide('feed-a')?.isPaused() === true, 30_000, 'the server to stop reading a');
  assert.ok((serverSide('feed-b')?.writableLength ?? 0) > MAX_SOCKET_BUFFER_BYTES, 'a was paused because b\'s socket is full');
  b.sock.destroy();
  // a is heard again: its ping is answered.
  await waitFor(() => a.sock.writableLength === 0, 10_000, 'a drained');
  a.control(T.PING, { t: 1 });
  await waitFor(() => a.take(T.PONG) !== undefined, 10_000, 'pong to a');
  assert.equal(a.closed, false);
  a.sock.destroy();
});

test('an agent told off by the server after the handshake reports the server\'s reason', async () => {
  const snap = makeSnapshot([]);
  const t = await startTunnel('scolded', [`127.0.0.1:${port}`], () => snap);
  try {
    const sc = t.tunnel.servers[0];
    await waitFor(() => sc.connected, 10_000, 'connected');
    const down = new Promise<string | null>((r) => sc.once('down', () => r(sc.lastError)));
    // A control frame with a bad MAC: the server answers ERROR (MAC'd, as every control message once ready) and hangs up.
    (sc as unknown as { sock: Socket }).sock.write(encodeFrame(T.PING, Buffer.alloc(40)));
    assert.match((await down) ?? '', /protocol: bad MAC/);
  } finally {
    await t.stop();
  }
});

test('an agent that never reads is dropped once its backlog passes the bound, whatever its peers send it', async () => {
  const relay = new RelayServer({ host: '127.0.0.1', port: 0, token: TEST_TOKEN, log: silentLogger, registry: new Registry(), maxBacklogBytes: 256 * 1024 });
  const { port: relayPort } = await relay.start();
  try {
    const a = await RawAgent.connect('flood-a', relayPort);
    const b = await RawAgent.connect('flood-b', relayPort);
    a.control(T.OPEN, { req: 1, to: 'flood-b' });
    let opened: Record<string, unknown> | undefined;
    await waitFor(() => (opened ??= a.take(T.OPENED)) !== undefined, 10_000, 'OPENED');
    b.sock.pause(); // b never reads again
    // Rendezvous messages are forwarded to b and never pause a: without a bound the server would queue them for ever.
    const cand = Array.from({ length: 16 }, (_, i) => ({ host: `203.0.113.${i}`, port: 20000 + i, kind: 'lan' }));
    const msg = Buffer.from(JSON.stringify({ to: 'flood-b', sid: '0123456789abcdef', mode: 'normal', cand, nat: 'cone', streamId: 1 }));
    for (let i = 0; i < 200 && !b.closed && relay.agents.has('flood-b'); i++) {
      const batch = Buffer.concat(Array.from({ length: 2_000 }, () => encodeFrame(T.RENDEZVOUS, a.mac.seal(T.RENDEZVOUS, msg))));
      if (!a.sock.write(batch)) await new Promise((r) => a.sock.once('drain', r));
    }
    await waitFor(() => !relay.agents.has('flood-b'), 10_000, 'flood-b dropped');
    assert.equal(relay.agents.has('flood-a'), true, 'the sender is not punished for it');
    a.sock.destroy();
    b.sock.destroy();
  } finally {
    await relay.stop();
  }
});
