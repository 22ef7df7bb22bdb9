// The serving side without sockets: authorization before any dial, and the budgets' accounting on every path
// (success, dial error, the caller gave up, peer gone, descriptor pressure, EMFILE).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex, PassThrough } from 'node:stream';
import { Counter, Registry } from 'prom-client';
import { Budgets } from '@edgemesh/common/budget';
import { FdPressure } from '@edgemesh/common/fds';
import { silentLogger } from '@edgemesh/common/log';
import type { NodeInfo, Snapshot } from '../cluster/types.ts';
import { DialError, type DatagramChannel, type Dialer, type DialErrorCode, type DialTarget } from '../proxy/dialer.ts';
import { BUDGET_SERVED_STREAMS, BUDGET_SERVED_UDP, TunnelBudgets, DEFAULT_TUNNEL_LIMITS, type TunnelLimitsConfig } from './limits.ts';
import type { StreamHeader } from './linkproto.ts';
import { serveStream, type ServeContext } from './serve.ts';
import type { TunnelStream } from './stream.ts';
import { settle } from './testfixture.ts';

const NODES = new Map<string, NodeInfo>(['me', 'p1', 'p2'].map((n) => [n, { name: n, labels: {}, addresses: [] }]));
function snap(): Snapshot {
  const svc = (name: string, proto: 'TCP' | 'UDP') => ({
    key: `ns/${name}`, namespace: 'ns', name, type: 'ClusterIP' as const, clusterIPs: ['10.96.0.9'], headless: false,
    ports: [{ name: '', protocol: proto, port: 80, targetPort: 8080 }], sessionAffinity: 'None' as const, affinityTimeoutSeconds: 10800,
    internalTrafficPolicy: 'Cluster' as const, labels: {}, annotations: {},
  });
  const ep = (node: string, proto: 'TCP' | 'UDP') => ({
    address: '10.1.0.5', addresses: ['10.1.0.5'], addressType: 'IPv4' as const, nodeName: node, ready: true, serving: true, terminating: false,
    ports: [{ name: '', port: 8080, protocol: proto }], slice: 's',
  });
  return {
    version: 1, nodes: NODES, destinationRules: new Map(),
    services: new Map([['ns/tcp', svc('tcp', 'TCP')], ['ns/udp', svc('udp', 'UDP')], ['ns/pivot', svc('pivot', 'TCP')]]),
    endpoints: new Map([['ns/tcp', [ep('me', 'TCP')]], ['ns/udp', [ep('me', 'UDP')]], ['ns/pivot', [ep('p2', 'TCP')]]]),
  };
}

/** A dialer whose dials the test settles by hand. */
class FakeDialer implements Dialer {
  readonly dials: { target: DialTarget; resolve: (v: Duplex | DatagramChannel) => void; reject: (e: unknown) => void }[] = [];
  dialTcp(target: DialTarget): Promise<Duplex> {
    return new Promise((resolve, reject) => this.dials.push({ target, resolve: resolve as (v: unknown) => void, reject }));
  }
  openUdp(target: DialTarget): Promise<DatagramChannel> {
    return new Promise((resolve, reject) => this.dials.push({ target, resolve: resolve as (v: unknown) => void, reject }));
  }
}

class FakeChannel implements DatagramChannel {
  closed = false;
  private fns: ((e?: Error) => void)[] = [];
  send(): void {}
  onMessage(): void {}
  onClose(fn: (e?: Error) => void): void { this.fns.push(fn); }
  close(): void { if (!this.closed) { this.closed = true; for (const f of this.fns) f(); } }
}

function setup(limits: Partial<TunnelLimitsConfig> = {}, mkFds?: (b: Budgets) => FdPressure) {
  const registry = new Registry();
  const budgets = new Budgets({ registry, log: silentLogger });
  const fds = mkFds?.(budgets);
  const tb = new TunnelBudgets(budgets, { ...DEFAULT_TUNNEL_LIMITS, ...limits }, fds);
  const dialer = new FakeDialer();
  const outcomes: string[] = [];
  const ctx: ServeContext = {
    snapshot: snap, dialer, log: silentLogger, budgets: tb, onOutcome: (o) => outcomes.push(o),
    refused: new Counter({ name: 'refused_total', help: 'x', labelNames: ['reason'], registers: [registry] }),
    policy: { self: 'me', routingDefault: 'prefer' },
  };
  const answers: { code?: DialErrorCode; stream?: TunnelStream }[] = [];
  /** One OPEN from `peer`; `gaveUp`: the caller abandoned it before our dial ended (accept returns a dead stream). */
  const open = (peer: string, service: 'ns/tcp' | 'ns/udp' | 'ns/pivot', gaveUp = false) => {
    const h: StreamHeader = { target: { serviceKey: service, protocol: service === 'ns/udp' ? 'udp' : 'tcp', ip: '10.1.0.5', port: 8080 }, timeoutMs: 3000 };
    const a: { code?: DialErrorCode; stream?: TunnelStream } = {};
    answers.push(a);
    serveStream(ctx, peer, h, 10, () => {
      const s = new PassThrough() as unknown as TunnelStream;
      if (gaveUp) s.destroy();
      a.stream = s;
      return s;
    }, (code) => { a.code = code; });
    return a;
  };
  return { registry, budgets, tb, dialer, outcomes, open, answers, fds: fds! };
}

const peerSocket = () => new PassThrough({ allowHalfOpen: true });

