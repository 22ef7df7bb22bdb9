// The Helm chart, the image and the deployment files, checked without helm or docker (neither exists on these
// machines): Chart.yaml, values <-> templates, values <-> values.schema.json <-> the product's own config schemas,
// YAML well-formedness of every template under several values/branch variants, RBAC <-> what the cluster source
// watches, the image entrypoint's iptables back-end choice, and the Dockerfile <-> workspaces.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';
import { parse as parseYaml, parseAllDocuments, stringify as toYaml } from 'yaml';
import { Ajv } from 'ajv';
import { agentSchema, loadAgentConfig, loadServerConfig, serverSchema } from '../packages/common/src/config.ts';
import { configDefinitions, renderValuesSchema, VALUES_SCHEMA } from '../scripts/chart-schema.ts';
import { parseMemory, v8Flags } from '../packages/common/bin/entry.js';

const MiB = 1024 * 1024;
import { checkBalance, decide, stripTemplate, TemplateShapeError, valuesPath, valuesRefs, type Variant } from './lib/helm-strip.ts';

const root = resolve(import.meta.dirname, '..');
const chartDir = join(root, 'charts/edgemesh');
const read = (p: string) => readFileSync(p, 'utf8');
type Obj = Record<string, unknown>;

const chart = parseYaml(read(join(chartDir, 'Chart.yaml'))) as Obj;
const values = parseYaml(read(join(chartDir, 'values.yaml'))) as Obj;
const schemaText = read(VALUES_SCHEMA);
const schema = JSON.parse(schemaText) as Obj;
const templateFiles = readdirSync(join(chartDir, 'templates')).sort();
const templates = new Map(templateFiles.map((f) => [f, read(join(chartDir, 'templates', f))]));
const yamlTemplates = templateFiles.filter((f) => f.endsWith('.yaml'));
const ciFiles = readdirSync(join(chartDir, 'ci')).filter((f) => f.endsWith('.yaml')).sort();

const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

/** Helm's values merge: maps merge key by key, anything else replaces, null removes the key. */
function helmMerge(base: unknown, over: unknown): unknown {
  if (!isObj(base) || !isObj(over)) return structuredClone(over);
  const out: Obj = structuredClone(base);
  for (const [k, v] of Object.entries(over)) {
    if (v === null) delete out[k];
    else out[k] = helmMerge(out[k], v);
  }
  return out;
}

function withValues(over: Obj): Obj {
  return helmMerge(values, over) as Obj;
}

const ajv = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true });
const validateValues = ajv.compile(schema);
const schemaErrors = (v: unknown) => (validateValues(v) ? [] : (validateValues.errors ?? []).map((e) => `${e.instancePath} ${e.message}`));

describe('Chart.yaml', () => {
  test('has the Helm 3 fields, a semver version and the product version as appVersion', () => {
    assert.equal(chart.apiVersion, 'v2');
    assert.equal(chart.name, 'edgemesh');
    assert.equal(chart.type, 'application');
    assert.match(String(chart.version), /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$/);
    const pkg = JSON.parse(read(join(root, 'package.json'))) as { version: string };
    assert.equal(chart.appVersion, pkg.version, 'appVersion follows the root package.json version');
    assert.equal(typeof chart.description, 'string');
  });
});

describe('values.yaml and the templates', () => {
  test('every .Values path a template uses exists in values.yaml', () => {
    const missing: string[] = [];
    for (const [file, src] of templates) {
      for (const ref of valuesRefs(src)) if (!valuesPath(values, ref).found) missing.push(`${file}: .Values.${ref}`);
    }
    assert.deepEqual(missing, []);
  });

  test('every value in values.yaml is used by some template (no dead knobs)', () => {
    const refs = new Set([...templates.values()].flatMap(valuesRefs));
    const leaves: string[] = [];
    const walk = (v: unknown, path: string) => {
      // The config blocks are written whole into the ConfigMaps.
      if (isObj(v) && Object.keys(v).length && path !== 'agent.config' && path !== 'server.config') {
        for (const [k, c] of Object.entries(v)) walk(c, path ? `${path}.${k}` : k);
      } else leaves.push(path);
    };
    walk(values, '');
    // A leaf is used when it, or an ancestor below the top level that a template passes on whole, is referenced.
    const unused = leaves.filter((leaf) => {
      const parts = leaf.split('.');
      for (let i = parts.length; i >= Math.min(2, parts.length); i--) if (refs.has(parts.slice(0, i).join('.'))) return false;
      return true;
    });
    assert.deepEqual(unused, []);
  });

  test('the token has no default value, and the Secret template generates one with lookup + randAlphaNum', () => {
    const token = values.token as Obj;
    assert.equal(token.value, '');
    assert.equal(token.existingSecret, '');
    const secret = templates.get('secret.yaml')!;
    assert.match(secret, /lookup "v1" "Secret" \.Release\.Namespace/);
    assert.match(secret, /randAlphaNum \d+/);
  });
});

