// PeerPaths on fake transports and a manual clock: the relay at once, the upgrade to direct moving an open stream,
// failover when the direct path goes silent, roaming (idle, and mid-transfer with a stuck UDX stream), re-attaching through another server after a restart, giving
// up after the resume bound, a dial on a dead direct path finishing over the relay, a restarted peer, double close.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { ManualClock } from './clock.ts';
import { collect, fakeDeadline, FakeServer, makePair, metric, runUntil, settle, TARGET } from './testfixture.ts';
import type { TunnelStream } from './stream.ts';
import { LINK_PING_MS, PATH_TIMEOUT_MS, ROAM_CONFIRM_MS, SESSION_RESUME_MS } from './timers.ts';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function openStream(env: ReturnType<typeof makePair>, ms = 3000): Promise<TunnelStream> {
  let s: TunnelStream | undefined;
  let err: unknown;
  env.a.paths.open(TARGET, fakeDeadline(env.clock, ms)).then((x) => { s = x; }, (e) => { err = e; });
  await runUntil(env.clock, () => s !== undefined || err !== undefined, ms + 100);
  if (err) throw err;
  assert.ok(s, 'the stream opened');
  return s;
}

const path = (env: ReturnType<typeof makePair>) => env.a.paths.status()?.path;

test('the first stream goes on the relay at once; the upgrade to direct moves it, every byte arrives', async () => {
  const env = makePair({ direct: true });
  const s = await openStream(env);
  const reply = collect(s);
  const one = randomBytes(300_000), two = randomBytes(300_000);
  s.write(one);
  assert.ok(await runUntil(env.clock, () => path(env) === 'direct' && env.b.paths.status()?.path === 'direct'), 'upgraded on both sides');
  s.end(two);
  assert.ok(await runUntil(env.clock, () => reply.ended()), 'reply');
  assert.equal(reply.text(), sha(Buffer.concat([one, two])));
  assert.equal(await metric(env.a, 'edgemesh_tunnel_streams_opened_total', 'path="relay",outcome="ok"'), 1, 'opened on the relay');
  assert.ok(await metric(env.a, 'edgemesh_tunnel_session_moves_total', 'path="direct"') >= 1);
  assert.equal(await metric(env.a, 'edgemesh_tunnel_punch_outcomes_total', 'outcome="direct"'), 1);
  env.a.paths.close();
  env.b.paths.close();
});

test('failover: the direct path goes silent mid-stream; the session moves to the relay and nothing is lost; it upgrades again after healing', async () => {
  const env = makePair({ direct: true, upgradeRetryMs: 5_000 });
  const s = await openStream(env);
  const reply = collect(s);
  assert.ok(await runUntil(env.clock, () => path(env) === 'direct' && env.b.paths.status()?.path === 'direct'));
  const parts = [randomBytes(200_000), randomBytes(200_000), randomBytes(200_000)];
  s.write(parts[0]);
  await runUntil(env.clock, () => false, 200);
  env.net.blackhole(env.a.udp.addr.host);
  s.write(parts[1]);
  assert.ok(await runUntil(env.clock, () => path(env) === 'relay', PATH_TIMEOUT_MS + 2_000), 'failed over to the relay');
  assert.equal(await metric(env.a, 'edgemesh_tunnel_failovers_total'), 1);
  s.end(parts[2]);
  assert.ok(await runUntil(env.clock, () => reply.ended(), 5_000), 'reply over the relay');
  assert.equal(reply.text(), sha(Buffer.concat(parts)), 'bytes sent into the dead path were resent over the relay');
  assert.equal(reply.error(), undefined);
  env.net.heal(env.a.udp.addr.host);
  assert.ok(await runUntil(env.clock, () => path(env) === 'direct', 30_000), 'direct again after healing');
  env.a.paths.close();
  env.b.paths.close();
});

test('roaming while idle: the peer\'s public address changes; the path follows it without a failover', async () => {
  const env = makePair({ direct: true });
  const s = await openStream(env);
  const reply = collect(s);
  assert.ok(await runUntil(env.clock, () => path(env) === 'direct' && env.b.paths.status()?.path === 'direct'));
  const before = env.a.paths.status()?.remote;
  const one = randomBytes(100_000), two = randomBytes(100_000);
  s.write(one);
  await settle();
  env.net.rebind(env.b.udp, { host: '198.51.100.7', port: 40001 });
  assert.ok(await runUntil(env.clock, () => env.a.paths.status()?.remote === '198.51.100.7:40001', 5_000), 'followed the new address');
  assert.notEqual(before, env.a.paths.status()?.remote);
  s.end(two);
  assert.ok(await runUntil(env.clock, () => reply.ended()));
  assert.equal(reply.text(), sha(Buffer.concat([one, two])));
  assert.equal(await metric(env.a, 'edgemesh_tunnel_roams_total'), 1);
  assert.equal(await metric(env.a, 'edgemesh_tunnel_failovers_total'), 0);
  assert.equal(path(env), 'direct');
  env.a.paths.close();
  env.b.paths.close();
});