test('refused by authorization before anything is dialed or held', async () => {
  const t = setup();
  assert.equal(t.open('not-a-cluster-node', 'ns/tcp').code, 'forbidden');
  assert.equal(t.open('p1', 'ns/pivot').code, 'forbidden');
  assert.equal(t.dialer.dials.length, 0);
  assert.equal(t.tb.served.used, 0);
  const m = await t.registry.getSingleMetricAsString('refused_total');
  assert.match(m, /reason="not-a-node"\} 1/);
  assert.match(m, /reason="other-node"\} 1/);
});

test('a served TCP stream holds its lease until the stream closes (success path)', async () => {
  const t = setup();
  const a = t.open('p1', 'ns/tcp');
  assert.equal(t.tb.served.usedBy('p1'), 1, 'held while dialing');
  t.dialer.dials[0].resolve(peerSocket());
  await settle();
  assert.ok(a.stream && !a.code);
  assert.equal(t.tb.served.usedBy('p1'), 1, 'held while open');
  a.stream!.destroy();
  await settle();
  assert.equal(t.tb.served.used, 0);
});

test('a dial error gives the lease back and answers its code', async () => {
  const t = setup();
  const a = t.open('p1', 'ns/udp');
  assert.equal(t.tb.servedUdp.usedBy('p1'), 1);
  t.dialer.dials[0].reject(new DialError('refused', 'connect ECONNREFUSED', 'ECONNREFUSED'));
  await settle();
  assert.equal(a.code, 'refused');
  assert.equal(t.tb.served.used + t.tb.servedUdp.used, 0);
});

test('the caller gave up (abort) before the dial ended: released at once', async () => {
  const t = setup();
  t.open('p1', 'ns/udp', true);
  const ch = new FakeChannel();
  t.dialer.dials[0].resolve(ch);
  await settle();
  assert.equal(t.tb.served.used + t.tb.servedUdp.used, 0);
  assert.equal(ch.closed, true, 'the UDP socket is closed with its stream');
});

test('peer gone (the session closed its streams): every lease comes back', async () => {
  const t = setup();
  const streams = [t.open('p1', 'ns/udp'), t.open('p1', 'ns/tcp'), t.open('p2', 'ns/udp')];
  t.dialer.dials[0].resolve(new FakeChannel());
  t.dialer.dials[1].resolve(peerSocket());
  t.dialer.dials[2].resolve(new FakeChannel());
  await settle();
  assert.equal(t.tb.served.used, 3);
  assert.equal(t.tb.servedUdp.used, 2);
  for (const s of streams) s.stream!.destroy(new Error('session closed'));
  await settle();
  assert.equal(t.tb.served.used + t.tb.servedUdp.used, 0);
});

test('per-peer limits stop one peer, not the others; the refusal is counted by budget', async () => {
  const t = setup({ servedStreamsPerPeer: 3, servedUdpSocketsPerPeer: 2 });
  t.open('p1', 'ns/udp');
  t.open('p1', 'ns/udp');
  assert.equal(t.open('p1', 'ns/udp').code, 'refused', 'UDP sockets per peer');
  t.open('p1', 'ns/tcp');
  assert.equal(t.open('p1', 'ns/tcp').code, 'refused', 'streams per peer');
  assert.equal(t.open('p2', 'ns/udp').code, undefined, 'another peer is still served');
  assert.equal(t.budgets.refused(`${BUDGET_SERVED_UDP}_per_peer`), 1);
  assert.equal(t.budgets.refused(`${BUDGET_SERVED_STREAMS}_per_peer`), 1);
  assert.ok(t.outcomes.includes('limit'));
  assert.equal(t.tb.served.used, 4);
});

test('total limits hold across peers', () => {
  const t = setup({ servedStreams: 2, servedUdpSockets: 1 });
  t.open('p1', 'ns/udp');
  assert.equal(t.open('p2', 'ns/udp').code, 'refused');
  t.open('p2', 'ns/tcp');
  assert.equal(t.open('p2', 'ns/tcp').code, 'refused');
  assert.equal(t.budgets.refused(BUDGET_SERVED_UDP), 1);
  assert.equal(t.budgets.refused(BUDGET_SERVED_STREAMS), 1);
});

test('descriptor pressure sheds new served streams; EMFILE fails one dial and sheds until a sample shows room', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'em-serve-fds-'));
  try {
    writeFileSync(join(dir, 'limits'), 'Max open files            100                  100                  files\n');
    const t = setup({}, (budgets) => new FdPressure({ limitsPath: join(dir, 'limits'), reserve: 10, fdDir: dir, budgets }));
    const fds = t.fds;
    fds.note(89); // 89 open + 10 reserved of 100: one descriptor left for optional work
    const first = t.open('p1', 'ns/tcp');
    assert.equal(first.code, undefined);
    assert.equal(t.open('p2', 'ns/tcp').code, 'refused', 'shed: the reserve is for the control plane');
    assert.equal(t.budgets.refused('fd_reserve'), 1);
    assert.equal(t.tb.served.usedBy('p2'), 0, 'nothing held for a shed stream');
    t.dialer.dials[0].reject(new DialError('unreachable', 'connect EMFILE', 'EMFILE'));
    await settle();
    assert.equal(first.code, 'unreachable');
    fds.note(-89);
    assert.equal(t.open('p2', 'ns/tcp').code, 'refused', 'after EMFILE: shed until the next sample');
    await fds.sample(); // the directory holds one file: room again
    assert.equal(t.open('p2', 'ns/tcp').code, undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
