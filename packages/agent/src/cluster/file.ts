// File source: a directory of multi-document YAML manifests (Service, EndpointSlice, Node, and Istio DestinationRule,
// Gateway, VirtualService, and kubernetes.io/tls Secrets for the gateway; also `kind: List`), watched with fs.watch (a
// change is read FILE_DEBOUNCE_MS after its first event, so a burst of writes is one scan) plus a slow periodic rescan,
// because fs.watch misses events on some filesystems and across ConfigMap symlink swaps. Scans go through one
// BoundedRunner: one at a time, a change during a scan means one more scan.
//
// Rules:
// - Files: *.yaml, *.yml, *.json directly in the directory; hidden files and editor backups (`~`) are ignored.
// - A document that is valid YAML but not a usable object (unknown shape, missing name, bad port, ...) is skipped
//   with a warning naming the file, the document index and the reason; the file's other documents apply.
// - A file with a YAML syntax error or that cannot be read keeps its last good content (a half-written file must
//   not make Services vanish). A deleted file removes its objects.
// - Other kinds (Deployments, ConfigMaps, ...) are ignored silently (debug log): manifest directories mix them.
// - After each scan that changed anything, every affected kind is replace()d with the union of all files, so the
//   model always sees a consistent directory.
import { watch, type FSWatcher } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { CORE_SCHEMA, loadAll, YAMLException } from 'js-yaml';
import type { Logger } from '@edgemesh/common/log';
import { BoundedRunner } from '@edgemesh/common/runner';
import type { ClusterSource, ModelSink, RawObject, ResourceKind } from './types.ts';
import { ManifestError, normalizeDestinationRule, normalizeNode, objectKey, prenormalize, RESOURCE_KINDS } from './model.ts';
import { normalizeGateway, normalizeTlsSecret, normalizeVirtualService } from './istio.ts';

/** A change event is read this long after it (editors write in several steps; the burst becomes one scan). */
export const FILE_DEBOUNCE_MS = 150;
/** Safety-net rescan period (fs.watch is not reliable everywhere); unchanged files cost one stat each. */
export const FILE_RESCAN_MS = 30_000;
export const MANIFEST_EXTENSIONS = ['.yaml', '.yml', '.json'];

export interface FileSourceOptions {
  dir: string;
  log: Logger;
  debounceMs?: number;
  rescanMs?: number;
}

type ByKind = Map<ResourceKind, RawObject[]>;

interface FileEntry {
  /** mtime+size of the content below (good or bad), to skip unchanged files on rescans. */
  sig: string;
  /** Last good content; undefined when the file never parsed. */
  objects?: ByKind;
}

const KIND_API: Record<string, { kind: ResourceKind; api: (v: string) => boolean }> = {
  Service: { kind: 'Service', api: (v) => v === 'v1' },
  EndpointSlice: { kind: 'EndpointSlice', api: (v) => v === 'discovery.k8s.io/v1' || v === 'discovery.k8s.io/v1beta1' },
  Node: { kind: 'Node', api: (v) => v === 'v1' },
  DestinationRule: { kind: 'DestinationRule', api: (v) => v.startsWith('networking.istio.io/') },
  Gateway: { kind: 'Gateway', api: (v) => v.startsWith('networking.istio.io/') },
  VirtualService: { kind: 'VirtualService', api: (v) => v.startsWith('networking.istio.io/') },
  Secret: { kind: 'Secret', api: (v) => v === 'v1' },
};

/** Checks a raw object the way the model will, so the file source can name the file in the log. Throws ManifestError. */
export function validateObject(kind: ResourceKind, obj: RawObject): void {
  objectKey(obj, kind);
  if (kind === 'Service' || kind === 'EndpointSlice') prenormalize(kind, obj); // the model reuses it (parsed copies are never modified)
  else if (kind === 'Node') normalizeNode(obj, []);
  else if (kind === 'Gateway') normalizeGateway(obj);
  else if (kind === 'VirtualService') normalizeVirtualService(obj);
  else if (kind === 'Secret') normalizeTlsSecret(obj);
  else normalizeDestinationRule(obj);
}

export interface ParsedManifest {
  objects: ByKind;
  /** Per skipped document: its index in the file and why. */
  skipped: { doc: number; reason: string }[];
  ignored: number;
}

/** Aliases (`*name`) one document may use: manifests need few, and a chain of them expands exponentially wherever
 * the object is later serialised (the state file, content comparisons). */
