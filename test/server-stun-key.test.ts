// Replicas behind one Service: an agent's STUN packet may reach another server than its TCP connection. Every server
// of one CA signs STUN with the same key (derived from the CA key), so NAT detection works whichever answers; a server
// of another CA does not accept it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { join } from 'node:path';
import { loadOrCreateCa } from '@edgemesh/common/identity/ca';
import { bindingRequest, decodeStun, newTxid } from '@edgemesh/common/tunnel/stun';
import { stunKeyFor, STUN_KEY_BYTES } from '../packages/server/src/stun.ts';
import { startServer } from './lib/tunnel-fixture.ts';

/** One signed Binding request to 127.0.0.1:port; the answer's integrity under `key` (undefined: no answer). */
async function ask(port: number, key: Buffer): Promise<boolean | undefined> {
  const s = createSocket('udp4');
  try {
    const tx = newTxid();
    const answer = new Promise<boolean | undefined>((resolve) => {
      const t = setTimeout(() => resolve(undefined), 1500);
      s.on('message', (m) => { clearTimeout(t); resolve(decodeStun(m, key)?.integrity); });
    });
    s.send(bindingRequest(tx, key), port, '127.0.0.1');
    return await answer;
  } finally {
    s.close();
  }
}

test('the STUN key is derived from the CA key: the same for one CA, another for another, random without one', async () => {
  const x = await startServer();
  const z = await startServer();
  const y = await startServer(undefined, { caFile: join(x.stateDir, 'ca.crt'), caKeyFile: join(x.stateDir, 'ca.key') });
  try {
    const caX = (await loadOrCreateCa({ stateDir: x.stateDir, now: Date.now() })).ca;
    const caZ = (await loadOrCreateCa({ stateDir: z.stateDir, now: Date.now() })).ca;
    const kx = stunKeyFor(caX.privateKey), kz = stunKeyFor(caZ.privateKey);
    assert.equal(kx.length, STUN_KEY_BYTES);
    assert.deepEqual(stunKeyFor(caX.privateKey), kx, 'deterministic');
    assert.notDeepEqual(kx, kz, 'another CA, another key');
    assert.notDeepEqual(stunKeyFor(undefined), stunKeyFor(undefined), 'random without a CA key');
    // Both servers of CA x answer a request signed with x's key, signed the same way; z drops it.
    assert.equal(await ask(x.port, kx), true);
    assert.equal(await ask(y.port, kx), true, 'a replica with the same CA answers the same key');
    assert.equal(await ask(z.port, kx), undefined, 'a server of another CA drops it');
  } finally {
    await Promise.all([x.server.stop(), y.server.stop(), z.server.stop()]);
  }
});
