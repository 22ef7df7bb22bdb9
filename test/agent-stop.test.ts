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
import type { Proxier } from '../packages/agent/src/proxy/proxier.ts';
import { service, slice } from './lib/proxyfixtures.ts';

/** Generous bound for handles to finish closing and for start() to reach the proxy on a busy machine. */
const DEADLINE_MS = 10_000;

const sockets = () => process.getActiveResourcesInfo().filter((r) => r === 'TCPServerWrap' || r === 'UDPWrap' || r === 'FSEventWrap').length;

async function settled(before: number): Promise<number> {
  const end = Date.now() + DEADLINE_MS;
  while (sockets() > before && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  return sockets();
}

function makeAgent(dir: string): Agent {
  const svc = service({ name: 'web', ip: '10.96.0.20', ports: [{ port: 80 }] });
  const eps = slice('web', [{ port: 80 }], [{ ip: '127.0.0.21' }]);
  mkdirSync(join(dir, 'manifests'));
  writeFileSync(join(dir, 'manifests', 'svc.yaml'), stringify(svc));
  writeFileSync(join(dir, 'manifests', 'eps.yaml'), stringify(eps));
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
  const agent = new Agent(cfg, silentLogger);
  // The model holds the Service before start(), as after a loaded last good state: the proxy has a listener to open
  // as soon as it starts (the file source reads the same objects, but only after start() has moved on).
  agent.model.replace('Service', [svc]);
  agent.model.replace('EndpointSlice', [eps]);
  agent.model.flush();
  return agent;
}

test('stop() right after start(): the admin API that came up after stop() began is closed, start() ends early', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'em-agent-stop-'));
  const before = sockets();
  const agent = makeAgent(dir);
  try {
    const starting = agent.start();
    await agent.stop(); // called while start() is still under way
    await starting;
    assert.equal(await settled(before), before, `left open after stop(): ${process.getActiveResourcesInfo().join(', ')}`);
    assert.equal(agent.proxy, undefined, 'start() went on to the proxy after stop()');
  } finally {
    await agent.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('stop() while the proxy is starting: the proxy and its listeners are stopped as well', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'em-agent-stop-'));
  const before = sockets();
  const agent = makeAgent(dir);
  // stop() lands at a precise point instead of after a guessed delay: the moment start() starts the proxy, i.e. while
  // its first reconcile (which opens the service listeners) is under way.
  let created: Proxier | undefined;
  let stopping: Promise<void> | undefined;
  Object.defineProperty(agent, 'proxy', {
    configurable: true,
    enumerable: true,
    get: () => created,
    set: (p: Proxier) => {
      created = p;
      const start = p.start.bind(p);
      p.start = () => {
        assert.ok(agent.serviceIPs.ipsFor('default/web').length, 'the proxy starts with a Service to listen for');
        const started = start();
        stopping = agent.stop();
        return started;
      };
    },
  });
  try {
    await agent.start();
    assert.ok(created, 'the proxy was never created, so this test would prove nothing');
    assert.ok(stopping, 'stop() did not land while the proxy was starting');
    await stopping;
    assert.equal(created.listenerPort('default/web', 80), undefined, 'a service listener outlived stop()');
    assert.equal(await settled(before), before, `left open after stop(): ${process.getActiveResourcesInfo().join(', ')}`);
  } finally {
    await agent.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
