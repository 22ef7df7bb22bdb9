// Config loading: YAML file -> zod schema -> typed config, with per-key flag (`--dns.listen X`) and env
// (`EDGEMESH_DNS_LISTEN=X`) overrides. Unknown keys are errors. Errors name the key path and the reason.
import { readFileSync } from 'node:fs';
import { isIP, isIPv4 } from 'node:net';
import { hostname } from 'node:os';
import { load as parseYaml } from 'js-yaml';
import { z } from 'zod';

export class ConfigError extends Error {
  readonly key: string;
  constructor(key: string, reason: string) {
    super(key ? `config: ${key}: ${reason}` : `config: ${reason}`);
    this.key = key;
  }
}

const hostPort = (defaultHostOk = true) =>
  z.string().refine((s) => parseHostPort(s, defaultHostOk) !== undefined, { message: 'expected HOST:PORT with a port 0-65535' });

export interface HostPort { host: string; port: number }

/** Parses `host:port`, `[v6]:port`. Returns undefined when malformed. */
export function parseHostPort(s: string, allowEmptyHost = true): HostPort | undefined {
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(s) ?? /^([^:]*):(\d{1,5})$/.exec(s);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port > 65535) return undefined;
  if (!allowEmptyHost && m[1] === '') return undefined;
  return { host: m[1], port };
}

const logSchema = z.strictObject({
  level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
}).prefault({});

const adminShape = (listen: string) => ({
  listen: hostPort().default(listen),
  /** Connections the admin listener holds at once (one source at most half); the oldest idle one makes room. */
  maxConnections: z.number().int().min(2).max(100_000).default(64),
});
const adminSchema = (listen: string) => z.strictObject(adminShape(listen)).prefault({});

const cidr = z.string().refine((s) => {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,2})$/.exec(s);
  return !!m && isIPv4(m[1]) && Number(m[2]) <= 32;
}, { message: 'expected an IPv4 CIDR such as 9.251.0.0/16' });
/** Parses an IPv4 or IPv6 CIDR (`10.244.0.0/16`, `fd00::/64`); undefined when malformed. */
export function parseCidr(s: string): { address: string; prefix: number; family: 4 | 6 } | undefined {
  const m = /^([^/\s]+)\/(\d{1,3})$/.exec(s);
  if (!m) return undefined;
  const family = isIP(m[1]);
  const prefix = Number(m[2]);
  if (family === 0 || prefix > (family === 4 ? 32 : 128)) return undefined;
  return { address: m[1], prefix, family: family as 4 | 6 };
}
const anyCidr = z.string().refine((s) => parseCidr(s) !== undefined, { message: 'expected an IPv4 or IPv6 CIDR such as 10.244.0.0/16 or fd00::/64' });
const caHash = z.string().refine((s) => s === '' || /^sha256:[0-9a-fA-F]{64}$/.test(s.trim()), { message: 'expected sha256:<64 hex digits> (SHA-256 of the CA\'s SubjectPublicKeyInfo)' });
const ipAddress = z.string().refine((s) => isIP(s) !== 0, { message: 'expected an IP address' });

