// PeerPaths with the TCP transport for real on loopback (fake UDP and servers, manual clock advanced with real time):
// the session moves onto the TCP link when the peer answers on TCP, keeps the UDX link as the warm fallback and moves
// to it without losing a byte when the TCP link dies; with TCP dropped it stays on UDX.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { collect, fakeDeadline, makePair, metric, TARGET } from './testfixture.ts';
import type { TunnelStream } from './stream.ts';
import { TCP_REDIAL_MS } from './timers.ts';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
type Env = ReturnType<typeof makePair>;

/** Real sockets and TLS under a manual clock: advance the clock (`step` ms per 10 ms of real time) until `cond`. */
async function until(env: Env, cond: () => boolean, ms = 15_000, step = 10): Promise<boolean> {
  for (let t = 0; t < ms && !cond(); t += step) {
    await new Promise((r) => setTimeout(r, 10));
    env.clock.advance(step);
  }
  return cond();
}

async function open(env: Env): Promise<TunnelStream> {
  let s: TunnelStream | undefined;
  let err: unknown;
  env.a.paths.open(TARGET, fakeDeadline(env.clock, 3_000)).then((x) => { s = x; }, (e) => { err = e; });
  await until(env, () => s !== undefined || err !== undefined, 5_000);
  if (err) throw err;
  assert.ok(s);
  return s;
}

const transport = (env: Env, side: 'a' | 'b') => env[side].paths.status()?.transport;

test('the peer answers on TCP: the session moves onto the TCP link; when it dies the warm UDX link takes over, every byte arrives', async () => {
  const env = makePair({ direct: true, tcp: true });
  try {
    const s = await open(env);
    const reply = collect(s);
    const parts = [randomBytes(400_000), randomBytes(400_000), randomBytes(400_000)];
    s.write(parts[0]);
    assert.ok(await until(env, () => transport(env, 'a') === 'tcp' && transport(env, 'b') === 'tcp'), `on tcp (a: ${transport(env, 'a')}, b: ${transport(env, 'b')})`);
    assert.equal(env.a.paths.status()?.path, 'direct');
    assert.ok(await until(env, () => env.a.paths.directLink() !== undefined), 'the UDX link is up beside it');
    s.write(parts[1]);
    env.a.paths.current!.close(new Error('test: the TCP link dies'));
    assert.ok(await until(env, () => transport(env, 'a') === 'udx'), `moved to udx (${transport(env, 'a')})`);
    s.end(parts[2]);
    assert.ok(await until(env, () => reply.ended()), 'reply');
    assert.equal(reply.text(), sha(Buffer.concat(parts)));
    assert.equal(reply.error(), undefined);
    assert.ok(await metric(env.a, 'edgemesh_tunnel_links_total', 'path="direct"') >= 2, 'a TCP and a UDX link');
  } finally {
    env.a.paths.close();
    env.b.paths.close();
    await env.tcp.close();
  }
});

test('TCP dropped between the peers: the session stays on UDX, bytes intact; once TCP answers again, the redial moves it back', async () => {
  const env = makePair({ direct: true, tcp: true });
  env.tcp.blocked = true;
  try {
    const s = await open(env);
    const reply = collect(s);
    const data = randomBytes(500_000);
    assert.ok(await until(env, () => transport(env, 'a') === 'udx' && transport(env, 'b') === 'udx'), 'on udx');
    await until(env, () => false, 500);
    assert.equal(transport(env, 'a'), 'udx');
    s.write(data);
    env.tcp.blocked = false;
    assert.ok(await until(env, () => transport(env, 'a') === 'tcp', TCP_REDIAL_MS + 10_000, 100), `back on tcp after the redial (${transport(env, 'a')})`);
    s.end(data);
    assert.ok(await until(env, () => reply.ended()), 'reply');
    assert.equal(reply.text(), sha(Buffer.concat([data, data])));
  } finally {
    env.a.paths.close();
    env.b.paths.close();
    await env.tcp.close();
  }
});
