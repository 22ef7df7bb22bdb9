// Offline autonomy: the last good raw cluster state, persisted to `stateDir/cluster-state.json` and loaded at start
// before the source connects, so an agent that restarts while the API server is unreachable keeps serving.
//
// Rules:
// - Written only while the source reports live-synced (never a half-listed state): the first time right away (the
//   agent: STATE_FIRST_WRITE_DELAY_MS after its source synced, once it started), then at most once per
//   STATE_WRITE_INTERVAL_MS, atomically (temp file + fsync + rename), and only when the content changed.
// - A missing file is normal (first start); a corrupt or unreadable one is logged and ignored.
// - Loading feeds the sink with replace() per kind; the live source replaces each kind again when it lists.
import { createHash } from 'node:crypto';
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '@edgemesh/common/log';
import type { ModelSink, RawObject, ResourceKind, Snapshot } from './types.ts';
import type { RawState } from './model.ts';

export const STATE_FILE = 'cluster-state.json';
/** At most one write per this interval (trailing: the newest state is what gets written). */
export const STATE_WRITE_INTERVAL_MS = 2000;
/**
 * The agent's first write waits this long after its source synced: with 5,000 Services it serialises a 4 MiB JSON
 * text and hashes it on the event loop, which sat on the start -> ready path (DNS, tunnel and proxy start after the
 * source); ready comes about a second later. Until then the previous run's file stays, as during any write interval.
 */
export const STATE_FIRST_WRITE_DELAY_MS = 2000;
export const STATE_FORMAT = 1;

interface StateFileV1 {
  format: 1;
  savedAt: string;
  source: string;
  state: RawState;
}

export function statePath(stateDir: string): string {
  return join(stateDir, STATE_FILE);
}

const isObjArray = (v: unknown): v is RawObject[] => Array.isArray(v) && v.every((o) => o && typeof o === 'object' && !Array.isArray(o));

/** Reads the last good state. Undefined when absent, unreadable or corrupt (logged). */
export async function loadState(stateDir: string, log: Logger): Promise<{ state: RawState; savedAt: string; source: string } | undefined> {
  const file = statePath(stateDir);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT') log.warn({ file, reason: code ?? (e as Error).message }, 'cannot read the last good cluster state; starting without it');
    return undefined;
  }
  try {
    const parsed = JSON.parse(text) as Partial<StateFileV1>;
    const st = parsed.state as Partial<RawState> | undefined;
    if (parsed.format !== STATE_FORMAT || !st || !isObjArray(st.services) || !isObjArray(st.endpointSlices) || !isObjArray(st.nodes)) {
      throw new Error(`unexpected shape (format ${String(parsed.format)})`);
    }
    const opt = (v: unknown): RawObject[] => (isObjArray(v) ? v : []);
    const state: RawState = {
      services: st.services, endpointSlices: st.endpointSlices, nodes: st.nodes, destinationRules: opt(st.destinationRules),
      gateways: opt(st.gateways), virtualServices: opt(st.virtualServices), secrets: opt(st.secrets),
    };
    return { state, savedAt: String(parsed.savedAt ?? ''), source: String(parsed.source ?? '') };
  } catch (e) {
    log.warn({ file, reason: (e as Error).message }, 'ignoring a corrupt last good cluster state file');
    return undefined;
  }
}

/** Feeds a loaded state into the sink, one consistent replace() per kind. */
export function applyState(sink: ModelSink, state: RawState): void {
  const kinds: [ResourceKind, RawObject[]][] = [
    ['Service', state.services], ['EndpointSlice', state.endpointSlices], ['Node', state.nodes], ['DestinationRule', state.destinationRules],
    ['Gateway', state.gateways], ['VirtualService', state.virtualServices], ['Secret', state.secrets],
  ];
  for (const [kind, objs] of kinds) sink.replace(kind, objs);
}