export const agentSchema = z.strictObject({
  nodeName: z.string().default(''),
  stateDir: z.string().min(1).default('/var/lib/edgemesh'),
  cluster: z.strictObject({
    source: z.enum(['kubernetes', 'file']).default('kubernetes'),
    kubeconfig: z.string().default(''),
    manifestsDir: z.string().default(''),
  }).prefault({}),
  dns: z.strictObject({
    enabled: z.boolean().default(true),
    listen: hostPort(false).default('169.254.96.16:53'),
    domain: z.string().min(1).default('cluster.local'),
    upstream: z.array(z.string().min(1)).default([]),
    ttlSeconds: z.number().int().min(0).max(86400).default(30),
    /** Clients answered besides this node's addresses and its Node's spec.podCIDRs; everyone else gets REFUSED. */
    allowCIDRs: z.array(anyCidr).default([]),
    /** Response-rate limiting (BIND/unbound RRL) of identical UDP answers per client /24 (IPv4) or /56 (IPv6). */
    rrl: z.strictObject({
      responsesPerSecond: z.number().int().min(0).max(1_000_000).default(1000),
      slip: z.number().int().min(0).max(10).default(2),
      windowSeconds: z.number().int().min(1).max(3600).default(5),
    }).prefault({}),
    tcp: z.strictObject({
      maxConnections: z.number().int().min(1).max(100_000).default(256),
      maxPerSource: z.number().int().min(1).max(100_000).default(16),
    }).prefault({}),
  }).prefault({}),
  proxy: z.strictObject({
    ipMode: z.enum(['clusterIP', 'fake']).default('clusterIP'),
    fakeCIDR: cidr.default('9.251.0.0/16'),
    intercept: z.enum(['iptables', 'none']).default('iptables'),
    bindAddress: ipAddress.default('169.254.96.16'),
    /** Endpoint IPs in these ranges are dialed directly from any node (a flat pod network), not through the tunnel. */
    directCIDRs: z.array(anyCidr).default([]),
    /** true: nodePorts (NodePort/LoadBalancer), externalIPs and load-balancer IPs are intercepted too. */
    nodePorts: z.boolean().default(false),
  }).prefault({}),
  routing: z.strictObject({
    groupLabels: z.array(z.string().min(1)).default(['apps.kubeedge.io/belonging-to', 'apps.openyurt.io/nodepool', 'topology.kubernetes.io/zone']),
    default: z.enum(['prefer', 'strict', 'cluster']).default('prefer'),
  }).prefault({}),
  tunnel: z.strictObject({
    enabled: z.boolean().default(true),
    servers: z.array(hostPort(false)).default(['relay.example.com:20004']),
    listenPort: z.number().int().min(0).max(65535).default(20006),
    tokenFile: z.string().default('/etc/edgemesh/token'),
    /** One-time join token bound to this node name (`edgemesh-server token create`); used at first enrollment. */
    joinTokenFile: z.string().default(''),
    /** Projected ServiceAccount token (audience edgemesh) for Kubernetes enrollment; empty = not used. */
    serviceAccountTokenFile: z.string().default(''),
    /** PEM of the cluster CA. */
    caFile: z.string().default(''),
    /** Alternative to caFile: sha256:<hex> of the CA's SubjectPublicKeyInfo (kubeadm style). */
    caHash: caHash.default(''),
    /** Budgets against hostile peers (agent tunnel/limits.ts has the reasons for the defaults). */
    limits: z.strictObject({
      /** Streams peers opened to this node served at once, all peers together (each holds a local socket). */
      servedStreams: z.number().int().min(1).max(1_000_000).default(8192),
      servedStreamsPerPeer: z.number().int().min(1).max(1_000_000).default(2048),
      /** UDP sockets held for served UDP streams (one per flow), all peers together and per peer. */
      servedUdpSockets: z.number().int().min(1).max(1_000_000).default(4096),
      servedUdpSocketsPerPeer: z.number().int().min(1).max(1_000_000).default(1024),
      /** Links to one peer at once (relay links per server, the direct one, spares while a session moves). */
      linksPerPeer: z.number().int().min(2).max(256).default(8),
      /** Hole-punch attempts under way at once, all peers together. */
      punchSessions: z.number().int().min(1).max(100_000).default(64),
    }).prefault({}),
  }).prefault({}),
  /** SOCKS5 (RFC 1928 CONNECT) into the mesh: `<nodeName>:<port>` (node access) or a Service name/IP. */
  socks5: z.strictObject({
    enabled: z.boolean().default(false),
    listen: hostPort(false).default('127.0.0.1:10800'),
    /** RFC 1929 username/password: a file of `user:password` lines (e.g. a mounted Secret); empty = no authentication. */
    usersFile: z.string().default(''),
    maxConnections: z.number().int().min(1).max(100_000).default(1024),
    maxPerSource: z.number().int().min(1).max(100_000).default(256),
  }).prefault({}),
  /** Which of this node's own host ports peers may reach through the tunnel (SOCKS5 `<thisNode>:<port>`), and who. */
  nodeAccess: z.strictObject({
    allowedPorts: z.array(z.number().int().min(1).max(65535)).default([]),
    /** Callers admitted by group (their Node's group here); with allowedNodes empty too: any enrolled cluster node. */
    allowedGroups: z.array(z.string().min(1)).default([]),
    allowedNodes: z.array(z.string().min(1)).default([]),
  }).prefault({}),
  /** Ingress gateway: serves Istio Gateway + VirtualService from this node's addresses. */
  gateway: z.strictObject({
    enabled: z.boolean().default(false),
    /** Addresses the Gateway ports listen on; empty = this node's Node status.addresses that are local to the host. */
    addresses: z.array(ipAddress).default([]),
    /** Connections per listener (port) in total and per source address. */
    maxConnections: z.number().int().min(1).max(100_000).default(4096),
    maxPerSource: z.number().int().min(1).max(100_000).default(256),
  }).prefault({}),
  /** A stopping agent (takeover or SIGTERM) lets in-flight connections finish for up to this long. */
  shutdownDrainSeconds: z.number().int().min(0).max(3600).default(30),
  admin: adminSchema('127.0.0.1:10560'),
  log: logSchema,
}).superRefine((c, ctx) => {
  if (c.cluster.source === 'file' && !c.cluster.manifestsDir) {
    ctx.addIssue({ code: 'custom', path: ['cluster', 'manifestsDir'], message: 'required when cluster.source is file' });
  }
  if (c.tunnel.caFile && c.tunnel.caHash) ctx.addIssue({ code: 'custom', path: ['tunnel', 'caHash'], message: 'set tunnel.caFile or tunnel.caHash, not both' });
});

