// Time to first byte to a fresh peer (relay path, loopback): dial, write 1 byte, read the sink's answer; the peer is
// forgotten before each dial, so every dial pays the link handshake (certificate exchange included).
//   npx node bench/identity-ttfb.ts
import { makeSnapshot, startHashSink, startServer, startTunnel, waitFor } from '../test/lib/tunnel-fixture.ts';
import { TunnelDialer } from '../packages/agent/src/tunnel/dialer.ts';
const { server, port } = await startServer();
const { sink, port: sinkPort } = await startHashSink();
const snap = makeSnapshot([{ service: 'default/sink', ip: '127.0.0.1', port: sinkPort, node: 'b' }]);
const a = await startTunnel('a', [`127.0.0.1:${port}`], () => snap);
const b = await startTunnel('b', [`127.0.0.1:${port}`], () => snap);
await waitFor(() => a.tunnel.servers[0].connected && b.tunnel.servers[0].connected);
const d = new TunnelDialer(a.tunnel);
const times: number[] = [];
for (let i = 0; i < 60; i++) {
  a.tunnel.forget('b'); b.tunnel.forget('a');
  const t0 = performance.now();
  const s = await d.dialTcp({ serviceKey: 'default/sink', protocol: 'tcp', ip: '127.0.0.1', port: sinkPort, nodeName: 'b' });
  await new Promise<void>((r) => { s.once('data', () => r()); s.end(Buffer.from('x')); });
  times.push(performance.now() - t0);
  s.destroy();
}
times.sort((x, y) => x - y);
const q = (p: number) => times[Math.floor(p * (times.length - 1))].toFixed(2);
console.log(JSON.stringify({ n: times.length, p50ms: q(0.5), p90ms: q(0.9), min: q(0) }));
await a.stop(); await b.stop(); await server.stop(); sink.close();
