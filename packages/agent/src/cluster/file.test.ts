import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { Writable } from 'node:stream';
import { ClusterModel } from './model.ts';
import { compact, FileSource, MANIFEST_MAX_ALIASES, parseManifest, yamlChunks } from './file.ts';
import { startCluster } from './setup.ts';
import { loadState, statePath } from './state.ts';

const DEADLINE_MS = 10_000;

function capture() {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, new Writable({ write(chunk, _e, cb) { lines.push(JSON.parse(String(chunk))); cb(); } }));
  return { log, lines };
}

async function waitFor(what: string, cond: () => boolean): Promise<void> {
  const end = Date.now() + DEADLINE_MS;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const service = (name: string, port: number, ip = '10.96.0.10') => `apiVersion: v1
kind: Service
metadata: {name: ${name}, namespace: demo}
spec:
  clusterIP: ${ip}
  ports: [{name: http, port: ${port}, targetPort: 8080}]
  selector: {app: ${name}}
`;
const slice = (name: string, svc: string, ips: string[]) => `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ${name}, namespace: demo, labels: {kubernetes.io/service-name: ${svc}}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
${ips.map((ip) => `- addresses: [${ip}]\n  nodeName: edge-a`).join('\n')}
`;

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'em-file-'));
}

test('parseManifest: multi-document, List, other kinds ignored, bad documents skipped with a reason', () => {
  const text = [service('web', 80), slice('web-1', 'web', ['10.0.0.1']), 'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n',
    'apiVersion: v1\nkind: Service\nmetadata: {namespace: demo}\nspec: {ports: [{port: 80}]}\n', '- just\n- a list\n',
    'apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Node, metadata: {name: edge-a}}\n', 'apiVersion: v2\nkind: Service\nmetadata: {name: z}\n', ''].join('---\n');
  const p = parseManifest(text);
  assert.equal(p.objects.get('Service')!.length, 1);
  assert.equal(p.objects.get('EndpointSlice')!.length, 1);
  assert.equal(p.objects.get('Node')!.length, 1);
  assert.equal(p.ignored, 1);
  assert.deepEqual(p.skipped.map((s) => s.doc), [3, 4, 6]);
  assert.match(p.skipped[0].reason, /metadata\.name/);
  assert.match(p.skipped[1].reason, /not a mapping/);
  assert.match(p.skipped[2].reason, /unsupported apiVersion "v2"/);
  assert.throws(() => parseManifest('apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n'), /YAML error/);
});

test('yamlChunks: runs of whole documents split at --- lines only; a marker-looking scalar or an indented --- stays inside', () => {
  const text = 'a: 1\n---\nb: |\n  ---\n  x\n--- # c\nc: ---abc\n---\n';
  // chunkBytes 1: every document is a run of its own.
  const docs = yamlChunks(text, 1);
  assert.deepEqual(docs.map((d) => d.text), ['a: 1\n', '---\nb: |\n  ---\n  x\n', '--- # c\nc: ---abc\n', '---\n']);
  docs.forEach((d) => assert.equal(text.slice(d.start, d.start + d.text.length), d.text));
  // Runs grow until they reach chunkBytes, then the next document starts a new run.
  assert.deepEqual(yamlChunks(text, 20).map((d) => d.text), ['a: 1\n---\nb: |\n  ---\n  x\n', '--- # c\nc: ---abc\n---\n']);
  assert.deepEqual(yamlChunks(text).map((d) => d.text), [text]);
  assert.equal(yamlChunks('%YAML 1.2\n---\na: 1\n---\nb: 2\n', 1).length, 1);
  assert.deepEqual(yamlChunks('').map((d) => d.text), ['']);
});

test('parseManifest: JSON manifests (object or List) without the YAML parser; flow-style YAML that is not JSON still parses', () => {
  const svc = { apiVersion: 'v1', kind: 'Service', metadata: { name: 'web', namespace: 'demo' }, spec: { clusterIP: '10.96.0.10', ports: [{ port: 80 }] } };
  assert.equal(parseManifest(JSON.stringify(svc)).objects.get('Service')!.length, 1);
  assert.equal(parseManifest(JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [svc, { ...svc, metadata: { name: 'api', namespace: 'demo' } }] }, null, 2)).objects.get('Service')!.length, 2);
  assert.equal(parseManifest('{apiVersion: v1, kind: Service, metadata: {name: web, namespace: demo}, spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}}').objects.get('Service')!.length, 1);
});

