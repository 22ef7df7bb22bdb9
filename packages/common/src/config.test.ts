import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { agentSchema, ConfigError, envName, estimateTokenBits, helpText, loadAgentConfig, loadServerConfig, parseArgs, readToken } from './config.ts';

/** Loads an agent config from YAML text, flags (argv) and env; returns the error message when it fails. */
function load(text: string, argv: string[] = [], env: NodeJS.ProcessEnv = {}) {
  const args = parseArgs(argv, agentSchema);
  return loadAgentConfig({ text, overrides: args.overrides, env });
}
function err(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ConfigError, `expected a ConfigError, got ${String(e)}`);
    return e;
  }
  assert.fail('expected an error');
}

test('agent defaults are exactly those of INTERFACE.md', () => {
  const c = load('');
  assert.deepEqual({ ...c, nodeName: 'x' }, {
    nodeName: 'x',
    stateDir: '/var/lib/edgemesh',
    cluster: { source: 'kubernetes', kubeconfig: '', manifestsDir: '' },
    dns: {
      enabled: true, listen: '169.254.96.16:53', domain: 'cluster.local', upstream: [], ttlSeconds: 30, allowCIDRs: [],
      rrl: { responsesPerSecond: 1000, slip: 2, windowSeconds: 5 }, tcp: { maxConnections: 256, maxPerSource: 16 },
    },
    proxy: { ipMode: 'clusterIP', fakeCIDR: '9.251.0.0/16', intercept: 'iptables', bindAddress: '169.254.96.16', directCIDRs: [], nodePorts: false },
    routing: { groupLabels: ['apps.kubeedge.io/belonging-to', 'apps.openyurt.io/nodepool', 'topology.kubernetes.io/zone'], default: 'prefer' },
    tunnel: { enabled: true, servers: ['relay.example.com:20004'], listenPort: 20006, tokenFile: '/etc/edgemesh/token', joinTokenFile: '', serviceAccountTokenFile: '', caFile: '', caHash: '',
      // Not in INTERFACE.md: the agent's tunnel budgets (agent tunnel/limits.ts), additive.
      limits: { servedStreams: 8192, servedStreamsPerPeer: 2048, servedUdpSockets: 4096, servedUdpSocketsPerPeer: 1024, linksPerPeer: 8, punchSessions: 64 } },
    socks5: { enabled: false, listen: '127.0.0.1:10800', usersFile: '', maxConnections: 1024, maxPerSource: 256 },
    nodeAccess: { allowedPorts: [], allowedGroups: [], allowedNodes: [] },
    gateway: { enabled: false, addresses: [], maxConnections: 4096, maxPerSource: 256 },
    shutdownDrainSeconds: 30,
    admin: { listen: '127.0.0.1:10560', maxConnections: 64 },
    log: { level: 'info' },
  });
  assert.equal(c.nodeName, hostname(), 'nodeName falls back to the hostname');
  assert.equal(load('', [], { NODE_NAME: 'edge-env' }).nodeName, 'edge-env', 'then env NODE_NAME wins');
});

test('server defaults are exactly those of INTERFACE.md', () => {
  assert.deepEqual(loadServerConfig({ text: '' }), {
    listen: '0.0.0.0:20004', stunAltPort: 20005, stateDir: '/var/lib/edgemesh-server', tokenFile: '/etc/edgemesh/token', caFile: '', caKeyFile: '',
    cluster: { source: 'none', kubeconfig: '', manifestsDir: '' }, enrollment: { bootstrapToken: true, serviceAccounts: [] },
    relayRateLimit: 0,
    shutdownUnreadySeconds: 5,
    shutdownDrainSeconds: 30,
    limits: { relayStreamsPerPair: 16, relayStreamsPerTarget: 1024, relayStreams: 32_768, pendingOpensPerNode: 64, unauthConnectionsPerSource: 128, unauthConnections: 1024, partialFrameBytes: 64 * 1024 * 1024 },
    mesh: { peers: [], dns: '' },
    admin: { listen: '127.0.0.1:10561', maxConnections: 64, tokenFile: '' }, log: { level: 'info' },
  });
});

