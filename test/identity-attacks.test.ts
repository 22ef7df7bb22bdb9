// The attacks of the node-identity issue, against real servers and agents' tunnels over loopback (TLS, TCP, UDP):
// each asserts the victim's traffic never reaches the attacker (the attacker's tunnel serves no stream, holds no link
// to the client) and that the server refuses what it must.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { makeSnapshot, sendAndHash, startHashSink, startServer, startTunnel, waitFor, type TestAgent } from './lib/tunnel-fixture.ts';
import { JoinTokenStore } from '../packages/server/src/identity/jointokens.ts';
import { TunnelDialer } from '../packages/agent/src/tunnel/dialer.ts';
import { checkOffer, RENDEZVOUS_CONTEXT, rendezvousMessage } from '../packages/agent/src/tunnel/rendezvous.ts';
import { decodeNodeCert } from '../packages/common/src/identity/cert.ts';
import { caHashOf } from '../packages/common/src/identity/trust.ts';
import type { EdgemeshServer } from '../packages/server/src/main.ts';

const dir = mkdtempSync(join(tmpdir(), 'em-attack-'));
const manifests = join(dir, 'manifests');
const stateDir = join(dir, 'server-state');
let server: EdgemeshServer;
let port: number;
let sink: Server;
let sinkPort: number;
const agents: TestAgent[] = [];
const NODES = ['victim', 'client', 'mallory', 'spare'];

const node = (name: string) => ({ apiVersion: 'v1', kind: 'Node', metadata: { name }, status: { addresses: [{ type: 'InternalIP', address: '127.0.0.1' }] } });
const snap = () => snapshot;
let snapshot = makeSnapshot([]);

async function start(): Promise<void> {
  // A restart listens on the same port (the agents redial it).
  ({ server, port } = await startServer(undefined, { stateDir, cluster: { source: 'file', manifestsDir: manifests }, ...(port ? { listen: `127.0.0.1:${port}` } : {}) }));
  await waitFor(() => server.identity.cluster.synced(), 10_000, 'server read the Nodes');
}

function joinToken(name: string): string {
  return new JoinTokenStore(stateDir).create(name, 3_600_000, Date.now()).token;
}

async function agent(name: string, o: { joinToken?: string; token?: string; stateDir?: string; caHash?: string } = {}): Promise<TestAgent> {
  const a = await startTunnel(name, [`127.0.0.1:${port}`], snap, { listenPort: 0, ...o });
  agents.push(a);
  return a;
}

const served = async (a: TestAgent) => Number(/outcome="ok"} (\d+)/.exec(await a.registry.getSingleMetricAsString('edgemesh_tunnel_streams_served_total'))?.[1] ?? 0);
const authCount = async (outcome: string) => Number(new RegExp(`outcome="${outcome}"} (\\d+)`).exec(await server.registry.getSingleMetricAsString('edgemesh_server_auth_total'))?.[1] ?? 0);

let victim: TestAgent;
let client: TestAgent;
let mallory: TestAgent;
let victimState: string;

async function dialVictim(): Promise<string> {
  const d = new TunnelDialer(client.tunnel);
  const data = randomBytes(64 * 1024);
  const s = await d.dialTcp({ serviceKey: 'default/sink', protocol: 'tcp', ip: '127.0.0.1', port: sinkPort, nodeName: 'victim' });
  const h = await sendAndHash(s, data);
  assert.equal(h, createHash('sha256').update(data).digest('hex'));
  return h;
}

before(async () => {
  mkdirSync(manifests, { recursive: true });
  writeFileSync(join(manifests, 'nodes.yaml'), NODES.map((n) => stringify(node(n))).join('---\n'));
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  ({ sink, port: sinkPort } = await startHashSink());
  snapshot = makeSnapshot([{ service: 'default/sink', ip: '127.0.0.1', port: sinkPort, node: 'victim' }], NODES);
  await start();
  victimState = mkdtempSync(join(dir, 'victim-'));
  victim = await agent('victim', { joinToken: joinToken('victim'), stateDir: victimState });
  client = await agent('client', { joinToken: joinToken('client') });
  mallory = await agent('mallory', { joinToken: joinToken('mallory') });
  await waitFor(() => [victim, client, mallory].every((a) => a.tunnel.servers[0].connected), 15_000, 'all signed in');
});

after(async () => {
  for (const a of agents) await a.stop().catch(() => {});
  await server?.stop();
  sink?.close();
  rmSync(dir, { recursive: true, force: true });
});

