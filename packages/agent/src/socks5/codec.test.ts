import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  chooseMethod, encodeAuthStatus, encodeMethodChoice, encodeReply, formatIPv6, MAX_AUTH_BYTES, MAX_GREETING_BYTES, MAX_REQUEST_BYTES,
  METHOD_NO_AUTH, METHOD_NONE_ACCEPTABLE, METHOD_USERPASS, parseAuth, parseGreeting, parseRequest, REP, replyName, type Parsed,
} from './codec.ts';

const b = (...x: number[]) => Buffer.from(x);

test('greeting: need, ok with bytes used, malformed', () => {
  assert.deepEqual(parseGreeting(b()), { kind: 'need' });
  assert.deepEqual(parseGreeting(b(5)), { kind: 'need' });
  assert.deepEqual(parseGreeting(b(5, 2, 0)), { kind: 'need' });
  assert.deepEqual(parseGreeting(b(5, 2, 0, 2, 9, 9)), { kind: 'ok', value: { methods: [0, 2] }, used: 4 });
  assert.equal(parseGreeting(b(4, 1, 0)).kind, 'error', 'SOCKS4');
  assert.equal(parseGreeting(Buffer.from('GET / HTTP/1.1\r\n')).kind, 'error', 'HTTP');
  assert.equal(parseGreeting(b(5, 0)).kind, 'error', 'no methods');
  assert.equal(chooseMethod([0, 2], false), METHOD_NO_AUTH);
  assert.equal(chooseMethod([0, 2], true), METHOD_USERPASS);
  assert.equal(chooseMethod([0], true), METHOD_NONE_ACCEPTABLE, 'auth required, not offered');
  assert.equal(chooseMethod([2], false), METHOD_NONE_ACCEPTABLE, 'none required, only user/pass offered');
  assert.deepEqual(encodeMethodChoice(METHOD_NONE_ACCEPTABLE), b(5, 0xff));
});

test('username/password (RFC 1929)', () => {
  const msg = Buffer.concat([b(1, 5), Buffer.from('alice'), b(6), Buffer.from('s3cret')]);
  for (let i = 0; i < msg.length; i++) assert.deepEqual(parseAuth(msg.subarray(0, i)), { kind: 'need' }, `prefix ${i}`);
  const p = parseAuth(msg);
  assert.equal(p.kind, 'ok');
  if (p.kind === 'ok') {
    assert.equal(p.value.username.toString(), 'alice');
    assert.equal(p.value.password.toString(), 's3cret');
    assert.equal(p.used, msg.length);
  }
  assert.equal(parseAuth(b(5, 1, 0x61, 0)).kind, 'error', 'wrong sub-negotiation version');
  assert.equal(parseAuth(b(1, 0, 0)).kind, 'error', 'empty user');
  assert.equal(parseAuth(b(1, 1, 0x61, 0)).kind, 'ok', 'an empty password parses (and then fails the check)');
  assert.deepEqual(encodeAuthStatus(true), b(1, 0));
  assert.deepEqual(encodeAuthStatus(false), b(1, 1));
});

test('request: IPv4, IPv6, domain; unknown address type says 0x08; every prefix needs more', () => {
  const v4 = b(5, 1, 0, 1, 10, 96, 0, 10, 0, 80);
  const v6 = Buffer.concat([b(5, 1, 0, 4), Buffer.from('fd000000000000000000000000000001', 'hex'), b(0x1f, 0x90)]);
  const name = Buffer.concat([b(5, 1, 0, 3, 24), Buffer.from('web.demo.svc.cluster.local'.slice(0, 24)), b(0, 80)]);
  for (const msg of [v4, v6, name]) for (let i = 0; i < msg.length; i++) assert.deepEqual(parseRequest(msg.subarray(0, i)), { kind: 'need' });
  assert.deepEqual(parseRequest(v4), { kind: 'ok', value: { command: 1, addressType: 'ipv4', host: '10.96.0.10', port: 80 }, used: 10 });
  assert.deepEqual(parseRequest(v6), { kind: 'ok', value: { command: 1, addressType: 'ipv6', host: 'fd00::1', port: 8080 }, used: 22 });
  const n = parseRequest(Buffer.concat([name, b(0xde, 0xad)]));
  assert.equal(n.kind === 'ok' && n.value.host, 'web.demo.svc.cluster.loc');
  assert.equal(n.kind === 'ok' && n.used, name.length, 'bytes after the request are left for the stream');
  assert.deepEqual(parseRequest(b(5, 1, 0, 9, 1, 2)), { kind: 'error', reason: 'address type 9', reply: REP.ADDRESS_TYPE_NOT_SUPPORTED });
  assert.equal((parseRequest(b(5, 1, 0, 3, 0, 0, 80)) as { reply?: number }).reply, REP.HOST_UNREACHABLE);
  assert.equal((parseRequest(b(4, 1, 0, 1)) as { reply?: number }).reply, REP.GENERAL_FAILURE);
  const bind = parseRequest(b(5, 2, 0, 1, 1, 2, 3, 4, 0, 22));
  assert.equal(bind.kind === 'ok' && bind.value.command, 2, 'BIND parses; the server answers 0x07');
});

