import { test } from 'node:test';
import assert from 'node:assert/strict';
import dnsPacket from 'dns-packet';
import { clientPrefix, ipv6Groups, newAccount, RateLimiter, rrlStep, type RrlAction, type RrlParams } from './rrl.ts';
import { answerKey, slipReply } from './wire.ts';

const P: RrlParams = { rate: 10, slip: 2, windowSeconds: 5 };

function run(p: RrlParams, times: number[]): RrlAction[] {
  const a = newAccount(times[0], p);
  return times.map((t) => rrlStep(a, t, p));
}

test('rrl: a burst of `rate` identical answers is sent, the rest limited; every slip-th limited one slips', () => {
  const acts = run(P, Array.from({ length: 20 }, () => 1000));
  assert.deepEqual(acts.slice(0, 10), Array(10).fill('send'));
  assert.deepEqual(acts.slice(10), ['drop', 'slip', 'drop', 'slip', 'drop', 'slip', 'drop', 'slip', 'drop', 'slip']);
});

test('rrl: at or below the rate nothing is limited', () => {
  // 10/s for 30 s, evenly spaced.
  const acts = run(P, Array.from({ length: 300 }, (_, i) => i * 100));
  assert.ok(acts.every((a) => a === 'send'));
});

test('rrl: a sustained flood keeps the account in debt (at most rate × window); it recovers `window` s after the flood stops', () => {
  const p = { rate: 10, slip: 0, windowSeconds: 5 };
  const a = newAccount(0, p);
  let sent = 0;
  // 1,000/s for 10 s.
  for (let t = 0; t < 10_000; t++) if (rrlStep(a, t, p) === 'send') sent++;
  assert.ok(sent <= 10 + 1, `a flood gets about one burst through, got ${sent}`);
  assert.equal(a.balance, -50, 'debt capped at rate × window');
  // 4 s after the flood: still in debt, a single legitimate answer on this account is limited.
  assert.equal(rrlStep(a, 14_000, p), 'drop');
  // window + a little later: answered again.
  assert.equal(rrlStep(a, 15_200, p), 'send');
  assert.equal(rrlStep(a, 15_300, p), 'send');
});

test('rrl: slip 0 drops every limited answer, slip 1 truncates every one', () => {
  const burst = Array.from({ length: 14 }, () => 0);
  assert.deepEqual(run({ ...P, slip: 0 }, burst).slice(10), ['drop', 'drop', 'drop', 'drop']);
  assert.deepEqual(run({ ...P, slip: 1 }, burst).slice(10), ['slip', 'slip', 'slip', 'slip']);
});

test('rrl: client prefixes are /24 (IPv4) and /56 (IPv6); IPv4-mapped addresses count as IPv4', () => {
  assert.equal(clientPrefix('10.244.1.7'), '10.244.1');
  assert.equal(clientPrefix('10.244.1.200'), clientPrefix('10.244.1.7'));
  assert.notEqual(clientPrefix('10.244.2.7'), clientPrefix('10.244.1.7'));
  assert.equal(clientPrefix('::ffff:10.244.1.7'), '10.244.1');
  assert.equal(clientPrefix('2001:db8:aa:bb00::1'), clientPrefix('2001:db8:aa:bbff:ffff::9'), 'same /56');
  assert.notEqual(clientPrefix('2001:db8:aa:bb00::1'), clientPrefix('2001:db8:aa:bc00::1'));
  assert.equal(clientPrefix('2001:db8:aa:bb00::1'), '2001:db8:aa:bb/56');
  assert.deepEqual(ipv6Groups('::1'), [0, 0, 0, 0, 0, 0, 0, 1]);
  assert.deepEqual(ipv6Groups('fe80::1%eth0'), [0xfe80, 0, 0, 0, 0, 0, 0, 1]);
  assert.deepEqual(ipv6Groups('1:2:3:4:5:6:7:8'), [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual(ipv6Groups('64:ff9b::192.0.2.33'), [0x64, 0xff9b, 0, 0, 0, 0, 0xc000, 0x0221]);
  assert.equal(ipv6Groups('1::2::3'), undefined);
  assert.equal(ipv6Groups('1:2:3'), undefined);
  assert.equal(ipv6Groups('12345::'), undefined);
  assert.equal(clientPrefix('junk'), 'junk', 'unparsable: its own account');
});

test('rrl: accounts are per prefix and per identical answer; the table stays bounded', () => {
  const l = new RateLimiter({ rate: 2, slip: 0, windowSeconds: 1 }, 1000);
  const decide = (addr: string, key: number) => l.decide(addr, key, 0);
  assert.deepEqual([decide('10.0.0.1', 1), decide('10.0.0.2', 1), decide('10.0.0.3', 1)], ['send', 'send', 'drop'], 'one /24, one account');
  assert.equal(decide('10.0.0.1', 2), 'send', 'another answer has its own account');
  assert.equal(decide('10.0.1.1', 1), 'send', 'another /24 has its own account');
  for (let i = 0; i < 5000; i++) l.decide(`10.${i >> 8}.${i & 255}.1`, 3, 0);
  for (let i = 0; i < 5000; i++) l.decide('10.9.9.9', 1000 + i, 0);
  assert.ok(l.size <= 1000, `accounts ${l.size}`);
  assert.equal(new RateLimiter({ rate: 0, slip: 2, windowSeconds: 5 }).decide('10.0.0.1', 1, 0), 'send', 'rate 0 = off');
});

test('rrl keys: identical answers share a key whatever the case or ID; other type or rcode differ; slip reply is TC and small', () => {
  const reply = (name: string, id: number, type: 'A' | 'AAAA' = 'A', rcode = 0) => {
    const b = dnsPacket.encode({ type: 'response', id, flags: dnsPacket.AUTHORITATIVE_ANSWER | rcode, questions: [{ type, name }], answers: type === 'A' ? [{ type: 'A', name, data: '10.0.0.1', ttl: 30 }] : [] });
    return b;
  };
  assert.equal(answerKey(reply('Web.Default.svc.cluster.local', 1)), answerKey(reply('web.default.svc.cluster.local', 2)));
  assert.notEqual(answerKey(reply('web.default.svc.cluster.local', 1, 'AAAA')), answerKey(reply('web.default.svc.cluster.local', 1)));
  assert.notEqual(answerKey(reply('web.default.svc.cluster.local', 1, 'A', 3)), answerKey(reply('web.default.svc.cluster.local', 1)));
  assert.notEqual(answerKey(reply('a.example', 1)), answerKey(reply('b.example', 1)));
  const full = reply('web.default.svc.cluster.local', 77);
  const s = slipReply(full);
  const d = dnsPacket.decode(s);
  assert.equal(d.id, 77);
  assert.equal(d.flag_tc, true);
  assert.equal(d.questions?.[0]?.name, 'web.default.svc.cluster.local');
  assert.equal((d.answers ?? []).length, 0);
  assert.equal(s.length, 12 + 'web.default.svc.cluster.local'.length + 2 + 4, 'header + question: no larger than the query');
});