test('an idle direct link writes nothing into its UDX stream (liveness and RTT from the heartbeats), so a roam found many seconds in moves at once', async () => {
  // A PING inside the stream sent after the peer's NAT forgot its mapping, before the peer is heard from its new one,
  // would be retransmitted to the old address for good and hold the stream's move (the e2e roaming flake).
  const env = makePair({ direct: true });
  const s = await openStream(env);
  const reply = collect(s);
  s.end('x');
  assert.ok(await runUntil(env.clock, () => reply.ended() && path(env) === 'direct' && env.b.paths.status()?.path === 'direct'));
  await runUntil(env.clock, () => false, 2 * LINK_PING_MS);
  const link = env.a.paths.directLink()!;
  const out = link.bytesOut;
  await runUntil(env.clock, () => false, 4 * LINK_PING_MS);
  assert.equal(link.bytesOut, out, 'nothing written while idle');
  assert.ok((env.a.paths.status()?.rttMs ?? -1) >= 0, 'RTT known from the heartbeats');
  env.net.rebind(env.b.udp, { host: '198.51.100.7', port: 40001 });
  assert.ok(await runUntil(env.clock, () => env.a.paths.status()?.remote === '198.51.100.7:40001', 5_000), 'followed the new address');
  const s2 = await openStream(env);
  const r2 = collect(s2);
  s2.end('after the roam');
  assert.ok(await runUntil(env.clock, () => r2.ended()));
  assert.equal(r2.text(), sha(Buffer.from('after the roam')));
  assert.equal(s2.path, 'direct');
  assert.equal(await metric(env.a, 'edgemesh_tunnel_failovers_total'), 0);
  env.a.paths.close();
  env.b.paths.close();
});

test('roaming mid-transfer: bytes sent to the forgotten mapping stall the UDX stream; the session goes on over the relay and then direct to the new address', async () => {
  const env = makePair({ direct: true });
  const s = await openStream(env);
  const reply = collect(s);
  assert.ok(await runUntil(env.clock, () => path(env) === 'direct' && env.b.paths.status()?.path === 'direct'));
  const one = randomBytes(100_000), two = randomBytes(100_000), three = randomBytes(100_000);
  s.write(one);
  env.net.rebind(env.b.udp, { host: '198.51.100.7', port: 40001 });
  s.write(two); // goes to b's old address: retransmitted there, never delivered (libudx keeps a packet's address)
  assert.ok(await runUntil(env.clock, () => path(env) === 'relay', ROAM_CONFIRM_MS + PATH_TIMEOUT_MS), 'the stuck move was given up');
  assert.equal(await metric(env.a, 'edgemesh_tunnel_roams_total'), 1);
  assert.equal(await metric(env.a, 'edgemesh_tunnel_failovers_total'), 1);
  assert.ok(await runUntil(env.clock, () => path(env) === 'direct' && env.a.paths.status()?.remote === '198.51.100.7:40001', 10_000), 'direct again, to the new address');
  s.end(three);
  assert.ok(await runUntil(env.clock, () => reply.ended()));
  assert.equal(reply.text(), sha(Buffer.concat([one, two, three])), 'every byte, in order');
  assert.equal(reply.error(), undefined);
  assert.equal(await metric(env.a, 'edgemesh_tunnel_sessions_reset_total'), 0);
  env.a.paths.close();
  env.b.paths.close();
});

test('re-attach: the relaying server restarts; the session resumes through the second server, bytes intact', async () => {
  const s1 = new FakeServer('srv1'), s2 = new FakeServer('srv2');
  const env = makePair({ servers: [s1, s2] });
  const s = await openStream(env);
  const reply = collect(s);
  assert.equal(env.a.paths.status()?.remote, 'srv1');
  const one = randomBytes(500_000), two = randomBytes(500_000);
  s.write(one);
  await settle();
  s1.kill();
  s.write(two);
  assert.ok(await runUntil(env.clock, () => env.a.paths.status()?.remote === 'srv2', 5_000), 'moved to the second server');
  s.end();
  assert.ok(await runUntil(env.clock, () => reply.ended(), 5_000));
  assert.equal(reply.text(), sha(Buffer.concat([one, two])));
  assert.equal(reply.error(), undefined);
  assert.equal(await metric(env.a, 'edgemesh_tunnel_sessions_reset_total'), 0);
  env.a.paths.close();
  env.b.paths.close();
});

test('give-up: a session with no transport for the resume bound resets its streams', async () => {
  const srv = new FakeServer('srv1');
  const env = makePair({ servers: [srv] });
  const s = await openStream(env);
  const reply = collect(s);
  s.write('hello');
  await settle();
  srv.kill();
  assert.ok(await runUntil(env.clock, () => false, SESSION_RESUME_MS - 1_000, 500) === false);
  assert.equal(s.destroyed, false, 'still waiting within the bound');
  assert.ok(await runUntil(env.clock, () => s.destroyed, 2_000, 250), 'reset after the bound');
  assert.match(String(reply.error()?.message), /resume bound/);
  assert.equal(await metric(env.a, 'edgemesh_tunnel_sessions_reset_total', 'reason="timeout"'), 1);
  env.a.paths.close();
  env.b.paths.close();
});

