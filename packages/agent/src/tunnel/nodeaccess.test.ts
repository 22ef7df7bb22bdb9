// Node access through the tunnel on fake transports: the OPEN of kind 3 (a port, no Service, no IP) and its strict
// decoding; a node-access stream between two PeerPaths carrying the serving side's reply, the caller's name as the
// link knows it; and the real serving side (NodeAccessServer) in front of a loopback listener: admitted, refused by
// port or caller (ERR forbidden, counted, budget refusal), nothing listening (refused), the per-peer budget, leases
// given back when streams end.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import { Registry } from 'prom-client';
import { Budgets } from '@edgemesh/common/budget';
import { FrameDecoder } from '@edgemesh/common/tunnel/frame';
import { silentLogger } from '@edgemesh/common/log';
import type { NodeInfo } from '../cluster/types.ts';
import { DialError } from '../proxy/dialer.ts';
import { decodeOpen, encodeOpen, isNodeAccess, OPEN_KIND } from './linkproto.ts';
import { NODE_ACCESS_BUDGET, NODE_ACCESS_DENIED, NODE_ACCESS_MAX_PER_PEER, NodeAccessServer } from './nodeaccess-serve.ts';
import type { TunnelStream } from './stream.ts';
import { collect, fakeDeadline, makePair, metric, runUntil, type Side } from './testfixture.ts';

test('OPEN kind 3 (node access) carries only the port and the caller\'s time; any address in it is refused', () => {
  const [f] = new FrameDecoder().push(encodeOpen(7, { nodePort: 22, timeoutMs: 2500 }));
  assert.equal(f.payload[4], OPEN_KIND.NODE);
  assert.equal(f.payload.length, 14, 'no ip, no service');
  const d = decodeOpen(f.payload);
  assert.deepEqual(d, { id: 7, header: { nodePort: 22, timeoutMs: 2500 } });
  assert.ok(d?.header && isNodeAccess(d.header));
  // A Service stream is not node access.
  const [g] = new FrameDecoder().push(encodeOpen(9, { target: { protocol: 'tcp', serviceKey: 'ns/web', ip: '10.1.0.5', port: 22 }, timeoutMs: 1 }));
  const h = decodeOpen(g.payload)?.header;
  assert.ok(h && !isNodeAccess(h));
  // Kind 3 with an IP or a Service attached, port 0, or trailing bytes: refused (header undefined -> ERR forbidden).
  const withIp = Buffer.from(g.payload);
  withIp[4] = OPEN_KIND.NODE;
  assert.deepEqual(decodeOpen(withIp), { id: 9, header: undefined });
  const port0 = Buffer.from(f.payload);
  port0.writeUInt16BE(0, 5);
  assert.deepEqual(decodeOpen(port0), { id: 7, header: undefined });
  assert.deepEqual(decodeOpen(Buffer.concat([f.payload, Buffer.from([0])])), { id: 7, header: undefined });
});

async function openNode(env: ReturnType<typeof makePair>, port: number, ms = 3000): Promise<TunnelStream> {
  let s: TunnelStream | undefined;
  let err: unknown;
  env.a.paths.openStream({ nodePort: port, timeoutMs: 0 }, `port ${port}`, fakeDeadline(env.clock, ms)).then((x) => { s = x; }, (e) => { err = e; });
  await runUntil(env.clock, () => s !== undefined || err !== undefined, ms + 100);
  if (err) throw err;
  assert.ok(s, 'the stream opened');
  return s;
}

test('a node-access stream reaches the peer\'s serving side with the caller\'s authenticated name; its refusal comes back as a DialError', async () => {
  const env = makePair();
  const s = await openNode(env, 22);
  const reply = collect(s);
  s.end();
  assert.ok(await runUntil(env.clock, () => reply.ended()));
  assert.equal(reply.text(), 'node b port 22 for a');
  await assert.rejects(openNode(env, 2222), (e: unknown) => e instanceof DialError && e.code === 'forbidden' && /allowedPorts/.test(e.message));
  assert.deepEqual(env.b.nodeOpens, ['a:22', 'a:2222']);
  assert.equal(env.b.served.length, 0, 'the Service serving side saw nothing');
  env.a.paths.close();
  env.b.paths.close();
});

const NODES: ReadonlyMap<string, NodeInfo> = new Map([
  ['a', { name: 'a', labels: {}, group: 'site-1', addresses: [] }],
  ['b', { name: 'b', labels: {}, group: 'site-2', addresses: [] }],
]);

/** b serves node access for real (NodeAccessServer) in front of `ports`. */
function realServing(b: Side, config: { allowedPorts: number[]; allowedGroups?: string[]; allowedNodes?: string[] }, nodes = NODES) {
  const registry = new Registry();
  const budgets = new Budgets({ registry, log: silentLogger });
  const srv = new NodeAccessServer({
    self: 'b', config: { allowedGroups: [], allowedNodes: [], ...config }, nodes: () => nodes, budgets, registry, log: silentLogger,
  });
  b.env.serveNode = (peer, h, accept, reject, rtt) => srv.serve(peer, h, rtt, accept, reject);
  return { srv, budgets, registry };
}