export const serverSchema = z.strictObject({
  listen: hostPort().default('0.0.0.0:20004'),
  stunAltPort: z.number().int().min(0).max(65535).default(20005),
  /** CA (ca.crt, ca.key unless caFile/caKeyFile are given), enrolled-node registry, join tokens. 0700, files 0600. */
  stateDir: z.string().min(1).default('/var/lib/edgemesh-server'),
  /** Bootstrap token; only read when enrollment.bootstrapToken is true. */
  tokenFile: z.string().default('/etc/edgemesh/token'),
  /** A CA given to the server (e.g. a Kubernetes Secret): both files, or neither (then `<stateDir>/ca.crt|ca.key`). */
  caFile: z.string().default(''),
  caKeyFile: z.string().default(''),
  /** Which Nodes exist: names that are not Nodes cannot enroll. Same keys as the agent's, plus `none`. */
  cluster: z.strictObject({
    source: z.enum(['none', 'kubernetes', 'file']).default('none'),
    kubeconfig: z.string().default(''),
    manifestsDir: z.string().default(''),
  }).prefault({}),
  enrollment: z.strictObject({
    /** false: only join tokens and Kubernetes service-account tokens enroll nodes. */
    bootstrapToken: z.boolean().default(true),
    /**
     * ServiceAccounts (`namespace/name`) whose projected tokens (audience edgemesh) may enroll the node they run on,
     * checked with a TokenReview; empty = Kubernetes enrollment off. Needs cluster.source kubernetes.
     */
    serviceAccounts: z.array(z.string().regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?\/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$/, 'expected namespace/name')).default([]),
  }).prefault({}),
  /** Per-agent relay byte rate limit in bytes/s (what one agent may push through the relay); 0 = unlimited. */
  relayRateLimit: z.number().int().min(0).default(0),
  /** On SIGTERM /readyz fails this long before agents are told to move (the Service stops sending new ones first). */
  shutdownUnreadySeconds: z.number().int().min(0).max(60).default(5),
  /** After telling its agents to move (DRAIN), a stopping server waits up to this long for them to leave. */
  shutdownDrainSeconds: z.number().int().min(0).max(3600).default(30),
  /** Budgets against hostile agents and strangers (packages/server/src/limits.ts has the reasons for the defaults). */
  limits: z.strictObject({
    /** Relay streams one node may open to one other node. */
    relayStreamsPerPair: z.number().int().min(1).max(4096).default(16),
    /** Relay streams one node may be the target of, from all openers. */
    relayStreamsPerTarget: z.number().int().min(1).max(1_000_000).default(1024),
    /** Relay streams through this server. */
    relayStreams: z.number().int().min(1).max(10_000_000).default(32_768),
    /** Relay streams one opener holds that their target has not answered yet. */
    pendingOpensPerNode: z.number().int().min(1).max(100_000).default(64),
    /** Connections that have not finished the handshake, per source address (IPv6: /64) and in total. */
    unauthConnectionsPerSource: z.number().int().min(1).max(1_000_000).default(128),
    unauthConnections: z.number().int().min(1).max(1_000_000).default(1024),
    /** Bytes held in incomplete frames of all connections together. */
    partialFrameBytes: z.number().int().min(1024 * 1024).max(2 ** 40).default(64 * 1024 * 1024),
  }).prefault({}),
  /**
   * The other servers of this cluster (server mesh, packages/server/src/mesh): relay and rendezvous between agents on
   * different servers are forwarded server to server. `peers`: host:port of each; `dns`: a name (the chart's headless
   * Service) whose A/AAAA records are the other servers (port = our listen port; our own addresses are skipped).
   * Every server of one mesh needs the same cluster CA (caFile/caKeyFile, or one stateDir's CA copied).
   */
  mesh: z.strictObject({
    peers: z.array(hostPort(false)).max(256).default([]),
    dns: z.string().max(253).regex(/^$|^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/, 'expected a DNS name').default(''),
  }).prefault({}),
  admin: z.strictObject({
    ...adminShape('127.0.0.1:10561'),
    /** Bearer token for /status, /fleet and /ui when admin.listen is not loopback (read at start, ≥ 128 bits); empty
     *  = those routes are refused there (403). /healthz, /readyz and /metrics stay open. */
    tokenFile: z.string().default(''),
  }).prefault({}),
  log: logSchema,
}).superRefine((c, ctx) => {
  if (c.cluster.source === 'file' && !c.cluster.manifestsDir) {
    ctx.addIssue({ code: 'custom', path: ['cluster', 'manifestsDir'], message: 'required when cluster.source is file' });
  }
  c.mesh.peers.forEach((p, i) => {
    if (parseHostPort(p)?.port === 0) ctx.addIssue({ code: 'custom', path: ['mesh', 'peers', i], message: 'a mesh peer needs a port (1-65535)' });
  });
  if (!!c.caFile !== !!c.caKeyFile) ctx.addIssue({ code: 'custom', path: [c.caFile ? 'caKeyFile' : 'caFile'], message: 'caFile and caKeyFile go together (or neither: the CA in stateDir)' });
  if (c.enrollment.serviceAccounts.length && c.cluster.source !== 'kubernetes') {
    ctx.addIssue({ code: 'custom', path: ['enrollment', 'serviceAccounts'], message: 'Kubernetes enrollment needs cluster.source kubernetes (the TokenReview goes to that API server)' });
  }
});

