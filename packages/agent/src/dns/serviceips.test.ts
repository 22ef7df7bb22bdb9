import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '@edgemesh/common/log';
import { ConfigError } from '@edgemesh/common/config';
import { ClusterModel } from '../cluster/model.ts';
import type { RawObject } from '../cluster/types.ts';
import { FAKE_IP_FILE, FAKE_IP_GRACE_MS, ServiceIPs, firstChoice, intToIpv4, ipv4ToInt, parseFakeCIDR, reconcileFake, type FakeEntry } from './serviceips.ts';

const svc = (ns: string, name: string, spec: Record<string, unknown> = {}): RawObject => ({ kind: 'Service', metadata: { name, namespace: ns }, spec: { ports: [{ port: 80 }], ...spec } });

test('parseFakeCIDR: normalises the network and rejects tiny or malformed blocks naming the key', () => {
  const r = parseFakeCIDR('9.251.3.7/16');
  assert.equal(intToIpv4(r.network), '9.251.0.0');
  assert.equal(r.size, 65536);
  assert.throws(() => parseFakeCIDR('10.0.0.0/31'), (e: Error) => e instanceof ConfigError && e.key === 'proxy.fakeCIDR');
  assert.throws(() => parseFakeCIDR('10.0.0/8'), ConfigError);
});

test('reconcileFake: deterministic first choice, keeps IPs, probes on collision, never network/broadcast', () => {
  const r = parseFakeCIDR('10.9.0.0/30'); // usable: .1 and .2 only
  const a = reconcileFake(new Map(), ['ns/a', 'ns/b', 'ns/c'], 0, r);
  const ips = [...a.entries.values()].map((e) => intToIpv4(e.ip)).sort();
  assert.deepEqual(ips, ['10.9.0.1', '10.9.0.2']);
  assert.equal(a.exhausted.length, 1);
  // Same input, same output.
  const b = reconcileFake(new Map(), ['ns/c', 'ns/b', 'ns/a'], 0, r);
  assert.deepEqual([...b.entries].sort(), [...a.entries].sort());

  const big = parseFakeCIDR('9.251.0.0/16');
  const one = reconcileFake(new Map(), ['default/web'], 0, big);
  assert.equal(one.entries.get('default/web')!.ip, firstChoice(big, 'default/web'));
  // A collision: pre-occupy web's first choice with another Service; web probes to the next free address.
  const taken = new Map<string, FakeEntry>([['other/x', { ip: firstChoice(big, 'default/web') }]]);
  const two = reconcileFake(taken, ['other/x', 'default/web'], 0, big);
  assert.equal(two.entries.get('other/x')!.ip, firstChoice(big, 'default/web'));
  assert.equal(two.entries.get('default/web')!.ip, firstChoice(big, 'default/web') + 1);
});

test('reconcileFake: a gone Service keeps its IP reserved for the grace period, then it is released', () => {
  const r = parseFakeCIDR('9.251.0.0/16');
  const t0 = 1_000_000;
  const s1 = reconcileFake(new Map(), ['a/x'], t0, r);
  const ip = s1.entries.get('a/x')!.ip;
  const gone = reconcileFake(s1.entries, [], t0 + 1, r);
  assert.equal(gone.entries.get('a/x')!.goneSince, t0 + 1);
  const back = reconcileFake(gone.entries, ['a/x'], t0 + FAKE_IP_GRACE_MS - 1, r);
  assert.deepEqual(back.entries.get('a/x'), { ip });
  const still = reconcileFake(gone.entries, [], t0 + FAKE_IP_GRACE_MS, r);
  assert.ok(still.entries.has('a/x'));
  const released = reconcileFake(gone.entries, [], t0 + 1 + FAKE_IP_GRACE_MS, r);
  assert.equal(released.entries.has('a/x'), false);
  assert.equal(released.changed, true);
});

test('ServiceIPs clusterIP mode: spec.clusterIPs, reverse lookup, no IP for headless/ExternalName, onChange', async () => {
  const model = new ClusterModel([]);
  const t = new ServiceIPs({ mode: 'clusterIP', fakeCIDR: '9.251.0.0/16', stateDir: '/nonexistent', log: silentLogger });
  let changes = 0;
  t.onChange(() => changes++);
  model.replace('Service', [
    svc('default', 'web', { clusterIP: '10.96.0.10', clusterIPs: ['10.96.0.10', 'fd00::a'] }),
    svc('default', 'hl', { clusterIP: 'None' }),
    svc('default', 'ext', { type: 'ExternalName', externalName: 'example.com' }),
  ]);
  t.update(model.flush());
  assert.deepEqual(t.ipsFor('default/web'), ['10.96.0.10', 'fd00::a']);
  assert.equal(t.serviceFor('fd00::a'), 'default/web');
  assert.deepEqual(t.ipsFor('default/hl'), []);
  assert.deepEqual(t.ipsFor('default/ext'), []);
  assert.deepEqual([...t.entries().keys()], ['default/web']);
  assert.equal(changes, 1);
  t.update(model.snapshot()); // nothing changed: no notification
  assert.equal(changes, 1);
});

