// Unit tests of the lab's pure parts: address plan, router rules per NAT type, fault rules.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { faultRuleArgs, ROUTER_NATS, planLab, randomPrefix, routerRules, type LabSpec } from './netlab.ts';

const spec: LabSpec = {
  publicHosts: ['server', 'relay'],
  sites: ROUTER_NATS.map((nat, i) => ({ name: `s${i}`, nat, hosts: [`a${i}`, `b${i}`] })),
};

test('plan: addresses, gateways, namespaces and interface names', () => {
  const plan = planLab(spec, 'emtest');
  assert.deepEqual(plan.hosts.slice(0, 2).map((h) => h.ip), ['203.0.113.10', '203.0.113.11']);
  const a3 = plan.hosts.find((h) => h.name === 'a3')!;
  assert.deepEqual(a3, { name: 'a3', ns: 'emtest-h-a3', ip: '198.18.4.10', site: 's3', gateway: '198.18.4.1' });
  assert.equal(plan.hosts.find((h) => h.name === 'b3')!.ip, '198.18.4.11');
  const cg = plan.routers.find((r) => r.nat === 'cgnat')!;
  assert.equal(cg.wanIp, `100.64.${ROUTER_NATS.indexOf('cgnat') + 1}.2`);
  assert.equal(cg.publicIp, cg.carrier!.wanIp);
  const names = plan.namespaces.map((n) => n.ns);
  assert.equal(new Set(names).size, names.length);
  assert.ok(names.every((n) => n.startsWith('emtest-')));
  for (const l of plan.links) for (const end of [l.a, l.b]) assert.ok(end.name.length <= 15 && names.includes(end.ns));
  // Every public-network namespace routes to the open site's LAN, except that site's own router.
  const open = ROUTER_NATS.indexOf('none') + 1;
  const route = `route add 198.18.${open}.0/24 via 203.0.113.${100 + open}`;
  for (const n of plan.namespaces) {
    const expected = n.role === 'public' || n.role === 'carrier' || (n.role === 'router' && n.ns !== `emtest-r-s${open - 1}` && !n.ipCmds.some((c) => c.includes('via 100.64')));
    assert.equal(n.ipCmds.includes(route), expected, n.ns);
  }
  assert.match(randomPrefix(), /^em[0-9a-z]{4}$/);
});

test('router rules: shared base with INPUT DROP, and the NAT type specifics from docs/natlab.md', () => {
  for (const nat of ROUTER_NATS.filter((n) => n !== 'cgnat') as Exclude<(typeof ROUTER_NATS)[number], 'cgnat'>[]) {
    const r = routerRules(nat, ['198.18.1.10']);
    assert.match(r, /:FORWARD DROP/);
    assert.match(r, /-A FORWARD -i lan0 -o wan0 -j ACCEPT/);
    assert.match(r, /-A INPUT -i wan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n-A INPUT -i wan0 -j DROP/);
    assert.equal(/MASQUERADE/.test(r), nat !== 'none', nat);
  }
  assert.match(routerRules('symmetric', []), /MASQUERADE --random-fully/);
  assert.doesNotMatch(routerRules('port-restricted', []), /random/);
  assert.match(routerRules('full-cone', ['198.18.2.10']), /-A PREROUTING -i wan0 -p udp -j DNAT --to-destination 198.18.2.10/);
  assert.match(routerRules('full-cone', ['198.18.2.10']), /-p udp -d 198.18.2.10 -m conntrack --ctstate DNAT -j ACCEPT/);
  const rc = routerRules('restricted-cone', ['198.18.3.10']);
  assert.match(rc, /--name seen --rdest --set/);
  assert.match(rc, /--rsource --rcheck --seconds 60 -j DNAT --to-destination 198.18.3.10/);
  const ub = routerRules('udp-blocked', []);
  assert.ok(ub.indexOf('-p udp -j DROP') < ub.indexOf('-i lan0 -o wan0 -j ACCEPT'));
  assert.match(routerRules('none', []), /-A FORWARD -i wan0 -o lan0 -j ACCEPT/);
});

test('fault rules: both directions by default, ports need a protocol, loss uses statistic', () => {
  assert.deepEqual(faultRuleArgs({ src: '1.1.1.1', dst: '2.2.2.2', proto: 'udp', dport: 53 }), [
    ['-s', '1.1.1.1', '-d', '2.2.2.2', '-p', 'udp', '--dport', '53', '-j', 'DROP'],
    ['-s', '2.2.2.2', '-d', '1.1.1.1', '-p', 'udp', '--sport', '53', '-j', 'DROP'],
  ]);
  assert.equal(faultRuleArgs({ src: '1.1.1.1', bidirectional: false }).length, 1);
  assert.deepEqual(faultRuleArgs({ probability: 0.25, bidirectional: false }), [['-m', 'statistic', '--mode', 'random', '--probability', '0.25', '-j', 'DROP']]);
  assert.throws(() => faultRuleArgs({ dport: 1 }), /need proto/);
  assert.throws(() => faultRuleArgs({ probability: 0 }), /probability/);
});

test('planLab rejects bad specs', () => {
  assert.throws(() => planLab({ publicHosts: ['a', 'a'], sites: [] }, 'emtest'), /duplicate/);
  assert.throws(() => planLab({ publicHosts: ['x'], sites: [{ name: 'x', nat: 'none', hosts: [] }] }, 'emtest'), /duplicate/);
  assert.throws(() => planLab({ publicHosts: ['bad name'], sites: [] }, 'emtest'), /bad host name/);
  assert.throws(() => planLab({ publicHosts: [], sites: [{ name: 's', nat: 'nope' as 'none', hosts: [] }] }, 'emtest'), /unknown nat/);
  assert.throws(() => planLab({ publicHosts: [], sites: [] }, 'EM-1'), /bad prefix/);
});
