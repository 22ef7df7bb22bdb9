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

test('renderStatus shows the SOCKS5 and gateway entry points when enabled', () => {
  const text = renderStatus({
    node: 'gw', group: null, servers: [], nat: { type: 'unknown', mapped: null }, peers: [], services: [],
    socks5: { listen: '127.0.0.1:10800', auth: true, connections: 2, relaying: 1, nodeAccess: 'tunnel' },
    gateway: {
      addresses: ['198.51.100.7'], gateways: ['edge/public'], warnings: ['port 8080 (http): no VirtualService routes here; it answers 404 (HTTP) or closes connections'],
      listeners: [
        { address: '198.51.100.7', port: 443, kind: 'tls', bound: true, connections: 3, servers: [{ gateway: 'edge/public', protocol: 'HTTPS', hosts: ['www.example.com'], tlsMode: 'SIMPLE' }] },
        { address: '198.51.100.7', port: 80, kind: 'http', bound: false, error: 'EADDRINUSE', connections: 0, servers: [{ gateway: 'edge/public', protocol: 'HTTP', hosts: ['*'] }] },
      ],
    },
  });
  assert.match(text, /SOCKS5 127\.0\.0\.1:10800 {2}auth username\/password {2}node access tunnel {2}connections 2 \(1 relaying\)/);
  assert.match(text, /GATEWAY {2}serving edge\/public/);
  assert.match(text, /198\.51\.100\.7\s+443\s+tls\s+yes\s+3\s+HTTPS\/SIMPLE www\.example\.com/);
  assert.match(text, /80\s+http\s+no \(EADDRINUSE\)/);
  assert.match(text, /warning: port 8080 \(http\)/);
});

test('renderStatus shows the ports this node serves to other nodes (node access) and to whom', () => {
  const base = { node: 'edge-b', group: null, servers: [], nat: { type: 'unknown', mapped: null }, peers: [], services: [] };
  const any = renderStatus({ ...base, nodeAccess: { allowedPorts: [22, 10250], allowedGroups: [], allowedNodes: [], streams: 2 } });
  assert.match(any, /NODE ACCESS {2}ports 22, 10250 {2}for any node of the cluster {2}streams 2/);
  const some = renderStatus({ ...base, nodeAccess: { allowedPorts: [22], allowedGroups: ['cloud'], allowedNodes: ['bastion-1'], streams: 0 } });
  assert.match(some, /NODE ACCESS {2}ports 22 {2}for groups cloud or nodes bastion-1 {2}streams 0/);
  assert.doesNotMatch(renderStatus(base), /NODE ACCESS/);
});
