// Tunnel fault tests in network namespaces: server restarted mid-session, conntrack flushed on a NAT router, the
// direct path blackholed (failover to the relay, later upgrade again), wrong token refused, forged pings from a
// third namespace ignored, malformed frames and STUN fuzzed at the server.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { buildLab } from '../lib/netlab.ts';
import { E2E_TOKEN, SERVER_PORT, TunnelLab, waitUntil } from '../lib/tunnel-lab.ts';
import { KEY_FILE } from '../../packages/agent/src/tunnel/keys.ts';

const MB = 1024 * 1024;
/** Short upgrade retry so the "upgrade again after the fault" step is seen within the test. */
const UPGRADE_RETRY_MS = 3_000;
/** Failover to the relay must happen within this of the direct path dying: the design says 6.5 s (bench/tunnel
 *  reports the real figure); the bound is generous so a busy machine never trips it, yet a broken heartbeat does. */
const FAILOVER_BOUND_MS = 15_000;

describe('tunnel faults', { timeout: 300_000 }, () => {
  let tl: TunnelLab;

  before(async () => {
    const lab = await buildLab({
      publicHosts: ['srv', 'spoof', 'pub'],
      sites: [
        { name: 'pr1', nat: 'port-restricted', hosts: ['ha'] },
        { name: 'pr2', nat: 'port-restricted', hosts: ['hb'] },
      ],
    });
    tl = new TunnelLab(lab);
    tl.planEndpoints([{ name: 'a', host: 'ha' }, { name: 'b', host: 'hb' }, { name: 'c', host: 'pub' }]);
    await tl.startServer('srv');
    await Promise.all([['a', 'ha'], ['b', 'hb'], ['c', 'pub']].map(([n, h]) => tl.startNode(n, h, { upgradeRetryMs: UPGRADE_RETRY_MS, logLevel: 'debug' })));
    await waitUntil(async () => (await Promise.all(['a', 'b', 'c'].map(async (n) => (await tl.node(n).status()).servers[0].connected))).every(Boolean), 20_000, 'nodes connected');
    assert.equal((await tl.transfer('a', 'b', MB)).ok, true);
    await waitUntil(async () => (await tl.node('a').path('b')) === 'direct' && (await tl.node('b').path('a')) === 'direct', 25_000, 'a<->b direct');
  });

  after(async () => {
    await tl?.destroy();
  });

  test('server restarted mid-session: the direct path carries on; new streams work after reconnect', async () => {
    assert.equal(await tl.stopServer(), 0, 'server exit code after SIGTERM');
    await waitUntil(async () => !(await tl.node('a').status()).servers[0].connected, 10_000, 'a notices the server is gone');
    const during = await tl.transfer('a', 'b', 5 * MB);
    assert.equal(during.ok, true, JSON.stringify(during));
    assert.equal(during.path, 'direct');
    await tl.startServer('srv');
    await waitUntil(async () => (await Promise.all(['a', 'b', 'c'].map(async (n) => (await tl.node(n).status()).servers[0].connected))).every(Boolean), 40_000, 'reconnected');
    const fresh = await tl.transfer('c', 'b', 5 * MB);
    assert.equal(fresh.ok, true, JSON.stringify(fresh));
    const again = await tl.transfer('a', 'b', 5 * MB);
    assert.equal(again.ok, true, JSON.stringify(again));
  });

  test('conntrack flushed on a NAT router: streams keep working and the direct path comes back', async () => {
    await tl.lab.flushConntrack('pr1');
    await waitUntil(async () => (await tl.transfer('a', 'b', 2 * MB)).ok === true, 30_000, 'a transfer after the flush');
    await waitUntil(async () => (await tl.node('a').path('b')) === 'direct', 30_000, 'direct again');
    const r = await tl.transfer('b', 'a', 5 * MB);
    assert.equal(r.ok, true, JSON.stringify(r));
  });

  test('direct path blackholed: failover to the relay, new streams keep working, upgrade after it heals', async () => {
    assert.equal(await tl.node('a').path('b'), 'direct');
    const t0 = Date.now();
    const fault = await tl.lab.blackhole('pr1', { proto: 'udp' });
    // A stream opened before the heartbeats notice: no answer on the direct link, so it is opened on the relay.
    const early = await tl.transfer('a', 'b', MB);
    assert.equal(early.ok, true, JSON.stringify(early));
    assert.equal(early.path, 'relay');
    try {
      await waitUntil(async () => (await tl.node('a').path('b')) === 'relay', FAILOVER_BOUND_MS, 'failover to relay');
    } catch (e) {
      console.log(tl.node('a').stderr.split('\n').slice(-60).join('\n'));
      console.log(JSON.stringify(await tl.node('a').status()));
      throw e;
    }
    const failoverMs = Date.now() - t0;
    console.log(`failover detected after ${failoverMs} ms (design 6500 ms + polling; bound ${FAILOVER_BOUND_MS} ms)`);
    assert.ok(failoverMs <= FAILOVER_BOUND_MS, `failover took ${failoverMs} ms, more than ${FAILOVER_BOUND_MS} ms`);
    const r = await tl.transfer('a', 'b', 5 * MB);
    assert.equal(r.ok, true, JSON.stringify(r));
    assert.equal(r.path, 'relay');
    // The relay carried the streams first (the dial's fallback); the heartbeats then give the direct path up.
    await waitUntil(async () => (await tl.node('a').metric(/^edgemesh_tunnel_failovers_total/)) >= 1, 15_000, 'heartbeat failover');
    await tl.lab.unblackhole(fault);
    await waitUntil(async () => (await tl.node('a').path('b')) === 'direct', 40_000, 'upgraded to direct again');
    const back = await tl.transfer('a', 'b', 5 * MB);
    assert.equal(back.ok, true);
    assert.equal(back.path, 'direct');
  });

  test('wrong token: the agent is refused', async () => {
    const x = await tl.startNode('intruder', 'spoof', { token: 'not-the-cluster-token-0123456789' });
    await waitUntil(async () => ((await x.request('status')).errors as (string | null)[])[0] !== null, 15_000, 'refusal');
    const st = await x.status();
    assert.equal(st.servers[0].connected, false);
    assert.match(((await x.request('status')).errors as string[])[0], /token|auth/);
    const metrics = await tl.serverAdmin('/metrics');
    assert.match(metrics, /edgemesh_server_auth_total\{outcome="unauthorized"\} [1-9]/);
    const status = await tl.serverAdmin('/status');
    assert.doesNotMatch(status, /intruder/);
    x.proc.kill('SIGKILL');
  });

  test('forged pings from a third namespace are dropped and never answered', async () => {
    // c is on the public network (no NAT), so a stranger can reach its UDP socket directly.
    assert.equal((await tl.transfer('c', 'a', MB)).ok, true);
    await waitUntil(async () => (await tl.node('c').path('a')) !== undefined, 10_000, 'c knows a');
    await waitUntil(async () => (await tl.node('c').metric(/^edgemesh_tunnel_punch_attempts_total/)) >= 1, 10_000, 'c has a punch session with a');
    const aKey = Buffer.from(readFileSync(join(tl.dir, 'state-a', KEY_FILE), 'utf8').trim(), 'hex').subarray(32, 40);
    const badMac = () => tl.node('c').metric(/^edgemesh_tunnel_pings_rejected_total\{reason="bad-mac"\}/);
    const before = await badMac();
    const spoofer = tl.lab.spawn('spoof', process.execPath, [resolve(import.meta.dirname, '../lib/spoof-ping.ts'), tl.lab.host('pub').ip, '20006', aKey.toString('hex')]);
    const lines = createInterface({ input: spoofer.stdout! })[Symbol.asyncIterator]();
    const next = async () => JSON.parse(String((await lines.next()).value)) as { listening?: number; sent: number; answers?: number };
    const sent = await next();
    // c has handled and rejected every forged ping; then a marker from c's host to the spoofer, on the path an answer
    // would take: an answer, had there been one, reached the spoofer before the marker (no waiting for silence).
    await waitUntil(async () => (await badMac()) - before >= sent.sent, 15_000, 'c to reject every forged ping');
    await tl.lab.exec('pub', process.execPath, ['-e', `const s = require('node:dgram').createSocket('udp4'); s.send('marker', ${sent.listening}, '${tl.lab.host('spoof').ip}', () => s.close());`], { reject: true });
    const res = await Promise.race([next(), new Promise<never>((_, rej) => setTimeout(() => rej(new Error('the spoofer never got the marker')), 15_000).unref())]);
    assert.equal(res.answers, 0, 'a forged ping was answered');
    assert.equal((await badMac()) - before, res.sent, 'each forged ping rejected once');
    const r = await tl.transfer('c', 'a', 2 * MB);
    assert.equal(r.ok, true);
  });

  test('a peer whose public address changes is followed without a failover (roaming)', async () => {
    // c is public, a behind pr1: once direct, make pr1 map a to a new port and drop its conntrack state.
    // Roaming is the UDX path's (a TCP link does not roam, it dies and the session moves to UDX): c answers on TCP
    // too (public), so TCP to c's tunnel port is dropped and the pair starts a fresh session on UDX.
    const noTcp = await tl.lab.blackhole('pub', { proto: 'tcp', dport: 20006 });
    await tl.node('c').request('forget', { node: 'a' });
    await tl.node('a').request('forget', { node: 'c' });
    assert.equal((await tl.transfer('c', 'a', MB)).ok, true);
    await waitUntil(async () => (await tl.node('c').path('a')) === 'direct', 20_000, 'c<->a direct', () => tl.explain('c', 'a'));
    const remoteBefore = (await tl.node('c').status()).peers.find((p) => p.node === 'a')!.remote;
    const failoversBefore = await tl.node('c').metric(/^edgemesh_tunnel_failovers_total/);
    const roamsBefore = await tl.node('c').metric(/^edgemesh_tunnel_roams_total/);
    await tl.lab.exec('pr1', 'iptables', ['-t', 'nat', '-I', 'POSTROUTING', '1', '-o', 'wan0', '-p', 'udp', '-j', 'MASQUERADE', '--to-ports', '40000-40100'], { reject: true });
    await tl.lab.flushConntrack('pr1');
    await waitUntil(async () => (await tl.node('c').metric(/^edgemesh_tunnel_roams_total/)) > roamsBefore, 15_000, 'c follows a to its new address');
    const st = (await tl.node('c').status()).peers.find((p) => p.node === 'a')!;
    assert.equal(st.path, 'direct', await tl.explain('c', 'a'));
    assert.notEqual(st.remote, remoteBefore);
    const port = Number((st.remote ?? '').split(':').pop());
    assert.ok(port >= 40000 && port <= 40100, `remote ${st.remote} is not in the new mapping range 40000-40100`);
    const r = await tl.transfer('c', 'a', 2 * MB);
    assert.equal(r.ok, true, JSON.stringify(r));
    assert.equal(r.path, 'direct');
    assert.equal(await tl.node('c').metric(/^edgemesh_tunnel_failovers_total/), failoversBefore);
    await tl.lab.exec('pr1', 'iptables', ['-t', 'nat', '-D', 'POSTROUTING', '-o', 'wan0', '-p', 'udp', '-j', 'MASQUERADE', '--to-ports', '40000-40100'], { reject: true });
    await noTcp.remove();
  });

  test('malformed frames and STUN packets fuzzed at the server: no crash, agents unaffected', async () => {
    const srvIp = tl.lab.host('srv').ip;
    const out = await tl.lab.exec('spoof', process.execPath, [resolve(import.meta.dirname, '../lib/fuzz-server.ts'), srvIp, String(SERVER_PORT), '20005', E2E_TOKEN], { reject: true, timeoutMs: 90_000 });
    const res = JSON.parse(out.stdout.trim().split('\n').pop()!) as { stunAnswers: number; markers: number };
    assert.equal(res.markers, 2, 'the genuine binding requests sent after the garbage were not both answered');
    assert.equal(res.stunAnswers, 0, 'the server answered unauthenticated or malformed STUN');
    assert.equal(tl.server!.exitCode, null, 'the server exited');
    assert.match(await tl.serverAdmin('/healthz'), /^200/);
    const metrics = await tl.serverAdmin('/metrics');
    // Garbage on the TCP port never gets past the TLS handshake (refused there, counted as tls-failed).
    assert.match(metrics, /edgemesh_server_auth_total\{outcome="tls-failed"\} [1-9]/);
    assert.match(metrics, /edgemesh_server_stun_requests_total\{outcome="(malformed|unauthenticated)"\} [1-9]/);
    assert.ok((await tl.node('a').status()).servers[0].connected);
    const r = await tl.transfer('c', 'b', 2 * MB);
    assert.equal(r.ok, true);
  });
});