export type AgentConfig = z.infer<typeof agentSchema>;
export type ServerConfig = z.infer<typeof serverSchema>;

/** Env var names for special keys; every other key is EDGEMESH_<PATH> with dots and camelCase as underscores. */
const SPECIAL_ENV: Record<string, string> = { nodeName: 'NODE_NAME' };

export function envName(path: string): string {
  return SPECIAL_ENV[path] ?? 'EDGEMESH_' + path.replace(/([a-z0-9])([A-Z])/g, '$1_$2').replace(/\./g, '_').toUpperCase();
}

type Leaf = { path: string; kind: 'string' | 'number' | 'boolean' | 'array' | 'enum'; values?: readonly string[] };

/** Lists the leaf keys of a schema (walks zod objects through default/prefault/pipe wrappers). */
export function schemaLeaves(schema: z.ZodType, prefix = ''): Leaf[] {
  const inner = unwrap(schema);
  if (inner instanceof z.ZodObject) {
    return Object.entries(inner.shape as Record<string, z.ZodType>).flatMap(([k, v]) => schemaLeaves(v, prefix ? `${prefix}.${k}` : k));
  }
  if (inner instanceof z.ZodArray) return [{ path: prefix, kind: 'array' }];
  if (inner instanceof z.ZodNumber) return [{ path: prefix, kind: 'number' }];
  if (inner instanceof z.ZodBoolean) return [{ path: prefix, kind: 'boolean' }];
  if (inner instanceof z.ZodEnum) return [{ path: prefix, kind: 'enum', values: inner.options as string[] }];
  return [{ path: prefix, kind: 'string' }];
}

function unwrap(s: z.ZodType): z.ZodType {
  let cur: z.ZodType = s;
  for (let i = 0; i < 10; i++) {
    const def = (cur as unknown as { _zod: { def: { type: string; innerType?: z.ZodType; in?: z.ZodType } } })._zod.def;
    if (def.innerType) cur = def.innerType;
    else if (def.type === 'pipe' && def.in) cur = def.in;
    else break;
  }
  return cur;
}

function coerce(leaf: Leaf, raw: string, source: string): unknown {
  switch (leaf.kind) {
    case 'number': {
      const n = Number(raw);
      if (raw.trim() === '' || !Number.isFinite(n)) throw new ConfigError(leaf.path, `${source}: expected a number, got ${JSON.stringify(raw)}`);
      return n;
    }
    case 'boolean':
      if (raw === 'true' || raw === '1') return true;
      if (raw === 'false' || raw === '0') return false;
      throw new ConfigError(leaf.path, `${source}: expected true or false, got ${JSON.stringify(raw)}`);
    case 'array':
      return raw.trim() === '' ? [] : raw.split(',').map((s) => s.trim());
    default:
      return raw;
  }
}

