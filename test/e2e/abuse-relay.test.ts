// Abuse suite for the server (issue: no peer or stranger can exhaust or crash an agent or the server). The real
// edgemesh-server runs under RLIMIT_NOFILE 2048 (prlimit) with two real agents in UDP-blocked sites, so every
// cross-node call rides its relay; each attack runs for a bounded time from a host holding the cluster token while a
// pod on n1 calls the Service on n2 and GETs the server's /healthz every 0.5 s, each with a 2 s deadline. During and
// after every attack each of those must answer, the server must stay alive, its descriptors stay under the limit and
// come back down, and the refusals show in its metrics.
// The same attacks against any checkout, printed as a table: npx node test/lib/relay-abuse-report.ts [--root DIR].
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { RelayAbuseLab, relayAttacks, type RelayAttackResult } from '../lib/relay-abuse-lab.ts';
import { RELAY_STREAMS_PER_PAIR } from '../../packages/server/src/limits.ts';

const isRoot = process.getuid?.() === 0;
const NOFILE = 2048;
const ROOT = resolve(import.meta.dirname, '../..');
const ATTACK_MS = 20_000;

describe('abuse: the server\'s relay and tunnel port under a low descriptor limit', { skip: !isRoot && 'needs root' }, () => {
  let al: RelayAbuseLab;
  before(async () => { al = await RelayAbuseLab.start(ROOT, NOFILE); });
  after(async () => { await al?.destroy(); });

  async function run(name: string): Promise<RelayAttackResult> {
    const a = relayAttacks(al, ATTACK_MS).find((x) => x.name === name)!;
    const r = await al.attack(a.name, a.cfg);
    const ctx = `${name}: ${JSON.stringify(r)}\nserver log:\n${al.tail(8)}\nn1 log:\n${al.mesh.tail('n1', 5)}`;
    assert.equal(r.alive, true, ctx);
    assert.ok(r.during.rounds >= 5, `enough legitimate rounds during the attack: ${ctx}`);
    assert.equal(r.during.failed, 0, `every cross-node call and /healthz answered within 2 s: ${ctx}`);
    assert.ok(r.recoveredMs >= 0, `recovered once the attacker stopped: ${ctx}`);
    assert.ok(r.server.peak.fds < NOFILE, `descriptors stayed under the limit: ${ctx}`);
    assert.ok(r.server.after.fds <= r.server.before.fds + 32, `descriptors came back down: ${ctx}`);
    return r;
  }

  test('4 names each opening 4,096 relay streams to one victim: 16 per pair admitted, the rest OPEN_FAIL limit; the victim keeps serving', async () => {
    const r = await run('relay-stream-flood');
    const a = r.attacker as Record<string, number>;
    assert.ok(a.refused > 1000, `the attacker was refused (${a.refused})`);
    assert.ok(a.heldAtEnd <= 4 * RELAY_STREAMS_PER_PAIR, `at most the pair limit held per name (${a.heldAtEnd})`);
    assert.ok((r.metrics['edgemesh_server_budget_refusals_total{budget="relay_streams_per_pair"}'] ?? 0) > 1000, JSON.stringify(r.metrics));
    // Before the limits the victim logged one warning per stream (4,095 in 20 s); now at most about one per admitted one.
    assert.ok(r.victimWarnings <= 2 * a.opened + 16, `the victim was not flooded with warnings (${r.victimWarnings} for ${a.opened} admitted)`);
  });

  test('200 authenticated connections each parking a 1 MiB frame one byte short: at most the partial-frame budget held, the longest-waiting dropped', async () => {
    const r = await run('partial-frames');
    const a = r.attacker as Record<string, number>;
    assert.ok(a.dropped > 0, 'parked frames were dropped');
    assert.ok(a.openAtEnd <= 65, `at most 64 MiB of partial frames held (${a.openAtEnd} connections)`);
    assert.ok(a.heldMsMax < 15_000 && a.oldestOpenMs < 15_000, `no parked frame lived past the deadline (${a.heldMsMax} ms, oldest ${a.oldestOpenMs} ms)`);
    const m = r.metrics;
    assert.ok((m['edgemesh_server_budget_evictions_total{budget="partial_frame_bytes"}'] ?? 0) + (m['edgemesh_server_budget_refusals_total{budget="partial_frame_deadline"}'] ?? 0) > 0, JSON.stringify(m));
  });

  test('3,000 connections from 64 addresses that never finish the handshake: at most the unauthenticated budget held, evicted for newcomers', async () => {
    const r = await run('unauth-flood');
    const a = r.attacker as Record<string, number>;
    assert.ok(a.connects > 3000, `the attacker kept reconnecting (${a.connects})`);
    assert.ok(a.openAtEnd <= 1024 + 64, `at most limits.unauthConnections held (${a.openAtEnd})`);
    assert.ok(a.oldestOpenMs < 10_000, `no unauthenticated connection lived long (${a.oldestOpenMs} ms)`);
    assert.ok(r.server.peak.fds < 1024 + 128, `server descriptors bounded (${r.server.peak.fds})`);
    assert.ok((r.metrics['edgemesh_server_budget_evictions_total{budget="tunnel_unauth_conns"}'] ?? 0) > 0, JSON.stringify(r.metrics));
  });
});