test('parseManifest: the YAML error names its line in the file; an alias bomb is refused; YAML 1.2 core scalars', () => {
  const good = service('web', 80);
  // Two good documents of 7 lines and their --- lines come first: the error is on line 17 or just after it.
  assert.throws(() => parseManifest(`${good}---\n${good}---\nmetadata: {name: [unclosed\n`), (e: Error) => /YAML error: .* \(line 1[78]\)/.test(e.message));
  const bomb = ['a: &a [x, x]', ...Array.from({ length: MANIFEST_MAX_ALIASES }, (_, i) => `${String.fromCharCode(98 + (i % 20))}${i}: &n${i} [${i ? `*n${i - 1}, *n${i - 1}` : '*a, *a'}]`)].join('\n');
  assert.throws(() => parseManifest(bomb), /YAML error: .*alias/i);
  // `yes`/`no`, `0777`-style and dates stay strings, as in YAML 1.2 (and kubectl): labels keep their text.
  const p = parseManifest('apiVersion: v1\nkind: Node\nmetadata: {name: edge-a, labels: {a: yes, b: 2024-01-01, c: "1"}}\n');
  assert.deepEqual((p.objects.get('Node')![0].metadata as { labels: unknown }).labels, { a: 'yes', b: '2024-01-01', c: '1' });
});

test('parseManifest: 10,000 documents in one file, each checked as it is parsed', () => {
  const docs: string[] = [];
  for (let i = 0; i < 5000; i++) docs.push(service(`s${i}`, 80, `10.96.${i >> 8}.${i & 255}`), slice(`s${i}-1`, `s${i}`, [`10.1.${i >> 8}.${i & 255}`]));
  const p = parseManifest(docs.join('---\n'));
  assert.equal(p.objects.get('Service')!.length, 5000);
  assert.equal(p.objects.get('EndpointSlice')!.length, 5000);
  assert.equal(p.skipped.length, 0);
});

test('file source: add / change / delete / malformed file, consistent replace per directory change', async () => {
  const dir = tmp();
  const { log, lines } = capture();
  writeFileSync(join(dir, 'web.yaml'), service('web', 80) + '---\n' + slice('web-1', 'web', ['10.0.0.1', '10.0.0.2']));
  writeFileSync(join(dir, 'notes.txt'), 'not a manifest');
  const model = new ClusterModel([]);
  const src = new FileSource({ dir, log, debounceMs: 30, rescanMs: 200 });
  await src.start(model);
  try {
    assert.equal(src.synced(), true);
    let snap = model.flush();
    assert.deepEqual([...snap.services.keys()], ['demo/web']);
    assert.equal(snap.endpoints.get('demo/web')?.length, 2);

    // add a file
    writeFileSync(join(dir, 'db.yml'), service('db', 5432, '10.96.0.11') + '---\n' + slice('db-1', 'db', ['10.0.1.1']));
    await waitFor('add', () => model.flush().services.has('demo/db'));
    assert.equal(model.snapshot().endpoints.get('demo/db')?.[0].address, '10.0.1.1');

    // change a file (written via temp + rename, as editors and ConfigMap updates do)
    writeFileSync(join(dir, '.web.yaml.tmp'), service('web', 8080) + '---\n' + slice('web-1', 'web', ['10.0.0.3']));
    renameSync(join(dir, '.web.yaml.tmp'), join(dir, 'web.yaml'));
    await waitFor('change', () => model.flush().services.get('demo/web')?.ports[0].port === 8080);
    assert.deepEqual(model.snapshot().endpoints.get('demo/web')?.map((e) => e.address), ['10.0.0.3']);

    // malformed file: YAML syntax error -> the file's last good content stays, a log line names the file
    const before = model.flush().version;
    writeFileSync(join(dir, 'web.yaml'), 'apiVersion: v1\nkind: Service\nmetadata: {name: [oops\n');
    await waitFor('bad file logged', () => lines.some((l) => l.file === 'web.yaml' && /bad manifest file/.test(String(l.msg))));
    snap = model.flush();
    assert.equal(snap.services.get('demo/web')?.ports[0].port, 8080);
    assert.equal(snap.version, before, 'no new snapshot for a bad file');

    // a bad document among good ones: skipped with the file named, the rest applies
    writeFileSync(join(dir, 'web.yaml'), service('web', 81) + '---\napiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: demo}\nspec: {ports: [{port: 0}]}\n');
    await waitFor('good doc applied', () => model.flush().services.get('demo/web')?.ports[0].port === 81);
    const skipped = lines.find((l) => l.msg === 'skipped a bad manifest document');
    assert.equal(skipped?.file, 'web.yaml');
    assert.equal(skipped?.doc, 1);
    assert.match(String(skipped?.reason), /demo\/broken: spec\.ports\[0\]\.port/);
    assert.equal(model.snapshot().endpoints.get('demo/web'), undefined, 'its slice was removed with the rewrite');

    // delete a file
    rmSync(join(dir, 'db.yml'));
    await waitFor('delete', () => !model.flush().services.has('demo/db'));
    assert.equal(model.snapshot().endpoints.has('demo/db'), false);
  } finally {
    await src.stop();
  }
});

