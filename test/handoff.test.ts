// The handoff socket and protocol between agents on one stateDir, in process (no root): who runs, the stale socket of
// a crashed agent, two agents starting at once, two successors racing, the old agent's drain; and SO_REUSEPORT binds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { createSocket } from 'node:dgram';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '@edgemesh/common/log';
import type { AdminServer } from '@edgemesh/common/admin';
import { bindReusePort, listenReusePort } from '@edgemesh/common/reuseport';
import { HandoffSocket, SOCKET_FILE, type Predecessor } from '../packages/agent/src/handoff/socket.ts';
import { Takeover } from '../packages/agent/src/handoff/takeover.ts';

const tmp = () => mkdtempSync(join(tmpdir(), 'em-handoff-'));
const never = () => false;

/** A Takeover over stub parts (no proxy, DNS or rules): what is left is the protocol and the drain. */
function stubTakeover(socket: HandoffSocket, events: string[], name: string) {
  const admin = { ready: () => ({ ok: true, failing: [] }), close: async () => { events.push(`${name} admin closed`); } } as unknown as AdminServer;
  const t = new Takeover({ log: silentLogger, admin, socket, drainMs: 5000, stopCluster: async () => {} });
  t.onDrained = () => events.push(`${name} drained`);
  return t;
}