test('a dial while the direct path is silently dead moves to the relay after a third of its deadline and succeeds', async () => {
  const env = makePair({ direct: true });
  const first = await openStream(env);
  first.resume();
  assert.ok(await runUntil(env.clock, () => path(env) === 'direct' && env.b.paths.status()?.path === 'direct'));
  await runUntil(env.clock, () => false, 500);
  env.net.blackhole(env.a.udp.addr.host);
  const t0 = env.clock.now();
  const s = await openStream(env, 3000);
  const took = env.clock.now() - t0;
  assert.ok(took >= 1000 && took < 3000, `opened after ${took} ms: after the direct share, within the deadline`);
  assert.equal(s.path, 'relay');
  assert.equal(await metric(env.a, 'edgemesh_tunnel_failovers_total'), 0, 'before the heartbeats noticed');
  const reply = collect(s);
  s.end('x');
  assert.ok(await runUntil(env.clock, () => reply.ended()));
  assert.equal(reply.text(), sha(Buffer.from('x')));
  env.a.paths.close();
  env.b.paths.close();
});

test('a restarted peer (new session id) resets the old streams at once, and new ones work', async () => {
  const srv = new FakeServer('srv1');
  const env = makePair({ servers: [srv] });
  const old = await openStream(env);
  const oldReply = collect(old);
  old.write('before');
  await settle();
  env.restart(env.b);
  srv.kill();
  srv.up = true; // the server came back; the restarted b has a new session
  const s = await openStream(env);
  assert.ok(await runUntil(env.clock, () => old.destroyed, 1_000), 'the old stream was reset, not left for the resume bound');
  assert.match(String(oldReply.error()?.message), /restarted/);
  const reply = collect(s);
  s.end('after');
  assert.ok(await runUntil(env.clock, () => reply.ended()));
  assert.equal(reply.text(), sha(Buffer.from('after')));
  assert.equal(await metric(env.a, 'edgemesh_tunnel_sessions_reset_total', 'reason="peer-restarted"'), 1);
  env.a.paths.close();
  env.b.paths.close();
});

test('double close: everything ends once, no timer is left, later dials fail at once', async () => {
  const env = makePair({ direct: true });
  const s = await openStream(env);
  const reply = collect(s);
  let pendingErr: unknown;
  env.a.paths.open(TARGET, fakeDeadline(env.clock, 60_000)).catch((e) => { pendingErr = e; });
  env.a.paths.close();
  env.a.paths.close();
  await settle();
  assert.equal(s.destroyed, true);
  assert.match(String(reply.error()?.message), /forgotten/);
  assert.match(String(pendingErr), /forgotten|unreachable/);
  await assert.rejects(env.a.paths.open(TARGET, fakeDeadline(env.clock, 1000)), /forgotten/);
  assert.equal(env.a.paths.status(), undefined);
  env.b.paths.close();
  env.b.paths.close();
  await settle();
  env.clock.advance(120_000); // the deadlines' own timers
  assert.equal(env.clock.pending, 0, 'no timer survives close');
});

test('a re-punch timer that fires a millisecond early (timer rounding) still re-punches after a failover', async () => {
  class EarlyClock extends ManualClock {
    override setTimeout(fn: () => void, ms: number) {
      return super.setTimeout(fn, Math.max(0, ms - 1));
    }
  }
  const env = makePair({ direct: true, clock: new EarlyClock() });
  const s = await openStream(env);
  s.resume();
  assert.ok(await runUntil(env.clock, () => path(env) === 'direct' && env.b.paths.status()?.path === 'direct'));
  env.net.blackhole(env.a.udp.addr.host);
  assert.ok(await runUntil(env.clock, () => path(env) === 'relay', PATH_TIMEOUT_MS + 2_000));
  env.net.heal(env.a.udp.addr.host);
  assert.ok(await runUntil(env.clock, () => path(env) === 'direct', 30_000), 'direct again');
  env.a.paths.close();
  env.b.paths.close();
});

test('connect (a successor warming its predecessor\'s links): a relay link without a stream, then direct; fails when no server has the peer', async () => {
  const env = makePair({ direct: true });
  let done = false;
  env.a.paths.connect().then(() => { done = true; });
  assert.ok(await runUntil(env.clock, () => done, 2_000), 'resolved once a link is up');
  assert.ok(['relay', 'direct'].includes(String(path(env))));
  assert.ok(await runUntil(env.clock, () => path(env) === 'direct', 10_000), 'punched without a stream');
  await env.a.paths.connect(); // on a link already: at once
  env.a.paths.close();
  env.b.paths.close();

  const srv = new FakeServer('srv1');
  const lone = makePair({ servers: [srv] });
  srv.up = false;
  let err: unknown;
  lone.a.paths.connect().catch((e) => { err = e; });
  assert.ok(await runUntil(lone.clock, () => err !== undefined, 2_000), 'rejected');
  assert.match(String(err), /no server has the peer/);
  lone.a.paths.close();
  lone.b.paths.close();
});