test('IPv6 text is RFC 5952', () => {
  const h = (s: string) => formatIPv6(Buffer.from(s, 'hex'));
  assert.equal(h('00000000000000000000000000000001'), '::1');
  assert.equal(h('00000000000000000000000000000000'), '::');
  assert.equal(h('20010db8000000000001000000000001'), '2001:db8::1:0:0:1');
  assert.equal(h('20010db8000100000001000100010001'), '2001:db8:1:0:1:1:1:1', 'a single zero group stays');
  assert.equal(h('fe800000000000000000000000000000'), 'fe80::');
});

test('replies: every code encodes with a 0.0.0.0:0 or the given bind address; names for metrics', () => {
  for (const rep of Object.values(REP)) {
    const r = encodeReply(rep);
    assert.deepEqual(r, b(5, rep, 0, 1, 0, 0, 0, 0, 0, 0));
    assert.notEqual(replyName(rep), 'unknown');
  }
  assert.deepEqual(encodeReply(REP.SUCCEEDED, { host: '127.0.0.1', port: 10800 }), b(5, 0, 0, 1, 127, 0, 0, 1, 0x2a, 0x30));
  assert.deepEqual(encodeReply(REP.SUCCEEDED, { host: '::1', port: 1 }), Buffer.concat([b(5, 0, 0, 4), Buffer.from('00000000000000000000000000000001', 'hex'), b(0, 1)]));
});

/** Feeds `bytes` in random chunks; returns the final parse (or the first error) — what the server's loop does. */
function feed<T>(parse: (x: Buffer) => Parsed<T>, bytes: Buffer, rnd: () => number): Parsed<T> {
  let buf = Buffer.alloc(0);
  let i = 0;
  while (i < bytes.length) {
    const n = 1 + Math.floor(rnd() * 8);
    buf = Buffer.concat([buf, bytes.subarray(i, i + n)]);
    i += n;
    const p = parse(buf);
    if (p.kind !== 'need') return p;
  }
  return parse(buf);
}

test('fuzz: 20,000 random and mutated greetings, auth messages and requests never throw, never read past their bounds', () => {
  let seed = 0x5eed;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x80000000);
  const valid = [b(5, 1, 0), b(5, 2, 0, 2), Buffer.concat([b(1, 3), Buffer.from('bob'), b(2), Buffer.from('pw')]), b(5, 1, 0, 1, 127, 0, 0, 1, 0, 22), Buffer.concat([b(5, 1, 0, 3, 6), Buffer.from('edge-b'), b(0, 22)])];
  const limits = [MAX_GREETING_BYTES, MAX_AUTH_BYTES, MAX_REQUEST_BYTES];
  for (let i = 0; i < 20_000; i++) {
    let msg: Buffer;
    if (i % 2) {
      msg = randomBytes(Math.floor(rnd() * 600));
    } else {
      msg = Buffer.from(valid[i % valid.length]);
      for (let k = 0; k < 1 + Math.floor(rnd() * 3); k++) if (msg.length) msg[Math.floor(rnd() * msg.length)] = Math.floor(rnd() * 256);
      if (rnd() < 0.3) msg = msg.subarray(0, Math.floor(rnd() * msg.length));
    }
    const parsers = [parseGreeting, parseAuth, parseRequest] as const;
    parsers.forEach((parse, j) => {
      const p = feed(parse as (x: Buffer) => Parsed<unknown>, msg, rnd);
      if (p.kind === 'ok') {
        assert.ok(p.used <= msg.length && p.used <= limits[j], `used ${p.used} of ${msg.length}`);
      } else if (p.kind === 'need') {
        assert.ok(msg.length < limits[j], `a ${msg.length}-byte message still needs more (bound ${limits[j]})`);
      } else {
        assert.equal(typeof p.reason, 'string');
      }
    });
  }
});
