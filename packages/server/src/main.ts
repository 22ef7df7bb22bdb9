// edgemesh-server: authenticates agents, answers STUN, brokers hole punching, relays.
import { helpText, loadServerConfig, parseArgs, serverSchema } from '@edgemesh/common/config';
import { exitOnConfigError, readVersion } from '@edgemesh/common/process';

export async function main(argv: string[]): Promise<void> {
  try {
    const args = parseArgs(argv, serverSchema);
    if (args.help) { process.stdout.write(helpText('edgemesh-server', serverSchema) + '\n'); return; }
    if (args.version) { process.stdout.write(`edgemesh-server ${await readVersion()}\n`); return; }
    loadServerConfig({ file: args.config, overrides: args.overrides, env: process.env });
  } catch (e) {
    exitOnConfigError(e);
  }
  process.stderr.write('edgemesh-server: not built yet\n');
  process.exit(1);
}