test('mesh.peers and mesh.dns: bad values name the key', () => {
  assert.deepEqual(loadServerConfig({ text: 'mesh:\n  peers: ["10.0.0.2:20004", "[fd00::2]:20004"]\n  dns: edgemesh-server-mesh.edgemesh.svc.cluster.local\n' }).mesh,
    { peers: ['10.0.0.2:20004', '[fd00::2]:20004'], dns: 'edgemesh-server-mesh.edgemesh.svc.cluster.local' });
  assert.match(err(() => loadServerConfig({ text: 'mesh:\n  peers: ["no-port"]\n' })).message, /^config: mesh\.peers\.0: /);
  assert.match(err(() => loadServerConfig({ text: 'mesh:\n  peers: [":20004"]\n' })).message, /^config: mesh\.peers\.0: /);
  assert.match(err(() => loadServerConfig({ text: 'mesh:\n  peers: ["10.0.0.2:0"]\n' })).message, /^config: mesh\.peers\.0: /);
  assert.match(err(() => loadServerConfig({ text: 'mesh:\n  dns: "bad name!"\n' })).message, /^config: mesh\.dns: /);
  assert.match(err(() => loadServerConfig({ text: 'mesh:\n  peer: []\n' })).message, /mesh/);
});

test('dns.allowCIDRs takes IPv4 and IPv6 CIDRs and names the bad entry; limits are bounded', () => {
  assert.deepEqual(load('dns:\n  allowCIDRs: [10.0.0.0/8, "fd00::/56"]\n').dns.allowCIDRs, ['10.0.0.0/8', 'fd00::/56']);
  assert.deepEqual(load('', [], { EDGEMESH_DNS_ALLOW_CIDRS: '10.1.0.0/16' }).dns.allowCIDRs, ['10.1.0.0/16']);
  assert.deepEqual(load('', ['--dns.allowCIDRs', '192.0.2.0/24,2001:db8::/32']).dns.allowCIDRs, ['192.0.2.0/24', '2001:db8::/32']);
  assert.match(err(() => load('dns:\n  allowCIDRs: [10.0.0.0/33]\n')).message, /^config: dns\.allowCIDRs\.0: expected an IPv4 or IPv6 CIDR/);
  assert.match(err(() => load('dns:\n  allowCIDRs: [fd00::/129]\n')).message, /dns\.allowCIDRs\.0/);
  assert.match(err(() => load('dns:\n  allowCIDRs: [example.com/8]\n')).message, /dns\.allowCIDRs\.0/);
  assert.equal(load('', ['--dns.rrl.responsesPerSecond', '0']).dns.rrl.responsesPerSecond, 0);
  assert.match(err(() => load('dns:\n  tcp:\n    maxConnections: 0\n')).message, /^config: dns\.tcp\.maxConnections:/);
  assert.match(err(() => load('admin:\n  maxConnections: 1\n')).message, /^config: admin\.maxConnections:/);
  assert.match(err(() => load('dns:\n  rrl:\n    burst: 3\n')).message, /dns\.rrl\.burst: unknown key/);
});

test('proxy.directCIDRs: a list of CIDRs from file, flag and env; a bad entry fails naming it', () => {
  assert.deepEqual(load('proxy:\n  directCIDRs: [10.244.0.0/16, "fd00:10::/64"]\n').proxy.directCIDRs, ['10.244.0.0/16', 'fd00:10::/64']);
  assert.deepEqual(load('', ['--proxy.directCIDRs', '10.1.0.0/16,10.2.0.0/16']).proxy.directCIDRs, ['10.1.0.0/16', '10.2.0.0/16']);
  assert.deepEqual(load('', [], { EDGEMESH_PROXY_DIRECT_CIDRS: '10.3.0.0/16' }).proxy.directCIDRs, ['10.3.0.0/16']);
  assert.match(err(() => load('proxy:\n  directCIDRs: [10.244.0.0]\n')).message, /^config: proxy\.directCIDRs\.0: expected an IPv4 or IPv6 CIDR/);
});

test('precedence: flag over env over file; every kind of value coerces', () => {
  const text = 'dns:\n  listen: 127.0.0.1:5300\n  ttlSeconds: 10\nrouting:\n  default: strict\n';
  assert.equal(load(text).dns.listen, '127.0.0.1:5300');
  const env = { EDGEMESH_DNS_LISTEN: '127.0.0.1:5301', EDGEMESH_DNS_TTL_SECONDS: '20', EDGEMESH_TUNNEL_ENABLED: 'false', EDGEMESH_ROUTING_GROUP_LABELS: 'a, b' };
  const viaEnv = load(text, [], env);
  assert.equal(viaEnv.dns.listen, '127.0.0.1:5301');
  assert.equal(viaEnv.dns.ttlSeconds, 20);
  assert.equal(viaEnv.tunnel.enabled, false);
  assert.deepEqual(viaEnv.routing.groupLabels, ['a', 'b']);
  const viaFlag = load(text, ['--dns.listen', '127.0.0.1:5302', '--dns.ttlSeconds=40', '--tunnel.enabled', '--routing.default', 'cluster', '--dns.enabled', 'false'], env);
  assert.equal(viaFlag.dns.listen, '127.0.0.1:5302');
  assert.equal(viaFlag.dns.ttlSeconds, 40);
  assert.equal(viaFlag.tunnel.enabled, true, 'a bare boolean flag means true');
  assert.equal(viaFlag.routing.default, 'cluster');
  assert.equal(viaFlag.dns.enabled, false);
  assert.equal(envName('cluster.manifestsDir'), 'EDGEMESH_CLUSTER_MANIFESTS_DIR');
  assert.equal(load('dns:\ncluster:\n').dns.enabled, true, 'an empty section means defaults');
  assert.equal(load('', ['--nodeName', 'n1'], { NODE_NAME: 'n0' }).nodeName, 'n1');
});

