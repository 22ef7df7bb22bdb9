import { test } from 'node:test';
import assert from 'node:assert/strict';
import { renderStatus, table } from './render.ts';

test('table pads columns to the widest cell', () => {
  assert.equal(table(['A', 'BB'], [['xxx', 'y'], ['z', 'wwww']]), 'A    BB\nxxx  y\nz    wwww');
});

test('renderStatus shows servers, peers with path and RTT, services with routing', () => {
  const text = renderStatus({
    node: 'edge-a', group: 'site-1',
    servers: [{ address: '203.0.113.1:20004', connected: true }],
    nat: { type: 'cone', mapped: '203.0.113.10:20006' },
    peers: [{ node: 'edge-b', path: 'direct', remote: '203.0.113.20:31337', rttMs: 1.234 }, { node: 'edge-c', path: 'relay', remote: null, rttMs: null }],
    services: [{ name: 'default/web', ip: '9.251.0.7', ports: [80, 443], endpoints: 3, routing: 'strict-group' }],
  });
  assert.match(text, /node edge-a {2}group site-1 {2}nat cone {2}mapped 203\.0\.113\.10:20006/);
  assert.match(text, /203\.0\.113\.1:20004\s+yes/);
  assert.match(text, /edge-b\s+direct\s+203\.0\.113\.20:31337\s+1\.2 ms/);
  assert.match(text, /edge-c\s+relay\s+-\s+-/);
  assert.match(text, /default\/web\s+9\.251\.0\.7\s+80,443\s+3\s+strict-group/);
});

test('renderStatus shows the usable endpoints per routing tier when the proxy reports them', () => {
  const text = renderStatus({
    node: 'edge-a', group: 'g1', servers: [], nat: { type: 'unknown', mapped: null }, peers: [],
    services: [{ name: 'default/web', ip: '10.96.0.1', ports: [80], endpoints: 6, routing: 'prefer-group', tiers: { node: 1, group: 2, region: 0, cluster: 3 } }],
  });
  assert.match(text, /NODE\/GROUP\/REGION\/CLUSTER/);
  assert.match(text, /default\/web\s+10\.96\.0\.1\s+80\s+6\s+prefer-group\s+1\/2\/0\/3/);
});

test('renderStatus says (none) for empty sections', () => {
  const text = renderStatus({ node: 'n', group: null, servers: [], nat: { type: 'unknown', mapped: null }, peers: [], services: [] });
  assert.equal(text.match(/\(none\)/g)?.length, 3);
  assert.match(text, /group -/);
});
