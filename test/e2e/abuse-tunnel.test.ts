// The agent's tunnel serving path against hostile peers, with the real server and agent binaries in network
// namespaces (test/lib/tunnel-abuse-lab.ts) and the victim under RLIMIT_NOFILE 2048:
//  - serving-side authorization: a caller that is not a cluster Node, an endpoint on another node (pivot), a
//    loopback endpoint, a strict-node Service, and a strict-group Service asked by a node of another group are each
//    refused, and the backend behind them never sees a connection (while the same callers' legitimate asks work);
//  - budgets: a compromised node floods served UDP streams; a burst of birthday rendezvous from it and from 80
//    throwaway names. During and after each, a legitimate cross-node request is answered within 2 s, /healthz is 200,
//    the agent stays alive under its descriptor limit, and recovers once the attacker stops.
// The same attacks against any checkout, printed as a table: npx node test/lib/tunnel-abuse-report.ts [--root DIR].
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { PORTS, TunnelAbuseLab, tunnelAttacks } from '../lib/tunnel-abuse-lab.ts';

const isRoot = process.getuid?.() === 0;
const NOFILE = 2048;
const ROOT = resolve(import.meta.dirname, '../..');

describe('abuse: the agent tunnel serving path', { skip: !isRoot && 'needs root' }, () => {
  let t: TunnelAbuseLab;
  before(async () => { t = await TunnelAbuseLab.start(ROOT, NOFILE); });
  after(async () => { await t?.destroy(); });

  /** `ask` fails, and the backend on `port` saw no connection from it. */
  async function refused(ask: () => Promise<Record<string, unknown>>, port: number, what: string): Promise<Record<string, unknown>> {
    const before = t.seen.get(port) ?? 0;
    const r = await ask();
    assert.equal(r.ok, undefined, `${what}: refused (${JSON.stringify(r)})`);
    await new Promise((r) => setTimeout(r, 300)); // a connection the victim made would be logged by now
    assert.equal(t.seen.get(port) ?? 0, before, `${what}: the backend never saw a connection`);
    return r;
  }

  test('serving-side authorization: stranger, pivot, loopback, strict-node, strict-group from another group are refused; the backends never see them', async () => {
    const peer = await t.caller('peer', 'peer');
    const far = await t.caller('far', 'far');
    const stranger = await t.caller('not-a-cluster-node', 'other');
    // Controls: the same callers are served what the cluster allows them.
    assert.equal((await t.request(peer, 'web')).reply, `ok:${PORTS.web}\n`);
    assert.equal((await t.request(peer, 'site')).reply, `ok:${PORTS.site}\n`, 'strict-group, same group: served');
    assert.equal((await t.request(far, 'web')).reply, `ok:${PORTS.web}\n`, 'prefer routing: any cluster node');

    await refused(() => t.request(stranger, 'web'), PORTS.web, 'a caller that is not a Node of the cluster');
    const pivot = await refused(() => t.request(peer, 'pivot'), PORTS.pivot, 'an endpoint on another node');
    assert.equal(pivot.code, 'forbidden');
    assert.equal((await refused(() => t.request(peer, 'loop'), PORTS.loop, 'a loopback endpoint')).code, 'forbidden');
    assert.equal((await refused(() => t.request(peer, 'local'), PORTS.local, 'a strict-node Service')).code, 'forbidden');
    assert.equal((await refused(() => t.request(far, 'site'), PORTS.site, 'a strict-group Service from another group')).code, 'forbidden');

    const m = await t.metrics(/^edgemesh_(tunnel_serve_refused_total|budget_refusals_total\{budget="tunnel_not_a_node")/);
    const n = (k: string) => m[k] ?? 0;
    assert.ok(n('edgemesh_budget_refusals_total{budget="tunnel_not_a_node"}') >= 1, JSON.stringify(m));
    for (const reason of ['other-node', 'address', 'strict-node', 'strict-group']) assert.ok(n(`edgemesh_tunnel_serve_refused_total{reason="${reason}"}`) >= 1, `${reason}: ${JSON.stringify(m)}`);
  });

  for (const a of [
    { name: 'udp-stream-flood', title: 'a cluster node opens 3,000 served UDP streams: capped per peer and by descriptor pressure; others are still served' },
    { name: 'birthday-burst', title: 'a burst of birthday rendezvous from a node and 80 throwaway names: no birthday round is started on their word' },
  ]) {
    test(`abuse: ${a.title}`, async () => {
      const spec = tunnelAttacks(t).find((x) => x.name === a.name)!;
      const r = await t.attack(spec.name, spec.run, spec.cleanup);
      const ctx = `${JSON.stringify(r)}\nagent log:\n${t.tail(10)}`;
      assert.equal(r.alive, true, ctx);
      assert.ok(r.during.rounds >= 3, `legitimate rounds during the attack: ${ctx}`);
      assert.equal(r.during.failed, 0, `every legitimate request answered within 2 s and /healthz 200: ${ctx}`);
      assert.ok(r.recoveredMs >= 0, `recovered: ${ctx}`);
      assert.ok(r.fds.peak < NOFILE, `descriptors stayed under the limit: ${ctx}`);
      assert.ok(r.fds.after <= r.fds.before + 32, `descriptors came back down: ${ctx}`);
      const refusals = Object.entries(r.metrics).filter(([k]) => k.startsWith('edgemesh_budget_refusals_total')).reduce((s, [, v]) => s + v, 0);
      assert.ok(refusals > 0, `refusals counted: ${ctx}`);
      if (a.name === 'udp-stream-flood') {
        const att = r.attacker as { opened: number };
        assert.ok(att.opened <= 1024, `at most tunnel.limits.servedUdpSocketsPerPeer held (${att.opened})`);
      } else {
        assert.ok((r.metrics['edgemesh_budget_refusals_total{budget="tunnel_not_a_node"}'] ?? 0) >= 80, ctx);
        assert.ok((r.metrics['edgemesh_budget_refusals_total{budget="tunnel_birthday_unasked"}'] ?? 0) >= 1, ctx);
      }
    });
  }
});
