import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseBackend, NO_JUMPS, parseHook, renderCleanup, renderSync, type InterceptRule } from './rules.ts';

const rules: InterceptRule[] = [
  { ip: '10.96.0.20', protocol: 'udp', port: 53, comment: 'kube-system/dns:53', toIP: '169.254.96.16', toPort: 40002 },
  { ip: '10.96.0.10', protocol: 'tcp', port: 80, comment: 'default/web:80', toIP: '169.254.96.16', toPort: 40001 },
];

test('sync batch: own chain declared (flushed), jumps inserted at the top, one DNAT per service port with comments', () => {
  assert.equal(renderSync(rules, NO_JUMPS), [
    '*nat',
    ':EDGEMESH-SERVICES - [0:0]',
    '-I PREROUTING 1 -m comment --comment "edgemesh service interception" -j EDGEMESH-SERVICES',
    '-I OUTPUT 1 -m comment --comment "edgemesh service interception" -j EDGEMESH-SERVICES',
    '-A EDGEMESH-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -m comment --comment "default/web:80" -j DNAT --to-destination 169.254.96.16:40001',
    '-A EDGEMESH-SERVICES -d 10.96.0.20/32 -p udp -m udp --dport 53 -m comment --comment "kube-system/dns:53" -j DNAT --to-destination 169.254.96.16:40002',
    'COMMIT',
    '',
  ].join('\n'));
});

test('wildcard bind address uses REDIRECT; comments are sanitised', () => {
  const t = renderSync([{ ip: '10.0.0.1', protocol: 'tcp', port: 8080, comment: 'a/b"c:1', toIP: '0.0.0.0', toPort: 41000 }], NO_JUMPS);
  assert.match(t, /-A EDGEMESH-SERVICES -d 10\.0\.0\.1\/32 -p tcp -m tcp --dport 8080 -m comment --comment "a\/b_c:1" -j REDIRECT --to-ports 41000\n/);
});

test('jumps already first are kept; misplaced or duplicated jumps are deleted and reinserted at the top', () => {
  const pre = parseHook([
    '-P PREROUTING ACCEPT',
    '-A PREROUTING -m comment --comment "edgemesh service interception" -j EDGEMESH-SERVICES',
  ].join('\n'), 'PREROUTING');
  assert.deepEqual(pre, { jumpLines: ['-A PREROUTING -m comment --comment "edgemesh service interception" -j EDGEMESH-SERVICES'], first: true });
  const out = parseHook([
    '-P OUTPUT ACCEPT',
    '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A OUTPUT -j EDGEMESH-SERVICES',
    '-A OUTPUT -j EDGEMESH-SERVICES-OTHER',
  ].join('\n'), 'OUTPUT');
  assert.deepEqual(out, { jumpLines: ['-A OUTPUT -j EDGEMESH-SERVICES'], first: false });
  const text = renderSync([], { PREROUTING: pre, OUTPUT: out });
  assert.equal(text, [
    '*nat',
    ':EDGEMESH-SERVICES - [0:0]',
    '-D OUTPUT -j EDGEMESH-SERVICES',
    '-I OUTPUT 1 -m comment --comment "edgemesh service interception" -j EDGEMESH-SERVICES',
    'COMMIT',
    '',
  ].join('\n'));
  const dup = parseHook('-A PREROUTING -j EDGEMESH-SERVICES\n-A PREROUTING -j EDGEMESH-SERVICES\n', 'PREROUTING');
  assert.equal(dup.first, true);
  assert.match(renderSync([], { PREROUTING: dup, OUTPUT: NO_JUMPS.OUTPUT }), /-D PREROUTING -j EDGEMESH-SERVICES\n-D PREROUTING -j EDGEMESH-SERVICES\n-I PREROUTING 1 /);
});

test('identical desired state renders identical text whatever the input order', () => {
  assert.equal(renderSync([...rules].reverse(), NO_JUMPS), renderSync(rules, NO_JUMPS));
});

test('cleanup batch removes jumps, flushes and deletes the chain', () => {
  const pre = parseHook('-A PREROUTING -j EDGEMESH-SERVICES', 'PREROUTING');
  assert.equal(renderCleanup({ PREROUTING: pre, OUTPUT: NO_JUMPS.OUTPUT }), '*nat\n:EDGEMESH-SERVICES - [0:0]\n-D PREROUTING -j EDGEMESH-SERVICES\n-X EDGEMESH-SERVICES\nCOMMIT\n');
});

test('backend: the version string decides unless only the other backend holds kube-proxy chains', () => {
  assert.equal(chooseBackend('iptables v1.8.9 (nf_tables)', { nft: false, legacy: false }), 'nft');
  assert.equal(chooseBackend('iptables v1.8.9 (legacy)', { nft: false, legacy: false }), 'legacy');
  assert.equal(chooseBackend('iptables v1.8.9 (nf_tables)', { nft: false, legacy: true }), 'legacy');
  assert.equal(chooseBackend('iptables v1.8.9 (legacy)', { nft: true, legacy: false }), 'nft');
  assert.equal(chooseBackend('iptables v1.8.9 (legacy)', { nft: true, legacy: true }), 'legacy');
});
