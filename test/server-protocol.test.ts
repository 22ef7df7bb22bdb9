// The server against hand-made clients: relay credit enforced (a sender ignoring credit gets its stream reset),
// unknown frames are counted, oversized frames drop the connection, nothing but TLS before the handshake.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect as tcpConnect } from 'node:net';
import { connect, type TLSSocket } from 'node:tls';
import { encodeFrame, FrameDecoder, type Frame } from '../packages/common/src/tunnel/frame.ts';
import { encodeData } from '../packages/common/src/tunnel/streams.ts';
import { signWithContext } from '../packages/common/src/identity/keys.ts';
import { nodeKey } from '../packages/common/src/identity/testca.ts';
import { ENROLL_PROOF_CONTEXT, enrollProofMessage } from '../packages/common/src/identity/enrollproof.ts';
import { MAX_DATA_CHUNK, PROTOCOL_VERSION, RELAY_STREAM_TYPES, RELAY_WINDOW_BYTES, T, parseJson } from '../packages/common/src/tunnel/protocol.ts';
import { TEST_TOKEN, makeSnapshot, startServer, startTunnel, waitFor } from './lib/tunnel-fixture.ts';
import { relayIdentity, type EdgemeshServer } from '../packages/server/src/main.ts';
import { ENROLL_BINDING_BYTES, ENROLL_EXPORTER_LABEL, MAX_SOCKET_BUFFER_BYTES, RelayServer } from '../packages/server/src/relay.ts';
import { Registry } from 'prom-client';
import { silentLogger } from '../packages/common/src/log.ts';

let server: EdgemeshServer;
let port: number;
before(async () => { ({ server, port } = await startServer()); });
after(async () => { await server.stop(); });

