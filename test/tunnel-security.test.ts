// Link authentication (the peer must hold the key the server vouched for) and the relay's per-agent rate limit.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { duplexPair, type Duplex } from 'node:stream';
import { createHash, randomBytes } from 'node:crypto';
import { generateKeyPair } from '../packages/common/src/tunnel/ed25519.ts';
import { Link } from '../packages/agent/src/tunnel/link.ts';
import { encodeHello } from '../packages/agent/src/tunnel/linkproto.ts';
import { realClock } from '../packages/agent/src/tunnel/clock.ts';
import { TunnelDialer } from '../packages/agent/src/tunnel/dialer.ts';
import { makeSnapshot, sendAndHash, startHashSink, startServer, startTunnel, waitFor } from './lib/tunnel-fixture.ts';

test('a Noise link is refused when the peer does not hold the vouched key', async () => {
  const a = generateKeyPair(), b = generateKeyPair(), mallory = generateKeyPair();
  const hello = () => encodeHello({ sid: randomBytes(16), peerSid: Buffer.alloc(16), proof: Buffer.alloc(32), identity: Buffer.alloc(0) });
  const open = (stream: Duplex, keyPair: typeof a, vouchedKey: Buffer, initiator: boolean, peer: string) =>
    Link.establish({ stream, kind: 'relay', remote: null }, { keyPair, vouchedKey, initiator, peer, clock: realClock, hello });
  const [x, y] = duplexPair();
  const la = open(x, a, b.publicKey, true, 'b');
  const lm = open(y, mallory, a.publicKey, false, 'a');
  await assert.rejects(la, /did not vouch/);
  // Mallory's side saw the real a; a hung up, so no HELLO ever comes there.
  await lm.then((l) => assert.rejects(l.hello), () => {});
  const [p, q] = duplexPair();
  const [l1, l2] = await Promise.all([open(p, a, b.publicKey, true, 'b'), open(q, b, a.publicKey, false, 'a')]);
  assert.deepEqual(l1.handshakeHash, l2.handshakeHash, 'both ends see the same handshake hash');
  const [h1, h2] = await Promise.all([l1.hello, l2.hello]);
  assert.equal(h1.identity.length + h2.identity.length, 0);
  l1.close();
  l2.close();
});

test('the relay rate limit per agent pauses a fast sender (and the data still arrives intact)', async () => {
  const { server, port } = await startServer(undefined, { relayRateLimit: 1024 * 1024 });
  const { sink, port: sinkPort } = await startHashSink();
  const snap = makeSnapshot([{ service: 'default/sink', ip: '127.0.0.1', port: sinkPort, node: 'b' }], ['a']);
  const a = await startTunnel('a', [`127.0.0.1:${port}`], () => snap);
  const b = await startTunnel('b', [`127.0.0.1:${port}`], () => snap);
  try {
    await waitFor(() => a.tunnel.servers[0].connected && b.tunnel.servers[0].connected);
    const s = await new TunnelDialer(a.tunnel).dialTcp({ serviceKey: 'default/sink', protocol: 'tcp', ip: '127.0.0.1', port: sinkPort, nodeName: 'b' });
    const data = randomBytes(3 * 1024 * 1024);
    const reply = await sendAndHash(s, data);
    assert.equal(reply, createHash('sha256').update(data).digest('hex'));
    assert.match(await server.registry.getSingleMetricAsString('edgemesh_server_rate_limited_total'), /edgemesh_server_rate_limited_total [1-9]/);
  } finally {
    await a.stop();
    await b.stop();
    await server.stop();
    sink.close();
  }
});