test('file source: a missing directory keeps the current state and is not synced; it is picked up when created', async () => {
  const dir = join(tmp(), 'later');
  const { log, lines } = capture();
  const model = new ClusterModel([]);
  model.replace('Service', [{ apiVersion: 'v1', kind: 'Service', metadata: { name: 'kept', namespace: 'demo' }, spec: { ports: [{ port: 1 }] } }]);
  const src = new FileSource({ dir, log, debounceMs: 20, rescanMs: 50 });
  await src.start(model);
  try {
    assert.equal(src.synced(), false);
    assert.ok(model.flush().services.has('demo/kept'));
    assert.ok(lines.some((l) => l.msg === 'cannot read the manifests directory; keeping the current cluster state' && l.reason === 'ENOENT'));
    mkdirSync(dir);
    writeFileSync(join(dir, 'a.yaml'), service('web', 80));
    await waitFor('dir appears', () => src.synced() && model.flush().services.has('demo/web'));
    assert.equal(model.snapshot().services.has('demo/kept'), false, 'the directory is now the truth');
    // The directory is replaced by a new one: its content is the truth again.
    rmSync(dir, { recursive: true });
    mkdirSync(dir);
    writeFileSync(join(dir, 'b.yaml'), service('api', 81));
    await waitFor('replaced dir read', () => model.flush().services.has('demo/api') && !model.snapshot().services.has('demo/web'));
  } finally {
    await src.stop();
  }
});