describe('resources', () => {
  // The measured figures (README "Memory", bench/cluster/run.ts): agent idle <= 80 MiB and 5,000 Services x 3 endpoints
  // <= 160 MiB; server idle ~70 MiB. The bins size V8 from the limit (packages/common/bin/entry.js).
  const res = (w: string) => (values[w] as { resources: { requests: { memory: string }; limits: { memory: string } } }).resources;
  test('requests cover the idle agent and server; the agent limit holds 5,000 Services with V8 sized inside it', () => {
    for (const w of ['agent', 'server']) {
      const { requests, limits } = res(w);
      assert.ok(parseMemory(requests.memory) >= 80 * MiB, `${w} requests.memory ${requests.memory} below the measured idle RSS`);
      assert.ok(parseMemory(limits.memory) >= parseMemory(requests.memory), `${w}: limit below request`);
    }
    const agentLimit = parseMemory(res('agent').limits.memory);
    assert.ok(agentLimit >= 1.5 * 160 * MiB, 'agent limit leaves headroom over 5,000 Services');
    const old = Number(/--max-old-space-size=(\d+)/.exec(v8Flags(agentLimit).join(' '))?.[1]);
    assert.ok(old >= 128, `old space ${old} MiB: the 5,000-Service heap (~50 MiB) needs room to collect in`);
  });
});

describe('values.schema.json', () => {
  test('values.yaml and every ci/*-values.yaml validate', () => {
    assert.deepEqual(schemaErrors(values), []);
    assert.ok(ciFiles.length >= 2);
    for (const f of ciFiles) {
      const merged = helmMerge(values, parseYaml(read(join(chartDir, 'ci', f))));
      assert.deepEqual(schemaErrors(merged), [], f);
    }
  });

  test('rejects what the chart must not accept', () => {
    const bad: [string, Obj][] = [
      ['unknown top-level key', { agnet: {} }],
      ['unknown agent config key', { agent: { config: { dns: { lsiten: '1.2.3.4:53' } } } }],
      ['wrong agent config type', { agent: { config: { dns: { ttlSeconds: 'thirty' } } } }],
      ['bad agent config enum', { agent: { config: { cluster: { source: 'etcd' } } } }],
      ['unknown server config key', { server: { config: { stunPort: 1 } } }],
      ['short token', { token: { value: 'hunter2' } }],
      ['service type', { server: { service: { type: 'ExternalName' } } }],
      ['token delivery', { token: { delivery: 'argv' } }],
      ['iptables mode', { agent: { iptablesMode: 'ebpf' } }],
    ];
    for (const [why, over] of bad) assert.notDeepEqual(schemaErrors(withValues(over)), [], why);
  });

  test('its config definitions are the product config schemas (regenerate: node scripts/chart-schema.ts)', () => {
    const defs = schema.definitions as Obj;
    assert.deepEqual(defs.agentConfig, configDefinitions().agentConfig);
    assert.deepEqual(defs.serverConfig, configDefinitions().serverConfig);
    assert.equal(renderValuesSchema(schema), schemaText);
  });
});

