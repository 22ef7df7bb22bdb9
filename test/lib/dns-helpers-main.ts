// Processes for test/e2e/dns.test.ts, run inside lab namespaces:
//   upstream HOST PORT      a test upstream serving www.example.test
//   agent CONFIG_YAML_FILE  an Agent (its config names the file source holding the DNS fixture)
// Each prints READY when serving and stops cleanly on SIGTERM.
import { readFileSync } from 'node:fs';
import { loadAgentConfig } from '@edgemesh/common/config';
import { createLogger } from '@edgemesh/common/log';
import { Agent } from '../../packages/agent/src/main.ts';
import { startUpstream } from './dnsupstream.ts';

const [mode, a, b] = process.argv.slice(2);
if (mode === 'upstream') {
  const up = await startUpstream({ host: a, port: Number(b), records: { 'www.example.test': [{ name: 'www.example.test', type: 'A', ttl: 300, data: '192.0.2.10' }] } });
  process.stdout.write('READY\n');
  process.on('SIGTERM', () => void up.close().then(() => process.exit(0)));
} else if (mode === 'agent') {
  const cfg = loadAgentConfig({ text: readFileSync(a, 'utf8') });
  const agent = new Agent(cfg, createLogger(cfg.log.level, 'edgemesh-agent'));
  await agent.start();
  process.stdout.write('READY\n');
  process.on('SIGTERM', () => void agent.stop().then(() => process.exit(0)));
} else {
  process.stderr.write('usage: dns-helpers-main.ts upstream HOST PORT | agent CONFIG\n');
  process.exit(2);
}
