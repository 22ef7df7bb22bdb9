// The per-peer rate of rendezvous offers (limits.ts rendezvousRate, rendezvous.ts screenOffer), without sockets:
// (a) everything a legitimate pair sends — first punch, failover, re-punches backing off with their birthday
// follow-ups, a flapping path — recorded from two real PeerPaths on the fake network and a manual clock, passes the
// limiter built from the same constants; (b) a flood is refused, counted, and never reaches the signature check.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Registry } from 'prom-client';
import { Budgets } from '@edgemesh/common/budget';
import { silentLogger } from '@edgemesh/common/log';
import type { Rendezvous } from '@edgemesh/common/tunnel/protocol';
import type { VerifyResult } from '@edgemesh/common/identity/cert';
import {
  DEFAULT_TUNNEL_LIMITS, REFUSAL_RENDEZVOUS_RATE, RENDEZVOUS_COPIES, rendezvousBurstAttempts, rendezvousRate, TunnelBudgets,
} from './limits.ts';
import { screenOffer } from './rendezvous.ts';
import { fakeDeadline, makePair, metric, runUntil, TARGET } from './testfixture.ts';
import { PATH_TIMEOUT_MS, UPGRADE_RETRY_MS } from './timers.ts';

interface Seen { at: number; reply: boolean; mode: string }

/** Runs a pair (a cone, b symmetric: every failed normal round is followed by a birthday round) through a first
 *  punch, a failover whose re-punches fail while the path stays dead, healing, and a second loss; returns the offers
 *  each side received with the manual clock's time. */
async function legitimateSchedule(upgradeRetryMs: number | undefined, deadMs: number): Promise<{ byA: Seen[]; byB: Seen[]; env: ReturnType<typeof makePair> }> {
  const env = makePair({ direct: true, upgradeRetryMs });
  env.a.udp.nat = 'cone';
  env.b.udp.nat = 'symmetric';
  const byA: Seen[] = [], byB: Seen[] = [];
  for (const [side, log] of [[env.a, byA], [env.b, byB]] as const) {
    const orig = side.paths.onRendezvous.bind(side.paths);
    side.paths.onRendezvous = (m, reply, key) => {
      log.push({ at: env.clock.now(), reply: !!m.reply, mode: m.mode });
      orig(m, reply, key);
    };
  }
  const path = () => env.a.paths.status()?.path;
  // A stream stays open throughout: the peer is in use, so every upgrade attempt the policy allows is made.
  env.a.paths.open(TARGET, fakeDeadline(env.clock, 3000)).catch(() => {});
  assert.ok(await runUntil(env.clock, () => path() === 'direct' && env.b.paths.status()?.path === 'direct', 20_000, 100), 'first punch');
  for (let loss = 0; loss < 2; loss++) {
    env.net.blackhole(env.a.udp.addr.host);
    assert.ok(await runUntil(env.clock, () => path() === 'relay', PATH_TIMEOUT_MS + 5_000, 100), `loss ${loss}: failed over`);
    await runUntil(env.clock, () => false, deadMs, 100); // re-punches (normal + birthday) fail, backing off
    env.net.heal(env.a.udp.addr.host);
    assert.ok(await runUntil(env.clock, () => path() === 'direct', (upgradeRetryMs ?? UPGRADE_RETRY_MS) + 30_000, 100), `loss ${loss}: direct again`);
  }
  env.a.paths.close();
  env.b.paths.close();
  return { byA, byB, env };
}

/** Feeds what one side received into a limiter: every request as RENDEZVOUS_COPIES copies (a sender on that many
 *  servers), every reply once. Returns the refusals. */
function replay(seen: Seen[], upgradeRetryMs: number | undefined): number {
  const tb = new TunnelBudgets(new Budgets({ registry: new Registry(), log: silentLogger }), DEFAULT_TUNNEL_LIMITS, undefined, rendezvousRate({ upgradeRetryMs, servers: 1 }));
  let refused = 0;
  for (const s of seen) for (let c = 0; c < (s.reply ? 1 : RENDEZVOUS_COPIES); c++) if (!tb.admitRendezvous('peer', s.at)) refused++;
  return refused;
}

