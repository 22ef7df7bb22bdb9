import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { HttpMatch } from '../cluster/types.ts';
import { hostMatches, intersectHosts, pickWeighted, requestHost, rewritePath, selectByHost, selectHttpRoute, selectVirtualHost } from './match.ts';

const m = (x: Partial<HttpMatch>): HttpMatch => ({ ignoreUriCase: false, headers: {}, gateways: [], unsupported: [], ...x });

test('host patterns: *, *.suffix (one or more labels), exact; most specific wins', () => {
  assert.ok(hostMatches('*', 'anything.example'));
  assert.ok(hostMatches('*.example.com', 'www.example.com'));
  assert.ok(hostMatches('*.example.com', 'a.b.example.com'));
  assert.ok(!hostMatches('*.example.com', 'example.com'));
  assert.ok(!hostMatches('*.example.com', 'wwwexample.com'));
  assert.ok(hostMatches('WWW.example.com', 'www.EXAMPLE.com'));
  const vh = [{ hosts: ['*'], id: 'any' }, { hosts: ['*.example.com'], id: 'wild' }, { hosts: ['*.shop.example.com'], id: 'longer' }, { hosts: ['www.shop.example.com'], id: 'exact' }];
  assert.equal(selectByHost(vh, 'www.shop.example.com')?.id, 'exact');
  assert.equal(selectByHost(vh, 'api.shop.example.com')?.id, 'longer');
  assert.equal(selectByHost(vh, 'api.example.com')?.id, 'wild');
  assert.equal(selectByHost(vh, 'other.org')?.id, 'any');
  assert.equal(selectByHost(vh.slice(1), 'other.org'), undefined);
  assert.deepEqual(intersectHosts(['*.example.com'], ['www.example.com', 'other.org']), ['www.example.com']);
  assert.deepEqual(intersectHosts(['www.example.com'], ['*']), ['www.example.com']);
  assert.deepEqual(intersectHosts(['*'], ['*']), ['*']);
});

test('virtual hosts: a tie on the VirtualService host goes to the more specific Gateway server', () => {
  const vh = [{ hosts: ['secure.example.com'], serverHosts: ['*'], id: 'plain' }, { hosts: ['secure.example.com'], serverHosts: ['secure.example.com'], id: 'redirect' }, { hosts: ['*'], serverHosts: ['*'], id: 'any' }];
  assert.equal(selectVirtualHost(vh, 'secure.example.com')?.id, 'redirect');
  assert.equal(selectVirtualHost(vh, 'other.example.com')?.id, 'any');
  assert.equal(selectVirtualHost(vh.slice(0, 2), 'other.example.com'), undefined);
});

test('request host: port and trailing dot dropped, IPv6 literal kept, lower case', () => {
  assert.equal(requestHost('WWW.Example.com:8080'), 'www.example.com');
  assert.equal(requestHost('www.example.com.'), 'www.example.com');
  assert.equal(requestHost('[::1]:8080'), '[::1]');
  assert.equal(requestHost(''), undefined);
  assert.equal(requestHost(undefined), undefined);
});

test('HTTP routes: first match in order; exact, prefix, ignoreUriCase, headers, port; unsupported never matches', () => {
  const routes = [
    { id: 'regex', match: [m({ uri: { regex: '.*' } })] },
    { id: 'unsupported', match: [m({ uri: { prefix: '/' }, unsupported: ['queryParams'] })] },
    { id: 'login', match: [m({ uri: { exact: '/Login' }, ignoreUriCase: true })] },
    { id: 'beta', match: [m({ uri: { prefix: '/api' }, headers: { 'x-env': { exact: 'beta' } } })] },
    { id: 'api', match: [m({ uri: { prefix: '/api' }, port: 80 })] },
    { id: 'rest', match: [] },
  ];
  const pick = (path: string, headers: Record<string, string> = {}, port = 80) => selectHttpRoute(routes, { path, headers, port })?.route.id;
  assert.equal(pick('/login'), 'login');
  assert.equal(pick('/LOGIN'), 'login');
  assert.equal(pick('/login/x'), 'rest', 'exact is exact');
  assert.equal(pick('/api/v1', { 'x-env': 'beta' }), 'beta');
  assert.equal(pick('/api/v1', { 'x-env': 'prod' }), 'api');
  assert.equal(pick('/api/v1', {}, 8080), 'rest', 'the api match is for port 80');
  assert.equal(pick('/anything'), 'rest');
  assert.equal(selectHttpRoute(routes.slice(0, 2), { path: '/', headers: {}, port: 80 }), undefined);
});

test('rewrite.uri: a matched prefix is replaced, otherwise the whole path; the query stays', () => {
  const pre = m({ uri: { prefix: '/api' } });
  assert.equal(rewritePath('/api/users?id=1', '/', pre), '/users?id=1');
  assert.equal(rewritePath('/api', '/', pre), '/');
  assert.equal(rewritePath('/api/users', '/v2', pre), '/v2/users');
  assert.equal(rewritePath('/login?next=/', '/signin', m({ uri: { exact: '/login' } })), '/signin?next=/');
  assert.equal(rewritePath('/x', undefined, pre), '/x');
});

test('weights: proportional, zero weights never picked', () => {
  const items = [{ n: 'a', weight: 90 }, { n: 'b', weight: 10 }, { n: 'c', weight: 0 }];
  const count: Record<string, number> = { a: 0, b: 0, c: 0 };
  for (let i = 0; i < 1000; i++) count[pickWeighted(items, i / 1000)!.n]++;
  assert.deepEqual(count, { a: 900, b: 100, c: 0 });
  assert.equal(pickWeighted([{ weight: 0 }], 0.5), undefined);
  assert.equal(pickWeighted(items, 0.9999)?.n, 'b');
});
