// File source: a directory of multi-document YAML manifests (Service, EndpointSlice, Node, DestinationRule; also
// `kind: List`), watched with fs.watch (a change is read FILE_DEBOUNCE_MS after its first event, so a burst of writes
// is one scan) plus a slow periodic rescan, because fs.watch misses events on some filesystems and across ConfigMap
// symlink swaps. Scans go through one BoundedRunner: one at a time, a change during a scan means one more scan.
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
import { Composer, Parser } from 'yaml';
import type { Logger } from '@edgemesh/common/log';
import { BoundedRunner } from '@edgemesh/common/runner';
import type { ClusterSource, ModelSink, RawObject, ResourceKind } from './types.ts';
import { ManifestError, normalizeDestinationRule, normalizeNode, normalizeService, normalizeSlice, objectKey, RESOURCE_KINDS } from './model.ts';

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
};

/** Checks a raw object the way the model will, so the file source can name the file in the log. Throws ManifestError. */
export function validateObject(kind: ResourceKind, obj: RawObject): void {
  objectKey(obj, kind);
  if (kind === 'Service') normalizeService(obj);
  else if (kind === 'EndpointSlice') normalizeSlice(obj);
  else if (kind === 'Node') normalizeNode(obj, []);
  else normalizeDestinationRule(obj);
}

export interface ParsedManifest {
  objects: ByKind;
  /** Per skipped document: its index in the file and why. */
  skipped: { doc: number; reason: string }[];
  ignored: number;
}

/**
 * Parses one manifest file's text. Throws (with the YAML error) when any document has a syntax error: the caller
 * keeps the file's last good content. Pure.
 */
export function parseManifest(text: string): ParsedManifest {
  const out: ParsedManifest = { objects: new Map(RESOURCE_KINDS.map((k) => [k, []])), skipped: [], ignored: 0 };
  // Documents are composed and converted one at a time (what parseAllDocuments does, without holding every
  // document's syntax tree at once: a 5,000-Service directory otherwise peaks at several times its final heap).
  const values: unknown[] = [];
  const composer = new Composer({ prettyErrors: false });
  for (const d of composer.compose(new Parser().parse(text), true, text.length)) {
    if (d.errors.length) throw new ManifestError(`YAML error: ${d.errors[0].message.split('\n')[0]}`);
    values.push(d.toJS({ maxAliasCount: 100 }));
  }
  values.forEach((value, i) => {
    if (value === null || value === undefined) return; // empty document (e.g. a trailing ---)
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
        validateObject(k.kind, item as RawObject);
        out.objects.get(k.kind)!.push(item as RawObject);
      } catch (e) {
        out.skipped.push({ doc: i, reason: (e as Error).message });
      }
    }
  });
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