export const MANIFEST_MAX_ALIASES = 100;
/** Nesting depth of one document (a Kubernetes object is far shallower). */
export const MANIFEST_MAX_DEPTH = 100;

/** A document start (`---` at the start of a line, then a space or the end of the line). */
const DOC_START = /^---(?=[ \t\r\n]|$)/gm;
/**
 * Documents are parsed in runs of about this many bytes: the parser's transient memory (its event list) stays that of
 * one run, whatever the size of the file, while a run is long enough that the per-call cost of the parser (option
 * objects, state) does not dominate, as it does for one call per small document.
 */
export const YAML_CHUNK_BYTES = 64 * 1024;

/**
 * Splits a multi-document YAML text at `---` lines into runs of whole documents of about `chunkBytes` (a larger
 * document is a run of its own), so the parser never holds the events of more than one run: a 10,000-document file
 * parses in the memory of a few dozen documents. Exact: YAML forbids a `---` line inside any scalar or collection.
 * A text with directives (`%YAML`, `%TAG`: they belong to the document after them) is returned whole. Pure.
 */
export function yamlChunks(text: string, chunkBytes = YAML_CHUNK_BYTES): { start: number; text: string }[] {
  if (/^%/m.test(text)) return [{ start: 0, text }];
  const out: { start: number; text: string }[] = [];
  let prev = 0;
  for (const m of text.matchAll(DOC_START)) {
    if (m.index - prev >= chunkBytes) {
      out.push({ start: prev, text: text.slice(prev, m.index) });
      prev = m.index;
    }
  }
  out.push({ start: prev, text: text.slice(prev) });
  return out;
}

/** The documents of a manifest file: a JSON text (an object or a List) with JSON.parse, else YAML one document at a
 * time (js-yaml, YAML 1.2 core schema: what kubectl accepts). Throws ManifestError on a syntax error. */
function* manifestValues(text: string): Generator<unknown> {
  const first = /\S/.exec(text)?.[0];
  if (first === '{' || first === '[') {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      value = undefined; // not JSON after all: flow-style YAML, parsed below
    }
    if (value !== undefined) {
      yield value;
      return;
    }
  }
  for (const chunk of yamlChunks(text)) {
    let docs: unknown[];
    try {
      docs = loadAll(chunk.text, { schema: CORE_SCHEMA, maxAliases: MANIFEST_MAX_ALIASES, maxDepth: MANIFEST_MAX_DEPTH });
    } catch (e) {
      if (!(e instanceof YAMLException)) throw e;
      const line = (e.mark?.line ?? 0) + 1 + (text.slice(0, chunk.start).match(/\n/g)?.length ?? 0);
      throw new ManifestError(`YAML error: ${e.reason} (line ${line})`);
    }
    yield* docs;
  }
}

/**
 * Parses one manifest file's text. Throws (with the YAML error) when any document has a syntax error: the caller
 * keeps the file's last good content. Each document is checked as soon as it is parsed and only the objects of the
 * kinds we use are kept. Pure.
 */
export function parseManifest(text: string): ParsedManifest {
  const out: ParsedManifest = { objects: new Map(RESOURCE_KINDS.map((k) => [k, []])), skipped: [], ignored: 0 };
  let i = -1;
  for (const value of manifestValues(text)) {
    i++;
    if (value === null || value === undefined) continue; // empty document (e.g. a trailing ---)
    const items = isObj(value) && value.kind === 'List' && Array.isArray(value.items) ? value.items : [value];
    for (const item of items) {
      try {
        if (!isObj(item)) throw new ManifestError('not a mapping');
        const kindName = item.kind;
        if (typeof kindName !== 'string' || !kindName) throw new ManifestError('kind is missing');
        const k = KIND_API[kindName];
        if (!k) { out.ignored++; continue; }
        const api = typeof item.apiVersion === 'string' ? item.apiVersion : '';
        if (!k.api(api)) throw new ManifestError(`${kindName}: unsupported apiVersion ${JSON.stringify(api)}`);
        // The kept copy is the one checked: the model takes its Service and EndpointSlice normalised forms from there.
        const kept = compact(item as RawObject);
        validateObject(k.kind, kept);
        out.objects.get(k.kind)!.push(kept);
      } catch (e) {
        out.skipped.push({ doc: i, reason: (e as Error).message });
      }
    }
  }
  return out;
}

