// The tunnel's budgets outside the serving path (serve.test.ts has those): links per peer, punch sessions, birthday
// rounds, and the config defaults matching the named constants.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { Registry } from 'prom-client';
import { Budgets } from '@edgemesh/common/budget';
import { agentSchema } from '@edgemesh/common/config';
import { silentLogger } from '@edgemesh/common/log';
import { DialError } from '../proxy/dialer.ts';
import {
  BIRTHDAY_SOCKET_BUDGET, BUDGET_LINKS, BUDGET_PUNCH, DEFAULT_TUNNEL_LIMITS, REFUSAL_BIRTHDAY_UNASKED, TunnelBudgets, type TunnelLimitsConfig,
} from './limits.ts';
import { generateKeyPair } from '@edgemesh/common/tunnel/ed25519';
import { createTunnelMetrics } from './metrics.ts';
import { TunnelSocket } from './socket.ts';
import { fakeDeadline, makePair, metric, runUntil, settle, TARGET } from './testfixture.ts';

const mk = (limits: Partial<TunnelLimitsConfig> = {}) => {
  const budgets = new Budgets({ registry: new Registry(), log: silentLogger });
  return new TunnelBudgets(budgets, { ...DEFAULT_TUNNEL_LIMITS, ...limits });
};

test('tunnel.limits defaults are the named constants', () => {
  const cfg = agentSchema.parse({ nodeName: 'n' });
  assert.deepEqual(cfg.tunnel.limits, DEFAULT_TUNNEL_LIMITS);
});

test('links per peer: held until the transport closes; a refused link has its stream destroyed', async () => {
  const tb = mk({ linksPerPeer: 2 });
  const s1 = new PassThrough(), s2 = new PassThrough(), s3 = new PassThrough();
  tb.linkLease('p', s1);
  tb.linkLease('p', s2);
  assert.throws(() => tb.linkLease('p', s3), (e: unknown) => e instanceof DialError && e.code === 'refused');
  assert.equal(s3.destroyed, true);
  assert.equal(tb.budgets.refused(`${BUDGET_LINKS}_per_peer`), 1);
  tb.linkLease('q', new PassThrough()); // another peer has its own share
  s1.destroy(); // the link closed, or the peer went away
  await settle();
  assert.equal(tb.links.usedBy('p'), 1);
  tb.linkLease('p', new PassThrough());
  assert.equal(tb.links.usedBy('p'), 2);
});

test('links per peer through PeerPaths: a link holds its lease while it lives and gives it back when it closes', async () => {
  const budgets = new Map<string, TunnelBudgets>([['a', mk()], ['b', mk({ linksPerPeer: 1 })]]);
  const env = makePair({ budgets: (side) => budgets.get(side) });
  let opened = false;
  env.a.paths.open(TARGET, fakeDeadline(env.clock, 3000)).then((s) => { opened = true; s.end('x'); }, () => {});
  assert.ok(await runUntil(env.clock, () => opened), 'the first link carries the stream');
  assert.equal(budgets.get('b')!.links.usedBy('a'), 1);
  env.a.paths.close();
  env.b.paths.close();
  await settle();
  assert.equal(budgets.get('a')!.links.used, 0, 'links closed: every lease back');
  assert.equal(budgets.get('b')!.links.used, 0);
});

test('punch sessions: none left = no attempt (the relay carries on); a finished attempt gives its lease back', async () => {
  const none = new Map<string, TunnelBudgets>([['a', mk({ punchSessions: 0 })], ['b', mk()]]);
  const env = makePair({ direct: true, budgets: (side) => none.get(side) });
  let opened = false;
  env.a.paths.open(TARGET, fakeDeadline(env.clock, 3000)).then(() => { opened = true; }, () => {});
  assert.ok(await runUntil(env.clock, () => opened), 'over the relay');
  await runUntil(env.clock, () => false, 2000);
  assert.equal(await metric(env.a, 'edgemesh_tunnel_punch_attempts_total'), 0);
  assert.ok(none.get('a')!.budgets.refused(BUDGET_PUNCH) >= 1);
  env.a.paths.close();
  env.b.paths.close();

  const some = new Map<string, TunnelBudgets>([['a', mk()], ['b', mk()]]);
  const env2 = makePair({ direct: true, budgets: (side) => some.get(side) });
  env2.a.paths.open(TARGET, fakeDeadline(env2.clock, 3000)).catch(() => {});
  assert.ok(await runUntil(env2.clock, () => env2.a.paths.status()?.path === 'direct'), 'punched');
  assert.equal(some.get('a')!.punch.used, 0, 'initiator lease back');
  assert.equal(some.get('b')!.punch.used, 0, 'responder lease back');
  env2.a.paths.close();
  env2.b.paths.close();
});

