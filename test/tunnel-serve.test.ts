// The serving side of the tunnel in-process on loopback: a backend that answers and closes at once (HTTP/1.0 style)
// loses no byte of its reply across the tunnel, for 1,000 connections; the far side's dial works within the
// caller's deadline and maps errors to codes.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:net';
import { makeSnapshot, startServer, startTunnel, waitFor, type TestAgent } from './lib/tunnel-fixture.ts';
import { TunnelDialer } from '../packages/agent/src/tunnel/dialer.ts';
import { DialError, dialDeadline } from '../packages/agent/src/proxy/dialer.ts';
import type { EdgemeshServer } from '../packages/server/src/main.ts';

const CONNECTIONS = 1000;
const CONCURRENCY = 50;
/** Reply sizes: tiny, a few frames, more than the readable buffer; every 50th past the 2 MiB stream window. */
const SIZES = [1, 700, 64 * 1024, 200_000, 3 * 1024 * 1024];
const sizeIndex = (i: number) => (i % 50 === 0 ? 4 : i % 4);

let server: EdgemeshServer;
let a: TestAgent;
let b: TestAgent;
let backend: Server;
let backendPort: number;
let closedPort: number;
const replies = SIZES.map((n) => randomBytes(n));

before(async () => {
  const s = await startServer();
  server = s.server;
  // Reads the request head, writes the whole reply and closes (no half-close from the client is awaited).
  backend = createServer((c) => {
    let head = '';
    c.on('data', (d: Buffer) => {
      head += d.toString('latin1');
      const m = /^GET \/(\d+) /.exec(head);
      if (m && head.includes('\r\n\r\n')) c.end(replies[Number(m[1])]);
    });
    c.on('error', () => {});
  });
  await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
  backendPort = (backend.address() as { port: number }).port;
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  closedPort = (probe.address() as { port: number }).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const snap = makeSnapshot([
    { service: 'default/web', ip: '127.0.0.1', port: backendPort, node: 'b' },
    { service: 'default/closed', ip: '127.0.0.1', port: closedPort, node: 'b' },
  ], ['a']);
  a = await startTunnel('a', [`127.0.0.1:${s.port}`], () => snap);
  b = await startTunnel('b', [`127.0.0.1:${s.port}`], () => snap);
  await waitFor(() => a.tunnel.servers[0].connected && b.tunnel.servers[0].connected, 10_000, 'agents connected');
});

after(async () => {
  await a?.stop();
  await b?.stop();
  await server?.stop();
  backend?.close();
});

test(`a backend that replies and closes at once: every byte reaches the client, ${CONNECTIONS} connections`, { timeout: 300_000 }, async () => {
  const dialer = new TunnelDialer(a.tunnel);
  const target = { serviceKey: 'default/web', protocol: 'tcp' as const, ip: '127.0.0.1', port: backendPort, nodeName: 'b' };
  const want = replies.map((r) => createHash('sha256').update(r).digest('hex'));
  let next = 0;
  const failures: string[] = [];
  const one = async (i: number) => {
    const k = sizeIndex(i);
    const s = await dialer.dialTcp(target, dialDeadline(10_000));
    const h = createHash('sha256');
    let n = 0;
    await new Promise<void>((resolve, reject) => {
      s.on('data', (c: Buffer) => { h.update(c); n += c.length; });
      s.on('end', () => resolve());
      s.on('error', reject);
      s.on('close', () => resolve());
      s.write(`GET /${k} HTTP/1.0\r\nHost: web\r\n\r\n`); // and no half-close, as HTTP/1.0 clients do
    });
    if (h.digest('hex') !== want[k]) failures.push(`connection ${i}: ${n} of ${SIZES[k]} bytes`);
    s.destroy();
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < CONNECTIONS) await one(next++);
  }));
  assert.deepEqual(failures, [], failures.slice(0, 10).join('\n'));
  const served = await b.registry.getSingleMetricAsString('edgemesh_tunnel_streams_served_total');
  assert.match(served, new RegExp(`outcome="ok"} ${CONNECTIONS}\\b`));
});

test('the far side dials with the DirectDialer: a closed port is refused, a dead deadline times out', async () => {
  const dialer = new TunnelDialer(a.tunnel);
  const closed = { serviceKey: 'default/closed', protocol: 'tcp' as const, ip: '127.0.0.1', port: closedPort, nodeName: 'b' };
  await assert.rejects(dialer.dialTcp(closed, dialDeadline(3_000)), (e: unknown) => e instanceof DialError && e.code === 'refused');
  await assert.rejects(dialer.dialTcp({ ...closed, serviceKey: 'default/web', port: backendPort }, dialDeadline(1)), (e: unknown) => e instanceof DialError && e.code === 'timeout');
});
