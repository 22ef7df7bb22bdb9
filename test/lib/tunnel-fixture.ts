// Helpers for tunnel tests: an in-memory cluster snapshot, a server and agents' tunnel modules in one process.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:net';
import type { Duplex } from 'node:stream';
import { Registry } from 'prom-client';
import { silentLogger } from '../../packages/common/src/log.ts';
import { serverSchema } from '../../packages/common/src/config.ts';
import { EdgemeshServer } from '../../packages/server/src/main.ts';
import { startServerIdentity } from '../../packages/server/src/identity/index.ts';
import { Tunnel } from '../../packages/agent/src/tunnel/tunnel.ts';
import { AgentIdentity } from '../../packages/agent/src/identity/agentidentity.ts';
import type { AgentCredentials } from '../../packages/agent/src/identity/enroll.ts';
import { resolveCaTrust } from '../../packages/common/src/identity/trust.ts';
import { loadOrCreateKeyPair } from '../../packages/agent/src/tunnel/keys.ts';
import type { Endpoint, NodeInfo, Service, Snapshot } from '../../packages/agent/src/cluster/types.ts';

export const TEST_TOKEN = 'test-token-0123456789abcdef';

export interface TestEndpoint { service: string; ip: string; port: number; protocol?: 'TCP' | 'UDP'; node: string }

/** A snapshot with one Service per distinct service key and the given endpoints; a Node for every node named by an
 *  endpoint, plus `nodes` (the serving side serves only callers that are Nodes of the cluster). */
export function makeSnapshot(eps: TestEndpoint[], nodes: string[] = []): Snapshot {
  const services = new Map<string, Service>();
  const endpoints = new Map<string, Endpoint[]>();
  for (const e of eps) {
    const [ns, name] = e.service.split('/');
    const proto = e.protocol ?? 'TCP';
    if (!services.has(e.service)) {
      services.set(e.service, {
        key: e.service, namespace: ns, name, type: 'ClusterIP', clusterIPs: ['10.96.0.10'], headless: false,
        ports: [{ name: '', protocol: proto, port: 80, targetPort: e.port }], sessionAffinity: 'None',
        affinityTimeoutSeconds: 10800, internalTrafficPolicy: 'Cluster', labels: {}, annotations: {},
      });
    }
    const list = endpoints.get(e.service) ?? [];
    list.push({
      address: e.ip, addresses: [e.ip], addressType: 'IPv4', nodeName: e.node, ready: true, serving: true, terminating: false,
      ports: [{ name: '', port: e.port, protocol: proto }], slice: `${e.service}-1`,
    });
    endpoints.set(e.service, list);
  }
  const names = new Set([...nodes, ...eps.map((e) => e.node)]);
  const nodeMap = new Map<string, NodeInfo>([...names].map((n) => [n, { name: n, labels: {}, addresses: [] }]));
  return { version: 1, services, endpoints, nodes: nodeMap, destinationRules: new Map() };
}

/** A server with its own stateDir (CA, pins, join tokens) and `token` as the bootstrap token; `extra.stateDir` keeps
 *  one across restarts (the caller removes it). */
export async function startServer(token = TEST_TOKEN, extra: Record<string, unknown> = {}): Promise<{ server: EdgemeshServer; port: number; stateDir: string }> {
  const own = extra.stateDir === undefined;
  const stateDir = (extra.stateDir as string | undefined) ?? mkdtempSync(join(tmpdir(), 'ems-'));
  const tokenFile = join(stateDir, '..', `${stateDir.split('/').pop()}.token`);
  writeFileSync(tokenFile, token + '\n', { mode: 0o600 });
  const cfg = serverSchema.parse({ listen: '127.0.0.1:0', stunAltPort: 0, admin: { listen: '127.0.0.1:0' }, tokenFile, ...extra, stateDir });
  const identity = await startServerIdentity(cfg, silentLogger);
  const server = new EdgemeshServer(cfg, silentLogger, identity);
  const stop = server.stop.bind(server);
  server.stop = async () => {
    await stop();
    rmSync(tokenFile, { force: true });
    if (own) rmSync(stateDir, { recursive: true, force: true });
  };
  const { port } = await server.start();
  return { server, port, stateDir };
}

export interface TestAgent { tunnel: Tunnel; identity: AgentIdentity; stateDir: string; registry: Registry; stop(): Promise<void> }

/** An agent's identity for tests: trust on first use (or `caHash`/`caFile`) in `stateDir`, the given credentials. */
export function testIdentity(node: string, stateDir: string, creds: AgentCredentials, trust: { caFile?: string; caHash?: string } = {}): AgentIdentity {
  const { pair } = loadOrCreateKeyPair(stateDir);
  const { trust: t } = resolveCaTrust({ caFile: trust.caFile ?? '', caHash: trust.caHash ?? '', stateDir });
  return new AgentIdentity({ node, stateDir, keyPair: pair, trust: t, credentials: () => creds, log: silentLogger });
}

/** A Tunnel on loopback. Its backends are on 127.0.0.1, so it serves loopback endpoints unless `allowLoopback: false`. */
export async function startTunnel(node: string, servers: string[], snap: () => Snapshot, opts: { token?: string; joinToken?: string; stateDir?: string; listenPort?: number; caHash?: string; allowLoopback?: boolean; routingDefault?: 'prefer' | 'strict' | 'cluster' } = {}): Promise<TestAgent> {
  const stateDir = opts.stateDir ?? mkdtempSync(join(tmpdir(), `emt-${node}-`));
  const { pair } = loadOrCreateKeyPair(stateDir);
  const registry = new Registry();
  const identity = testIdentity(node, stateDir, { bootstrapToken: opts.joinToken ? undefined : (opts.token ?? TEST_TOKEN), joinToken: opts.joinToken }, { caHash: opts.caHash });
  const tunnel = new Tunnel({ node, servers, identity, keyPair: pair, log: silentLogger, registry, snapshot: snap, listenPort: opts.listenPort,
    allowLoopbackEndpoints: opts.allowLoopback ?? true, routingDefault: opts.routingDefault });
  await tunnel.start();
  return {
    tunnel, identity, stateDir, registry,
    async stop() {
      await tunnel.stop();
      if (!opts.stateDir) rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

export async function waitFor(cond: () => boolean, ms = 10_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** A TCP server on loopback that answers the sha256 (hex) of everything it received once the client half-closes. */
export async function startHashSink(): Promise<{ sink: Server; port: number }> {
  const sink = createServer((c) => {
    const h = createHash('sha256');
    c.on('data', (d: Buffer) => h.update(d));
    c.on('end', () => c.end(h.digest('hex')));
    c.on('error', () => {});
  });
  await new Promise<void>((r) => sink.listen(0, '127.0.0.1', r));
  return { sink, port: (sink.address() as { port: number }).port };
}

/** Writes `data`, half-closes, and resolves with everything read back until the peer ends. */
export function sendAndHash(s: Duplex, data: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    let reply = '';
    s.on('data', (c: Buffer) => { reply += c.toString(); });
    s.on('end', () => resolve(reply));
    s.on('error', reject);
    s.end(data);
  });
}
