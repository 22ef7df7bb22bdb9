// Proxier.connectTcp, the entry point SOCKS5 and the gateway use: same routing and balancing as the intercepted path,
// retries to other endpoints, the tunnel dialer for other nodes' endpoints, and named failures.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import { duplexPair, type Duplex } from 'node:stream';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { Registry } from 'prom-client';
import { silentLogger } from '@edgemesh/common/log';
import { ClusterModel } from '../packages/agent/src/cluster/model.ts';
import { ServiceIPs } from '../packages/agent/src/dns/serviceips.ts';
import { DirectDialer } from '../packages/agent/src/proxy/direct.ts';
import { Proxier } from '../packages/agent/src/proxy/proxier.ts';
import { ServiceConnectError } from '../packages/agent/src/proxy/connect.ts';
import type { DatagramChannel, Dialer, DialTarget } from '../packages/agent/src/proxy/dialer.ts';
import { node, service, slice } from './lib/proxyfixtures.ts';

const GROUP = 'apps.kubeedge.io/belonging-to';
const servers: Server[] = [];
after(() => { for (const s of servers) s.close(); });

async function nameServer(host: string, name: string): Promise<number> {
  const server = createServer((s) => { s.on('error', () => {}); s.end(name); });
  await new Promise<void>((r) => server.listen(0, host, () => r()));
  servers.push(server);
  return (server.address() as { port: number }).port;
}

/** A fake tunnel: records targets and reaches them over a stream pair (no net.Socket on our side, as a tunnel stream). */
class FakeTunnel implements Dialer {
  readonly targets: DialTarget[] = [];
  dialTcp(t: DialTarget): Promise<Duplex> {
    this.targets.push(t);
    return new Promise((resolve, reject) => {
      const s = connect({ host: t.ip, port: t.port });
      s.once('error', reject);
      s.once('connect', () => {
        const [ours, theirs] = duplexPair();
        s.pipe(theirs);
        theirs.pipe(s);
        resolve(ours);
      });
    });
  }
  openUdp(): Promise<DatagramChannel> {
    return Promise.reject(new Error('not used'));
  }
}

/** Everything the upstream sends until its FIN; then our side is closed too (allowHalfOpen: it waits for us). */
const read = (d: Duplex) => new Promise<string>((resolve, reject) => {
  let t = '';
  d.on('data', (c: Buffer) => { t += c; });
  d.on('end', () => { d.end(); resolve(t); });
  d.on('error', reject);
});

test('connectTcp: routes like the intercepted path, retries past a dead endpoint, tunnels to other nodes, names its failures', async () => {
  const here = await nameServer('127.0.0.2', 'here');
  const far = await nameServer('127.0.0.3', 'far');
  // A port nothing listens on (refused).
  const dead = await nameServer('127.0.0.4', 'x');
  servers.pop()!.close();
  const model = new ClusterModel([GROUP]);
  model.replace('Node', [node('me', { [GROUP]: 'g1' }), node('far', { [GROUP]: 'g2' })]);
  model.replace('Service', [
    service({ name: 'web', namespace: 'demo', ip: '10.96.0.1', ports: [{ port: 80, targetPort: here }, { port: 53, protocol: 'UDP' }] }),
    service({ name: 'remote', namespace: 'demo', ip: '10.96.0.2', ports: [{ port: 80, targetPort: far }] }),
    service({ name: 'strict', namespace: 'demo', ip: '10.96.0.3', ports: [{ port: 80 }], annotations: { 'apps.kubeedge.io/service-topology': 'range-nodegroup' } }),
    service({ name: 'flaky', namespace: 'demo', ip: '10.96.0.4', ports: [{ port: 80 }] }),
    service({ name: 'headless', namespace: 'demo', ip: 'None', ports: [{ port: 80 }] }),
  ]);
  model.replace('EndpointSlice', [
    slice('web', [{ port: here }], [{ ip: '127.0.0.2', node: 'me' }], 'demo'),
    slice('remote', [{ port: far }], [{ ip: '127.0.0.3', node: 'far' }], 'demo'),
    slice('strict', [{ port: far }], [{ ip: '127.0.0.3', node: 'far' }], 'demo'),
    // One dead endpoint and one live one, both on this node: the dead one is skipped on the retry.
    slice('flaky', [{ port: dead }], [{ ip: '127.0.0.4', node: 'me' }], 'demo', 'a'),
    slice('flaky', [{ port: here }], [{ ip: '127.0.0.2', node: 'me' }], 'demo', 'b'),
  ]);
  model.flush();
  const serviceIPs = new ServiceIPs({ mode: 'clusterIP', fakeCIDR: '9.251.0.0/16', stateDir: tmpdir(), log: silentLogger });
  serviceIPs.update(model.snapshot());
  const registry = new Registry();
  const tunnel = new FakeTunnel();
  const proxier = new Proxier({ log: silentLogger, registry, model, serviceIPs, dialers: { direct: new DirectDialer(), tunnel }, thisNode: 'me', bindAddress: '127.0.0.1', routingDefault: 'cluster', dialTimeoutMs: 1000 });
  await proxier.start();
  try {
    const c = await proxier.connectTcp('demo/web', 80, { clientIP: '192.0.2.1' });
    assert.equal(c.tier, 'node');
    assert.equal(await read(c.upstream), 'here');
    const r = await proxier.connectTcp('demo/remote', 80, { clientIP: '192.0.2.1' });
    assert.equal(await read(r.upstream), 'far');
    assert.deepEqual(tunnel.targets.map((t) => [t.serviceKey, t.nodeName, t.port]), [['demo/remote', 'far', far]]);
    for (let i = 0; i < 4; i++) {
      const f = await proxier.connectTcp('demo/flaky', 80, { clientIP: `192.0.2.${i}` });
      assert.equal(await read(f.upstream), 'here', 'a dead endpoint is passed over');
    }
    const reasons: string[] = [];
    for (const [svc, port] of [['demo/strict', 80], ['demo/nope', 80], ['demo/web', 81], ['demo/web', 53], ['demo/headless', 80]] as const) {
      await proxier.connectTcp(svc, port, { clientIP: '192.0.2.1' }).then(() => assert.fail(`${svc}:${port} connected`), (e: unknown) => {
        assert.ok(e instanceof ServiceConnectError);
        reasons.push(e.reason);
      });
    }
    assert.deepEqual(reasons, ['strict_empty', 'no_service', 'no_port', 'no_port', 'not_proxied']);
    const m = await registry.getSingleMetricAsString('edgemesh_proxy_connections_total');
    assert.match(m, /service="demo\/web",protocol="tcp",src_group="g1",dst_group="g1",tier="node"} 1/);
    assert.match(m, /service="demo\/remote",protocol="tcp",src_group="g1",dst_group="g2",tier="cluster"} 1/);
    assert.match(await registry.getSingleMetricAsString('edgemesh_proxy_refused_total'), /service="demo\/strict",protocol="tcp",reason="strict_empty"} 1/);
    await new Promise((r) => setTimeout(r, 50));
    assert.match(await registry.getSingleMetricAsString('edgemesh_proxy_active'), /service="demo\/web",protocol="tcp"} 0/, 'released when the upstream closed');
  } finally {
    await proxier.stop();
  }
});
