// The server's fleet store: the latest report of every agent (REPORT on the control connection), bounded in agents,
// bytes and rate; reports of agents that disconnected are kept DOWN_GRACE_MS, marked down, then forgotten. The view
// (packages/common/src/fleet/view.ts) is computed from it on demand and cached briefly.
import type { Registry } from 'prom-client';
import { Counter, Gauge } from 'prom-client';
import type { Logger } from '@edgemesh/common/log';
import { MAX_REPORT_BYTES, parseReport, type FleetReport } from '@edgemesh/common/fleet/report';
import { fleetView, type FleetEntry, type FleetView } from '@edgemesh/common/fleet/view';

/** Agents whose reports are kept (300 sites x ~30 nodes); a new agent beyond it is refused unless a down one can go. */
export const MAX_FLEET_AGENTS = 10_000;
/** Bytes of report JSON kept in all (the parsed objects take ~2-3x this in memory). */
export const MAX_FLEET_BYTES = 64 * 1024 * 1024;
/** A disconnected agent's last report stays this long, marked down (a restart or a short outage keeps its place). */
export const DOWN_GRACE_MS = 10 * 60_000;
/** An agent may replace its report at most this often (agents send on change at most every 2 s, else every 15 s). */
export const REPORT_MIN_INTERVAL_MS = 1_000;
/** How often disconnections are looked for (they are also looked for on every read). */
export const SWEEP_MS = 5_000;
/** A computed view is reused this long, whatever arrived meanwhile (several UI tabs, the CLI and /metrics share it, and
 *  10,000 agents send ~700 reports/s: recomputing on each would be quadratic). */
export const VIEW_CACHE_MS = 1_000;
/** At most one log line per this interval about refused reports (an agent could send them in a loop). */
export const REFUSED_LOG_EVERY_MS = 60_000;

export type ReportOutcome = 'ok' | 'invalid' | 'too_large' | 'rate_limited' | 'over_capacity';

interface Stored {
  report: FleetReport;
  bytes: number;
  receivedAt: number;
  downSince: number | null;
}

export interface FleetStoreOptions {
  registry: Registry;
  log: Logger;
  /** The agents connected to this server now, with when they connected (ms since the epoch). */
  connected: () => ReadonlyMap<string, { since: number }>;
  now?: () => number;
  /** Overrides of the limits (tests). */
  limits?: Partial<{ agents: number; bytes: number; graceMs: number; minIntervalMs: number }>;
}

export class FleetStore {
  private readonly opts: FleetStoreOptions;
  private readonly reports = new Map<string, Stored>();
  private totalBytes = 0;
  private timer: NodeJS.Timeout | undefined;
  private cached: { at: number; view: FleetView } | undefined;
  private lastRefusedLog = 0;
  private readonly now: () => number;
  private readonly limits: { agents: number; bytes: number; graceMs: number; minIntervalMs: number };
  private readonly received: Counter;

  constructor(opts: FleetStoreOptions) {
    this.opts = opts;
    this.now = opts.now ?? Date.now;
    this.limits = { agents: MAX_FLEET_AGENTS, bytes: MAX_FLEET_BYTES, graceMs: DOWN_GRACE_MS, minIntervalMs: REPORT_MIN_INTERVAL_MS, ...opts.limits };
    const r = [opts.registry];
    const self = this;
    this.received = new Counter({ name: 'edgemesh_server_fleet_reports_total', help: 'Fleet reports from agents by outcome (ok, invalid, too_large, rate_limited, over_capacity)', labelNames: ['outcome'], registers: r });
    new Gauge({
      name: 'edgemesh_server_fleet_agents', help: 'Agents in the fleet view by state (ready, not_ready, down, no_report)', labelNames: ['state'], registers: r,
      collect() {
        const s = self.view().summary;
        this.set({ state: 'ready' }, s.ready);
        this.set({ state: 'not_ready' }, s.notReady);
        this.set({ state: 'down' }, s.down);
        this.set({ state: 'no_report' }, s.noReport);
      },
    });
    new Gauge({
      name: 'edgemesh_server_fleet_links', help: 'Links between agents in the fleet view by path', labelNames: ['path'], registers: r,
      collect() { for (const [path, n] of Object.entries(self.view().summary.links)) this.set({ path }, n); },
    });
    new Gauge({
      name: 'edgemesh_server_fleet_strict_empty_scopes', help: 'Strict Services with no endpoint in a group (or on a node) of the fleet', registers: r,
      collect() { this.set(self.view().warnings.filter((w) => w.kind === 'strict-empty').length); },
    });
    new Gauge({
      name: 'edgemesh_server_fleet_stored_bytes', help: 'Bytes of fleet report JSON held', registers: r,
      collect() { this.set(self.totalBytes); },
    });
  }

