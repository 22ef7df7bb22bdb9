// `edgemesh` command: `status` asks a running agent's admin API; `fleet` asks a server's admin API for the whole
// fleet; `demo` runs the NAT lab demo.
import { readFileSync } from 'node:fs';
import { parseHostPort } from '@edgemesh/common/config';
import { FLEET_SCHEMA, type FleetView } from '@edgemesh/common/fleet/view';
import { renderStatus } from './admin/render.ts';
import { renderFleet } from './admin/fleet.ts';
import type { AgentStatus } from './main.ts';

const USAGE = 'usage: edgemesh status [--admin HOST:PORT] [--json]\n       edgemesh fleet [--server-admin HOST:PORT] [--json] [--token-file FILE]\n       edgemesh demo\n';
export const STATUS_TIMEOUT_MS = 5000;
/** The server's admin listener by default (server config admin.listen). */
export const DEFAULT_SERVER_ADMIN = '127.0.0.1:10561';

export async function cli(argv: string[]): Promise<void> {
  const [cmd, ...rest] = argv;
  if (cmd === 'status') return status(rest);
  if (cmd === 'fleet') return fleet(rest);
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

/** Why a fetch failed, in words (undici hides the errno in `cause`). */
function fetchError(e: unknown): string {
  const err = e as Error & { cause?: { code?: string; message?: string } };
  if (err.name === 'TimeoutError') return `no answer within ${STATUS_TIMEOUT_MS / 1000} s`;
  return err.cause?.code ?? err.cause?.message ?? err.message;
}

async function fleet(args: string[]): Promise<void> {
  let admin = DEFAULT_SERVER_ADMIN;
  let json = false;
  let tokenFile = '';
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--json') json = true;
    else if (a === '--token-file' && args[i + 1]) tokenFile = args[++i];
    else if (a.startsWith('--token-file=')) tokenFile = a.slice('--token-file='.length);
    else if (a === '--server-admin' && args[i + 1]) admin = args[++i];
    else if (a.startsWith('--server-admin=')) admin = a.slice('--server-admin='.length);
    else {
      process.stderr.write(`edgemesh fleet: unknown argument ${a}\n${USAGE}`);
      process.exit(2);
    }
  }
  const hp = parseHostPort(admin, false);
  if (!hp) {
    process.stderr.write(`edgemesh fleet: --server-admin: expected HOST:PORT, got ${admin}\n`);
    process.exit(2);
  }
  // The server's admin token (admin.tokenFile), needed when its admin listener is not loopback: the file wins over
  // env EDGEMESH_ADMIN_TOKEN; sent only as a bearer credential.
  let token = process.env.EDGEMESH_ADMIN_TOKEN?.trim() ?? '';
  if (tokenFile) {
    try {
      token = readFileSync(tokenFile, 'utf8').trim();
    } catch (e) {
      process.stderr.write(`edgemesh fleet: --token-file: cannot read ${tokenFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}\n`);
      process.exit(2);
    }
  }
  const host = hp.host.includes(':') ? `[${hp.host}]` : hp.host;
  let body: string;
  try {
    const res = await fetch(`http://${host}:${hp.port}/fleet`, { signal: AbortSignal.timeout(STATUS_TIMEOUT_MS), headers: token ? { authorization: `Bearer ${token}` } : {} });
    if (res.status === 401 || res.status === 403) {
      const why = res.status === 401 ? (token ? 'the admin token was refused' : 'it needs the admin token (--token-file FILE or env EDGEMESH_ADMIN_TOKEN)') : 'its admin listener is not loopback and it has no admin.tokenFile';
      process.stderr.write(`edgemesh fleet: ${admin} answered HTTP ${res.status}: ${why}\n`);
      process.exit(1);
    }
    body = await res.text();
    if (!res.ok) throw new Error(`HTTP ${res.status}: ${body.trim().slice(0, 200)}`);
  } catch (e) {
    process.stderr.write(`edgemesh fleet: cannot reach the edgemesh-server admin API at ${admin}: ${fetchError(e)} (the server's admin.listen; --server-admin HOST:PORT)\n`);
    process.exit(1);
  }
  let view: FleetView;
  try {
    view = JSON.parse(body) as FleetView;
  } catch {
    view = undefined as unknown as FleetView;
  }
  if (!view || typeof view !== 'object' || view.schema !== FLEET_SCHEMA) {
    process.stderr.write(`edgemesh fleet: ${admin} did not answer /fleet with a fleet view (schema ${FLEET_SCHEMA}); is it an edgemesh-server admin port of this version?\n`);
    process.exit(1);
  }
  process.stdout.write(json ? (body.endsWith('\n') ? body : body + '\n') : renderFleet(view));
  // Usable in a cron job or a CI smoke test: anything unhealthy (an error-severity warning) is exit 1.
  if (!view.healthy) process.exitCode = 1;
}