test('impersonating a connected node: the bootstrap token, a new key and the victim\'s name are refused (name pinned)', async () => {
  const before = await authCount('name-pinned');
  const fake = await agent('victim', { token: 'test-token-0123456789abcdef' });
  await waitFor(() => (fake.tunnel.servers[0].lastError ?? '').includes('name-pinned'), 10_000, 'refusal');
  assert.ok((await authCount('name-pinned')) > before);
  assert.equal(server.relay.agents.get('victim')?.key.equals(victim.identity.keyPair.publicKey), true, 'the victim keeps its name');
  await dialVictim();
  assert.equal(await served(fake), 0, 'the impostor served nothing');
  await fake.stop();
});

test('a reused join token and a join token for another name are refused', async () => {
  // A join token for the victim's name cannot take it from the victim's key (pinned), and is not used up by trying.
  const pinned = await agent('victim', { joinToken: joinToken('victim') });
  await waitFor(() => (pinned.tunnel.servers[0].lastError ?? '').includes('name-pinned'), 10_000, 'pinned name refused');
  await pinned.stop();
  // A token used once (by the node it was made for) does not work again, for any key.
  const t = joinToken('spare');
  const first = await agent('spare', { joinToken: t });
  await waitFor(() => first.tunnel.servers[0].connected, 10_000, 'spare enrolled');
  await first.stop();
  const again = await agent('spare', { joinToken: t });
  await waitFor(() => (again.tunnel.servers[0].lastError ?? '').includes('unauthorized'), 10_000, 'reuse refused');
  await again.stop();
  // Mallory's own fresh token, presented for the victim's name.
  const other = await agent('victim', { joinToken: joinToken('mallory') });
  await waitFor(() => (other.tunnel.servers[0].lastError ?? '').includes('token-wrong-node'), 10_000, 'wrong node');
  assert.equal(await served(other), 0);
  await other.stop();
});

test('a name that is not a Node of the cluster is refused, even with a valid credential', async () => {
  const a = await agent('not-a-cluster-node', { token: 'test-token-0123456789abcdef' });
  await waitFor(() => (a.tunnel.servers[0].lastError ?? '').includes('not-a-node'), 10_000, 'not-a-node');
  assert.equal(server.relay.agents.has('not-a-cluster-node'), false);
  await a.stop();
});

test('a server with another CA is refused by caHash pinning before any credential is sent', async () => {
  const other = await startServer();
  try {
    const ourHash = caHashOf(server.identity.ca.certPem);
    const a = await startTunnel('victim', [`127.0.0.1:${other.port}`], snap, { joinToken: joinToken('victim'), caHash: ourHash });
    agents.push(a);
    await waitFor(() => (a.tunnel.servers[0].lastError ?? '').includes('ca-hash-mismatch'), 10_000, 'pinning refusal');
    assert.equal(other.server.relay.agents.size, 0);
    // The agent hung up right after the TLS handshake: the rogue server saw no ENROLL (no outcome but the TLS one).
    const seen = await other.server.registry.getSingleMetricAsString('edgemesh_server_auth_total');
    assert.doesNotMatch(seen, /outcome="(?!tls-failed)[^"]+"} [1-9]/, seen);
    await a.stop();
  } finally {
    await other.server.stop();
  }
});