test('the first agent on a stateDir runs; a stale socket of a crashed agent is removed; a clean stop removes the socket', async () => {
  const dir = tmp();
  try {
    // A "crashed" agent: a process bound to agent.sock, killed with SIGKILL (the file stays, nobody listens).
    const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(join(dir, SOCKET_FILE))}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await once(child.stdout!, 'data');
    child.kill('SIGKILL');
    await once(child, 'exit');
    assert.ok(existsSync(join(dir, SOCKET_FILE)), 'the stale socket file is there');
    const a = await HandoffSocket.open(dir, silentLogger, 't', never);
    assert.equal(a.predecessor, undefined, 'nobody answered: this agent runs');
    assert.ok(a.socket.ownsPath());
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    await a.socket.close();
    assert.equal(existsSync(join(dir, SOCKET_FILE)), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('two agents starting at once on an empty stateDir: exactly one runs, the other takes over from it once it can', async () => {
  const dir = tmp();
  const events: string[] = [];
  try {
    const ps = [0, 1].map((i) => HandoffSocket.open(dir, silentLogger, 't', never).then((r) => ({ i, ...r })));
    const runner = await Promise.race(ps);
    assert.equal(runner.predecessor, undefined, 'the first to link agent.sock runs');
    // The other is told busy while the runner starts (no successors accepted yet) and keeps trying.
    const other = ps[1 - runner.i];
    assert.equal(await Promise.race([other.then(() => 'resolved'), new Promise((r) => setTimeout(() => r('waiting'), 700))]), 'waiting');
    stubTakeover(runner.socket, events, 'runner').acceptSuccessors();
    const o = await other;
    assert.ok(o.predecessor, 'welcomed once the runner accepts successors');
    o.predecessor!.peer.close();
    await o.socket.close();
    await runner.socket.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a running agent, two successors racing: one takes over, the other waits and then takes over from it; the old agents drain', async () => {
  const dir = tmp();
  const events: string[] = [];
  let done = false;
  try {
    const first = await HandoffSocket.open(dir, silentLogger, 't', never);
    const o = stubTakeover(first.socket, events, 'old');
    o.acceptSuccessors();
    assert.equal(o.serving(), true);

    let s1Pred: Predecessor | undefined;
    const racers = [0, 1].map((i) => HandoffSocket.open(dir, silentLogger, 't', () => done).then((r) => ({ i, ...r })));
    const winner = await Promise.race(racers);
    assert.ok(winner.predecessor, 'welcomed by the running agent');
    s1Pred = winner.predecessor;
    assert.equal(o.serving(), false, 'the running agent reports not ready while a successor takes over');
    const t1 = stubTakeover(winner.socket, events, 'first successor');
    await t1.takeOver(s1Pred, never);
    assert.ok(winner.socket.ownsPath(), 'agent.sock leads to the successor now');
    assert.equal(first.socket.ownsPath(), false);
    for (let end = Date.now() + 5000; !o.handedOver && Date.now() < end;) await new Promise((r) => setTimeout(r, 10));
    assert.equal(o.handedOver, true, 'the old agent got go');

    // The other racer was told busy; it retries and is welcomed by the agent that just took over.
    const loser = await racers[1 - winner.i];
    assert.ok(loser.predecessor);
    const t2 = stubTakeover(loser.socket, events, 'second successor');
    await t2.takeOver(loser.predecessor!, never);
    assert.ok(loser.socket.ownsPath());
    const end = Date.now() + 10_000;
    while (!(events.includes('old drained') && events.includes('first successor drained')) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(events.filter((e) => e.endsWith('drained')).sort(), ['first successor drained', 'old drained']);
    assert.ok(events.indexOf('old admin closed') < events.indexOf('old drained'));
    await first.socket.close();
    await winner.socket.close();
    assert.ok(existsSync(join(dir, SOCKET_FILE)), 'the old agents leave the current agent\'s socket alone');
    await loser.socket.close();
    assert.equal(existsSync(join(dir, SOCKET_FILE)), false);
  } finally {
    done = true;
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a successor that goes away before it took over leaves the running agent as it was', async () => {
  const dir = tmp();
  const events: string[] = [];
  try {
    const first = await HandoffSocket.open(dir, silentLogger, 't', never);
    const o = stubTakeover(first.socket, events, 'old');
    o.acceptSuccessors();
    const s = await HandoffSocket.open(dir, silentLogger, 't', never);
    assert.equal(o.serving(), false);
    s.predecessor!.peer.close(); // the successor crashes
    await s.socket.close();
    const end = Date.now() + 5000;
    while (!o.serving() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    assert.equal(o.serving(), true);
    assert.ok(first.socket.ownsPath());
    await first.socket.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('SO_REUSEPORT binds: alongside when shared, refused like a plain bind when not, fresh UDP ports never shared', async () => {
  const a = createServer();
  const port = await listenReusePort(a, '127.0.0.1', 0, { shared: false });
  const b = createServer();
  assert.equal(await listenReusePort(b, '127.0.0.1', port, { shared: true }), port, 'a successor binds alongside');
  const c = createServer();
  await assert.rejects(listenReusePort(c, '127.0.0.1', port, { shared: false }), /EADDRINUSE/, 'a fresh start refuses a held port');
  for (const s of [a, b]) s.close();
  const u1 = createSocket({ type: 'udp4', reusePort: true });
  const up = await bindReusePort(u1, '127.0.0.1', 0, { shared: false });
  const u2 = createSocket({ type: 'udp4', reusePort: true });
  assert.equal(await bindReusePort(u2, '127.0.0.1', up, { shared: true }), up);
  const u3 = createSocket({ type: 'udp4', reusePort: true });
  await assert.rejects(bindReusePort(u3, '127.0.0.1', up, { shared: false }), /EADDRINUSE/);
  const fresh = await Promise.all(Array.from({ length: 20 }, async () => {
    const s = createSocket({ type: 'udp4', reusePort: true });
    const p = await bindReusePort(s, '127.0.0.1', 0, { shared: false });
    return { s, p };
  }));
  assert.equal(new Set(fresh.map((f) => f.p)).size, 20, 'twenty fresh UDP ports, all different');
  assert.ok(!fresh.some((f) => f.p === up));
  for (const s of [u1, u2, u3, ...fresh.map((f) => f.s)]) s.close();
});

test('a stop (SIGTERM) while a successor takes over waits for it, then only drains; with no successor it is a plain stop', async () => {
  const dir = tmp();
  const events: string[] = [];
  try {
    const first = await HandoffSocket.open(dir, silentLogger, 't', never);
    const o = stubTakeover(first.socket, events, 'old');
    o.acceptSuccessors();
    const s = await HandoffSocket.open(dir, silentLogger, 't', never);
    let stopped: boolean | undefined;
    const stopping = o.beforeStop().then((handedOver) => { stopped = handedOver; });
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(stopped, undefined, 'the stop waits while the successor is still starting');
    await stubTakeover(s.socket, events, 'new').takeOver(s.predecessor!, never);
    await stopping;
    assert.equal(stopped, true, 'handed over: nothing is cleaned up, the drain ran');
    assert.ok(events.includes('old drained'));
    await first.socket.close();
    await s.socket.close();

    const alone = await HandoffSocket.open(dir, silentLogger, 't', never);
    assert.equal(await stubTakeover(alone.socket, events, 'alone').beforeStop(), false);
    await alone.socket.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
