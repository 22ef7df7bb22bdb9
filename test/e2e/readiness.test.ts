// Readiness tells the truth (network namespaces, the real agent binary): a client polls /readyz until it answers 200
// and then at once connects to the Service — by its fake IP (proxy.ipMode fake) and by its ClusterIP (clusterIP
// mode). The first SYN must be answered (no SYN retransmit in the client's namespace: a SYN that meets no rule yet is
// dropped or refused, and a retransmit comes only after 1 s) and the answer must come from the backend through the
// proxy. 20 fresh agents of each mode, each with a fresh stateDir.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { join } from 'node:path';
import { node, service, slice } from '../lib/proxyfixtures.ts';
import { AGENT_BIN, BACKEND_IP, HELPERS, NODE_IP, agentConfig, buildNodeLab, collect, type NodeLab } from '../lib/nodelab.ts';
import { firstChoice, intToIpv4, parseFakeCIDR } from '../../packages/agent/src/dns/serviceips.ts';

const isRoot = process.getuid?.() === 0;
const RUNS = 20;
const CLUSTER_IP = '100.64.0.20';
const FAKE_CIDR = '9.251.0.0/16';
const RESULT_DEADLINE_MS = 40_000;

let lab: NodeLab | undefined;
let manifests = '';

before(async () => {
  if (!isRoot) return;
  lab = await buildNodeLab('r');
  manifests = lab.writeManifests([
    node('n-a'),
    service({ name: 'web', ip: CLUSTER_IP, ports: [{ name: 'http', port: 80, targetPort: 8080 }] }),
    slice('web', [{ name: 'http', port: 8080 }], [{ ip: BACKEND_IP, node: 'n-a' }]),
  ]);
  const backend = lab.spawnIn(lab.node, join(HELPERS, 'line-backend.ts'), [BACKEND_IP, '8080', '8081']);
  await collect(backend).waitFor(/^up$/m, RESULT_DEADLINE_MS);
});

after(async () => { await lab?.cleanup(); });

/** One fresh agent: the client polls /readyz, then connects to `ip`:80 at once. Returns the client's report. */
async function run(i: number, mode: 'fake' | 'clusterIP', ip: string): Promise<{ ok: boolean; connectMs?: number; readyMs: number; synRetransmits: number; error?: string }> {
  const l = lab!;
  const cfg = agentConfig(l, manifests, join(l.dir, `state-${mode}-${i}`), { proxy: { intercept: 'iptables', bindAddress: '169.254.96.16', ipMode: mode, fakeCIDR: FAKE_CIDR } });
  // The client polls first: it sees the very first 200.
  const client = l.spawnIn(l.client, join(HELPERS, 'ready-client.ts'), [`http://${NODE_IP}:10560/readyz`, ip, '80']);
  const report = collect(client).waitFor(/^\{.*\}$/m, RESULT_DEADLINE_MS);
  const agent = l.spawnIn(l.node, AGENT_BIN, ['--config', cfg]);
  const out = collect(agent);
  const exited = once(agent, 'exit');
  try {
    const r = JSON.parse(await report);
    agent.kill('SIGTERM');
    const [code] = await exited;
    assert.equal(code, 0, `agent exit; output:\n${out.text().slice(-2000)}`);
    return r;
  } finally {
    if (agent.exitCode === null) agent.kill('SIGKILL');
  }
}

test('/readyz 200 means the first SYN to a fake IP and to a ClusterIP is answered, 20 fresh agents each', { skip: !isRoot && 'needs root', timeout: 600_000 }, async () => {
  const fakeIP = intToIpv4(firstChoice(parseFakeCIDR(FAKE_CIDR), 'default/web')); // a fresh stateDir: the first choice
  const connects: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    for (const [mode, ip] of [['fake', fakeIP], ['clusterIP', CLUSTER_IP]] as const) {
      const r = await run(i, mode, ip);
      assert.equal(r.ok, true, `run ${i} ${mode} ${ip}: ${JSON.stringify(r)}`);
      assert.equal(r.synRetransmits, 0, `run ${i} ${mode}: the first SYN went unanswered: ${JSON.stringify(r)}`);
      connects.push(r.connectMs ?? NaN);
    }
  }
  const sorted = [...connects].sort((a, b) => a - b);
  console.log(`readiness: ${connects.length} first connects right after /readyz 200, median ${sorted[sorted.length >> 1].toFixed(2)} ms, max ${sorted[sorted.length - 1].toFixed(2)} ms, 0 SYN retransmits`);
  // Also after the last run's SIGTERM nothing is left in the node's nat table.
  assert.doesNotMatch((await lab!.inNode(['iptables-save', '-t', 'nat'])).stdout, /EDGEMESH/);
});
