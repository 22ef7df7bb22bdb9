import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import type { NodeInfo } from '../cluster/types.ts';
import { DialError } from '../proxy/dialer.ts';
import { admitNodeAccess, dialLoopback, LocalFirstNodeDialer, type NodeAccessConfig, type NodeDialer } from './access.ts';

const n = (name: string, group?: string): NodeInfo => ({ name, labels: {}, group, addresses: [] });
const NODES = new Map([n('edge-a', 'site-1'), n('edge-b', 'site-1'), n('cloud-1', 'cloud'), n('loner')].map((x) => [x.name, x]));
const cfg = (c: Partial<NodeAccessConfig> = {}): NodeAccessConfig => ({ allowedPorts: [22], allowedGroups: [], allowedNodes: [], ...c });
const from = (node: string, authenticated = true) => ({ node, authenticated });

test('admitNodeAccess: the port must be allowed; default admits any authenticated cluster node', () => {
  assert.deepEqual(admitNodeAccess(cfg(), from('cloud-1'), 22, NODES), { ok: true });
  assert.deepEqual(admitNodeAccess(cfg({ allowedPorts: [] }), from('cloud-1'), 22, NODES), { ok: false, reason: 'port 22 is not in nodeAccess.allowedPorts' });
  assert.equal(admitNodeAccess(cfg(), from('cloud-1'), 2222, NODES).ok, false);
  assert.equal(admitNodeAccess(cfg(), from('cloud-1'), 0, NODES).ok, false);
  assert.equal(admitNodeAccess(cfg({ allowedPorts: [70000] }), from('cloud-1'), 70000, NODES).ok, false);
  assert.match((admitNodeAccess(cfg(), from('cloud-1', false), 22, NODES) as { reason: string }).reason, /not an authenticated node/);
  assert.match((admitNodeAccess(cfg(), from('stranger'), 22, NODES) as { reason: string }).reason, /not a node of the cluster/);
});

test('admitNodeAccess: allowedNodes / allowedGroups restrict callers; the group is the serving side\'s view', () => {
  const c = cfg({ allowedGroups: ['cloud'], allowedNodes: ['edge-b'] });
  assert.equal(admitNodeAccess(c, from('cloud-1'), 22, NODES).ok, true, 'by group');
  assert.equal(admitNodeAccess(c, from('edge-b'), 22, NODES).ok, true, 'by name');
  assert.match((admitNodeAccess(c, from('edge-a'), 22, NODES) as { reason: string }).reason, /edge-a \(group site-1\) is not in nodeAccess/);
  assert.match((admitNodeAccess(c, from('loner'), 22, NODES) as { reason: string }).reason, /group none/);
  assert.equal(admitNodeAccess(cfg({ allowedNodes: ['edge-b'] }), from('cloud-1'), 22, NODES).ok, false);
  // This node's own SOCKS5 users: admitted by identity, the port rule still holds.
  assert.equal(admitNodeAccess(c, from('edge-a'), 22, NODES, 'edge-a').ok, true);
  assert.equal(admitNodeAccess(c, from('edge-a'), 80, NODES, 'edge-a').ok, false);
});

const servers: Server[] = [];
after(() => { for (const s of servers) s.close(); });

test('LocalFirstNodeDialer: this node by loopback (allowed ports only), others through the remote dialer or no-route', async () => {
  const srv = createServer((s) => s.end('sshd here'));
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  servers.push(srv);
  const port = (srv.address() as { port: number }).port;
  const asked: string[] = [];
  const remote: NodeDialer = { dialNode: async (node, p) => { asked.push(`${node}:${p}`); throw new DialError('forbidden', 'not allowed there'); } };
  let withRemote = true;
  const d = new LocalFirstNodeDialer({ self: 'edge-a', config: cfg({ allowedPorts: [port] }), nodes: () => NODES, remote: () => (withRemote ? remote : undefined) });
  const s = await d.dialNode('edge-a', port, AbortSignal.timeout(2000));
  const text = await new Promise<string>((resolve) => { let t = ''; s.on('data', (c: Buffer) => { t += c; }); s.on('end', () => { s.end(); resolve(t); }); });
  assert.equal(text, 'sshd here');
  await assert.rejects(d.dialNode('edge-a', port + 1 === 65536 ? 1 : port + 1, AbortSignal.timeout(2000)), (e: DialError) => e.code === 'forbidden');
  await assert.rejects(d.dialNode('edge-b', 22, AbortSignal.timeout(2000)), (e: DialError) => e.code === 'forbidden');
  assert.deepEqual(asked, ['edge-b:22']);
  withRemote = false;
  await assert.rejects(d.dialNode('edge-b', 22, AbortSignal.timeout(2000)), (e: DialError) => e.code === 'no-route');
});

test('dialLoopback: refused on both loopback addresses is refused', async () => {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((r) => srv.close(() => r()));
  await assert.rejects(dialLoopback(port, AbortSignal.timeout(2000)), (e: DialError) => e.code === 'refused' || e.code === 'unreachable');
});