  start(): void {
    this.timer = setInterval(() => this.sweep(), SWEEP_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** A REPORT from the authenticated agent `node` (its JSON already parsed, `bytes` long). Never throws. */
  put(node: string, value: unknown, bytes: number): ReportOutcome {
    const outcome = this.accept(node, value, bytes);
    this.received.inc({ outcome });
    return outcome;
  }

  private accept(node: string, value: unknown, bytes: number): ReportOutcome {
    const now = this.now();
    const prev = this.reports.get(node);
    if (bytes > MAX_REPORT_BYTES) return this.refused(node, 'too_large', `${bytes} bytes`);
    if (prev && prev.downSince === null && now - prev.receivedAt < this.limits.minIntervalMs) return 'rate_limited';
    const parsed = parseReport(value, bytes);
    if (!parsed.ok) return this.refused(node, parsed.reason === 'too-large' ? 'too_large' : 'invalid', parsed.detail);
    const growth = bytes - (prev?.bytes ?? 0);
    if ((!prev && this.reports.size >= this.limits.agents) || this.totalBytes + growth > this.limits.bytes) {
      // Room is made only by forgetting agents that are down, oldest first; never an agent that is up.
      this.evictDown(!prev && this.reports.size >= this.limits.agents ? 1 : 0, this.totalBytes + growth - this.limits.bytes);
      if ((!prev && this.reports.size >= this.limits.agents) || this.totalBytes + growth > this.limits.bytes) {
        return this.refused(node, 'over_capacity', `${this.reports.size} agents, ${this.totalBytes} bytes held`);
      }
    }
    this.totalBytes += growth;
    this.reports.set(node, { report: parsed.report, bytes, receivedAt: now, downSince: null });
    return 'ok';
  }

  private refused(node: string, outcome: ReportOutcome, detail: string): ReportOutcome {
    const now = this.now();
    if (now - this.lastRefusedLog >= REFUSED_LOG_EVERY_MS) {
      this.lastRefusedLog = now;
      this.opts.log.warn({ node, outcome, detail }, 'refused a fleet report (further refusals are counted in edgemesh_server_fleet_reports_total)');
    }
    return outcome;
  }

  /** Forgets down agents, oldest disconnection first, until `count` entries and `bytes` bytes are freed. */
  private evictDown(count: number, bytes: number): void {
    const down = [...this.reports].filter(([, s]) => s.downSince !== null).sort((a, b) => a[1].downSince! - b[1].downSince!);
    for (const [node, s] of down) {
      if (count <= 0 && bytes <= 0) break;
      this.forget(node, s);
      count--;
      bytes -= s.bytes;
    }
  }

  private forget(node: string, s: Stored): void {
    this.reports.delete(node);
    this.totalBytes -= s.bytes;
  }

  /** Marks agents that left as down and forgets those down longer than the grace period. */
  sweep(): void {
    const now = this.now();
    const connected = this.opts.connected();
    for (const [node, s] of this.reports) {
      if (connected.has(node)) s.downSince = null;
      else if (s.downSince === null) s.downSince = now;
      else if (now - s.downSince > this.limits.graceMs) {
        this.forget(node, s);
      }
    }
  }

  /** Every agent known: those with a report (up or down) and those connected without one. */
  entries(): FleetEntry[] {
    this.sweep();
    const out: FleetEntry[] = [];
    for (const [node, s] of this.reports) out.push({ node, report: s.report, state: s.downSince === null ? 'up' : 'down', receivedAt: s.receivedAt, downSince: s.downSince });
    for (const [node, a] of this.opts.connected()) if (!this.reports.has(node)) out.push({ node, report: null, state: 'up', receivedAt: a.since, downSince: null });
    return out;
  }

  view(): FleetView {
    const now = this.now();
    if (this.cached && now - this.cached.at < VIEW_CACHE_MS && now >= this.cached.at) return this.cached.view;
    const view = fleetView(this.entries(), now);
    this.cached = { at: now, view };
    return view;
  }

  get size(): number {
    return this.reports.size;
  }

  get bytes(): number {
    return this.totalBytes;
  }
}