test('ServiceIPs fake mode: persisted atomically, stable across restarts, released after the grace period', () => {
  const dir = mkdtempSync(join(tmpdir(), 'em-fakeip-'));
  try {
    let now = 5_000_000;
    const mk = () => new ServiceIPs({ mode: 'fake', fakeCIDR: '9.251.0.0/16', stateDir: dir, log: silentLogger, now: () => now });
    const model = new ClusterModel([]);
    model.replace('Service', [svc('default', 'web'), svc('default', 'api', { clusterIP: '10.96.0.5' }), svc('default', 'hl', { clusterIP: 'None' })]);
    const snap = model.flush();
    const t1 = mk();
    t1.update(snap);
    const web = t1.ipsFor('default/web')[0];
    const api = t1.ipsFor('default/api')[0];
    assert.ok(t1.inFakePool(web) && t1.inFakePool(api));
    assert.notEqual(web, api);
    assert.deepEqual(t1.ipsFor('default/hl'), []);
    assert.equal(t1.serviceFor(web), 'default/web');
    // Only the final file, no temp left behind.
    assert.deepEqual(readdirSync(dir), [FAKE_IP_FILE]);

    // Restart: a new instance from the same stateDir, with the Services arriving in another order.
    const t2 = mk();
    const m2 = new ClusterModel([]);
    m2.replace('Service', [svc('default', 'api'), svc('zzz', 'new'), svc('default', 'web')]);
    t2.update(m2.flush());
    assert.equal(t2.ipsFor('default/web')[0], web);
    assert.equal(t2.ipsFor('default/api')[0], api);

    // web goes away: not visible, but reserved; comes back within grace with the same IP.
    m2.remove('Service', svc('default', 'web'));
    t2.update(m2.flush());
    assert.deepEqual(t2.ipsFor('default/web'), []);
    assert.equal(t2.serviceFor(web), undefined);
    const persisted = JSON.parse(readFileSync(join(dir, FAKE_IP_FILE), 'utf8'));
    assert.equal(persisted.services['default/web'].goneSince, now);
    now += FAKE_IP_GRACE_MS + 1;
    const t3 = mk(); // restart while it is gone and the grace has passed: released on the next update
    t3.update(m2.snapshot());
    assert.equal(JSON.parse(readFileSync(join(dir, FAKE_IP_FILE), 'utf8')).services['default/web'], undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('ServiceIPs fake mode: a corrupt state file or one from another CIDR is ignored, not fatal', () => {
  const dir = mkdtempSync(join(tmpdir(), 'em-fakeip-'));
  try {
    writeFileSync(join(dir, FAKE_IP_FILE), '{not json');
    const model = new ClusterModel([]);
    model.replace('Service', [svc('default', 'web')]);
    const t = new ServiceIPs({ mode: 'fake', fakeCIDR: '9.251.0.0/16', stateDir: dir, log: silentLogger });
    t.update(model.flush());
    assert.equal(t.ipsFor('default/web').length, 1);
    writeFileSync(join(dir, FAKE_IP_FILE), JSON.stringify({ format: 1, services: { 'default/web': { ip: '10.1.2.3' } } }));
    const t2 = new ServiceIPs({ mode: 'fake', fakeCIDR: '9.251.0.0/16', stateDir: dir, log: silentLogger });
    t2.update(model.snapshot());
    assert.equal(t2.ipsFor('default/web')[0], intToIpv4(firstChoice(parseFakeCIDR('9.251.0.0/16'), 'default/web')));
    assert.equal(ipv4ToInt('1.2.3.256'), undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('ServiceIPs fake mode: a full pool is warned about again after it had room in between', () => {
  const dir = mkdtempSync(join(tmpdir(), 'em-ips-full-'));
  try {
    const warnings: string[] = [];
    const log = { ...silentLogger, warn: (_o: unknown, msg?: string) => { warnings.push(String(msg)); }, info: () => {}, debug: () => {} } as unknown as typeof silentLogger;
    const t = new ServiceIPs({ mode: 'fake', fakeCIDR: '10.9.0.0/30', stateDir: dir, log, graceMs: 0 });
    const model = new ClusterModel([]);
    const full = () => warnings.filter((w) => /is full/.test(w)).length;
    model.replace('Service', [svc('ns', 'a'), svc('ns', 'b'), svc('ns', 'c')]);
    t.update(model.flush());
    assert.equal(full(), 1);
    model.replace('Service', [svc('ns', 'a')]);
    t.update(model.flush()); // room again (grace 0: b and c are released)
    t.update(model.flush());
    model.replace('Service', [svc('ns', 'a'), svc('ns', 'b'), svc('ns', 'c')]);
    t.update(model.flush());
    assert.equal(full(), 2);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