async function listenLoopback(onConn: (s: import('node:net').Socket) => void): Promise<{ server: Server; port: number }> {
  const server = createServer(onConn);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { server, port: (server.address() as { port: number }).port };
}

const count = async (registry: Registry, outcome: string) => {
  const text = await registry.getSingleMetricAsString('edgemesh_tunnel_node_access_served_total');
  return Number(text.split('\n').find((l) => l.includes(`outcome="${outcome}"`))?.split(' ').pop() ?? 0);
};

test('NodeAccessServer: an allowed port is dialed on loopback and spliced; other ports, unknown callers and closed ports are refused', async (t) => {
  const env = makePair();
  const sshd = await listenLoopback((c) => { c.write('SSH-2.0-test\r\n'); c.on('data', (d) => c.end(`got ${d}`)); c.on('error', () => {}); });
  const closed = await listenLoopback(() => {});
  closed.server.close();
  t.after(() => { sshd.server.close(); env.a.paths.close(); env.b.paths.close(); });
  const { srv, budgets, registry } = realServing(env.b, { allowedPorts: [sshd.port, closed.port] });

  const s = await openNode(env, sshd.port);
  const reply = collect(s);
  s.write('hi');
  assert.ok(await runUntil(env.clock, () => reply.ended(), 5000), 'the loopback server answered through the stream');
  assert.equal(reply.text(), 'SSH-2.0-test\r\ngot hi');
  assert.equal(await count(registry, 'ok'), 1);
  assert.equal(srv.active, 1, 'half-closed by the server: the stream is ours until we end it too');
  s.end();
  assert.ok(await runUntil(env.clock, () => srv.active === 0, 5000), 'the lease is given back when the stream ends');

  await assert.rejects(openNode(env, sshd.port + 1 === closed.port ? sshd.port + 2 : sshd.port + 1), (e: unknown) => e instanceof DialError && e.code === 'forbidden');
  assert.equal(await count(registry, 'forbidden'), 1);
  assert.equal(budgets.refused(NODE_ACCESS_DENIED), 1, 'a refusal by rule is counted (and logged rate-limited) as a budget refusal');
  await assert.rejects(openNode(env, closed.port), (e: unknown) => e instanceof DialError && e.code === 'refused');
  assert.equal(await count(registry, 'refused'), 1);
  assert.equal(srv.active, 0);
});

test('NodeAccessServer: the caller must be a Node of the cluster, in allowedNodes/allowedGroups when they are set', async (t) => {
  const env = makePair();
  const echo = await listenLoopback((c) => { c.on('error', () => {}); c.end('ok'); });
  t.after(() => { echo.server.close(); env.a.paths.close(); env.b.paths.close(); });
  const onlySite2 = realServing(env.b, { allowedPorts: [echo.port], allowedGroups: ['site-2'] });
  await assert.rejects(openNode(env, echo.port), (e: unknown) => e instanceof DialError && e.code === 'forbidden' && /group site-1/.test(e.message));
  assert.equal(onlySite2.budgets.refused(NODE_ACCESS_DENIED), 1);
  realServing(env.b, { allowedPorts: [echo.port], allowedNodes: ['a'] });
  const s = await openNode(env, echo.port);
  const r = collect(s);
  assert.ok(await runUntil(env.clock, () => r.ended(), 5000));
  assert.equal(r.text(), 'ok');
  realServing(env.b, { allowedPorts: [echo.port] }, new Map([['b', NODES.get('b')!]]));
  await assert.rejects(openNode(env, echo.port), (e: unknown) => e instanceof DialError && e.code === 'forbidden' && /not a node of the cluster/.test(e.message));
});

test(`NodeAccessServer: at most ${NODE_ACCESS_MAX_PER_PEER} streams per calling peer; the next is refused and counted, room comes back on close`, async (t) => {
  const env = makePair();
  const held = new Set<import('node:net').Socket>();
  const hold = await listenLoopback((c) => { c.on('error', () => {}); held.add(c); c.write('x'); });
  t.after(() => { for (const c of held) c.destroy(); hold.server.close(); env.a.paths.close(); env.b.paths.close(); });
  const { srv, budgets, registry } = realServing(env.b, { allowedPorts: [hold.port] });
  const streams: TunnelStream[] = [];
  for (let i = 0; i < NODE_ACCESS_MAX_PER_PEER; i++) streams.push(await openNode(env, hold.port, 5000));
  assert.equal(srv.active, NODE_ACCESS_MAX_PER_PEER);
  await assert.rejects(openNode(env, hold.port), (e: unknown) => e instanceof DialError && e.code === 'refused' && /too many/.test(e.message));
  assert.equal(await count(registry, 'limit'), 1);
  assert.equal(budgets.refused(`${NODE_ACCESS_BUDGET}_per_peer`), 1);
  for (const s of streams) s.destroy();
  assert.ok(await runUntil(env.clock, () => srv.active === 0, 10_000), `leases given back (${srv.active} left)`);
  const again = await openNode(env, hold.port);
  again.destroy();
});
