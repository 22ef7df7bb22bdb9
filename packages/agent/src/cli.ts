// `edgemesh` command: status and demo.
export async function cli(argv: string[]): Promise<void> {
  const [cmd] = argv;
  process.stderr.write(`edgemesh: unknown command ${cmd ?? ''}\nusage: edgemesh status [--admin HOST:PORT] [--json] | edgemesh demo\n`);
  process.exit(2);
}