test('file source: manifestsDir is required, and a config file path works', () => {
  assert.equal(err(() => load('cluster:\n  source: file\n')).message, 'config: cluster.manifestsDir: required when cluster.source is file');
  const dir = mkdtempSync(join(tmpdir(), 'em-cfg-'));
  const f = join(dir, 'agent.yaml');
  writeFileSync(f, 'cluster:\n  source: file\n  manifestsDir: /srv/manifests\n');
  const c = loadAgentConfig({ file: f, env: { EDGEMESH_CLUSTER_MANIFESTS_DIR: '/other' } });
  assert.equal(c.cluster.source, 'file');
  assert.equal(c.cluster.manifestsDir, '/other');
});

test('error messages name the key and the reason', () => {
  const unknown = err(() => load('dns:\n  listen: 127.0.0.1:53\n  lisen: x\n'));
  assert.equal(unknown.key, 'dns.lisen');
  assert.equal(unknown.message, 'config: dns.lisen: unknown key');
  assert.equal(err(() => load('bogus: 1\n')).message, 'config: bogus: unknown key');

  const badEnum = err(() => load('proxy:\n  ipMode: magic\n'));
  assert.equal(badEnum.message, 'config: proxy.ipMode: must be one of "clusterIP", "fake"');
  assert.equal(err(() => load('', ['--cluster.source', 'etcd'])).message, 'config: cluster.source: must be one of "kubernetes", "file"');

  const badType = err(() => load('dns:\n  ttlSeconds: soon\n'));
  assert.equal(badType.key, 'dns.ttlSeconds');
  assert.match(badType.message, /expected number/);
  assert.match(err(() => load('tunnel:\n  enabled: "yes"\n')).message, /^config: tunnel\.enabled: .*expected boolean/);
  assert.equal(err(() => load('', [], { EDGEMESH_DNS_TTL_SECONDS: 'abc' })).message, 'config: dns.ttlSeconds: env EDGEMESH_DNS_TTL_SECONDS: expected a number, got "abc"');
  assert.equal(err(() => load('', ['--tunnel.enabled', 'maybe'])).message, 'config: tunnel.enabled: flag --tunnel.enabled: expected true or false, got "maybe"');
  assert.match(err(() => load('dns:\n  ttlSeconds: 100000\n')).message, /^config: dns\.ttlSeconds: /);

  assert.equal(err(() => load('admin:\n  listen: localhost\n')).message, 'config: admin.listen: expected HOST:PORT with a port 0-65535');
  assert.equal(err(() => load('', ['--dns.listen', ':53'])).message, 'config: dns.listen: expected HOST:PORT with a port 0-65535');
  assert.equal(err(() => load('tunnel:\n  servers: ["relay:99999"]\n')).key, 'tunnel.servers.0');
  assert.equal(err(() => load('proxy:\n  fakeCIDR: 300.1.0.0/16\n')).message, 'config: proxy.fakeCIDR: expected an IPv4 CIDR such as 9.251.0.0/16');
  assert.equal(err(() => load('proxy:\n  bindAddress: not-an-ip\n')).message, 'config: proxy.bindAddress: expected an IP address');

  assert.match(err(() => load('dns: [unclosed\n')).message, /^config: config is not valid YAML: /);
  assert.equal(err(() => load('- a\n- b\n')).message, 'config: the config file must be a YAML mapping');
  const missing = err(() => loadAgentConfig({ file: '/nonexistent/agent.yaml' }));
  assert.match(missing.message, /^config: cannot read \/nonexistent\/agent\.yaml: ENOENT/);

  assert.equal(err(() => parseArgs(['--dns.lissten', 'x'], agentSchema)).message, 'config: dns.lissten: unknown flag --dns.lissten (see --help)');
  assert.equal(err(() => parseArgs(['--dns.listen'], agentSchema)).message, 'config: dns.listen: flag --dns.listen needs a value');
});

