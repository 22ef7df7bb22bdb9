import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeMessage, LineReader, MAX_LINE_BYTES, parseMessage } from './protocol.ts';
import { parsePortTable, renderPortTable } from '../proxy/ports.ts';

test('handoff messages round-trip; malformed or hostile ones are rejected', () => {
  const msgs = [
    { t: 'hello', v: 1, pid: 42, version: '0.1.0' },
    { t: 'welcome', v: 1, addresses: [{ ip: '169.254.96.16', prefix: 32, iface: 'lo' }], peers: ['edge-b'] },
    { t: 'busy' }, { t: 'ready', udp: ['169.254.96.16:53'] }, { t: 'released' }, { t: 'go' },
    { t: 'udp', local: '169.254.96.16:53', to: '198.18.40.2', port: 5353, data: 'AAE=' },
  ] as const;
  for (const m of msgs) assert.deepEqual(parseMessage(encodeMessage(m as never).trim()), m);
  for (const bad of [
    'not json', '[]', '{"t":"nope"}', '{"t":"hello","v":1,"pid":-1,"version":"x"}',
    '{"t":"welcome","v":1,"addresses":[{"ip":"1.2.3.4; rm -rf /","prefix":32,"iface":"lo"}],"peers":[]}',
    '{"t":"udp","local":"a","to":"x y","port":53,"data":""}', '{"t":"udp","local":"a","to":"1.2.3.4","port":0,"data":""}',
    '{"t":"ready","udp":"169.254.96.16:53"}',
  ]) assert.equal(parseMessage(bad), undefined, bad);
});

test('line reader: lines across chunks; an over-long line cuts the peer off', () => {
  const r = new LineReader();
  assert.deepEqual(r.push('{"t":"go"}\n{"t":'), ['{"t":"go"}']);
  assert.deepEqual(r.push('"busy"}\n\n'), ['{"t":"busy"}']);
  assert.equal(new LineReader().push('x'.repeat(MAX_LINE_BYTES + 1)), undefined);
});

test('listener port table: round-trips; bad entries and a port claimed twice are dropped', () => {
  const t = new Map([['default/web:80/TCP', 40001], ['default/dns:53/UDP', 40002]]);
  assert.deepEqual(parsePortTable(renderPortTable(t)), t);
  const parsed = parsePortTable(JSON.stringify({ format: 1, ports: { a: 40001, b: 40001, c: 0, d: 'x', e: 70000, f: 40003 } }));
  assert.deepEqual([...parsed], [['f', 40003]]);
  assert.throws(() => parsePortTable('{"format":2,"ports":{}}'), /unknown format/);
});