describe('config blocks against the product schemas', () => {
  const cases: [string, Obj][] = [['values.yaml', values], ...ciFiles.map((f): [string, Obj] => [f, helmMerge(values, parseYaml(read(join(chartDir, 'ci', f)))) as Obj])];

  test('agent.config passes agentSchema and loads through the agent config loader', () => {
    for (const [name, v] of cases) {
      const cfg = (v.agent as Obj).config;
      const res = agentSchema.safeParse(cfg);
      assert.ok(res.success, `${name}: ${res.error?.message}`);
      // As the ConfigMap carries it (toYaml), with NODE_NAME from the downward API.
      const loaded = loadAgentConfig({ text: toYaml(cfg), env: { NODE_NAME: 'edge-1' } });
      assert.equal(loaded.nodeName, 'edge-1');
      assert.equal(loaded.cluster.source, 'kubernetes');
    }
    const def = agentSchema.parse((values.agent as Obj).config);
    assert.equal(def.cluster.kubeconfig, '', 'default: in-cluster config');
    assert.equal(def.admin.listen, '127.0.0.1:10560');
  });

  test('server.config passes serverSchema and loads through the server config loader', () => {
    for (const [name, v] of cases) {
      const cfg = (v.server as Obj).config;
      const res = serverSchema.safeParse(cfg);
      assert.ok(res.success, `${name}: ${res.error?.message}`);
      loadServerConfig({ text: toYaml(cfg), env: {} });
    }
  });
});

describe('template stripper', () => {
  test('follows control flow, decides .Values conditions and shapes placeholders after their siblings', () => {
    const src = [
      'a:',
      '  {{- if .Values.on }}',
      '  b: {{ .Values.x | quote }}',
      '  {{- else }}',
      '  b: 2',
      '  {{- end }}',
      '  list:',
      '    - one',
      '    {{- include "more" . | nindent 4 }}',
      '  {{- if (eq .Values.mode "x") }}',
      '  c: 1',
      '  {{- end }}',
      '  {{- with $unknown }}',
      '  d: 1',
      '  {{- end }}',
    ].join('\n');
    const then = parseYaml(stripTemplate(src, { values: { on: true, mode: 'y' }, variant: 'then' })) as Obj;
    assert.deepEqual(then, { a: { b: '__tpl__', list: ['one', '__tpl_1__'], d: 1 } });
    const els = parseYaml(stripTemplate(src, { values: { on: false, mode: 'x' }, variant: 'else' })) as Obj;
    assert.deepEqual(els, { a: { b: 2, list: ['one', '__tpl_1__'], c: 1 } });
    assert.equal(decide('not .Values.a.b', { a: { b: [] } }), true);
    assert.equal(decide('and .Values.a .Values.b', {}), undefined);
  });

  test('reports shapes it cannot follow', () => {
    assert.throws(() => stripTemplate('{{- if .Values.a }}x: 1', { values: {}, variant: 'then' }), TemplateShapeError);
    assert.throws(() => stripTemplate('{{- if .Values.a }}\nx: 1', { values: {}, variant: 'then' }), TemplateShapeError);
    assert.throws(() => stripTemplate('x: {{ .Values.a\n}}', { values: {}, variant: 'then' }), TemplateShapeError);
    assert.throws(() => checkBalance('{{ if .a }}{{ end }}{{ end }}'), TemplateShapeError);
  });
});

// Values variants the templates are rendered (stripped) under, each in both branch variants.
const VARIANTS: [string, Obj][] = [
  ['defaults', values],
  ['token from env, existing Secret', withValues({ token: { delivery: 'env', existingSecret: 'mine' } })],
  ['NodePort + destinationRules', withValues({ server: { service: { type: 'NodePort' } }, rbac: { destinationRules: true } })],
  ['ClusterIP + externalIPs', withValues({ server: { service: { type: 'ClusterIP', externalIPs: ['203.0.113.5'] } } })],
  ['no server', withValues({ server: { enabled: false } })],
  ['no agent', withValues({ agent: { enabled: false } })],
];

function render(file: string, v: Obj, variant: Variant): Obj[] {
  const docs = parseAllDocuments(stripTemplate(templates.get(file)!, { values: v, variant }));
  const out: Obj[] = [];
  for (const d of docs) {
    assert.deepEqual(d.errors.map((e) => e.message), [], `${file} (${variant})`);
    const o = d.toJS() as unknown;
    if (o === null || o === undefined) continue;
    assert.ok(isObj(o), `${file}: a document is not a mapping`);
    out.push(o);
  }
  return out;
}

