// The TCP transport in network namespaces: two nodes on one LAN put their session on a TLS link over kernel TCP
// (/status names the transport), fall back to the punched UDX link when a firewall drops TCP between them (at once
// for a fresh session, and within the heartbeat bound for a live one), and a pair behind two NATs stays on UDX.
// Every transfer is checked end to end with sha256 (the far sink answers the hash of what it received).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { buildLab } from '../lib/netlab.ts';
import { TunnelLab, waitUntil } from '../lib/tunnel-lab.ts';

const MB = 1024 * 1024;
/** The tunnel's listen port in the lab (UDP and TCP). */
const PORT = 20006;
/** Bounds for things the design does in seconds (TCP dial 3 s, heartbeats 6.5 s), generous for a loaded machine. */
const UP_BOUND_MS = 30_000;

describe('tunnel TCP transport', { timeout: 300_000 }, () => {
  let tl: TunnelLab;

  before(async () => {
    const lab = await buildLab({
      publicHosts: ['srv'],
      sites: [
        { name: 'lan', nat: 'port-restricted', hosts: ['hl1', 'hl2'] },
        { name: 'pr1', nat: 'port-restricted', hosts: ['ha'] },
        { name: 'pr2', nat: 'port-restricted', hosts: ['hb'] },
      ],
    });
    tl = new TunnelLab(lab);
    const nodes = [{ name: 'l1', host: 'hl1' }, { name: 'l2', host: 'hl2' }, { name: 'a', host: 'ha' }, { name: 'b', host: 'hb' }];
    tl.planEndpoints(nodes);
    await tl.startServer('srv');
    await Promise.all(nodes.map((n) => tl.startNode(n.name, n.host, { listenPort: PORT, upgradeRetryMs: 3_000, logLevel: 'debug' })));
    await waitUntil(async () => (await Promise.all(nodes.map(async (n) => (await tl.node(n.name).status()).servers[0].connected))).every(Boolean), 20_000, 'nodes connected');
  });

  after(async () => {
    await tl?.destroy();
  });

  async function transferOk(from: string, to: string, bytes: number): Promise<Record<string, unknown>> {
    const r = await tl.transfer(from, to, bytes);
    assert.equal(r.ok, true, `${from} -> ${to}: ${JSON.stringify(r)}`);
    return r;
  }

  test('same-LAN peers: the session goes onto TCP, transfers both ways check out', async () => {
    await transferOk('l1', 'l2', MB);
    await waitUntil(async () => (await tl.node('l1').transport('l2')) === 'tcp' && (await tl.node('l2').transport('l1')) === 'tcp', UP_BOUND_MS, 'l1<->l2 on tcp', () => tl.explain('l1', 'l2'));
    const st = (await tl.node('l1').status()).peers.find((p) => p.node === 'l2')!;
    assert.equal(st.path, 'direct');
    assert.equal(st.remote, `${tl.lab.host('hl2').ip}:${PORT}`, 'the TCP link goes to the peer\'s LAN address');
    const r = await transferOk('l1', 'l2', 32 * MB);
    assert.equal(r.path, 'direct');
    await transferOk('l2', 'l1', 32 * MB);
  });

  test('TCP dropped between them: a live session moves to UDX, a fresh one starts on UDX, transfers check out', async () => {
    assert.equal(await tl.node('l1').transport('l2'), 'tcp');
    const fault = await tl.lab.blackhole('hl2', { proto: 'tcp', dport: PORT });
    try {
      // The live TCP link goes silent: the heartbeats give it up and the session moves to the warm UDX link.
      await waitUntil(async () => (await tl.node('l1').transport('l2')) === 'udx', UP_BOUND_MS, 'l1 -> l2 moved to udx');
      await waitUntil(async () => (await tl.node('l2').transport('l1')) === 'udx', UP_BOUND_MS, 'l2 -> l1 moved to udx');
      await transferOk('l1', 'l2', 16 * MB);
      // A fresh session (both sides forget each other): the TCP dials fail, the punched path carries it.
      await tl.node('l1').request('forget', { node: 'l2' });
      await tl.node('l2').request('forget', { node: 'l1' });
      await transferOk('l1', 'l2', MB);
      await waitUntil(async () => (await tl.node('l1').transport('l2')) === 'udx', UP_BOUND_MS, 'fresh l1 -> l2 on udx');
      // Give the TCP dials their time to fail (3 s each): still on UDX after that.
      await new Promise((r) => setTimeout(r, 5_000));
      assert.equal(await tl.node('l1').transport('l2'), 'udx');
      assert.equal(await tl.node('l2').transport('l1'), 'udx');
      const r = await transferOk('l2', 'l1', 16 * MB);
      assert.equal(r.path, 'direct');
    } finally {
      await fault.remove();
    }
  });

  test('NATed peers (two port-restricted sites): the session stays on UDX, transfers check out', async () => {
    await transferOk('a', 'b', MB);
    await waitUntil(async () => (await tl.node('a').transport('b')) === 'udx' && (await tl.node('b').transport('a')) === 'udx', UP_BOUND_MS, 'a<->b on udx');
    await new Promise((r) => setTimeout(r, 5_000));
    assert.equal(await tl.node('a').transport('b'), 'udx');
    await transferOk('a', 'b', 16 * MB);
    await transferOk('b', 'a', 16 * MB);
  });
});
