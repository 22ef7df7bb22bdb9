// Two servers meshed on loopback (both dial: the link is deduplicated): raw agents and real tunnels on different
// servers reach each other through the mesh (relay streams with end-to-end credit, rendezvous); the control channel's
// certificate is no mesh certificate; a revocation made at one server reaches the other.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { connect } from 'node:tls';
import type { Server } from 'node:net';
import { encodeData, encodeCredit, decodeStreamFrame } from '../packages/common/src/tunnel/streams.ts';
import { MAX_DATA_CHUNK, RELAY_STREAM_TYPES, RELAY_WINDOW_BYTES, T } from '../packages/common/src/tunnel/protocol.ts';
import { makeSnapshot, sendAndHash, startHashSink, startServer, startTunnel, waitFor, TEST_TOKEN, type TestAgent } from './lib/tunnel-fixture.ts';
import { RawAgent } from './lib/raw-agent.ts';
import { TunnelDialer } from '../packages/agent/src/tunnel/dialer.ts';
import type { EdgemeshServer } from '../packages/server/src/main.ts';
import { checkMeshPeer, MESH_TLS_NAME } from '../packages/server/src/mesh/cert.ts';
import { freePort } from './lib/ports.ts';

let s1: EdgemeshServer;
let s2: EdgemeshServer;
let p1: number;
let p2: number;
let backend: Server;
let backendPort: number;
const agents: TestAgent[] = [];
const raws: RawAgent[] = [];

type MeshStatus = { id: string; peers: { id: string; synced: boolean; agents: number }[] };
const meshOf = (s: EdgemeshServer) => s.mesh!.status() as MeshStatus;
const synced = (s: EdgemeshServer) => meshOf(s).peers.filter((p) => p.synced).length;
const metric = async (s: EdgemeshServer, name: string) => s.registry.getSingleMetricAsString(name);

before(async () => {
  p2 = await freePort();
  const x = await startServer(undefined, { mesh: { peers: [`127.0.0.1:${p2}`] } });
  s1 = x.server;
  p1 = x.port;
  // One cluster CA for both (the chart gives it as a Secret).
  const y = await startServer(undefined, { listen: `127.0.0.1:${p2}`, caFile: join(x.stateDir, 'ca.crt'), caKeyFile: join(x.stateDir, 'ca.key'), mesh: { peers: [`127.0.0.1:${p1}`] } });
  s2 = y.server;
  await waitFor(() => synced(s1) === 1 && synced(s2) === 1, 15_000, 'mesh link both sides');
  ({ sink: backend, port: backendPort } = await startHashSink());
});

after(async () => {
  for (const r of raws) r.close();
  for (const a of agents) await a.stop();
  await s2?.stop();
  await s1?.stop();
  backend?.close();
});

test('both servers dialled: exactly one link stays, the same one on both sides', async () => {
  // Both dialers settled: each learnt the other's id (its own dial reached it, or was closed as the second link).
  await waitFor(() => [s1, s2].every((s) => (s.mesh!.status() as { targets: { id?: string }[] }).targets.every((t) => t.id)), 15_000, 'dialers settled');
  const a = meshOf(s1);
  const b = meshOf(s2);
  assert.equal(a.peers.length, 1);
  assert.equal(b.peers.length, 1);
  assert.equal(a.peers[0].id, b.id);
  assert.equal(b.peers[0].id, a.id);
  const d1 = (s1.mesh!.status() as { peers: { dir: string }[] }).peers[0].dir;
  const d2 = (s2.mesh!.status() as { peers: { dir: string }[] }).peers[0].dir;
  assert.notEqual(d1, d2, 'one side dialled it, the other accepted it');
});

test('the control channel certificate is not a mesh certificate; a client without one is dropped', async () => {
  // What an agent sees on the listener (SNI edgemesh-server) fails the mesh peer check.
  const sock = connect({ host: '127.0.0.1', port: p1, servername: 'edgemesh-server', rejectUnauthorized: false, minVersion: 'TLSv1.3' });
  await new Promise<void>((r) => sock.once('secureConnect', () => r()));
  const ctl = checkMeshPeer(sock.getPeerX509Certificate(), s1.identity.ca, Date.now());
  sock.destroy();
  assert.deepEqual(ctl, { ok: false, reason: 'not-mesh' });
  // A mesh client presenting no certificate is refused and counted.
  const before = await metric(s1, 'edgemesh_server_budget_refusals_total');
  const m = connect({ host: '127.0.0.1', port: p1, servername: MESH_TLS_NAME, rejectUnauthorized: false, minVersion: 'TLSv1.3' });
  m.on('error', () => {});
  const mesh = await new Promise<ReturnType<typeof checkMeshPeer>>((r) => m.once('secureConnect', () => r(checkMeshPeer(m.getPeerX509Certificate(), s1.identity.ca, Date.now()))));
  assert.equal(mesh.ok, true, 'SNI edgemesh-mesh is answered with the mesh certificate');
  await new Promise<void>((r) => m.once('close', () => r()));
  assert.notEqual(await metric(s1, 'edgemesh_server_budget_refusals_total'), before);
  assert.match(await metric(s1, 'edgemesh_server_budget_refusals_total'), /budget="mesh_peer_refused"} [1-9]/);
});