function setPath(obj: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split('.');
  let cur = obj;
  for (const p of parts.slice(0, -1)) {
    const next = cur[p];
    if (next === undefined || next === null) cur[p] = {};
    else if (typeof next !== 'object' || Array.isArray(next)) throw new ConfigError(path, `${p} is not a mapping in the config file`);
    cur = cur[p] as Record<string, unknown>;
  }
  cur[parts[parts.length - 1]] = value;
}

export interface ParsedArgs {
  config?: string;
  help: boolean;
  version: boolean;
  overrides: Map<string, string>;
  positional: string[];
}

/** Parses `--config F`, `--help`, `--version`, `--a.b value` / `--a.b=value`; validates keys against the schema. */
export function parseArgs(argv: readonly string[], schema: z.ZodType): ParsedArgs {
  const leaves = new Map(schemaLeaves(schema).map((l) => [l.path, l]));
  const out: ParsedArgs = { help: false, version: false, overrides: new Map(), positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') { out.help = true; continue; }
    if (a === '--version' || a === '-v') { out.version = true; continue; }
    if (!a.startsWith('--')) { out.positional.push(a); continue; }
    const eq = a.indexOf('=');
    const key = eq >= 0 ? a.slice(2, eq) : a.slice(2);
    let value: string | undefined = eq >= 0 ? a.slice(eq + 1) : undefined;
    if (value === undefined) {
      const leaf = leaves.get(key);
      const nxt = argv[i + 1];
      if (leaf?.kind === 'boolean' && (nxt === undefined || nxt.startsWith('--'))) value = 'true';
      else {
        if (nxt === undefined) throw new ConfigError(key, `flag --${key} needs a value`);
        value = nxt;
        i++;
      }
    }
    if (key === 'config') { out.config = value; continue; }
    if (!leaves.has(key)) throw new ConfigError(key, `unknown flag --${key} (see --help)`);
    out.overrides.set(key, value);
  }
  return out;
}

export function helpText(cmd: string, schema: z.ZodType): string {
  const defaults = schema.parse({}) as Record<string, unknown>;
  const lines = [`usage: ${cmd} --config FILE [--KEY VALUE ...]`, '', 'Every config key can be set by a flag or an env var (flag wins, then env, then file):', ''];
  for (const l of schemaLeaves(schema)) {
    const def = l.path.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown>)?.[k], defaults);
    const kind = l.kind === 'enum' ? l.values!.join('|') : l.kind;
    lines.push(`  --${l.path.padEnd(24)} ${envName(l.path).padEnd(30)} ${kind.padEnd(22)} default ${JSON.stringify(def)}`);
  }
  lines.push('', '  --config FILE   YAML config file (keys as above; unknown keys are an error)', '  --help, --version');
  return lines.join('\n');
}

