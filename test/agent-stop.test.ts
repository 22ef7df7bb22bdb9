// The Agent stopped while it is still starting (a SIGTERM during start-up): whatever start() brings up after stop()
// began is stopped too — no listener (and with iptables interception, no rule) outlives stop().
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { loadAgentConfig } from '@edgemesh/common/config';
import { silentLogger } from '@edgemesh/common/log';
import { Agent } from '../packages/agent/src/main.ts';
import { service, slice } from './lib/proxyfixtures.ts';

test('stop() during start(): components started after stop() began are stopped as well', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'em-agent-stop-'));
  try {
    mkdirSync(join(dir, 'manifests'));
    writeFileSync(join(dir, 'manifests', 'svc.yaml'), stringify(service({ name: 'web', ip: '10.96.0.20', ports: [{ port: 80 }] })));
    writeFileSync(join(dir, 'manifests', 'eps.yaml'), stringify(slice('web', [{ port: 80 }], [{ ip: '127.0.0.21' }])));
    const cfg = loadAgentConfig({
      env: {},
      text: stringify({
        nodeName: 'me', stateDir: join(dir, 'state'),
        cluster: { source: 'file', manifestsDir: join(dir, 'manifests') },
        dns: { enabled: false }, tunnel: { enabled: false },
        proxy: { intercept: 'none', bindAddress: '127.0.0.1' },
        admin: { listen: '127.0.0.1:0' },
      }),
    });
    const sockets = () => process.getActiveResourcesInfo().filter((r) => r === 'TCPServerWrap' || r === 'UDPWrap' || r === 'FSEventWrap').length;
    const before = sockets();
    const agent = new Agent(cfg, silentLogger);
    const starting = agent.start();
    await agent.stop(); // called while start() is still under way
    await starting;
    // Admin API, cluster source and proxy all came up after stop() began: none may be left open.
    const end = Date.now() + 2000;
    while (sockets() > before && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    assert.equal(sockets(), before, `left open after stop(): ${process.getActiveResourcesInfo().join(', ')}`);
    assert.equal(agent.proxy?.listenerPort('default/web', 80), undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
