// A server drained (what SIGTERM does): readiness false, DRAIN to its agents, they reconnect and their relay links
// re-attach through the other server; a client loop of relayed requests during it sees no failure, the drained server
// finishes with no agent left, within its bound. Two in-process servers sharing the cluster CA, relay-only agents on
// both (without the server mesh a relayed pair must share a server). The namespace version with SIGTERM on the real
// binary and symmetric NATs is test/e2e/server-drain.test.ts.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import type { Server } from 'node:net';
import { join } from 'node:path';
import { makeSnapshot, sendAndHash, startHashSink, startServer, startTunnel, waitFor, type TestAgent } from './lib/tunnel-fixture.ts';
import { TunnelDialer } from '../packages/agent/src/tunnel/dialer.ts';
import type { EdgemeshServer } from '../packages/server/src/main.ts';

let s1: EdgemeshServer;
let s2: EdgemeshServer;
let a: TestAgent;
let b: TestAgent;
let backend: Server;
let backendPort: number;
const DRAIN_SECONDS = 10;

before(async () => {
  const x = await startServer(undefined, { shutdownUnreadySeconds: 1, shutdownDrainSeconds: DRAIN_SECONDS });
  const y = await startServer(undefined, { caFile: join(x.stateDir, 'ca.crt'), caKeyFile: join(x.stateDir, 'ca.key') });
  s1 = x.server;
  s2 = y.server;
  ({ sink: backend, port: backendPort } = await startHashSink());
  const snap = makeSnapshot([{ service: 'default/sink', ip: '127.0.0.1', port: backendPort, node: 'b' }], ['a']);
  // Relay only (no UDP socket); the drained server is first in both lists, so the pair relays through it.
  a = await startTunnel('a', [`127.0.0.1:${x.port}`, `127.0.0.1:${y.port}`], () => snap);
  b = await startTunnel('b', [`127.0.0.1:${x.port}`, `127.0.0.1:${y.port}`], () => snap);
  await waitFor(() => [a, b].every((t) => t.tunnel.servers.every((s) => s.connected)), 10_000, 'connected');
});

after(async () => {
  await a?.stop();
  await b?.stop();
  await s1?.stop();
  await s2?.stop();
  backend?.close();
});

async function ready(s: EdgemeshServer): Promise<number> {
  const addr = s.admin.address()!;
  return (await fetch(`http://127.0.0.1:${addr.port}/readyz`)).status;
}

test('a drained server moves its agents; relayed requests meanwhile all succeed', async () => {
  const dialer = new TunnelDialer(a.tunnel);
  const target = { serviceKey: 'default/sink', protocol: 'tcp' as const, ip: '127.0.0.1', port: backendPort, nodeName: 'b' };
  const once = async () => {
    const data = randomBytes(64 * 1024);
    const s = await dialer.dialTcp(target);
    assert.equal(await sendAndHash(s, data), createHash('sha256').update(data).digest('hex'));
  };
  await once();
  assert.match(await s1.registry.getSingleMetricAsString('edgemesh_server_relay_streams_total'), /outcome="ok"} [1-9]/, 'relayed through the first server');
  assert.equal(await ready(s1), 200);
  let ok = 0;
  const failures: string[] = [];
  let running = true;
  // A bounded loop: at most 2,000 requests, stopped after the drain.
  const loop = (async () => {
    for (let i = 0; i < 2_000 && running; i++) {
      try { await once(); ok++; } catch (e) { failures.push((e as Error).message); }
    }
  })();
  await waitFor(() => ok >= 5, 20_000, 'requests flowing');
  const t0 = performance.now();
  const drained = s1.drainAndStop();
  const readyDuring = await ready(s1); // readiness goes false at once; DRAIN follows shutdownUnreadySeconds later
  const r = await drained;
  const ms = performance.now() - t0;
  const okAtDrain = ok;
  await waitFor(() => ok >= okAtDrain + 5, 20_000, 'requests flowing after the drain');
  running = false;
  await loop;
  assert.equal(readyDuring, 503, 'readiness went false first');
  assert.deepEqual(failures, [], `no request failed (${ok} succeeded)`);
  assert.equal(r.left, 0, 'every agent moved before the drain bound (none was cut off)');
  for (const t of [a, b]) {
    assert.equal(t.tunnel.servers[0].connected, false, 'the drained server is gone');
    assert.equal(t.tunnel.servers[1].connected, true, 'connected to the other server');
  }
  assert.match(await s2.registry.getSingleMetricAsString('edgemesh_server_relay_streams_total'), /outcome="ok"} [1-9]/, 'the second server relays now');
  console.log(`drain: ${Math.round(ms)} ms, ${ok} requests, 0 failed`);
});
