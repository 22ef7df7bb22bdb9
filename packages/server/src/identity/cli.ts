// `edgemesh-server token create|list` and `edgemesh-server node list|revoke|reset`: they work on the server's
// stateDir (from the same --config), also while the server runs: the running server reads a join token's file when
// it is presented and polls the revocations (registry.ts, jointokens.ts).
import { ConfigError, loadServerConfig, parseArgs, serverSchema, type ServerConfig } from '@edgemesh/common/config';
import { ensureStateDir } from '@edgemesh/common/fsutil';
import { isNodeName } from '@edgemesh/common/identity/names';
import { DEFAULT_JOIN_TOKEN_TTL_MS, JoinTokenStore, MAX_JOIN_TOKEN_TTL_MS, parseDuration } from './jointokens.ts';
import { keyFingerprint, NodeRegistry, REVOCATION_POLL_MS } from './registry.ts';

export const IDENTITY_COMMANDS = ['token', 'node'];

export const IDENTITY_USAGE = `usage:
  edgemesh-server token create --config FILE --node NAME [--ttl DURATION]   print a one-time join token for NAME (default ttl 24h, at most 30d)
  edgemesh-server token list   --config FILE [--json]                      join tokens not used yet (ids, never the tokens)
  edgemesh-server node list    --config FILE [--json]                      enrolled nodes: name, key fingerprint, method, revoked keys
  edgemesh-server node revoke NAME --config FILE                           revoke NAME's key: refused by the server and, once pushed, by every agent
  edgemesh-server node reset NAME --config FILE                            forget NAME's pinned key, so a replacement can enroll (revocations stay)
`;

export interface CliIo {
  out(s: string): void;
  err(s: string): void;
  env: NodeJS.ProcessEnv;
  now(): number;
}

class UsageError extends Error {}

/** Runs an identity subcommand; returns the exit code (0 done, 1 failed, 2 bad usage or config). */
export function runIdentityCli(argv: readonly string[], io: CliIo): number {
  try {
    return run(argv, io);
  } catch (e) {
    if (e instanceof ConfigError || e instanceof UsageError) {
      io.err(`${e.message}\n`);
      if (e instanceof UsageError) io.err(IDENTITY_USAGE);
      return 2;
    }
    io.err(`edgemesh-server: ${(e as Error).message}\n`);
    return 1;
  }
}