test('restart from the persisted snapshot: state written atomically, loaded before the source, kept while the directory is unreadable', async () => {
  const root = tmp();
  const manifests = join(root, 'm');
  const stateDir = join(root, 'state');
  mkdirSync(manifests);
  writeFileSync(join(manifests, 'all.yaml'), service('web', 80) + '---\n' + slice('web-1', 'web', ['10.0.0.1']) + '---\napiVersion: v1\nkind: Node\nmetadata: {name: edge-a, labels: {zone: z1}}\n');
  const cfg = { stateDir, cluster: { source: 'file' as const, kubeconfig: '', manifestsDir: manifests } };
  const { log } = capture();

  const m1 = new ClusterModel(['zone']);
  const rt1 = await startCluster({ cfg, model: m1, log });
  assert.equal(rt1.synced(), true);
  await rt1.stop(); // flushes the pending write
  const saved = await loadState(stateDir, log);
  assert.ok(saved, `state file at ${statePath(stateDir)}`);
  assert.equal(saved.state.services.length, 1);
  assert.equal(saved.source, 'file');

  // The manifests directory is gone (e.g. a volume not mounted yet): the agent restarts and serves the saved state.
  rmSync(manifests, { recursive: true });
  const m2 = new ClusterModel(['zone']);
  const rt2 = await startCluster({ cfg, model: m2, log });
  try {
    assert.equal(rt2.offlineLoaded, true);
    assert.equal(rt2.synced(), false, 'file source: loaded state does not count as synced');
    const snap = m2.flush();
    assert.deepEqual([...snap.services.keys()], ['demo/web']);
    assert.equal(snap.endpoints.get('demo/web')?.[0].address, '10.0.0.1');
    assert.equal(snap.nodes.get('edge-a')?.group, 'z1');
  } finally {
    await rt2.stop();
  }
  // Not overwritten by the non-live run.
  assert.equal((await loadState(stateDir, log))?.state.services.length, 1);

  // A corrupt state file is ignored with a warning, never fatal.
  writeFileSync(statePath(stateDir), '{"format":1,"state":');
  const c = capture();
  assert.equal(await loadState(stateDir, c.log), undefined);
  assert.ok(c.lines.some((l) => l.msg === 'ignoring a corrupt last good cluster state file'));
});

test('file source: a ConfigMap-style mount (files symlinked through a swapped ..data directory) is followed', async () => {
  const dir = tmp();
  const { log } = capture();
  mkdirSync(join(dir, '..v1'));
  writeFileSync(join(dir, '..v1', 'web.yaml'), service('web', 80));
  symlinkSync('..v1', join(dir, '..data'));
  symlinkSync(join('..data', 'web.yaml'), join(dir, 'web.yaml'));
  const model = new ClusterModel([]);
  const src = new FileSource({ dir, log, debounceMs: 30, rescanMs: 5000 });
  await src.start(model);
  try {
    assert.equal(model.flush().services.get('demo/web')?.ports[0].port, 80);
    // What the kubelet does on a ConfigMap update: write a new version directory, then atomically swap ..data.
    mkdirSync(join(dir, '..v2'));
    writeFileSync(join(dir, '..v2', 'web.yaml'), service('web', 81));
    symlinkSync('..v2', join(dir, '..data_tmp'));
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
    await waitFor('update through the symlink swap', () => model.flush().services.get('demo/web')?.ports[0].port === 81);
  } finally {
    await src.stop();
  }
});

test('compact: the kept copy of a document is what a JSON round trip made, and an alias cycle is a skipped document', () => {
  const text = `apiVersion: v1
kind: Service
metadata: {name: a-rather-long-service-name, namespace: demo, labels: {__proto__: x, app.kubernetes.io/name: a-rather-long-service-name}}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: 8080}], weird: [.inf, .nan, ~, true, 1.5]}
`;
  const parsed = parseManifest(text).objects.get('Service')![0];
  assert.deepEqual(parsed, JSON.parse(JSON.stringify(parsed)));
  const md = parsed.metadata as Record<string, Record<string, unknown>>;
  assert.equal(Object.getPrototypeOf(md.labels), Object.prototype, '__proto__ is a plain key, never the prototype');
  assert.deepEqual(Object.keys(md.labels), ['__proto__', 'app.kubernetes.io/name']);
  assert.deepEqual((parsed.spec as Record<string, unknown>).weird, [null, null, null, true, 1.5]);
  const shared = { s: 'x'.repeat(40) };
  const c = compact({ a: shared, b: shared });
  assert.notEqual(c.a, c.b, 'aliases are expanded, as JSON did');
  const cyc: Record<string, unknown> = { kind: 'Service' };
  cyc.self = cyc;
  assert.throws(() => compact(cyc), /nesting deeper/);
  const p = parseManifest(`${service('ok', 80)}---\napiVersion: v1\nkind: Service\nmetadata: &m {name: loop, namespace: demo, labels: {x: *m}}\nspec: {ports: [{port: 80}]}\n`);
  assert.deepEqual(p.objects.get('Service')!.map((o) => (o.metadata as { name: string }).name), ['ok']);
  assert.equal(p.skipped.length, 1);
});
