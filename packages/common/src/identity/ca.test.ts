import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, createServer, type TLSSocket } from 'node:tls';
import { ensureStateDir } from '../fsutil.ts';
import { caHashOf, checkServerLeaf, generateCa, issueServerCert, loadCa, loadOrCreateCa, parseCaHash, CaError, SERVER_TLS_NAME } from './ca.ts';
import { testCa } from './testca.ts';

const NOW = Date.now();

test('generateCa makes a self-signed Ed25519 CA; caHash is sha256 of its SubjectPublicKeyInfo DER', async () => {
  const { certPem, keyPem } = await generateCa({ now: NOW });
  const ca = loadCa(certPem, keyPem);
  assert.equal(ca.cert.ca, true);
  assert.equal(ca.publicKey.asymmetricKeyType, 'ed25519');
  const spki = new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' });
  assert.equal(ca.hash, 'sha256:' + createHash('sha256').update(spki).digest('hex'));
  assert.equal(caHashOf(certPem), ca.hash);
  assert.ok(parseCaHash(ca.hash.toUpperCase().replace('SHA256', 'sha256'))?.equals(ca.keyId));
  assert.equal(parseCaHash('sha256:abc'), undefined);
  assert.equal(parseCaHash('md5:' + 'a'.repeat(64)), undefined);
  const other = await generateCa({ now: NOW });
  assert.throws(() => loadCa(certPem, other.keyPem), /does not belong/);
  assert.throws(() => loadCa('nope'), CaError);
});

test('loadCa refuses a leaf certificate as a CA', async () => {
  const ca = await testCa(NOW);
  const srv = await issueServerCert(ca, { now: NOW });
  assert.throws(() => loadCa(srv.certPem), /not a CA/);
});