test('a birthday request out of the blue is refused (never a first contact); one round at a time', async () => {
  const budgets = new Map<string, TunnelBudgets>([['a', mk()], ['b', mk()]]);
  const env = makePair({ direct: true, budgets: (side) => budgets.get(side) });
  env.b.udp.nat = 'symmetric'; // b would be the hard side: 256 sockets
  const rdv = (sid: string) => ({
    sid, mode: 'birthday' as const, cand: [{ host: '203.0.113.1', port: 20006, kind: 'stun' as const }], nat: 'cone' as const, streamId: 7,
    from: 'a', rttFromMs: 0, rttToMs: 0, ts: Date.now(), cert: Buffer.alloc(0), sig: Buffer.alloc(0),
  });
  let replied = 0;
  env.b.paths.onRendezvous(rdv('0011223344556677'), () => { replied++; return true; }, Buffer.from(env.a.keys.publicKey));
  await settle();
  assert.equal(replied, 0);
  assert.equal(budgets.get('b')!.budgets.refused(REFUSAL_BIRTHDAY_UNASKED), 1);
  assert.equal(budgets.get('b')!.birthday.used, 0);
  // One round at a time: a round held elsewhere leaves no room for a second.
  const held = budgets.get('b')!.birthday.tryAcquire(BIRTHDAY_SOCKET_BUDGET);
  assert.ok(held);
  assert.equal(budgets.get('b')!.birthday.tryAcquire(BIRTHDAY_SOCKET_BUDGET), undefined);
  held.release();
  env.a.paths.close();
  env.b.paths.close();
});

test('a failed normal punch followed by birthday mode: the peer follows it (asked), and every punch and birthday lease comes back', async () => {
  const budgets = new Map<string, TunnelBudgets>([['a', mk()], ['b', mk()]]);
  const env = makePair({ direct: true, budgets: (side) => budgets.get(side) });
  env.a.udp.nat = 'cone';
  env.b.udp.nat = 'symmetric';
  // Pings never arrive: the normal punch fails, the initiator (a) follows with birthday mode, which fails too.
  env.net.blackhole(env.a.udp.addr.host);
  env.a.paths.open(TARGET, fakeDeadline(env.clock, 3000)).catch(() => {});
  await runUntil(env.clock, () => false, 30_000, 100);
  assert.ok(await metric(env.a, 'edgemesh_tunnel_punch_outcomes_total', 'outcome="failed"') >= 1, 'the normal punch failed');
  assert.ok(await metric(env.b, 'edgemesh_tunnel_punch_outcomes_total', 'outcome="birthday-failed"') >= 1, 'b took part in the birthday round');
  assert.equal(budgets.get('b')!.budgets.refused(REFUSAL_BIRTHDAY_UNASKED), 0, 'the follow-up was not refused');
  for (const side of ['a', 'b']) {
    assert.equal(budgets.get(side)!.punch.used, 0, `${side}: punch leases back`);
    assert.equal(budgets.get(side)!.birthday.used, 0, `${side}: birthday leases back`);
  }
  env.a.paths.close();
  env.b.paths.close();
});

test('network interfaces are read on refresh, never per rendezvous; an EMFILE while reading keeps the last list', () => {
  let reads = 0;
  let fail = false;
  const interfaces = (() => {
    reads++;
    if (fail) throw Object.assign(new Error('uv_interface_addresses returned Unknown system error 24'), { code: 'EMFILE' });
    return { eth0: [{ address: '192.0.2.7', family: 'IPv4', internal: false, netmask: '255.255.255.0', mac: '00:00:00:00:00:00', cidr: '192.0.2.7/24' }] };
  }) as unknown as typeof import('node:os').networkInterfaces;
  const sock = new TunnelSocket({ listenPort: 0, keyPair: generateKeyPair(), log: silentLogger, metrics: createTunnelMetrics(new Registry()), stunServers: () => [], interfaces });
  sock.refreshInterfaces();
  for (let i = 0; i < 100; i++) sock.candidates();
  assert.equal(reads, 1, 'candidates() does not read the interfaces');
  fail = true;
  assert.doesNotThrow(() => sock.refreshInterfaces());
  assert.deepEqual(sock.candidates().map((c) => c.host), ['192.0.2.7'], 'the last list stays');
});