function run(argv: readonly string[], io: CliIo): number {
  const [cmd, sub, ...rest] = argv;
  const own = new Map<string, string | true>();
  const pass: string[] = [];
  const positional: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (a === '--json') own.set('json', true);
    else if (a === '--node' || a === '--ttl') {
      if (rest[i + 1] === undefined) throw new UsageError(`${a} needs a value`);
      own.set(a.slice(2), rest[++i]);
    } else if (a.startsWith('--node=') || a.startsWith('--ttl=')) own.set(a.slice(2, a.indexOf('=')), a.slice(a.indexOf('=') + 1));
    else if (a.startsWith('--')) {
      pass.push(a);
      if (!a.includes('=') && rest[i + 1] !== undefined && !rest[i + 1].startsWith('--')) pass.push(rest[++i]);
    } else positional.push(a);
  }
  const args = parseArgs(pass, serverSchema);
  if (args.help) {
    io.out(IDENTITY_USAGE);
    return 0;
  }
  if (!args.config) throw new UsageError(`edgemesh-server ${cmd} ${sub ?? ''}: --config FILE is required (the server's config: its stateDir holds the registry)`);
  const cfg: ServerConfig = loadServerConfig({ file: args.config, overrides: args.overrides, env: io.env });
  const json = own.has('json');
  if (cmd === 'token' && sub === 'create') {
    const node = own.get('node');
    if (typeof node !== 'string' || !isNodeName(node)) throw new UsageError('token create: --node NAME is required (a Kubernetes node name)');
    const ttlText = own.get('ttl');
    const ttl = ttlText === undefined ? DEFAULT_JOIN_TOKEN_TTL_MS : parseDuration(String(ttlText));
    if (ttl === undefined || ttl <= 0 || ttl > MAX_JOIN_TOKEN_TTL_MS) throw new UsageError(`token create: --ttl must be a duration such as 30m, 1h, 7d (at most ${MAX_JOIN_TOKEN_TTL_MS / 86_400_000}d)`);
    ensureStateDir(cfg.stateDir);
    const registry = new NodeRegistry(cfg.stateDir);
    const pin = registry.readPin(node);
    const store = new JoinTokenStore(cfg.stateDir);
    store.sweep(io.now());
    const { token, record } = store.create(node, ttl, io.now());
    io.out(token + '\n');
    io.err(`join token ${record.id} for node ${node}, valid until ${new Date(record.expiresAt).toISOString()}, works once: put it in that node's tunnel.joinTokenFile\n`);
    if (pin) io.err(`warning: ${node} is already enrolled (key ${keyFingerprint(pin.key)}): the token is refused for any other key until \`edgemesh-server node reset ${node}\`\n`);
    return 0;
  }
  if (cmd === 'token' && sub === 'list') {
    const list = new JoinTokenStore(cfg.stateDir).list().map((r) => ({ id: r.id, node: r.node, createdAt: new Date(r.createdAt).toISOString(), expiresAt: new Date(r.expiresAt).toISOString(), expired: r.expiresAt < io.now() }));
    if (json) io.out(JSON.stringify(list, null, 2) + '\n');
    else io.out(table(['ID', 'NODE', 'CREATED', 'EXPIRES'], list.map((t) => [t.id, t.node, t.createdAt, t.expired ? `${t.expiresAt} (expired)` : t.expiresAt])));
    return 0;
  }
  if (cmd === 'node' && sub === 'list') {
    const registry = new NodeRegistry(cfg.stateDir);
    const revoked = registry.revocations();
    const pins = registry.pins();
    const names = [...new Set([...pins.map((p) => p.name), ...revoked.entries().map((e) => e.name)])].sort();
    const rows = names.map((name) => {
      const pin = pins.find((p) => p.name === name);
      const keys = revoked.entries().filter((e) => e.name === name);
      return {
        name, key: pin ? keyFingerprint(pin.key) : '', method: pin?.method ?? '', enrolledAt: pin ? new Date(pin.enrolledAt).toISOString() : '',
        status: !pin ? 'not enrolled' : revoked.isRevoked({ publicKey: Buffer.from(pin.key, 'base64') }) ? 'revoked' : 'enrolled',
        revokedKeys: keys.map((k) => ({ key: keyFingerprint(k.key), revokedAt: new Date(k.revokedAt).toISOString() })),
      };
    });
    if (json) io.out(JSON.stringify(rows, null, 2) + '\n');
    else io.out(table(['NODE', 'STATUS', 'KEY', 'METHOD', 'ENROLLED', 'REVOKED KEYS'], rows.map((r) => [r.name, r.status, r.key, r.method, r.enrolledAt, r.revokedKeys.map((k) => k.key).join(',')])));
    return 0;
  }
  if (cmd === 'node' && (sub === 'revoke' || sub === 'reset')) {
    const name = positional[0];
    if (!name || !isNodeName(name) || positional.length > 1) throw new UsageError(`node ${sub}: exactly one node NAME`);
    ensureStateDir(cfg.stateDir);
    const registry = new NodeRegistry(cfg.stateDir);
    const pin = registry.readPin(name);
    if (sub === 'revoke') {
      if (!pin) {
        io.err(`${name} is not enrolled: there is no key to revoke (\`node list\` shows enrolled nodes and revoked keys)\n`);
        return 1;
      }
      const e = registry.revoke(name, pin.key, io.now());
      io.out(`revoked ${name} key ${keyFingerprint(pin.key)} (at ${new Date(e.revokedAt).toISOString()}); running servers pick it up within ${REVOCATION_POLL_MS / 1000} s.\n`
        + `The name stays pinned to the revoked key. For a replacement: \`edgemesh-server node reset ${name}\`, then \`edgemesh-server token create --node ${name}\` (the bootstrap token cannot re-enroll a name with a revoked key).\n`);
      return 0;
    }
    if (!registry.removePin(name)) {
      io.err(`${name} is not enrolled: nothing to reset\n`);
      return 1;
    }
    io.out(`reset ${name}: its pinned key ${keyFingerprint(pin!.key)} is forgotten; the next enrollment of ${name} pins a new key${registry.revocations().hasName(name) ? ' (a join token or Kubernetes: the name has a revoked key)' : ''}.\n`
      + (pin && !registry.revocations().isRevoked({ publicKey: Buffer.from(pin.key, 'base64') }) ? `Note: the old key was not revoked; its current certificate stays valid until it expires. Revoke first if the machine is lost.\n` : ''));
    return 0;
  }
  throw new UsageError(`unknown command: edgemesh-server ${[cmd, sub].filter(Boolean).join(' ')}`);
}

function table(head: string[], rows: string[][]): string {
  if (!rows.length) return '(none)\n';
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  return [head, ...rows].map((r) => r.map((c, i) => c.padEnd(w[i])).join('  ').trimEnd()).join('\n') + '\n';
}