test('raw agents on different servers: a relay stream through the mesh, credit end to end, bytes intact', async () => {
  const a = await RawAgent.connect('ra', p1, '127.0.0.1', TEST_TOKEN);
  const b = await RawAgent.connect('rb', p2, '127.0.0.1', TEST_TOKEN);
  raws.push(a, b);
  await waitFor(() => s1.mesh!.has('rb') && s2.mesh!.has('ra'), 10_000, 'presence');
  const o = await a.open(1, 'rb');
  assert.ok(o.rid, `opened (${o.fail})`);
  const inc = await b.next(T.INCOMING);
  assert.equal(inc.from, 'ra');
  const rb = inc.rid as number;
  // a sends two windows' worth; it may only go on as b's credit (relayed back through both servers) comes in.
  const data = randomBytes(2 * RELAY_WINDOW_BYTES);
  let sent = 0;
  let acked = 0;
  let got = 0;
  const h = createHash('sha256');
  const pump = () => {
    while (sent < data.length && sent < acked + RELAY_WINDOW_BYTES) {
      const n = Math.min(MAX_DATA_CHUNK, data.length - sent, acked + RELAY_WINDOW_BYTES - sent);
      a.sock.write(encodeData(RELAY_STREAM_TYPES, o.rid!, sent, data.subarray(sent, sent + n)));
      sent += n;
    }
  };
  pump();
  const end = Date.now() + 30_000;
  while (got < data.length && Date.now() < end) {
    for (const f of b.frames.splice(0)) {
      const sf = decodeStreamFrame(RELAY_STREAM_TYPES, f.type, f.payload);
      if (sf?.kind !== 'data') continue;
      assert.equal(sf.id, rb);
      assert.equal(sf.offset, got);
      h.update(sf.bytes);
      got += sf.bytes.length;
      b.sock.write(encodeCredit(RELAY_STREAM_TYPES, rb, got));
    }
    for (const f of a.frames.splice(0)) {
      const sf = decodeStreamFrame(RELAY_STREAM_TYPES, f.type, f.payload);
      if (sf?.kind === 'credit') acked = Math.max(acked, sf.ack);
      if (sf?.kind === 'reset') assert.fail('stream reset');
    }
    pump();
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.equal(got, data.length);
  assert.equal(h.digest('hex'), createHash('sha256').update(data).digest('hex'));
  assert.match(await metric(s1, 'edgemesh_server_mesh_forwarded_bytes_total'), /dir="out"} [1-9]/);
  assert.match(await metric(s2, 'edgemesh_server_mesh_forwarded_bytes_total'), /dir="in"} [1-9]/);
});

test('a sender beyond its credit is reset on both ends across the mesh', async () => {
  const a = await RawAgent.connect('rc', p1, '127.0.0.1', TEST_TOKEN);
  const b = await RawAgent.connect('rd', p2, '127.0.0.1', TEST_TOKEN);
  raws.push(a, b);
  await waitFor(() => s1.mesh!.has('rd'), 10_000, 'presence');
  const o = await a.open(1, 'rd');
  assert.ok(o.rid);
  await b.next(T.INCOMING);
  const chunk = Buffer.alloc(MAX_DATA_CHUNK);
  for (let sent = 0; sent <= RELAY_WINDOW_BYTES; sent += chunk.length) a.sock.write(encodeData(RELAY_STREAM_TYPES, o.rid!, sent, chunk));
  await waitFor(() => a.frames.some((f) => f.type === T.RESET) && b.frames.some((f) => f.type === T.RESET), 15_000, 'resets');
});

test('an open to a node no server has is no-peer; the agent leaving is seen by the peer server', async () => {
  const a = await RawAgent.connect('re', p1, '127.0.0.1', TEST_TOKEN);
  raws.push(a);
  assert.deepEqual(await a.open(7, 'nobody'), { fail: 'no-peer' });
  await waitFor(() => s2.mesh!.has('re'), 10_000, 'presence add');
  a.close();
  await waitFor(() => !s2.mesh!.has('re'), 10_000, 'presence remove');
});

test('real tunnels: agent a only on server 1, agent b only on server 2, a transfer through the mesh', async () => {
  const snap = makeSnapshot([{ service: 'default/sink', ip: '127.0.0.1', port: backendPort, node: 'b' }], ['a', 'b']);
  const a = await startTunnel('a', [`127.0.0.1:${p1}`], () => snap, { listenPort: 0 });
  const b = await startTunnel('b', [`127.0.0.1:${p2}`], () => snap, { listenPort: 0 });
  agents.push(a, b);
  await waitFor(() => a.tunnel.servers[0].connected && b.tunnel.servers[0].connected && s1.mesh!.has('b'), 10_000, 'connected');
  const dialer = new TunnelDialer(a.tunnel);
  const target = { serviceKey: 'default/sink', protocol: 'tcp' as const, ip: '127.0.0.1', port: backendPort, nodeName: 'b' };
  const data = randomBytes(512 * 1024);
  const s = await dialer.dialTcp(target);
  assert.equal(await sendAndHash(s, data), createHash('sha256').update(data).digest('hex'));
  assert.match(await metric(s1, 'edgemesh_server_relay_streams_total'), /outcome="mesh"} [1-9]/);
  assert.match(await metric(s1, 'edgemesh_server_mesh_rendezvous_total'), /forwarded-out"} [1-9]/);
});

test('a node revoked at server 1 is dropped at server 2, whose registry then refuses its key', async () => {
  const v = await RawAgent.connect('victim', p2, '127.0.0.1', TEST_TOKEN);
  raws.push(v);
  // Separate stateDirs: the pin is s2's only; s1 revokes the key (as `node revoke` would), the mesh carries the list.
  const pinned = s2.identity.enroller.registry.readPin('victim');
  assert.ok(pinned, 'pinned at s2');
  s1.identity.enroller.registry.revoke('victim', pinned.key, Date.now());
  s1.identity.enroller.checkRevocations();
  await waitFor(() => v.closed, 15_000, 'victim dropped at s2');
  assert.ok(s2.identity.enroller.registry.revocations().entryFor(Buffer.from(pinned.key, 'base64')), 'revoked in s2\'s registry: no certificate for it again');
});
