// The Helm chart, the image and the deployment files, checked without helm or docker (neither exists on these
// machines): Chart.yaml, values <-> templates, values <-> values.schema.json <-> the product's own config schemas,
// YAML well-formedness of every template under several values/branch variants, RBAC <-> what the cluster source
// watches, the image entrypoint's iptables back-end choice, and the Dockerfile <-> workspaces.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, globSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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
import { allowedInCi } from './lib/skip.ts';

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
      ['token under 128 bits', { token: { value: '0123456789abcdefghijk' } }],
      ['unknown ca key', { ca: { cert: 'x' } }],
      ['bad persistence size', { server: { persistence: { size: 'big' } } }],
      ['bad cluster source for the server', { server: { config: { cluster: { source: 'etcd' } } } }],
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
  ['gateway RBAC', withValues({ rbac: { gateway: true } })],
  ['ClusterIP + externalIPs', withValues({ server: { service: { type: 'ClusterIP', externalIPs: ['203.0.113.5'] } } })],
  ['no server', withValues({ server: { enabled: false } })],
  ['no agent', withValues({ agent: { enabled: false } })],
  ['monitoring', withValues({ monitoring: { enabled: true, rules: { labels: { release: 'prom' } } } })],
  ['existing CA, persistence, bootstrap token', withValues({ ca: { existingSecret: 'my-ca' }, server: { persistence: { enabled: true, storageClass: 'fast' }, config: { enrollment: { bootstrapToken: true } } } })],
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
  ServiceAccount: 'v1', Secret: 'v1', ConfigMap: 'v1', Service: 'v1', PersistentVolumeClaim: 'v1', DaemonSet: 'apps/v1', Deployment: 'apps/v1',
  ClusterRole: 'rbac.authorization.k8s.io/v1', ClusterRoleBinding: 'rbac.authorization.k8s.io/v1',
  NetworkPolicy: 'networking.k8s.io/v1',
  PrometheusRule: 'monitoring.coreos.com/v1',
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
    // No container ports: on a hostNetwork pod they are host ports, which keep a surge pod off the node.
    assert.equal(c.ports, undefined);
    assert.match(templates.get('agent-daemonset.yaml')!, /path: \/readyz\n\s+port: \{\{ include "edgemesh\.agent\.adminPort" \. \}\}/);
    const vols = spec.volumes as Obj[];
    assert.equal((vols.find((v) => v.name === 'state')?.hostPath as Obj).type, 'DirectoryOrCreate');
    assert.ok((c.volumeMounts as Obj[]).some((m) => m.name === 'state'));
    assert.match(templates.get('agent-daemonset.yaml')!, /path: \{\{ \.Values\.agent\.stateHostPath \}\}/);
    assert.deepEqual(c.args, ['node', 'packages/agent/bin/edgemesh-agent.js', '--config', '/etc/edgemesh/config/agent.yaml']);
  });

  test('the agent DaemonSet upgrades by surge: a new pod next to the old one, which drains before the kubelet kills it', () => {
    const agent = values.agent as Obj;
    assert.deepEqual(agent.updateStrategy, { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } });
    const drain = Number(((agent.config as Obj).shutdownDrainSeconds as number | undefined) ?? agentSchema.parse({}).shutdownDrainSeconds);
    assert.ok(Number(agent.terminationGracePeriodSeconds) > drain + 10, 'grace period > drain + cleanup');
    const src = templates.get('agent-daemonset.yaml')!;
    assert.match(src, /updateStrategy:\n\s+\{\{- toYaml \.Values\.agent\.updateStrategy/);
    assert.match(src, /\{\{- if le \(int \.Values\.agent\.terminationGracePeriodSeconds\) \$drain \}\}\n\{\{- fail /, 'a grace period not longer than the drain is refused');
    // The state directory (listener ports, fake IPs, the handoff socket) is one hostPath both pods mount.
    assert.match(src, /- name: state\n\s+hostPath:\n\s+path: \{\{ \.Values\.agent\.stateHostPath \}\}/);
    const spec = (((render('agent-daemonset.yaml', values, 'then')[0].spec as Obj).template as Obj).spec as Obj);
    const [init] = spec.initContainers as Obj[];
    assert.equal(init.name, 'sysctl');
    assert.equal((init.securityContext as Obj).privileged, true);
    assert.match(JSON.stringify(init.command), /tcp_migrate_req/);
    const off = (((render('agent-daemonset.yaml', withValues({ agent: { tcpMigrateReq: false } }), 'then')[0].spec as Obj).template as Obj).spec as Obj);
    assert.equal(off.initContainers, undefined);
  });

  test('the server runs 2 replicas, rolls one at a time with none unavailable, and drains inside its grace period', () => {
    const server = values.server as Obj;
    assert.equal(server.replicas, 2);
    assert.deepEqual(server.strategy, { type: 'RollingUpdate', rollingUpdate: { maxSurge: 1, maxUnavailable: 0 } });
    const src = templates.get('server-deployment.yaml')!;
    assert.match(src, /replicas: \{\{ \.Values\.server\.replicas \}\}/);
    assert.match(src, /strategy:\n\s+\{\{- toYaml \.Values\.server\.strategy \| nindent 4 \}\}/);
    assert.doesNotMatch(src, /would split them|Recreate/, 'the single-replica reasoning is gone');
    const d = serverSchema.parse({});
    const cfg = server.config as Obj;
    const stop = Number(cfg.shutdownUnreadySeconds ?? d.shutdownUnreadySeconds) + Number(cfg.shutdownDrainSeconds ?? d.shutdownDrainSeconds);
    assert.ok(Number(server.terminationGracePeriodSeconds) > stop + 10, 'grace period > unready + drain + cleanup');
    assert.match(src, /\{\{- if le \(int \.Values\.server\.terminationGracePeriodSeconds\) \(int \$stopSeconds\) \}\}\n\{\{- fail /, 'a grace period not longer than the drain is refused');
    // Every replica mounts the one CA Secret (generated once by ca-secret.yaml, or ca.existingSecret): the same CA.
    const spec = ((render('server-deployment.yaml', values, 'then')[0].spec as Obj).template as Obj).spec as Obj;
    assert.ok(((spec.volumes as Obj[]).find((v) => v.name === 'ca')!.secret as Obj).secretName);
    assert.equal((spec.initContainers as Obj[] | undefined), undefined, 'nothing makes a CA per pod');
    // A claim shared by several replicas must be ReadWriteMany.
    const pvc = templates.get('server-pvc.yaml')!;
    assert.match(pvc, /\{\{- if gt \(int \.Values\.server\.replicas\) 1 \}\}\n\s+- ReadWriteMany\n\s+\{\{- else \}\}\n\s+- ReadWriteOnce/);
  });

  test('a headless Service lists every server pod (ready or not) for the mesh; the server config names it in mesh.dns', () => {
    const [svc] = render('server-mesh-service.yaml', values, 'then');
    assert.equal(svc.kind, 'Service');
    assert.match(String((svc.metadata as Obj).name), /-server-mesh$/);
    const spec = svc.spec as Obj;
    assert.equal(spec.clusterIP, 'None');
    assert.equal(spec.publishNotReadyAddresses, true);
    assert.deepEqual((spec.ports as Obj[]).map((p) => `${String(p.name)}/${String(p.protocol)}`), ['tunnel/TCP']);
    assert.match(templates.get('_helpers.tpl')!, /set \$cfg "mesh" \(dict "dns" \(printf "%s-server-mesh\.%s\.svc" \(include "edgemesh\.fullname" \.\) \.Release\.Namespace\)\)/);
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

  test('server admin: the binary defaults to loopback; the chart listens on the pod address for probes and the scrape, never in the Service, and the NetworkPolicy opens it only to adminFrom', () => {
    assert.equal(serverSchema.parse({}).admin.listen, '127.0.0.1:10561');
    assert.equal((((values.server as Obj).config as Obj).admin as Obj).listen, '0.0.0.0:10561');
    const [dep] = render('server-deployment.yaml', values, 'then');
    const ann = (((dep.spec as Obj).template as Obj).metadata as Obj).annotations as Obj;
    assert.equal(ann['prometheus.io/scrape'], 'true');
    assert.equal(ann['prometheus.io/path'], '/metrics');
    const [svc] = render('server-service.yaml', values, 'then');
    assert.ok(!((svc.spec as Obj).ports as Obj[]).some((p) => p.name === 'admin'), 'admin is not in the Service');
    const portsOf = (v: Obj) => {
      const [np] = render('server-networkpolicy.yaml', v, 'then');
      assert.equal(np.kind, 'NetworkPolicy');
      assert.deepEqual((np.spec as Obj).policyTypes, ['Ingress']);
      return ((np.spec as Obj).ingress as Obj[]).map((r) => ({ ports: (r.ports as Obj[]).map((p) => String(p.protocol)), from: r.from }));
    };
    // Default: only the agent-facing ports, from anywhere (the admin port is in no rule = closed to other pods).
    assert.deepEqual(portsOf(values), [{ ports: ['TCP', 'UDP', 'UDP'], from: undefined }]);
    const peer = { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } };
    const open = portsOf(withValues({ server: { networkPolicy: { adminFrom: [peer] } } }));
    assert.equal(open.length, 2);
    assert.deepEqual(open[1].ports, ['TCP']);
    assert.notEqual(open[1].from, undefined, 'admin only from the listed peers (rendered from adminFrom by toYaml)');
    assert.deepEqual(render('server-networkpolicy.yaml', withValues({ server: { networkPolicy: { enabled: false } } }), 'then'), []);
  });
});

describe('monitoring', () => {
  const on = withValues({ monitoring: { enabled: true } });
  /** The PrometheusRule as Helm renders it: the `{{ $r.x }}` thresholds filled from the values, then stripped. */
  function ruleGroups(v: Obj): { name: string; rules: Obj[] }[] {
    const rules = (v.monitoring as Obj).rules as Obj;
    const src = templates.get('prometheusrule.yaml')!.replace(/\{\{ \$r\.(\w+) \}\}/g, (_, k: string) => {
      assert.ok(k in rules, `monitoring.rules.${k}`);
      return String(rules[k]);
    });
    const docs = parseAllDocuments(stripTemplate(src, { values: v, variant: 'then' })).map((d) => d.toJS() as Obj).filter(isObj);
    assert.equal(docs.length, 1);
    return (docs[0].spec as Obj).groups as { name: string; rules: Obj[] }[];
  }
  // Every metric the product exports (prom-client `name:` literals), histograms with their series suffixes.
  const exported = (() => {
    const names = new Set<string>();
    for (const f of globSync('packages/*/src/**/*.ts', { cwd: root })) {
      if (f.endsWith('.test.ts')) continue;
      for (const m of read(join(root, f)).matchAll(/name: '(edgemesh_[a-z_]+)'/g)) names.add(m[1]);
    }
    return names;
  })();
  const usedMetrics = (expr: string) => [...expr.matchAll(/\b(edgemesh_[a-z_]+)\b/g)].map((m) => m[1].replace(/_(bucket|sum|count)$/, (suf, _s, off, whole: string) => (exported.has(whole.slice(0, off)) ? '' : suf)));

  test('off by default: neither the PrometheusRule nor the dashboard ConfigMap is rendered', () => {
    assert.equal((values.monitoring as Obj).enabled, false);
    for (const variant of ['then', 'else'] as const) {
      assert.deepEqual(render('prometheusrule.yaml', values, variant), []);
      assert.deepEqual(render('dashboard-configmap.yaml', values, variant), []);
    }
  });

  test('the PrometheusRule: the six alerts, each with a duration, a severity and a text, over metrics the product exports', () => {
    const [group] = ruleGroups(on);
    assert.deepEqual(group.rules.map((r) => r.alert), [
      'EdgemeshAgentNotReady', 'EdgemeshRelayShareHigh', 'EdgemeshTimeToDirectHigh', 'EdgemeshStrictScopeEmpty', 'EdgemeshDnsServfailHigh', 'EdgemeshServerAgentsDropping',
    ]);
    for (const r of group.rules) {
      assert.match(String(r.for), /^\d+m$/);
      assert.ok(['info', 'warning', 'critical'].includes(String((r.labels as Obj).severity)));
      assert.ok((r.annotations as Obj).summary && (r.annotations as Obj).description);
      for (const m of usedMetrics(String(r.expr))) assert.ok(exported.has(m), `${String(r.alert)}: ${m} is not a metric of the product`);
    }
    // Extra labels (a Prometheus' ruleSelector) go on the object's metadata.
    assert.match(templates.get('prometheusrule.yaml')!, /  labels:\n    \{\{- include "edgemesh\.labels" \. \| nindent 4 \}\}\n    \{\{- with \$r\.labels \}\}\n    \{\{- toYaml \. \| nindent 4 \}\}/);
  });

  const promtool = spawnSync('promtool', ['--version'], { encoding: 'utf8' });
  const noPromtool = promtool.status !== 0 && !process.env.CI ? 'no promtool (apt-get install prometheus)' : false;
  test('promtool check rules passes, and promtool test rules fires each alert on synthetic series', { skip: noPromtool }, () => {
    const groups = ruleGroups(on);
    const dir = mkdtempSync(join(tmpdir(), 'em-rules-'));
    try {
      writeFileSync(join(dir, 'rules.yaml'), toYaml({ groups }));
      const check = spawnSync('promtool', ['check', 'rules', join(dir, 'rules.yaml')], { encoding: 'utf8' });
      assert.equal(check.status, 0, check.stdout + check.stderr);
      assert.match(check.stdout, /SUCCESS: 6 rules found/);
      const byName = new Map(groups[0].rules.map((r) => [String(r.alert), r]));
      const expect = (alert: string, labels: Obj) => ({ exp_labels: { ...(byName.get(alert)!.labels as Obj), ...labels }, exp_annotations: byName.get(alert)!.annotations });
      const unit = {
        rule_files: ['rules.yaml'],
        evaluation_interval: '1m',
        tests: [{
          interval: '1m',
          input_series: [
            { series: 'edgemesh_server_fleet_agents{job="server",state="not_ready"}', values: '0 0 1x40' },
            { series: 'edgemesh_server_fleet_agents{job="server",state="ready"}', values: '5x40' },
            { series: 'edgemesh_tunnel_peers{job="agent",instance="n1",path="relay"}', values: '3x40' },
            { series: 'edgemesh_tunnel_peers{job="agent",instance="n1",path="direct"}', values: '1x40' },
            { series: 'edgemesh_tunnel_peers{job="agent",instance="n2",path="direct"}', values: '4x40' },
            { series: 'edgemesh_tunnel_time_to_direct_seconds_bucket{job="agent",instance="n1",le="5"}', values: '0+1x60' },
            { series: 'edgemesh_tunnel_time_to_direct_seconds_bucket{job="agent",instance="n1",le="10"}', values: '0+10x60' },
            { series: 'edgemesh_tunnel_time_to_direct_seconds_bucket{job="agent",instance="n1",le="+Inf"}', values: '0+10x60' },
            { series: 'edgemesh_proxy_strict_empty_scope_services{job="agent",instance="n1"}', values: '1x40' },
            { series: 'edgemesh_proxy_strict_empty_scope_services{job="agent",instance="n2"}', values: '0x40' },
            { series: 'edgemesh_dns_queries_total{job="agent",instance="n1",type="A",rcode="SERVFAIL",source="forward"}', values: '0+30x40' },
            { series: 'edgemesh_dns_queries_total{job="agent",instance="n1",type="A",rcode="NOERROR",source="cluster"}', values: '0+70x40' },
            { series: 'edgemesh_server_agents_connected{job="server",instance="s1"}', values: '100x10 60x30' },
          ],
          alert_rule_test: [
            { eval_time: '10m', alertname: 'EdgemeshAgentNotReady', exp_alerts: [expect('EdgemeshAgentNotReady', { job: 'server' })] },
            { eval_time: '1m', alertname: 'EdgemeshAgentNotReady', exp_alerts: [] },
            { eval_time: '20m', alertname: 'EdgemeshRelayShareHigh', exp_alerts: [expect('EdgemeshRelayShareHigh', { job: 'agent', instance: 'n1' })] },
            { eval_time: '45m', alertname: 'EdgemeshTimeToDirectHigh', exp_alerts: [expect('EdgemeshTimeToDirectHigh', { job: 'agent' })] },
            { eval_time: '15m', alertname: 'EdgemeshStrictScopeEmpty', exp_alerts: [expect('EdgemeshStrictScopeEmpty', { job: 'agent', instance: 'n1' })] },
            { eval_time: '20m', alertname: 'EdgemeshDnsServfailHigh', exp_alerts: [expect('EdgemeshDnsServfailHigh', { job: 'agent', instance: 'n1' })] },
            { eval_time: '18m', alertname: 'EdgemeshServerAgentsDropping', exp_alerts: [expect('EdgemeshServerAgentsDropping', { job: 'server', instance: 's1' })] },
            { eval_time: '35m', alertname: 'EdgemeshServerAgentsDropping', exp_alerts: [] },
          ],
        }],
      };
      writeFileSync(join(dir, 'test.yaml'), toYaml(unit));
      const t = spawnSync('promtool', ['test', 'rules', join(dir, 'test.yaml')], { encoding: 'utf8' });
      assert.equal(t.status, 0, t.stdout + t.stderr);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the Grafana dashboard: a ConfigMap with grafana_dashboard "1" embedding dashboards/edgemesh.json; panels over exported metrics', () => {
    const [cm] = render('dashboard-configmap.yaml', on, 'then');
    assert.equal(cm.kind, 'ConfigMap');
    // The sidecar's label is a string "1" in the values (a number would not match its selector) and goes on the metadata.
    assert.deepEqual(((values.monitoring as Obj).dashboard as Obj).labels, { grafana_dashboard: '1' });
    assert.match(templates.get('dashboard-configmap.yaml')!, /  labels:\n    \{\{- include "edgemesh\.labels" \. \| nindent 4 \}\}\n    \{\{- with \.Values\.monitoring\.dashboard\.labels \}\}\n    \{\{- toYaml \. \| nindent 4 \}\}/);
    assert.match(templates.get('dashboard-configmap.yaml')!, /\.Files\.Get "dashboards\/edgemesh\.json" \| nindent 4/);
    const dash = JSON.parse(read(join(chartDir, 'dashboards', 'edgemesh.json'))) as Obj & { panels: Obj[] };
    assert.equal(dash.uid, 'edgemesh-overview');
    assert.deepEqual(((dash.templating as Obj).list as Obj[]).map((v) => [v.name, v.type, v.query]), [['datasource', 'datasource', 'prometheus']]);
    const ids = dash.panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, 'unique panel ids');
    const queries = dash.panels.filter((p) => p.type !== 'row');
    assert.ok(queries.length >= 20);
    const seen = new Set<string>();
    for (const p of queries) {
      assert.deepEqual(p.datasource, { type: 'prometheus', uid: '${datasource}' }, String(p.title));
      const g = p.gridPos as { w: number; x: number };
      assert.ok(g.x + g.w <= 24, `${String(p.title)} fits the grid`);
      for (const t of p.targets as Obj[]) {
        for (const m of usedMetrics(String(t.expr))) {
          assert.ok(exported.has(m), `${String(p.title)}: ${m} is not a metric of the product`);
          seen.add(m);
        }
      }
    }
    // The headline metrics of each area are on it.
    for (const m of ['edgemesh_tunnel_peers', 'edgemesh_tunnel_time_to_direct_seconds', 'edgemesh_proxy_refused_total', 'edgemesh_dns_queries_total', 'edgemesh_server_agents_connected', 'edgemesh_server_fleet_agents']) assert.ok(seen.has(m), m);
  });
});

describe('identity (docs/identity.md)', () => {
  const vol = (spec: Obj, name: string) => (spec.volumes as Obj[]).find((v) => v.name === name);
  const podSpec = (file: string, v: Obj = values) => ((render(file, v, 'then')[0].spec as Obj).template as Obj).spec as Obj;

  test('the CA has no default: generated once (Ed25519, genCAWithKey), read back with lookup, kept on uninstall', () => {
    assert.deepEqual(values.ca, { existingSecret: '' });
    const t = templates.get('ca-secret.yaml')!;
    assert.match(t, /lookup "v1" "Secret" \.Release\.Namespace \$name/);
    assert.match(t, /genCAWithKey "edgemesh cluster CA" \d+ \(genPrivateKey "ed25519"\)/);
    assert.ok(!/genCA /.test(t), 'genCA alone makes an RSA CA');
    const [secret] = render('ca-secret.yaml', values, 'then');
    assert.equal(((secret.metadata as Obj).annotations as Obj)['helm.sh/resource-policy'], 'keep');
    assert.deepEqual(Object.keys(secret.data as Obj).sort(), ['ca.crt', 'ca.key']);
    assert.deepEqual(render('ca-secret.yaml', withValues({ ca: { existingSecret: 'my-ca' } }), 'then'), [], 'an existing Secret: nothing rendered');
  });

  test('the admin token has no default: generated once (randAlphaNum 48), read back with lookup, mounted into the server only', () => {
    assert.deepEqual(values.adminToken, { existingSecret: '' });
    const t = templates.get('admin-secret.yaml')!;
    assert.match(t, /lookup "v1" "Secret" \.Release\.Namespace \$name/);
    assert.match(t, /randAlphaNum 48/);
    const [secret] = render('admin-secret.yaml', values, 'then');
    assert.equal(secret.kind, 'Secret');
    assert.deepEqual(Object.keys(secret.data as Obj), ['token']);
    assert.deepEqual(render('admin-secret.yaml', withValues({ adminToken: { existingSecret: 'my-admin' } }), 'then'), [], 'an existing Secret: nothing rendered');
    const admin = ((values.server as Obj).config as Obj).admin as Obj;
    assert.equal(admin.tokenFile, '/etc/edgemesh/admin/token');
    assert.equal(admin.listen, '0.0.0.0:10561', 'the listener the token guards is the pod address');
    const spec = podSpec('server-deployment.yaml');
    const [c] = spec.containers as Obj[];
    assert.deepEqual((c.volumeMounts as Obj[]).find((m) => m.name === 'admin-token'), { name: 'admin-token', mountPath: '__tpl__', subPath: 'token', readOnly: true });
    assert.deepEqual((vol(spec, 'admin-token')!.secret as Obj).items, [{ key: 'token', path: 'token' }]);
    assert.match(templates.get('server-deployment.yaml')!, /secretName: \{\{ include "edgemesh\.adminSecretName" \. \}\}\n\s+defaultMode: 0440/);
    assert.match(templates.get('server-deployment.yaml')!, /mountPath: \{\{ \$adminTokenFile \}\}/);
    assert.ok(!JSON.stringify(podSpec('agent-daemonset.yaml').volumes).includes('admin'), 'agents never get it');
  });

  test('agents get the CA certificate only, at tunnel.caFile, and a projected token with audience edgemesh', () => {
    const spec = podSpec('agent-daemonset.yaml');
    const [c] = spec.containers as Obj[];
    const tunnel = ((values.agent as Obj).config as Obj).tunnel as Obj;
    const ca = vol(spec, 'ca')!.secret as Obj;
    assert.deepEqual(ca.items, [{ key: 'ca.crt', path: 'ca.crt' }], 'never ca.key');
    assert.deepEqual((c.volumeMounts as Obj[]).find((m) => m.name === 'ca'), { name: 'ca', mountPath: '__tpl__', subPath: 'ca.crt', readOnly: true });
    assert.match(templates.get('agent-daemonset.yaml')!, /mountPath: \{\{ \$caFile \}\}/);
    assert.equal(tunnel.caFile, '/etc/edgemesh/ca/ca.crt');
    const projected = ((vol(spec, 'enroll-token')!.projected as Obj).sources as Obj[])[0].serviceAccountToken as Obj;
    assert.equal(projected.audience, 'edgemesh');
    const m = (c.volumeMounts as Obj[]).find((x) => x.name === 'enroll-token')!;
    assert.equal(m.subPath, undefined, 'a subPath mount would never see the rotated token');
    assert.match(templates.get('agent-daemonset.yaml')!, /mountPath: \{\{ dir \$saTokenFile \}\}/);
    assert.equal(tunnel.serviceAccountTokenFile, '/var/run/secrets/edgemesh/token');
  });

  test('the server gets the CA key (0440), its stateDir volume (emptyDir, or a kept PVC), and its own ServiceAccount', () => {
    const spec = podSpec('server-deployment.yaml');
    const ca = vol(spec, 'ca')!.secret as Obj;
    // 0440 is octal for Kubernetes (YAML 1.1); this parser reads it as a decimal literal, so check the text.
    assert.match(templates.get('server-deployment.yaml')!, /secretName: \{\{ include "edgemesh\.caSecretName" \. \}\}\n\s+defaultMode: 0440/);
    assert.deepEqual((ca.items as Obj[]).map((i) => i.key), ['ca.crt', 'ca.key']);
    const cfg = (values.server as Obj).config as Obj;
    assert.equal(cfg.caFile, '/etc/edgemesh/ca/ca.crt');
    assert.equal(cfg.caKeyFile, '/etc/edgemesh/ca/ca.key');
    assert.ok('emptyDir' in vol(spec, 'state')!);
    const withPvc = withValues({ server: { persistence: { enabled: true } } });
    assert.equal((vol(podSpec('server-deployment.yaml', withPvc), 'state')!.persistentVolumeClaim as Obj).claimName, '__tpl__-server');
    const [pvc] = render('server-pvc.yaml', withPvc, 'then');
    assert.equal(((pvc.metadata as Obj).annotations as Obj)['helm.sh/resource-policy'], 'keep');
    assert.equal(spec.automountServiceAccountToken, true);
    assert.equal(spec.serviceAccountName, '__tpl__-server');
  });

  test('enrollment defaults: Kubernetes and join tokens; the bootstrap token only with persistence', () => {
    const cfg = (values.server as Obj).config as Obj;
    assert.deepEqual(cfg.enrollment, { bootstrapToken: false, serviceAccounts: [] });
    assert.deepEqual(cfg.cluster, { source: 'kubernetes', kubeconfig: '' });
    const helpers = templates.get('_helpers.tpl')!;
    assert.match(helpers, /set \$enr "serviceAccounts" \(list \(printf "%s\/%s" \.Release\.Namespace \(include "edgemesh\.serviceAccountName" \.\)\)\)/);
    assert.match(helpers, /fail "edgemesh: server\.config\.enrollment\.bootstrapToken needs server\.persistence\.enabled=true/);
    assert.match(templates.get('server-configmap.yaml')!, /include "edgemesh\.server\.config" \./);
  });

  test('the server may read Nodes and create TokenReviews, nothing else', () => {
    const role = render('server-rbac.yaml', values, 'then').find((o) => o.kind === 'ClusterRole')!;
    assert.deepEqual(role.rules, [
      { apiGroups: [''], resources: ['nodes'], verbs: ['get', 'list', 'watch'] },
      { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
    ]);
  });
});

describe('RBAC', () => {
  // What each kind the cluster source delivers (ResourceKind in packages/agent/src/cluster/types.ts) needs.
  // `flag`: the rbac.* value that grants it (only then).
  const RESOURCES: Record<string, { group: string; resource: string; flag?: 'destinationRules' | 'gateway' }> = {
    Service: { group: '', resource: 'services' },
    EndpointSlice: { group: 'discovery.k8s.io', resource: 'endpointslices' },
    Node: { group: '', resource: 'nodes' },
    DestinationRule: { group: 'networking.istio.io', resource: 'destinationrules', flag: 'destinationRules' },
    Gateway: { group: 'networking.istio.io', resource: 'gateways', flag: 'gateway' },
    VirtualService: { group: 'networking.istio.io', resource: 'virtualservices', flag: 'gateway' },
    Secret: { group: '', resource: 'secrets', flag: 'gateway' },
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

  test('covers exactly the watched resources; destinationrules, gateways/virtualservices/secrets only when enabled', () => {
    const want = (...flags: string[]) => kinds.filter((k) => !RESOURCES[k].flag || flags.includes(RESOURCES[k].flag!)).map((k) => `${RESOURCES[k].group}/${RESOURCES[k].resource}`).sort();
    assert.deepEqual(granted(values), want());
    assert.deepEqual(granted(withValues({ rbac: { destinationRules: true } })), want('destinationRules'));
    assert.deepEqual(granted(withValues({ rbac: { gateway: true } })), want('gateway'));
    assert.deepEqual(granted(withValues({ rbac: { destinationRules: true, gateway: true } })), want('destinationRules', 'gateway'));
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
// the product's config loaders. Everything above checks the templates' structure, not what Go templates render, so
// without helm the rendering stays unverified; the suite is then reported as skipped (allowed in CI), never passed.
const helm = spawnSync('helm', ['version', '--short'], { encoding: 'utf8' });
describe('helm template (when helm is installed)', { skip: helm.status !== 0 && allowedInCi('no helm binary') }, () => {
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
