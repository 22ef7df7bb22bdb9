import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type AddressInfo } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { randomBytes } from 'node:crypto';
import { HELLO_MAX_READ_BYTES, parseClientHello } from './sni.ts';

/** The first flight of a real TLS client (Node's OpenSSL), captured by a plain TCP server. */
async function capture(opts: { servername?: string; ALPNProtocols?: string[] }): Promise<Buffer> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as AddressInfo).port;
  const got = new Promise<Buffer>((resolve) => {
    srv.once('connection', (s) => {
      const chunks: Buffer[] = [];
      s.on('data', (c) => {
        chunks.push(c);
        const all = Buffer.concat(chunks);
        if (all.length >= 5 && all.length >= 5 + all.readUInt16BE(3)) { resolve(all); s.destroy(); }
      });
    });
  });
  const c = tlsConnect({ host: '127.0.0.1', port, ...opts, rejectUnauthorized: false });
  c.on('error', () => {});
  const hello = await got;
  c.destroy();
  srv.close();
  return hello;
}

/** Re-frames a single-record ClientHello into records of `size` fragment bytes. */
function split(hello: Buffer, size: number): Buffer {
  const body = hello.subarray(5, 5 + hello.readUInt16BE(3));
  const out: Buffer[] = [];
  for (let i = 0; i < body.length; i += size) {
    const frag = body.subarray(i, i + size);
    const h = Buffer.from([22, 3, 1, 0, 0]);
    h.writeUInt16BE(frag.length, 3);
    out.push(h, frag);
  }
  return Buffer.concat(out);
}

test('a real ClientHello: server name (lower-cased) and ALPN; every prefix needs more', async () => {
  const hello = await capture({ servername: 'WWW.Example.com', ALPNProtocols: ['h2', 'http/1.1'] });
  assert.deepEqual(parseClientHello(hello), { kind: 'ok', hello: { serverName: 'www.example.com', alpn: ['h2', 'http/1.1'] } });
  for (let i = 0; i < hello.length; i += 7) assert.deepEqual(parseClientHello(hello.subarray(0, i)), { kind: 'need' }, `prefix ${i}`);
  const bare = await capture({});
  assert.deepEqual(parseClientHello(bare), { kind: 'ok', hello: { serverName: undefined, alpn: [] } }, 'no SNI (an IP as server name is never sent)');
  // Bytes after the ClientHello (nothing should follow it, but they must not matter).
  assert.equal(parseClientHello(Buffer.concat([hello, randomBytes(50)])).kind, 'ok');
});

test('a ClientHello split over many records is reassembled', async () => {
  const hello = await capture({ servername: 'db.example.com' });
  for (const size of [1, 3, 100, 511]) {
    const framed = split(hello, size);
    assert.ok(framed.length <= HELLO_MAX_READ_BYTES || size === 1);
    assert.equal((parseClientHello(framed) as { hello?: { serverName?: string } }).hello?.serverName, 'db.example.com', `records of ${size}`);
  }
});

test('not TLS, not a ClientHello, or malformed: an error, never a throw', async () => {
  assert.equal(parseClientHello(Buffer.from('GET / HTTP/1.1\r\n')).kind, 'error');
  assert.equal(parseClientHello(Buffer.from([0x80, 0x2e, 0x01])).kind, 'error', 'SSLv2 hello');
  assert.equal(parseClientHello(Buffer.from([22, 3, 1, 0, 4, 2, 0, 0, 0])).kind, 'error', 'a ServerHello');
  assert.equal(parseClientHello(Buffer.from([22, 3, 1, 0x50, 0x00])).kind, 'error', 'record longer than 2^14');
  assert.equal(parseClientHello(Buffer.from([22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff])).kind, 'error', 'ClientHello over the bound');
  const hello = await capture({ servername: 'a.example.com' });
  // Corrupt the SNI name with a space: not a DNS name.
  const i = hello.indexOf(Buffer.from('a.example.com'));
  const bad = Buffer.from(hello);
  bad[i + 1] = 0x20;
  assert.equal(parseClientHello(bad).kind, 'error');
});

test('fuzz: 30,000 mutated and truncated ClientHellos never throw', async () => {
  const seeds = [await capture({ servername: 'www.example.com', ALPNProtocols: ['http/1.1'] }), await capture({})];
  let seed = 99;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x80000000);
  for (let n = 0; n < 30_000; n++) {
    const b = Buffer.from(seeds[n % 2]);
    const flips = 1 + Math.floor(rnd() * 4);
    for (let k = 0; k < flips; k++) b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
    const cut = rnd() < 0.3 ? b.subarray(0, Math.floor(rnd() * b.length)) : b;
    const r = parseClientHello(cut);
    assert.ok(r.kind === 'need' || r.kind === 'ok' || r.kind === 'error');
    if (r.kind === 'ok' && r.hello.serverName !== undefined) assert.match(r.hello.serverName, /^[a-z0-9_][a-z0-9_.-]*$/);
  }
});
