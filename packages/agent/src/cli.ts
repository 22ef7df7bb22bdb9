// `edgemesh` command: `status` asks a running agent's admin API; `demo` runs the NAT lab demo.
import { parseHostPort } from '@edgemesh/common/config';
import { renderStatus } from './admin/render.ts';
import type { AgentStatus } from './main.ts';

const USAGE = 'usage: edgemesh status [--admin HOST:PORT] [--json]\n       edgemesh demo\n';
export const STATUS_TIMEOUT_MS = 5000;

export async function cli(argv: string[]): Promise<void> {
  const [cmd, ...rest] = argv;
  if (cmd === 'status') return status(rest);
  if (cmd === 'demo') {
    // The lab is a workspace package of the repository, not part of the image.
    const lab = await import('@edgemesh/lab/demo').catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'ERR_MODULE_NOT_FOUND') throw e;
      process.stderr.write('edgemesh demo: the lab package (packages/lab) is not installed here; run it from a checkout after npm ci\n');
      process.exit(2);
    });
    process.exit(await lab.demo(rest));
  }
  if (cmd === '--help' || cmd === '-h' || cmd === 'help') {
    process.stdout.write(USAGE);
    return;
  }
  process.stderr.write(`edgemesh: ${cmd ? `unknown command ${cmd}` : 'missing command'}\n${USAGE}`);
  process.exit(2);
}

async function status(args: string[]): Promise<void> {
  let admin = '127.0.0.1:10560';
  let json = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--json') json = true;
    else if (a === '--admin' && args[i + 1]) admin = args[++i];
    else if (a.startsWith('--admin=')) admin = a.slice(8);
    else {
      process.stderr.write(`edgemesh status: unknown argument ${a}\n${USAGE}`);
      process.exit(2);
    }
  }
  const hp = parseHostPort(admin, false);
  if (!hp) {
    process.stderr.write(`edgemesh status: --admin: expected HOST:PORT, got ${admin}\n`);
    process.exit(2);
  }
  const host = hp.host.includes(':') ? `[${hp.host}]` : hp.host;
  let body: string;
  try {
    const res = await fetch(`http://${host}:${hp.port}/status`, { signal: AbortSignal.timeout(STATUS_TIMEOUT_MS) });
    body = await res.text();
    if (!res.ok) throw new Error(`HTTP ${res.status}: ${body.trim()}`);
  } catch (e) {
    process.stderr.write(`edgemesh status: cannot reach the agent at ${admin}: ${(e as Error).message}\n`);
    process.exit(1);
  }
  if (json) {
    process.stdout.write(body.endsWith('\n') ? body : body + '\n');
    return;
  }
  let status: AgentStatus;
  try {
    status = JSON.parse(body) as AgentStatus;
  } catch {
    process.stderr.write(`edgemesh status: ${admin} did not answer /status with JSON (is it an edgemesh agent's admin port?)\n`);
    process.exit(1);
  }
  process.stdout.write(renderStatus(status));
}