test('the server certificate serves TLS 1.3 to a client that trusts the CA, and fails one with another CA', async () => {
  const ca = await testCa(NOW);
  const other = await testCa(NOW);
  const srv = await issueServerCert(ca, { now: NOW });
  const server = createServer({ key: srv.keyPem, cert: srv.chainPem, minVersion: 'TLSv1.3' }, (s) => s.end('hello'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const dial = (caPem: string) => new Promise<{ ok: boolean; proto?: string; chain?: number; error?: string }>((resolve) => {
    const c: TLSSocket = connect({ host: '127.0.0.1', port, ca: caPem, servername: SERVER_TLS_NAME, minVersion: 'TLSv1.3' });
    c.once('secureConnect', () => {
      let n = 0;
      for (let p = c.getPeerCertificate(true); p && n < 5; p = p.issuerCertificate === p ? (undefined as never) : p.issuerCertificate) n++;
      resolve({ ok: c.authorized, proto: c.getProtocol() ?? undefined, chain: n });
      c.destroy();
    });
    c.once('error', (e) => resolve({ ok: false, error: e.message }));
  });
  try {
    const good = await dial(ca.certPem);
    assert.equal(good.ok, true);
    assert.equal(good.proto, 'TLSv1.3');
    assert.equal(good.chain, 2, 'the server sends its certificate and the CA');
    const bad = await dial(other.certPem);
    assert.equal(bad.ok, false);
  } finally {
    server.close();
  }
});

test('checkServerLeaf: issuer, window, name and purpose', async () => {
  const ca = await testCa(NOW);
  const other = await testCa(NOW);
  const srv = await issueServerCert(ca, { now: NOW, validityMs: 3_600_000 });
  const der = new X509Certificate(srv.certPem).raw;
  assert.deepEqual(checkServerLeaf(der, ca, NOW), { ok: true });
  assert.deepEqual(checkServerLeaf(der, other, NOW), { ok: false, reason: 'not-issued-by-ca' });
  assert.deepEqual(checkServerLeaf(der, ca, NOW + 2 * 3_600_000), { ok: false, reason: 'expired' });
  assert.deepEqual(checkServerLeaf(der, ca, NOW - 3_600_000), { ok: false, reason: 'not-yet-valid' });
  assert.deepEqual(checkServerLeaf(ca.cert.raw, ca, NOW), { ok: false, reason: 'is-ca' });
  assert.deepEqual(checkServerLeaf(Buffer.from('x'), ca, NOW), { ok: false, reason: 'malformed' });
});

test('loadOrCreateCa creates ca.crt and ca.key 0600 once, loads them afterwards, refuses a readable key', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'em-ca-'));
  try {
    const state = join(dir, 'state');
    ensureStateDir(state);
    const first = await loadOrCreateCa({ stateDir: state, now: NOW });
    assert.equal(first.created, true);
    assert.equal(statSync(join(state, 'ca.key')).mode & 0o777, 0o600);
    assert.equal(statSync(join(state, 'ca.crt')).mode & 0o777, 0o600);
    const again = await loadOrCreateCa({ stateDir: state, now: NOW });
    assert.equal(again.created, false);
    assert.equal(again.ca.hash, first.ca.hash);
    chmodSync(join(state, 'ca.key'), 0o644);
    await assert.rejects(loadOrCreateCa({ stateDir: state, now: NOW }), /readable by its owner only/);
    rmSync(join(state, 'ca.crt'));
    chmodSync(join(state, 'ca.key'), 0o600);
    await assert.rejects(loadOrCreateCa({ stateDir: state, now: NOW }), /exists without/);
    // A given CA (a Secret volume): loaded, never written; 0440 is accepted there.
    const gen = await generateCa({ now: NOW });
    writeFileSync(join(dir, 'given.crt'), gen.certPem);
    writeFileSync(join(dir, 'given.key'), gen.keyPem, { mode: 0o440 });
    const given = await loadOrCreateCa({ stateDir: state, now: NOW, certFile: join(dir, 'given.crt'), keyFile: join(dir, 'given.key') });
    assert.equal(given.created, false);
    assert.equal(given.ca.hash, caHashOf(gen.certPem));
    await assert.rejects(loadOrCreateCa({ stateDir: state, now: NOW, certFile: join(dir, 'given.crt') }), /both/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('@peculiar/x509 is loaded at the first issue only: loading, pinning and checking certificates (all an agent does) never load it', async () => {
  const ca = await testCa(NOW);
  const server = await issueServerCert(ca, { now: NOW });
  // A fresh process that records every module it resolves, then does what an agent does, then issues.
  const script = `
    import { registerHooks } from 'node:module';
    import { X509Certificate } from 'node:crypto';
    const seen = [];
    registerHooks({ resolve(spec, ctx, next) { const r = next(spec, ctx); seen.push(r.url); return r; } });
    const issuer = () => seen.some((u) => /[/]node_modules[/](@peculiar[/]x509|reflect-metadata)[/]/.test(u));
    const dir = new URL('./', ${JSON.stringify(import.meta.url)});
    const ca = await import(new URL('ca.ts', dir));
    await Promise.all(['trust.ts', 'cert.ts', 'renewal.ts', 'revocation.ts'].map((f) => import(new URL(f, dir))));
    const loaded = ca.loadCa(process.env.CA_PEM);
    const leaf = new X509Certificate(process.env.LEAF_PEM);
    const checked = ca.checkServerLeaf(leaf.raw, loaded, Date.now()).ok;
    const before = issuer();
    const fresh = await ca.generateCa({ now: Date.now() });
    const issued = await ca.issueServerCert(ca.loadCa(fresh.certPem, fresh.keyPem), { now: Date.now() });
    const again = ca.checkServerLeaf(new X509Certificate(issued.certPem).raw, ca.loadCa(fresh.certPem), Date.now()).ok;
    console.log(JSON.stringify({ checked, before, after: issuer(), again }));
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', env: { ...process.env, CA_PEM: ca.certPem, LEAF_PEM: server.certPem } });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout.trim()), { checked: true, before: false, after: true, again: true });
});
