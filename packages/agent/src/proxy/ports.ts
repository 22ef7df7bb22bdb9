// The listener port of every service port, persisted in stateDir like the fake-IP table: a restarted agent and a
// successor taking over bind the same ports, so the interception rules in the kernel stay valid throughout. Written
// atomically (temp file, fsync, rename), mode 0600, only by the agent that owns the rules; a successor that has not
// taken over yet only reads it (and reads it again for service ports it does not know: the running agent may have
// just added them).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomicSync } from '@edgemesh/common/fsutil';
import type { Logger } from '@edgemesh/common/log';

export const LISTENER_PORTS_FILE = 'listener-ports.json';
const FORMAT = 1;

/** Parses the file's text into service-port id -> port; throws on anything but the known format. Pure. */
export function parsePortTable(text: string): Map<string, number> {
  const doc = JSON.parse(text) as { format?: unknown; ports?: unknown };
  if (doc.format !== FORMAT || !doc.ports || typeof doc.ports !== 'object' || Array.isArray(doc.ports)) throw new Error('unknown format');
  const out = new Map<string, number>();
  const seen = new Set<number>();
  for (const [id, p] of Object.entries(doc.ports as Record<string, unknown>)) {
    // A port twice (a corrupt or hand-edited file) is dropped both times rather than shared by two service ports.
    if (!Number.isInteger(p) || (p as number) < 1 || (p as number) > 65535) continue;
    if (seen.has(p as number)) { for (const [k, v] of out) if (v === p) out.delete(k); continue; }
    seen.add(p as number);
    out.set(id, p as number);
  }
  return out;
}

export function renderPortTable(ports: ReadonlyMap<string, number>): string {
  return JSON.stringify({ format: FORMAT, ports: Object.fromEntries([...ports].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) }, null, 1) + '\n';
}

export class ListenerPorts {
  private readonly file: string;
  private readonly log: Logger;
  private ports = new Map<string, number>();
  private dirty = false;
  private writable: boolean;
  private warned = false;

  constructor(o: { stateDir: string; log: Logger; writable: boolean }) {
    this.file = join(o.stateDir, LISTENER_PORTS_FILE);
    this.log = o.log;
    this.writable = o.writable;
    const loaded = this.read();
    if (loaded) {
      this.ports = loaded;
      this.log.info({ file: this.file, ports: loaded.size }, 'loaded the listener port table');
    }
  }

  /** The persisted port of a service port. Not writable (following another agent): unknown ids are read again. */
  get(id: string): number | undefined {
    const p = this.ports.get(id);
    if (p !== undefined || this.writable) return p;
    const fresh = this.read();
    if (!fresh) return undefined;
    for (const [k, v] of fresh) if (!this.ports.has(k)) this.ports.set(k, v);
    return this.ports.get(id);
  }

  set(id: string, port: number): void {
    if (this.ports.get(id) === port) return;
    this.ports.set(id, port);
    this.dirty = true;
  }

  delete(id: string): void {
    if (this.ports.delete(id)) this.dirty = true;
  }

  /** This agent owns the rules now: it writes the table from here on (and at once). */
  setWritable(w: boolean): void {
    this.writable = w;
    if (w) {
      this.dirty = true;
      this.flush();
    }
  }

  /** Writes the table when it changed and this agent owns it. */
  flush(): void {
    if (!this.dirty || !this.writable) return;
    try {
      writeFileAtomicSync(this.file, renderPortTable(this.ports), 0o600);
      this.dirty = false;
      this.warned = false;
    } catch (e) {
      if (!this.warned) this.log.warn({ file: this.file, err: (e as Error).message }, 'cannot persist the listener port table; a restart may change listener ports');
      this.warned = true;
    }
  }

  private read(): Map<string, number> | undefined {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') this.log.warn({ file: this.file, err: (e as Error).message }, 'cannot read the listener port table');
      return undefined;
    }
    try {
      return parsePortTable(text);
    } catch (e) {
      this.log.warn({ file: this.file, err: (e as Error).message }, 'the listener port table is unreadable; ignoring it');
      return undefined;
    }
  }
}
