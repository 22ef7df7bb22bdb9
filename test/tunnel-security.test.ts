// Link authentication (the peer's node certificate must name the node and bind the key its Noise handshake proved)
// and the relay's per-agent rate limit.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { duplexPair, type Duplex } from 'node:stream';
import { createHash, randomBytes } from 'node:crypto';
import { generateKeyPair } from '../packages/common/src/tunnel/ed25519.ts';
import { Link } from '../packages/agent/src/tunnel/link.ts';
import { encodeHello } from '../packages/agent/src/tunnel/linkproto.ts';
import { checkPeerCert } from '../packages/agent/src/tunnel/identity.ts';
import { fakeCa } from '../packages/agent/src/tunnel/testfixture.ts';
import { realClock } from '../packages/agent/src/tunnel/clock.ts';
import { TunnelDialer } from '../packages/agent/src/tunnel/dialer.ts';
import { makeSnapshot, sendAndHash, startHashSink, startServer, startTunnel, waitFor } from './lib/tunnel-fixture.ts';

test('a Noise link proves a key; the HELLO certificate must name the node meant and bind that key', async () => {
  const cas = fakeCa();
  const a = generateKeyPair(), b = generateKeyPair(), mallory = generateKeyPair();
  const certs = { a: cas.issue('a', a.publicKey), b: cas.issue('b', b.publicKey), mallory: cas.issue('mallory', mallory.publicKey) };
  const idA = cas.identity(certs.a);
  const hello = (identity: Buffer) => () => encodeHello({ sid: randomBytes(16), peerSid: Buffer.alloc(16), proof: Buffer.alloc(32), identity });
  const open = (stream: Duplex, keyPair: typeof a, identity: Buffer, initiator: boolean, peer: string) =>
    Link.establish({ stream, kind: 'relay', remote: null }, { keyPair, initiator, peer, clock: realClock, hello: hello(identity) });
  const pair = async (other: typeof a, presented: Buffer) => {
    const [x, y] = duplexPair();
    const [la, lo] = await Promise.all([open(x, a, certs.a.raw, true, 'b'), open(y, other, presented, false, 'a')]);
    const h = await la.hello;
    const r = checkPeerCert(idA, 'b', la.remoteKey, h.identity);
    la.close();
    lo.close();
    return r;
  };
  // Mallory (a valid node of the cluster) answers a dial meant for b: her certificate names mallory.
  assert.match(String((await pair(mallory, certs.mallory.raw) as { why?: string }).why), /wrong-name/);
  // Mallory replays b's certificate: it binds b's key, not the one her handshake proved.
  assert.match(String((await pair(mallory, certs.b.raw) as { why?: string }).why), /wrong-key/);
  // No certificate at all.
  assert.match(String((await pair(mallory, Buffer.alloc(0)) as { why?: string }).why), /no certificate/);
  // A certificate of another CA for b's name and mallory's key.
  assert.match(String((await pair(mallory, fakeCa().issue('b', mallory.publicKey).raw) as { why?: string }).why), /wrong-issuer/);
  // The real b.
  const ok = await pair(b, certs.b.raw);
  assert.ok('notAfter' in ok, JSON.stringify(ok));
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
