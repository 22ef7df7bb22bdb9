// mesh.dns: servers find each other by the A records of one name (the chart's headless Service), at their own listen
// port; the server's own record is skipped, and a peer entry that is the server itself is dialled once, recognised by
// its id and never again; a server that appears in the records later is linked within the resolve interval.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { serverSchema } from '../packages/common/src/config.ts';
import { silentLogger } from '../packages/common/src/log.ts';
import { EdgemeshServer } from '../packages/server/src/main.ts';
import { startServerIdentity } from '../packages/server/src/identity/index.ts';
import { waitFor } from './lib/tunnel-fixture.ts';
import { freePort } from './lib/ports.ts';

const dirs: string[] = [];
const servers: EdgemeshServer[] = [];
after(async () => {
  for (const s of servers) await s.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

test('servers found by mesh.dns link up; their own record is skipped, their own address as a peer is recognised', async () => {
  const port = await freePort();
  let records = ['127.0.0.2', '127.0.0.3'];
  const resolve = async (name: string) => (name === 'mesh.test' ? records : []);
  const dir = mkdtempSync(join(tmpdir(), 'ems-dns-'));
  dirs.push(dir);
  writeFileSync(join(dir, 'token'), randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
  const start = async (ip: string, ca?: string, peers: string[] = []) => {
    const cfg = serverSchema.parse({
      listen: `${ip}:${port}`, stunAltPort: 0, admin: { listen: '127.0.0.1:0' }, tokenFile: join(dir, 'token'), stateDir: join(dir, ip),
      mesh: { dns: 'mesh.test', peers }, ...(ca ? { caFile: join(ca, 'ca.crt'), caKeyFile: join(ca, 'ca.key') } : {}),
    });
    const s = new EdgemeshServer(cfg, silentLogger, await startServerIdentity(cfg, silentLogger), { meshResolve: resolve, meshDnsIntervalMs: 200 });
    servers.push(s);
    await s.start();
    return s;
  };
  const a = await start('127.0.0.2');
  const b = await start('127.0.0.3', join(dir, '127.0.0.2'));
  type St = { id: string; peers: { id: string; synced: boolean }[]; targets: { addr: string; id?: string; self?: boolean }[] };
  const st = (s: EdgemeshServer) => s.mesh!.status() as St;
  await waitFor(() => st(a).peers.some((p) => p.synced) && st(b).peers.some((p) => p.synced), 15_000, 'a <-> b by DNS');
  assert.deepEqual(st(a).targets.map((t) => t.addr), [`127.0.0.3:${port}`], 'its own record is not a target');
  assert.equal(st(a).peers.length, 1);
  assert.equal(st(a).peers[0].id, st(b).id);
  // A third server appears in the records: linked with both within the resolve interval.
  records = [...records, '127.0.0.4'];
  const c = await start('127.0.0.4', join(dir, '127.0.0.2'), [`127.0.0.4:${port}`]); // and lists itself as a peer
  await waitFor(() => [a, b, c].every((s) => st(s).peers.filter((p) => p.synced).length === 2), 15_000, 'three servers meshed');
  await waitFor(() => st(c).targets.some((t) => t.addr === `127.0.0.4:${port}` && t.self), 15_000, 'c recognised itself by id');
  assert.match(await c.registry.getSingleMetricAsString('edgemesh_server_mesh_link_events_total'), /event="self"} [1-9]/);
});
