// Link authentication (the peer must hold the key the server vouched for) and the relay's per-agent rate limit.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { duplexPair } from 'node:stream';
import { createHash, randomBytes } from 'node:crypto';
import { generateKeyPair } from '../packages/common/src/tunnel/ed25519.ts';
import { Link } from '../packages/agent/src/tunnel/link.ts';
import { TunnelDialer } from '../packages/agent/src/tunnel/dialer.ts';
import { makeSnapshot, sendAndHash, startHashSink, startServer, startTunnel, waitFor } from './lib/tunnel-fixture.ts';

test('a Noise link is refused when the peer does not hold the vouched key', async () => {
  const a = generateKeyPair(), b = generateKeyPair(), mallory = generateKeyPair();
  const [x, y] = duplexPair();
  const la = Link.establish(x, true, a, b.publicKey, 'relay', 'b', null);
  const lm = Link.establish(y, false, mallory, a.publicKey, 'relay', 'a', null);
  await assert.rejects(la, /did not vouch/);
  await lm.then((l) => l.close(), () => {});
  const [p, q] = duplexPair();
  const [l1, l2] = await Promise.all([Link.establish(p, true, a, b.publicKey, 'relay', 'b', null), Link.establish(q, false, b, a.publicKey, 'relay', 'a', null)]);
  l1.close();
  l2.close();
});

test('the relay rate limit per agent pauses a fast sender (and the data still arrives intact)', async () => {
  const { server, port } = await startServer(undefined, { relayRateLimit: 1024 * 1024 });
  const { sink, port: sinkPort } = await startHashSink();
  const snap = makeSnapshot([{ service: 'default/sink', ip: '127.0.0.1', port: sinkPort, node: 'b' }]);
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