const KINDS: Record<string, string> = {
  ServiceAccount: 'v1', Secret: 'v1', ConfigMap: 'v1', Service: 'v1', DaemonSet: 'apps/v1', Deployment: 'apps/v1',
  ClusterRole: 'rbac.authorization.k8s.io/v1', ClusterRoleBinding: 'rbac.authorization.k8s.io/v1',
};

describe('templates', () => {
  test('every template is well-formed YAML with kind + apiVersion once its actions are stripped', () => {
    let docs = 0;
    for (const file of yamlTemplates) {
      for (const [name, v] of VARIANTS) {
        for (const variant of ['then', 'else'] as const) {
          for (const o of render(file, v, variant)) {
            assert.equal(o.apiVersion, KINDS[String(o.kind)], `${file} [${name}/${variant}]: kind ${String(o.kind)}`);
            assert.ok(isObj(o.metadata) && o.metadata.name, `${file}: metadata.name`);
            docs++;
          }
        }
      }
    }
    assert.ok(docs > 50, `rendered ${docs} documents`);
    for (const src of templates.values()) checkBalance(src);
  });

  test('the agent DaemonSet: hostNetwork, capabilities not privileged, NODE_NAME, probes on admin, stateDir', () => {
    const [ds] = render('agent-daemonset.yaml', values, 'then');
    assert.equal(ds.kind, 'DaemonSet');
    const spec = ((ds.spec as Obj).template as Obj).spec as Obj;
    assert.equal(spec.hostNetwork, true);
    assert.equal(spec.enableServiceLinks, false);
    const [c] = spec.containers as Obj[];
    const sc = c.securityContext as Obj;
    assert.equal(sc.privileged, false);
    assert.equal(sc.allowPrivilegeEscalation, false);
    assert.deepEqual((sc.capabilities as Obj).drop, ['ALL']);
    assert.deepEqual([...((sc.capabilities as Obj).add as string[])].sort(), ['NET_ADMIN', 'NET_BIND_SERVICE', 'NET_RAW']);
    const env = c.env as Obj[];
    assert.deepEqual(env.find((e) => e.name === 'NODE_NAME')?.valueFrom, { fieldRef: { fieldPath: 'spec.nodeName' } });
    assert.equal(((c.livenessProbe as Obj).httpGet as Obj).path, '/healthz');
    assert.equal(((c.readinessProbe as Obj).httpGet as Obj).path, '/readyz');
    assert.equal(((c.readinessProbe as Obj).httpGet as Obj).port, 'admin');
    assert.ok((c.ports as Obj[]).some((p) => p.name === 'admin'));
    const vols = spec.volumes as Obj[];
    assert.equal((vols.find((v) => v.name === 'state')?.hostPath as Obj).type, 'DirectoryOrCreate');
    assert.ok((c.volumeMounts as Obj[]).some((m) => m.name === 'state'));
    assert.match(templates.get('agent-daemonset.yaml')!, /path: \{\{ \.Values\.agent\.stateHostPath \}\}/);
    assert.deepEqual(c.args, ['node', 'packages/agent/bin/edgemesh-agent.js', '--config', '/etc/edgemesh/config/agent.yaml']);
  });

  test('the server Service carries TCP and UDP on the server port and UDP on the STUN alt port', () => {
    const [svc] = render('server-service.yaml', withValues({ server: { service: { type: 'NodePort' } } }), 'then');
    const ports = ((svc.spec as Obj).ports as Obj[]).map((p) => `${String(p.name)}/${String(p.protocol)}`);
    assert.deepEqual(ports, ['tunnel/TCP', 'stun/UDP', 'stun-alt/UDP']);
    assert.ok('externalTrafficPolicy' in (svc.spec as Obj));
    assert.equal(((values.server as Obj).service as Obj).externalTrafficPolicy, 'Local');
    const [dep] = render('server-deployment.yaml', values, 'then');
    const [c] = (((dep.spec as Obj).template as Obj).spec as Obj).containers as Obj[];
    assert.deepEqual((c.ports as Obj[]).map((p) => `${String(p.name)}/${String(p.protocol)}`), ['tunnel/TCP', 'stun/UDP', 'stun-alt/UDP', 'admin/TCP']);
  });
});