/** Writes `text` to `file` atomically: a temp file in the same directory, fsync, rename over the target. */
export async function writeAtomic(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}`;
  const fh = await open(tmp, 'w', 0o600);
  try {
    await fh.writeFile(text, 'utf8');
    await fh.datasync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, file);
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw e;
  }
}

export interface StateWriterOptions {
  stateDir: string;
  log: Logger;
  /** Name of the source, recorded in the file. */
  source: string;
  /** The state to write (the model's accepted raw objects). */
  read: () => RawState;
  /** True when the current model content came from a live, fully synced source (never write a partial state). */
  live: () => boolean;
  /**
   * A number that changes whenever what read() returns may have changed (ClusterModel.changes). When it is the one
   * last written (or marked written), the write is skipped without reading and serialising the state: with 5,000
   * Services that is a 4 MiB JSON text and its SHA-256, which start-up otherwise made twice (the write once the source
   * is live, then the one of its first snapshot).
   */
  version?: () => number;
  intervalMs?: number;
  /** Delay of the first write after a change (default 0: right away). */
  firstWriteDelayMs?: number;
}

/** Persists the model's raw state after changes, throttled. Call `changed()` on every published snapshot. */
const digestOf = (text: string) => createHash('sha256').update(text).digest('base64');

export class StateWriter {
  private readonly opts: StateWriterOptions;
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> = Promise.resolve();
  /** SHA-256 of the state last written (not its text: that is megabytes with thousands of Services). */
  private lastDigest: string | undefined;
  /** opts.version() of the state last written or marked written. */
  private lastVersion: number | undefined;
  private lastError: string | undefined;
  private stopped = false;
  /** Number of completed writes (for tests and metrics). */
  writes = 0;

  constructor(opts: StateWriterOptions) {
    this.opts = opts;
  }

  /** Subscribe-compatible: call on every snapshot. */
  readonly onSnapshot = (_snap?: Snapshot): void => this.changed();

  changed(): void {
    if (this.stopped || this.timer) return;
    // The first good state goes to disk as soon as the source is live; after that at most once per interval.
    const delay = this.writes === 0 ? this.opts.firstWriteDelayMs ?? 0 : this.opts.intervalMs ?? STATE_WRITE_INTERVAL_MS;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.writeNow();
    }, delay);
    this.timer.unref();
  }

  /** Writes the current state now if the source is live and the content changed. Serialised. */
  writeNow(): Promise<void> {
    this.writing = this.writing.then(() => this.doWrite());
    return this.writing;
  }

  private async doWrite(): Promise<void> {
    if (!this.opts.live()) return;
    const version = this.opts.version?.();
    if (version !== undefined && version === this.lastVersion) return;
    const state = this.opts.read();
    const body = JSON.stringify(state);
    const digest = digestOf(body);
    if (digest === this.lastDigest) {
      this.lastVersion = version;
      return;
    }
    const text = `{"format":${STATE_FORMAT},"savedAt":${JSON.stringify(new Date().toISOString())},"source":${JSON.stringify(this.opts.source)},"state":${body}}\n`;
    const file = statePath(this.opts.stateDir);
    try {
      await mkdir(this.opts.stateDir, { recursive: true });
      await writeAtomic(file, text);
      this.lastDigest = digest;
      this.lastVersion = version;
      this.writes++;
      if (this.lastError) this.opts.log.info({ file }, 'cluster state written again');
      this.lastError = undefined;
      this.opts.log.debug({ file, bytes: text.length }, 'cluster state written');
    } catch (e) {
      const reason = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      // Log a failure once per distinct reason, not on every change.
      if (reason !== this.lastError) this.opts.log.warn({ file, reason }, 'cannot write the last good cluster state');
      this.lastError = reason;
    }
  }

  /** Writes what is pending (if live) and stops. */
  async stop(): Promise<void> {
    const pending = this.timer !== undefined;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.stopped = true;
    if (pending) await this.writeNow();
    await this.writing;
  }

  /** Marks a text as already on disk (the loaded state), so it is not rewritten unchanged. */
  markWritten(state: RawState): void {
    this.lastDigest = digestOf(JSON.stringify(state));
    this.lastVersion = this.opts.version?.();
  }
}