/**
 * Strings this long or longer may be V8 slices of the text they were cut from (shorter ones are always copies): the
 * parser's scalars are slices of its input, so one kept value keeps that whole chunk of manifest text alive.
 */
const SLICED_MIN_CHARS = 13;

/**
 * A compact copy of a parsed document for keeping: fresh flat strings (each parser string is a slice of the file's
 * text: kept, they held 3.7 MiB of manifest text for 5,000 Services) and exact-size arrays (the parser's have spare
 * capacity). The same result as a JSON round trip (non-finite numbers become null, `__proto__` stays a plain key), at
 * about a third of its cost: that round trip was a tenth of the file source's start with 5,000 Services. A document
 * nested deeper than MANIFEST_MAX_DEPTH (only an alias to its own ancestor can be: the parser bounds the rest) is
 * rejected, as JSON.stringify rejected the cycle. Throws ManifestError.
 */
export function compact(o: RawObject): RawObject {
  return copyValue(o, 0) as RawObject;
}

function copyValue(v: unknown, depth: number): unknown {
  if (typeof v === 'string') return v.length < SLICED_MIN_CHARS ? v : (JSON.parse(JSON.stringify(v)) as string);
  if (typeof v === 'number') return Number.isFinite(v) ? v : null;
  if (typeof v !== 'object' || v === null) return v;
  if (depth >= MANIFEST_MAX_DEPTH) throw new ManifestError(`nesting deeper than ${MANIFEST_MAX_DEPTH} (an alias to its own ancestor?)`);
  if (Array.isArray(v)) return v.map((x) => copyValue(x, depth + 1));
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(v)) {
    const x = copyValue((v as Record<string, unknown>)[k], depth + 1);
    // An assignment to __proto__ would set the copy's prototype: defined as an own data property, as JSON.parse does.
    if (k === '__proto__') Object.defineProperty(out, k, { value: x, enumerable: true, writable: true, configurable: true });
    else out[k] = x;
  }
  return out;
}

const isObj = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v);

export function isManifestName(name: string): boolean {
  return !name.startsWith('.') && !name.endsWith('~') && MANIFEST_EXTENSIONS.some((e) => name.endsWith(e));
}

export class FileSource implements ClusterSource {
  private readonly opts: FileSourceOptions;
  private readonly files = new Map<string, FileEntry>();
  private sink: ModelSink | undefined;
  private watcher: FSWatcher | undefined;
  private runner: BoundedRunner | undefined;
  private readonly forced = new Set<string>();
  private dirOk = false;
  private dirIno: number | undefined;
  private dirError: string | undefined;
  private stopped = false;

  constructor(opts: FileSourceOptions) {
    this.opts = opts;
  }

  synced(): boolean {
    return this.dirOk;
  }

  /** The file source is local: whenever it has read the directory, the model is live. */
  live(): boolean {
    return this.dirOk;
  }

  async start(sink: ModelSink): Promise<void> {
    this.sink = sink;
    this.stopped = false;
    // scanOnce handles its own errors (an unreadable directory keeps the state), so the runner never retries.
    this.runner = new BoundedRunner({
      maxIntervalMs: this.opts.rescanMs ?? FILE_RESCAN_MS,
      run: async (reason) => {
        if (reason === 'periodic') this.ensureWatch();
        await this.scanOnce();
      },
    });
    this.ensureWatch();
    await this.scan();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.watcher?.close();
    this.watcher = undefined;
    await this.runner?.stop();
  }

  private ensureWatch(): void {
    if (this.watcher || this.stopped) return;
    try {
      this.watcher = watch(this.opts.dir, { persistent: false }, (_ev, name) => {
        if (name) this.forced.add(String(name));
        this.schedule(this.opts.debounceMs ?? FILE_DEBOUNCE_MS);
      });
      this.watcher.on('error', (e) => {
        this.opts.log.warn({ dir: this.opts.dir, reason: e.message }, 'manifests directory watch failed; relying on rescans until it can be re-established');
        this.watcher?.close();
        this.watcher = undefined;
        this.schedule(0);
      });
    } catch {
      // The directory does not exist (yet): the scan logs it; the periodic rescan retries the watch.
      this.watcher = undefined;
    }
  }

  private schedule(ms: number): void {
    if (!this.stopped) this.runner?.run(ms);
  }

  /** Scans the directory now and resolves when a scan that started after this call has finished. */
  async scan(): Promise<void> {
    if (this.runner) await this.runner.runNow();
  }