describe('RBAC', () => {
  // What each kind the cluster source delivers (ResourceKind in packages/agent/src/cluster/types.ts) needs.
  const RESOURCES: Record<string, { group: string; resource: string; optional?: boolean }> = {
    Service: { group: '', resource: 'services' },
    EndpointSlice: { group: 'discovery.k8s.io', resource: 'endpointslices' },
    Node: { group: '', resource: 'nodes' },
    DestinationRule: { group: 'networking.istio.io', resource: 'destinationrules', optional: true },
  };
  const kinds = (() => {
    const m = /export type ResourceKind\s*=\s*([^;]+);/.exec(read(join(root, 'packages/agent/src/cluster/types.ts')));
    assert.ok(m, 'ResourceKind in cluster/types.ts');
    return [...m[1].matchAll(/'(\w+)'/g)].map((k) => k[1]);
  })();

  function granted(v: Obj): string[] {
    const role = render('rbac.yaml', v, 'then').find((o) => o.kind === 'ClusterRole');
    assert.ok(role, 'a ClusterRole');
    return (role.rules as Obj[]).flatMap((r) => {
      assert.deepEqual(r.verbs, ['get', 'list', 'watch'], 'read-only');
      return (r.apiGroups as string[]).flatMap((g) => (r.resources as string[]).map((res) => `${g}/${res}`));
    }).sort();
  }

  test('every kind the cluster source watches has a known API resource', () => {
    assert.deepEqual(kinds.filter((k) => !RESOURCES[k]), [], 'add the new kind to the chart RBAC and to this table');
  });

  test('covers exactly the watched resources; destinationrules only when enabled', () => {
    const want = (withDR: boolean) => kinds.filter((k) => withDR || !RESOURCES[k].optional).map((k) => `${RESOURCES[k].group}/${RESOURCES[k].resource}`).sort();
    assert.deepEqual(granted(values), want(false));
    assert.deepEqual(granted(withValues({ rbac: { destinationRules: true } })), want(true));
  });
});