function formatIssue(issue: z.core.$ZodIssue): ConfigError {
  const key = issue.path.map(String).join('.');
  let reason = issue.message;
  if (issue.code === 'unrecognized_keys') {
    const keys = (issue as { keys: string[] }).keys;
    return new ConfigError(keys.map((k) => (key ? `${key}.${k}` : k)).join(', '), `unknown key${keys.length > 1 ? 's' : ''}`);
  }
  if (issue.code === 'invalid_value' && 'values' in issue) reason = `must be one of ${(issue.values as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
  return new ConfigError(key, reason);
}

export interface LoadOptions {
  file?: string;
  text?: string;
  overrides?: Map<string, string>;
  env?: NodeJS.ProcessEnv;
}

/** Loads and validates a config. Throws ConfigError naming the key and the reason. */
export function loadConfig<S extends z.ZodType>(schema: S, opts: LoadOptions): z.infer<S> {
  let text = opts.text;
  if (opts.file !== undefined) {
    try {
      text = readFileSync(opts.file, 'utf8');
    } catch (e) {
      throw new ConfigError('', `cannot read ${opts.file}: ${(e as Error).message}`);
    }
  }
  let raw: unknown = {};
  if (text !== undefined && text.trim() !== '') {
    try {
      raw = parseYaml(text);
    } catch (e) {
      throw new ConfigError('', `${opts.file ?? 'config'} is not valid YAML: ${(e as Error).message.split('\n')[0]}`);
    }
    if (raw === null || raw === undefined) raw = {};
    if (typeof raw !== 'object' || Array.isArray(raw)) throw new ConfigError('', 'the config file must be a YAML mapping');
  }
  const obj = dropNulls(raw as Record<string, unknown>);
  const env = opts.env ?? {};
  for (const leaf of schemaLeaves(schema)) {
    const name = envName(leaf.path);
    const v = env[name];
    if (v !== undefined && v !== '') setPath(obj, leaf.path, coerce(leaf, v, `env ${name}`));
    const flag = opts.overrides?.get(leaf.path);
    if (flag !== undefined) setPath(obj, leaf.path, coerce(leaf, flag, `flag --${leaf.path}`));
  }
  const res = schema.safeParse(obj);
  if (!res.success) throw formatIssue(res.error.issues[0]);
  return res.data;
}

/** `key:` with nothing after it is YAML null: treat it as "not set" (the default), also for whole sections. */
function dropNulls(o: Record<string, unknown>): Record<string, unknown> {
  for (const [k, v] of Object.entries(o)) {
    if (v === null) delete o[k];
    else if (typeof v === 'object' && !Array.isArray(v)) dropNulls(v as Record<string, unknown>);
  }
  return o;
}

/** Agent config with environment-derived defaults applied (nodeName from NODE_NAME, then hostname). */
export function loadAgentConfig(opts: LoadOptions): AgentConfig {
  const cfg = loadConfig(agentSchema, opts);
  if (!cfg.nodeName) cfg.nodeName = hostname();
  return cfg;
}

export function loadServerConfig(opts: LoadOptions): ServerConfig {
  return loadConfig(serverSchema, opts);
}

/** Reads the shared cluster token: env EDGEMESH_TOKEN wins over the token file. Never logs it. */
export function readToken(tokenFile: string, key = 'tunnel.tokenFile', env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.EDGEMESH_TOKEN;
  if (fromEnv) return checkToken(fromEnv.trim(), 'env EDGEMESH_TOKEN', key);
  let text: string;
  try {
    text = readFileSync(tokenFile, 'utf8');
  } catch (e) {
    throw new ConfigError(key, `cannot read ${tokenFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message} (set EDGEMESH_TOKEN or create the file)`);
  }
  return checkToken(text.trim(), tokenFile, key);
}

/** A token from a file only (no environment override), at least MIN_TOKEN_BITS; a ConfigError naming `key` if not. */
export function readTokenFile(file: string, key: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(key, `cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return checkToken(text.trim(), file, key);
}

/** Tokens must carry at least this much entropy (a guess is then hopeless, online or offline). */
export const MIN_TOKEN_BITS = 128;

/** Alphabets a generated token is drawn from, smallest first (hex, alphanumerics, base64/base64url, printable ASCII). */
const TOKEN_ALPHABETS: readonly { re: RegExp; size: number }[] = [
  { re: /^[0-9a-f]+$/, size: 16 },
  { re: /^[0-9A-F]+$/, size: 16 },
  { re: /^[0-9A-Za-z]+$/, size: 62 },
  { re: /^[0-9A-Za-z+/=_-]+$/, size: 64 },
  { re: /^[\x21-\x7e]+$/, size: 94 },
];
/** A token using fewer distinct characters than this is patterned, not random: counted as that small an alphabet. */
const MIN_DISTINCT_CHARS = 8;

/**
 * Entropy a token would have if each character were drawn at random from the smallest usual alphabet containing it
 * (hex 4 bits a character, alphanumerics 5.95, base64 6, printable ASCII 6.55), capped by its distinct characters
 * when it uses very few ("aaaa…"). An upper bound: it cannot see that "correct-horse-…" is words, so tokens should
 * come from a generator (`openssl rand -hex 32`, the chart, `edgemesh-server token create`).
 */
export function estimateTokenBits(t: string): number {
  if (t.length === 0) return 0;
  const alphabet = TOKEN_ALPHABETS.find((a) => a.re.test(t))?.size ?? 256;
  const distinct = new Set(t).size;
  const size = distinct < MIN_DISTINCT_CHARS ? Math.min(alphabet, Math.max(distinct, 2)) : alphabet;
  return Math.floor(t.length * Math.log2(size));
}

function checkToken(t: string, where: string, key: string): string {
  const bits = estimateTokenBits(t);
  if (bits < MIN_TOKEN_BITS) throw new ConfigError(key, `token from ${where} has about ${bits} bits of entropy; at least ${MIN_TOKEN_BITS} are required (e.g. 32 hex digits from \`openssl rand -hex 32\`)`);
  return t;
}