  private async scanOnce(): Promise<void> {
    const { dir, log } = this.opts;
    let names: string[];
    try {
      // A directory that was replaced (deleted and created again) leaves fs.watch on the old inode: re-arm it.
      const ino = (await stat(dir)).ino;
      if (this.dirIno !== undefined && ino !== this.dirIno) {
        this.watcher?.close();
        this.watcher = undefined;
        this.ensureWatch();
      }
      this.dirIno = ino;
      names = (await readdir(dir)).filter(isManifestName).sort();
    } catch (e) {
      const reason = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      if (reason !== this.dirError) log.warn({ dir, reason }, 'cannot read the manifests directory; keeping the current cluster state');
      this.dirError = reason;
      return;
    }
    if (this.dirError) log.info({ dir }, 'manifests directory readable again');
    this.dirError = undefined;
    const forced = new Set(this.forced);
    this.forced.clear();
    const changedKinds = new Set<ResourceKind>();
    const touch = (objs: ByKind | undefined) => {
      for (const [k, list] of objs ?? []) if (list.length) changedKinds.add(k);
    };
    // Deleted files remove their objects.
    for (const [name, entry] of this.files) {
      if (!names.includes(name)) {
        this.files.delete(name);
        touch(entry.objects);
        log.info({ file: name }, 'manifest file removed');
      }
    }
    for (const name of names) {
      const path = join(dir, name);
      const prev = this.files.get(name);
      let sig: string;
      try {
        const st = await stat(path);
        if (!st.isFile()) continue;
        sig = `${st.mtimeMs}:${st.size}:${st.ino}`;
      } catch (e) {
        // Vanished between readdir and stat: the next scan removes it.
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') log.warn({ file: name, reason: (e as Error).message }, 'cannot stat manifest file; keeping its last good content');
        continue;
      }
      if (prev && prev.sig === sig && !forced.has(name)) continue;
      let text: string;
      try {
        text = await readFile(path, 'utf8');
      } catch (e) {
        log.warn({ file: name, reason: (e as NodeJS.ErrnoException).code ?? (e as Error).message }, 'cannot read manifest file; keeping its last good content');
        continue;
      }
      let parsed: ParsedManifest;
      try {
        parsed = parseManifest(text);
      } catch (e) {
        if (prev?.sig !== sig) log.warn({ file: name, reason: (e as Error).message }, 'bad manifest file; keeping its last good content');
        this.files.set(name, { sig, objects: prev?.objects });
        continue;
      }
      for (const s of parsed.skipped) log.warn({ file: name, doc: s.doc, reason: s.reason }, 'skipped a bad manifest document');
      if (parsed.ignored) log.debug({ file: name, ignored: parsed.ignored }, 'ignored documents of other kinds');
      if (sameContent(prev?.objects, parsed.objects)) {
        this.files.set(name, { sig, objects: prev?.objects });
        continue;
      }
      touch(prev?.objects);
      touch(parsed.objects);
      // A file that now has none of a kind it had before still changes that kind (covered by touch(prev)).
      this.files.set(name, { sig, objects: parsed.objects });
    }
    const first = !this.dirOk;
    this.dirOk = true;
    if (this.stopped || !this.sink) return;
    const kinds = first ? RESOURCE_KINDS : RESOURCE_KINDS.filter((k) => changedKinds.has(k));
    if (!kinds.length) return;
    for (const kind of kinds) {
      const all: RawObject[] = [];
      const seen = new Map<string, string>();
      for (const [name, entry] of [...this.files].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
        for (const o of entry.objects?.get(kind) ?? []) {
          const key = objectKey(o, kind);
          const other = seen.get(key);
          if (other !== undefined) log.warn({ file: name, other, kind, key }, 'object defined in two manifest files; the later file wins');
          seen.set(key, name);
          all.push(o);
        }
      }
      this.sink.replace(kind, all);
    }
    log.debug({ kinds, files: this.files.size }, 'manifests applied');
  }
}

function sameContent(a: ByKind | undefined, b: ByKind): boolean {
  if (!a) return [...b.values()].every((l) => l.length === 0);
  for (const k of RESOURCE_KINDS) {
    const x = a.get(k) ?? [];
    const y = b.get(k) ?? [];
    if (x.length !== y.length) return false;
    for (let i = 0; i < x.length; i++) if (JSON.stringify(x[i]) !== JSON.stringify(y[i])) return false;
  }
  return true;
}