describe('image', () => {
  const dockerfile = read(join(root, 'Dockerfile'));

  test('Dockerfile: node:24-slim, production dependencies, the networking tools, a manifest for every workspace', () => {
    assert.match(dockerfile, /^ARG NODE_IMAGE=node:24-slim$/m);
    assert.match(dockerfile, /npm ci --omit=dev/);
    for (const pkg of ['iptables', 'iproute2', 'conntrack']) assert.match(dockerfile, new RegExp(`install [^\\n]*\\b${pkg}\\b`));
    const workspaces = (JSON.parse(read(join(root, 'package.json'))) as { workspaces: string[] }).workspaces;
    for (const w of workspaces) assert.match(dockerfile, new RegExp(`^COPY ${w}/package\\.json ${w}/$`, 'm'), w);
    for (const bin of ['packages/agent/bin/edgemesh-agent.js', 'packages/server/bin/edgemesh-server.js']) {
      assert.ok(dockerfile.includes(bin), bin);
      assert.ok(readFileSync(join(root, bin)).length > 0);
    }
    const ignore = read(join(root, '.dockerignore')).split('\n');
    for (const p of ['**/node_modules', '.git', '**/*.test.ts']) assert.ok(ignore.includes(p), p);
  });

  describe('entrypoint picks the iptables back end', () => {
    // Fake `id` and *-save commands first on PATH; the command run is `sh -c 'echo $PATH'`.
    function run(opts: { uid?: string; legacy?: string; nft?: string; mode?: string }): { code: number | null; path: string; err: string } {
      const dir = mkdtempSync(join(tmpdir(), 'em-entry-'));
      try {
        const fake = (name: string, body: string) => {
          writeFileSync(join(dir, name), `#!/bin/sh\n${body}\n`);
          chmodSync(join(dir, name), 0o755);
        };
        fake('id', `echo ${opts.uid ?? '0'}`);
        const save = (out: string | undefined) => (out === undefined ? 'exit 1' : `printf '%s\\n' '${out.replace(/\n/g, "' '")}'`);
        fake('iptables-legacy-save', save(opts.legacy));
        fake('iptables-nft-save', save(opts.nft));
        fake('ip6tables-legacy-save', 'exit 1');
        fake('ip6tables-nft-save', 'exit 1');
        const env = { PATH: `${dir}:/usr/bin:/bin`, ...(opts.mode ? { EDGEMESH_IPTABLES_MODE: opts.mode } : {}) };
        const r = spawnSync('/bin/sh', [join(root, 'docker/entrypoint.sh'), 'sh', '-c', 'echo "$PATH"'], { env, encoding: 'utf8' });
        return { code: r.status, path: r.stdout.trim(), err: r.stderr };
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
    const mode = (p: string) => /^\/opt\/edgemesh\/iptables-(\w+):/.exec(p)?.[1] ?? 'unchanged';

    test('a marker chain wins over rule counts', () => {
      const legacyRules = '*filter\n-A INPUT -j ACCEPT\n-A INPUT -j DROP\nCOMMIT';
      assert.equal(mode(run({ legacy: legacyRules, nft: '*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT' }).path), 'nft');
      assert.equal(mode(run({ legacy: '*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT', nft: '' }).path), 'legacy');
    });

    test('otherwise the back end with more rules, nft on a tie or when nothing answers', () => {
      assert.equal(mode(run({ legacy: '-A X -j Y\n-A X -j Z', nft: '-A X -j Y' }).path), 'legacy');
      assert.equal(mode(run({ legacy: '-A X -j Y', nft: '-A X -j Y' }).path), 'nft');
      assert.equal(mode(run({}).path), 'nft');
    });

    test('an explicit mode is used as is; non-root skips the choice; a bad mode exits 2', () => {
      assert.equal(mode(run({ mode: 'legacy', nft: '*mangle\n:KUBE-IPTABLES-HINT - [0:0]' }).path), 'legacy');
      const nonRoot = run({ uid: '1000', legacy: '-A X -j Y' });
      assert.equal(nonRoot.code, 0);
      assert.equal(mode(nonRoot.path), 'unchanged');
      const bad = run({ mode: 'ebpf' });
      assert.equal(bad.code, 2);
      assert.match(bad.err, /EDGEMESH_IPTABLES_MODE/);
    });
  });
});

// Only where a helm binary exists (not on the development machines or CI here): the real rendering, fed back into
// the product's config loaders.
const helm = spawnSync('helm', ['version', '--short'], { encoding: 'utf8' });
describe('helm template (when helm is installed)', { skip: helm.status !== 0 ? 'no helm binary on PATH' : false }, () => {
  test('renders every ci values file; the ConfigMaps load through the agent and server config loaders', () => {
    for (const f of ciFiles) {
      const r = spawnSync('helm', ['template', 'edgemesh', chartDir, '--kube-version', '1.30.0', '-f', join(chartDir, 'ci', f)], { encoding: 'utf8' });
      assert.equal(r.status, 0, `${f}: ${r.stderr}`);
      const docs = parseAllDocuments(r.stdout).map((d) => d.toJS() as Obj).filter(isObj);
      const cm = (suffix: string) => docs.find((d) => d.kind === 'ConfigMap' && String((d.metadata as Obj).name).endsWith(suffix))?.data as Obj;
      const agent = loadAgentConfig({ text: String(cm('-agent')['agent.yaml']), env: { NODE_NAME: 'n1' } });
      assert.ok(agent.tunnel.servers.length > 0, `${f}: tunnel.servers filled`);
      loadServerConfig({ text: String(cm('-server')['server.yaml']), env: {} });
    }
  });

  test('refuses agents without any server address', () => {
    const r = spawnSync('helm', ['template', 'edgemesh', chartDir, '--kube-version', '1.30.0'], { encoding: 'utf8' });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /advertiseAddress/);
  });
});