test('a forged or altered rendezvous is refused: wrong name, altered candidates, stale, another key', async () => {
  const m = mallory.identity;
  const v = victim.identity;
  const verify = (raw: Uint8Array, name: string) => client.identity.verifyPeer(raw, name, undefined);
  const offer = { sid: '0123456789abcdef', mode: 'normal' as const, cand: [{ host: '192.0.2.7', port: 4000, kind: 'lan' as const }], nat: 'cone' as const, streamId: 5 };
  const ts = Date.now();
  const signed = (by: typeof m, from: string, o = offer, t = ts) => ({ ...o, ts: t, from, cert: Buffer.from(by.ourCert()), sig: Buffer.from(by.sign(RENDEZVOUS_CONTEXT, rendezvousMessage(from, 'client', o, t))) });
  assert.equal(checkOffer(signed(v, 'victim'), 'client', Date.now(), verify).ok, true, 'the real offer');
  // Mallory (or a server) claims the victim's name with her own certificate.
  assert.match(String((checkOffer(signed(m, 'victim'), 'client', Date.now(), verify) as { reason: string }).reason), /wrong-name/);
  // The victim's certificate (public) with Mallory's signature.
  const stolen = { ...signed(m, 'victim'), cert: Buffer.from(v.ourCert()) };
  assert.equal((checkOffer(stolen, 'client', Date.now(), verify) as { reason: string }).reason, 'bad-signature');
  // A server rewrites the candidates of a real offer to its own address.
  const altered = { ...signed(v, 'victim'), cand: [{ host: '198.51.100.66', port: 4000, kind: 'lan' as const }] };
  assert.equal((checkOffer(altered, 'client', Date.now(), verify) as { reason: string }).reason, 'bad-signature');
  // A recorded offer replayed later.
  assert.equal((checkOffer(signed(v, 'victim', offer, ts - 120_000), 'client', Date.now(), verify) as { reason: string }).reason, 'stale');
  // Loopback and multicast candidates of a real offer are dropped.
  const bad = { ...offer, cand: [{ host: '127.0.0.1', port: 1, kind: 'lan' as const }, { host: '224.0.0.1', port: 1, kind: 'lan' as const }, ...offer.cand] };
  const r = checkOffer(signed(v, 'victim', bad), 'client', Date.now(), verify);
  assert.ok(r.ok && r.cand.length === 1 && r.cand[0].host === '192.0.2.7');
  assert.equal(decodeNodeCert(v.ourCert()).name, 'victim');
});

test('impersonating the node while it is disconnected, and racing it after a server restart: refused every time', async () => {
  await dialVictim();
  await victim.stop();
  await server.stop();
  await start();
  // The impostor redials every 100 ms from before the victim comes back.
  const before = await authCount('name-pinned');
  let racing = true;
  const racers: Promise<void>[] = [];
  const race = async () => {
    while (racing) {
      const fake = await startTunnel('victim', [`127.0.0.1:${port}`], snap, { token: 'test-token-0123456789abcdef' });
      await new Promise((r) => setTimeout(r, 100));
      await fake.stop();
    }
  };
  racers.push(race());
  await waitFor(() => false, 1500).catch(() => {});
  assert.equal(server.relay.agents.has('victim'), false, 'no impostor holds the name while the victim is away');
  racing = false;
  await Promise.all(racers);
  assert.ok((await authCount('name-pinned')) > before, 'the racer was refused');
  assert.equal(server.relay.agents.has('victim'), false, 'the racer never won the name');
  // The victim comes back with its pinned key. (On loopback it shares the racer's source address, whose failures
  // the enroller rate-limits: it may wait for that budget to refill.)
  victim = await agent('victim', { stateDir: victimState });
  await waitFor(() => victim.tunnel.servers[0].connected && client.tunnel.servers[0].connected, 60_000, 'victim back (renewing with its pinned key)')
    .catch((e: Error) => { throw new Error(`${e.message}: victim ${victim.tunnel.servers[0].lastError}, client ${client.tunnel.servers[0].lastError}`); });
  assert.equal(server.relay.agents.get('victim')?.key.equals(victim.identity.keyPair.publicKey), true);
  client.tunnel.forget('victim');
  await dialVictim();
});

test('a revoked node is dropped by the server, its links are dropped by peers, and it cannot come back', async () => {
  await dialVictim();
  await waitFor(() => client.tunnel.peers.has('victim'), 5_000, 'client has a link to the victim');
  const pin = server.identity.enroller.registry.readPin('victim')!;
  server.identity.enroller.registry.revoke('victim', pin.key, Date.now());
  server.identity.enroller.checkRevocations();
  await waitFor(() => !server.relay.agents.has('victim'), 10_000, 'server dropped the victim');
  await waitFor(() => !client.tunnel.peers.has('victim'), 10_000, 'client dropped its links to the victim');
  assert.ok(client.identity.revocations.isRevoked({ publicKey: victim.identity.keyPair.publicKey }));
  // The revoked node redials with its (still unexpired) certificate and key: refused.
  await waitFor(() => (victim.tunnel.servers[0].lastError ?? '').match(/revoked|unauthorized/) !== null, 20_000, 'victim refused');
  assert.equal(victim.tunnel.servers[0].connected, false);
  // Its certificate no longer passes a peer's check.
  const v = client.identity.verifyPeer(victim.identity.ourCert(), 'victim', victim.identity.keyPair.publicKey);
  assert.equal(v.ok ? 'ok' : v.reason, 'revoked');
});