test('help lists every key with its env var and default; --config/--help/--version parse', () => {
  const h = helpText('edgemesh-agent', agentSchema);
  assert.match(h, /--cluster\.manifestsDir\s+EDGEMESH_CLUSTER_MANIFESTS_DIR\s+string\s+default ""/);
  assert.match(h, /--nodeName\s+NODE_NAME/);
  const a = parseArgs(['--config', '/etc/a.yaml', '--help', '--version'], agentSchema);
  assert.equal(a.config, '/etc/a.yaml');
  assert.equal(a.help, true);
  assert.equal(a.version, true);
});

test('token: env wins over the file; short or missing tokens fail naming the key', () => {
  const dir = mkdtempSync(join(tmpdir(), 'em-tok-'));
  const f = join(dir, 'token');
  writeFileSync(f, 'file-token-0123456789abcdef\n');
  assert.equal(readToken(f, 'tunnel.tokenFile', {}), 'file-token-0123456789abcdef');
  assert.equal(readToken(f, 'tunnel.tokenFile', { EDGEMESH_TOKEN: 'env-token-0123456789abcdef' }), 'env-token-0123456789abcdef');
  assert.match(err(() => readToken(join(dir, 'none'), 'tunnel.tokenFile', {})).message, /^config: tunnel\.tokenFile: cannot read .*ENOENT/);
  assert.match(err(() => readToken(f, 'tokenFile', { EDGEMESH_TOKEN: 'short' })).message, /^config: tokenFile: token from env EDGEMESH_TOKEN has about \d+ bits of entropy; at least 128/);
});

test('token entropy: 128 bits at least, estimated from the alphabet; patterned tokens count as what they are', () => {
  assert.equal(estimateTokenBits('0123456789abcdef'.repeat(2)), 128, '32 hex digits');
  assert.ok(estimateTokenBits('0123456789abcde') < 128);
  assert.equal(estimateTokenBits('a'.repeat(64)), 64, 'one character repeated is no better than 1 bit each');
  assert.ok(estimateTokenBits('ab'.repeat(60)) < 128);
  assert.ok(estimateTokenBits(randomBytes(16).toString('base64url')) >= 128, '16 random bytes in base64url');
  assert.ok(estimateTokenBits(randomBytes(16).toString('hex')) >= 128, '16 random bytes in hex');
  assert.ok(estimateTokenBits('hunter2hunter2hunter2') < 128, 'the old 16-character minimum let this through');
  for (const weak of ['0123456789abcdef', 'correcthorse']) {
    assert.match(err(() => readToken('/nonexistent', 'tokenFile', { EDGEMESH_TOKEN: weak })).message, /^config: tokenFile: .*at least 128/);
  }
});

test('identity keys: caHash must be sha256:<64 hex>, not with caFile; server CA files go together; Kubernetes enrollment needs the kubernetes source', () => {
  assert.equal(load('tunnel:\n  caHash: sha256:' + 'ab'.repeat(32) + '\n').tunnel.caHash, 'sha256:' + 'ab'.repeat(32));
  assert.match(err(() => load('tunnel:\n  caHash: abc\n')).message, /^config: tunnel\.caHash: expected sha256/);
  assert.match(err(() => load('tunnel:\n  caFile: /ca.pem\n  caHash: sha256:' + 'ab'.repeat(32) + '\n')).message, /^config: tunnel\.caHash: set tunnel\.caFile or tunnel\.caHash, not both/);
  assert.match(err(() => loadServerConfig({ text: 'caFile: /ca.crt\n' })).message, /^config: caKeyFile: /);
  assert.match(err(() => loadServerConfig({ text: 'cluster:\n  source: file\n' })).message, /^config: cluster\.manifestsDir: required/);
  assert.match(err(() => loadServerConfig({ text: 'enrollment:\n  serviceAccounts: [kube-system/edgemesh]\n' })).message, /^config: enrollment\.serviceAccounts: .*cluster\.source kubernetes/);
  assert.match(err(() => loadServerConfig({ text: 'cluster:\n  source: kubernetes\nenrollment:\n  serviceAccounts: [nonamespace]\n' })).message, /^config: enrollment\.serviceAccounts\.0: expected namespace\/name/);
  assert.match(err(() => loadServerConfig({ text: 'cluster:\n  source: sometimes\n' })).message, /^config: cluster\.source: must be one of "none", "kubernetes", "file"/);
  assert.equal(loadServerConfig({ text: '', env: { EDGEMESH_ENROLLMENT_BOOTSTRAP_TOKEN: 'false' } }).enrollment.bootstrapToken, false);
});