for (const retry of [undefined, 3_000]) {
  test(`a legitimate pair's offers pass the limiter (retry ${retry ?? UPGRADE_RETRY_MS} ms): first punch, birthday follow-ups, re-punches after two failovers`, async () => {
    const r = retry ?? UPGRADE_RETRY_MS;
    // Dead long enough for every re-punch of the back-off and one at the full retry interval.
    const deadMs = Math.min(r, 2 ** (rendezvousBurstAttempts(r) - 2) * 1000) * 2 + 30_000;
    const { byA, byB, env } = await legitimateSchedule(retry, deadMs);
    const requests = [...byA, ...byB].filter((s) => !s.reply);
    assert.ok(requests.some((s) => s.mode === 'birthday'), 'birthday rounds were part of it');
    assert.ok(requests.length >= 2 * rendezvousBurstAttempts(r), `re-punches were part of it (${requests.length} requests)`);
    assert.ok(await metric(env.a, 'edgemesh_tunnel_failovers_total') >= 2, 'two failovers');
    assert.equal(replay(byA, retry), 0, `a refused none of ${byA.length} offers`);
    assert.equal(replay(byB, retry), 0, `b refused none of ${byB.length} offers`);
  });
}

test('the rate is the derivation: more copies or a shorter retry allow more, never less than a real pair sends', () => {
  const d = rendezvousRate();
  assert.ok(d.capacity > 0 && d.ratePerSec > 0);
  assert.ok(rendezvousRate({ servers: 8 }).capacity > d.capacity, 'a node on more servers than RENDEZVOUS_COPIES gets more');
  assert.ok(rendezvousRate({ upgradeRetryMs: 3_000 }).ratePerSec > d.ratePerSec, 'a shorter retry, a higher rate');
  assert.equal(rendezvousBurstAttempts(500), 2, 'a retry below the re-punch delay: no back-off phase');
});

const offer = (from: string, i: number): Rendezvous => ({
  from, sid: `s${i}`, mode: 'normal', cand: [{ host: '198.51.100.7', port: 20006, kind: 'stun' }], nat: 'cone', streamId: i,
  ts: Date.now(), cert: Buffer.alloc(100), sig: Buffer.alloc(64),
}) as Rendezvous;

test('a flood of offers from one peer: past its bucket refused before the signature check and counted; another peer unaffected', async () => {
  const registry = new Registry();
  const tb = new TunnelBudgets(new Budgets({ registry, log: silentLogger }), DEFAULT_TUNNEL_LIMITS, undefined, rendezvousRate());
  let verifies = 0;
  const verify = (): VerifyResult => { verifies++; return { ok: false, reason: 'bad-signature' } as VerifyResult; };
  const admit = (peer: string, now: number) => tb.admitRendezvous(peer, now);
  const t0 = 1_000_000;
  const cap = tb.rendezvousRate.capacity;
  const flood = cap + 500;
  let rate = 0;
  for (let i = 0; i < flood; i++) {
    const r = screenOffer(offer('evil', i), 'victim', t0, admit, verify);
    if (!r.ok && r.reason === 'rate') rate++;
  }
  assert.equal(verifies, cap, 'only offers within the bucket reached the certificate check');
  assert.equal(rate, 500);
  assert.equal(tb.budgets.refused(REFUSAL_RENDEZVOUS_RATE), 500);
  assert.match(await registry.metrics(), /edgemesh_budget_refusals_total\{budget="tunnel_rendezvous_rate"\} 500/);
  const r = screenOffer(offer('good', 0), 'victim', t0, admit, verify);
  assert.ok(r.ok === false && r.reason !== 'rate', 'another peer has its own bucket');
  // Sustained: one more per 1/rate seconds.
  const step = Math.ceil(1000 / tb.rendezvousRate.ratePerSec);
  assert.ok(tb.admitRendezvous('evil', t0 + step));
  assert.equal(tb.admitRendezvous('evil', t0 + step), false);
  // A node that left the cluster has its bucket dropped.
  tb.forgetPeer('evil');
  tb.forgetPeer('good');
  assert.equal(tb.rendezvousPeers, 0);
});
