import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chooseTransport, inSubnets, keepTcpLink, MAX_TCP_DIAL_TARGETS, shouldDialTcp, tcpDialTargets } from './transport.ts';
import type { Candidate } from './punch.ts';

const none = { tcp: false, udx: false, udxSuspect: false, relay: false };

test('chooseTransport: TCP when it works, over UDX and the relay', () => {
  assert.equal(chooseTransport({ ...none, tcp: true, udx: true, relay: true }), 'tcp');
  assert.equal(chooseTransport({ ...none, tcp: true }), 'tcp');
  assert.equal(chooseTransport({ ...none, tcp: true, udx: true, udxSuspect: true, relay: true }), 'tcp');
});

test('chooseTransport: without TCP, UDX (the warm fallback), the relay while UDX is suspect, none without links', () => {
  assert.equal(chooseTransport({ ...none, udx: true, relay: true }), 'udx');
  assert.equal(chooseTransport({ ...none, udx: true }), 'udx');
  assert.equal(chooseTransport({ ...none, udx: true, udxSuspect: true, relay: true }), 'relay');
  assert.equal(chooseTransport({ ...none, udx: true, udxSuspect: true }), 'udx');
  assert.equal(chooseTransport({ ...none, relay: true }), 'relay');
  assert.equal(chooseTransport(none), 'none');
});

test('tcpDialTargets: LAN candidates on our subnets; every candidate of a peer with a public address; never a NATed mapping', () => {
  const cand: Candidate[] = [
    { host: '203.0.113.5', port: 40000, kind: 'stun' },
    { host: '10.0.0.2', port: 20006, kind: 'lan' },
    { host: '198.51.100.9', port: 1234, kind: 'prflx' },
    { host: '10.0.0.2', port: 20006, kind: 'lan' },
    { host: '192.168.1.2', port: 20006, kind: 'lan' },
  ];
  const lan = { ourSubnets: ['10.0.0.7/24', '172.16.0.1/16'], peerNat: 'cone' };
  assert.deepEqual(tcpDialTargets(cand, lan), [{ host: '10.0.0.2', port: 20006 }], 'the LAN candidate on our subnet only');
  assert.deepEqual(tcpDialTargets(cand, { ourSubnets: ['198.18.3.10/24'], peerNat: 'symmetric' }), [], 'a NATed peer elsewhere: no TCP attempt');
  assert.deepEqual(tcpDialTargets(cand, { ourSubnets: [], peerNat: 'open' }), [
    { host: '10.0.0.2', port: 20006 }, { host: '192.168.1.2', port: 20006 }, { host: '203.0.113.5', port: 40000 },
  ], 'a public peer: its candidates, LAN kind first, no peer-reflexive ones');
  const many: Candidate[] = Array.from({ length: 10 }, (_, i) => ({ host: `10.0.0.${i + 1}`, port: 20006, kind: 'lan' }));
  assert.equal(tcpDialTargets(many, lan).length, MAX_TCP_DIAL_TARGETS);
  assert.deepEqual(tcpDialTargets([{ host: '10.0.0.1', port: 0, kind: 'lan' }], lan), []);
  assert.deepEqual(tcpDialTargets([], lan), []);
});

test('inSubnets: IPv4 CIDR membership; malformed ranges and IPv6 never match', () => {
  assert.equal(inSubnets('10.0.0.200', ['10.0.0.7/24']), true);
  assert.equal(inSubnets('10.0.1.1', ['10.0.0.7/24']), false);
  assert.equal(inSubnets('10.0.1.1', ['bogus', '10.0.0.0/33', '10.0.0.0/16']), true);
  assert.equal(inSubnets('fe80::1', ['10.0.0.0/8']), false);
  assert.equal(inSubnets('10.0.0.1', []), false);
});

test('shouldDialTcp: once at a time, not while a TCP link is up, not again soon after a failure', () => {
  const base = { haveTcp: false, dialing: false, lastFailedAt: -Infinity, now: 100_000, retryMs: 30_000, targets: 2 };
  assert.equal(shouldDialTcp(base), true);
  assert.equal(shouldDialTcp({ ...base, haveTcp: true }), false);
  assert.equal(shouldDialTcp({ ...base, dialing: true }), false);
  assert.equal(shouldDialTcp({ ...base, targets: 0 }), false);
  assert.equal(shouldDialTcp({ ...base, lastFailedAt: 90_000 }), false);
  assert.equal(shouldDialTcp({ ...base, lastFailedAt: 70_000 }), true);
});

test('keepTcpLink: both sides keep the link the smaller name dialed', () => {
  // a < b. On a: the link a dialed (self) wins over the one b dialed, whichever arrived first.
  assert.equal(keepTcpLink('a', 'b', true, false), 'existing');
  assert.equal(keepTcpLink('a', 'b', false, true), 'new');
  // On b: the same link (dialed by a = the peer) wins.
  assert.equal(keepTcpLink('b', 'a', true, false), 'new');
  assert.equal(keepTcpLink('b', 'a', false, true), 'existing');
  // Two links dialed by the same side: the newer.
  assert.equal(keepTcpLink('a', 'b', true, true), 'new');
  assert.equal(keepTcpLink('b', 'a', false, false), 'new');
});