/** A hand-made agent: TLS (no certificate check: the tests here are about the server), bootstrap enrollment. */
class RawAgent {
  sock!: TLSSocket;
  frames: Frame[] = [];
  closed = false;
  static async open(serverPort = port): Promise<RawAgent> {
    const r = new RawAgent();
    r.sock = connect({ port: serverPort, host: '127.0.0.1', rejectUnauthorized: false, minVersion: 'TLSv1.3' });
    const dec = new FrameDecoder();
    r.sock.on('data', (c: Buffer) => r.frames.push(...dec.push(c)));
    r.sock.on('close', () => { r.closed = true; });
    r.sock.on('error', () => {});
    await new Promise<void>((res) => r.sock.once('secureConnect', () => res()));
    return r;
  }
  enroll(node: string, method = 'bootstrap', token = TEST_TOKEN, key = nodeKey()): void {
    const binding = this.sock.exportKeyingMaterial(ENROLL_BINDING_BYTES, ENROLL_EXPORTER_LABEL, Buffer.alloc(0));
    const sig = signWithContext(key.privateKey, ENROLL_PROOF_CONTEXT, enrollProofMessage(binding, method, node));
    this.control(T.ENROLL, { v: PROTOCOL_VERSION, method, name: node, key: key.publicKey.toString('base64'), token, sig: sig.toString('base64') });
  }
  static async connect(node: string, serverPort = port): Promise<RawAgent> {
    const r = await RawAgent.open(serverPort);
    r.enroll(node);
    await waitFor(() => r.frames.some((f) => f.type === T.WELCOME));
    assert.ok(r.take(T.WELCOME), 'WELCOME');
    return r;
  }
  control(type: number, body: object): void {
    this.sock.write(encodeFrame(type, Buffer.from(JSON.stringify(body))));
  }
  private msgs: { type: number; body: Record<string, unknown> | undefined }[] = [];
  take(type: number): Record<string, unknown> | undefined {
    for (const f of this.frames.splice(0)) {
      if (f.type === T.DATA || f.type === T.CREDIT || f.type === T.END || f.type === T.RESET) this.frames.push(f);
      else this.msgs.push({ type: f.type, body: parseJson(f.payload) });
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

test('unknown frame types and malformed control messages are counted, not answered', async () => {
  const before = Number(/ (\d+)/.exec(await server.registry.getSingleMetricAsString('edgemesh_server_malformed_frames_total'))?.[1] ?? 0);
  const a = await RawAgent.connect('raw-c');
  a.sock.write(encodeFrame(99, Buffer.from('x')));
  a.sock.write(encodeFrame(T.OPEN, Buffer.from('{"req":"x"')));
  const count = async () => Number(/ (\d+)/.exec(await server.registry.getSingleMetricAsString('edgemesh_server_malformed_frames_total'))?.[1] ?? 0);
  for (let i = 0; i < 200 && (await count()) < before + 2; i++) await new Promise((r) => setTimeout(r, 50));
  const after = await count();
  assert.ok(after >= before + 2, `malformed counted (${before} -> ${after})`);
  assert.equal(a.take(T.OPEN_FAIL), undefined);
  a.sock.destroy();
});

test('before TLS nothing is answered: plain frames get no server frame back, the connection is dropped', async () => {
  const s = tcpConnect(port, '127.0.0.1');
  let closed = false;
  const got: Buffer[] = [];
  s.on('data', (c: Buffer) => got.push(c));
  s.on('close', () => { closed = true; });
  s.on('error', () => {});
  s.write(encodeFrame(1, Buffer.from(JSON.stringify({ v: 2, nonce: randomBytes(32).toString('base64') }))));
  await waitFor(() => closed, 15_000, 'dropped');
  // Whatever came back is a TLS alert at most (content type 21), never a frame of ours carrying a proof.
  const all = Buffer.concat(got);
  assert.ok(all.length === 0 || all[0] === 21, `got ${all.subarray(0, 8).toString('hex')}`);
});

test('an ENROLL with a wrong token gets only "unauthorized"; after the attempts of one plan the connection is dropped', async () => {
  const r = await RawAgent.open();
  for (let i = 0; i < 4 && !r.closed; i++) {
    r.enroll('guess', 'bootstrap', `wrong-${i}-0123456789abcdefghij`);
    await waitFor(() => r.closed || r.frames.some((f) => f.type === T.ENROLL_FAIL), 10_000, 'answer');
    const m = r.take(T.ENROLL_FAIL);
    if (m) assert.ok(m.reason === 'unauthorized' || m.reason === 'retry-later', String(m.reason));
  }
  await waitFor(() => r.closed, 10_000, 'dropped');
  assert.equal(server.relay.agents.has('guess'), false);
});

test('an oversized frame drops the connection before anything is allocated', async () => {
  const s = (await RawAgent.open()).sock;
  let closed = false;
  s.on('close', () => { closed = true; });
  s.resume();
  const b = Buffer.alloc(5);
  b[0] = T.ENROLL;
  b.writeUInt32BE(0xfffffff0, 1);
  s.write(b);
  await waitFor(() => closed, 10_000, 'dropped');
});

test('before sign-in a frame bigger than an ENROLL drops the connection at once', async () => {
  const s = (await RawAgent.open()).sock;
  let closed = false;
  s.on('close', () => { closed = true; });
  s.resume();
  const b = Buffer.alloc(5 + 1000);
  b[0] = T.ENROLL;
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
    // The node's key is revoked: the server answers ERROR and hangs up.
    const pin = server.identity.enroller.registry.readPin('scolded')!;
    server.identity.enroller.registry.revoke('scolded', pin.key, Date.now());
    server.identity.enroller.checkRevocations();
    assert.match((await down) ?? '', /auth: revoked/);
  } finally {
    await t.stop();
  }
});

test('an agent that never reads is dropped once its backlog passes the bound, whatever its peers send it', async () => {
  const relay = new RelayServer({ host: '127.0.0.1', port: 0, identity: relayIdentity(server.identity, randomBytes(20)), log: silentLogger, registry: new Registry(), maxBacklogBytes: 256 * 1024 });
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
    // (Signed offers: the server forwards them without checking the signature, which is the receiver's job.)
    const msg = Buffer.from(JSON.stringify({ to: 'flood-b', sid: '0123456789abcdef', mode: 'normal', cand, nat: 'cone', streamId: 1, ts: Date.now(), cert: randomBytes(300).toString('base64'), sig: randomBytes(64).toString('base64') }));
    for (let i = 0; i < 200 && !b.closed && relay.agents.has('flood-b'); i++) {
      const batch = Buffer.concat(Array.from({ length: 2_000 }, () => encodeFrame(T.RENDEZVOUS, msg)));
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
