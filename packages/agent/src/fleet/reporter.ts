// Sends the agent's fleet report to every connected server: at once when a server connection comes up, within
// REPORT_CHECK_MS when something other than RTTs and byte counts changed, and every REPORT_INTERVAL_MS anyway.
import type { Logger } from '@edgemesh/common/log';
import type { FleetReport } from '@edgemesh/common/fleet/report';
import { encodeReport, reportFingerprint } from './report.ts';

/** Refresh even when nothing structural changed (RTTs, bytes, and the server's "last report" age). */
export const REPORT_INTERVAL_MS = 15_000;
/** How often the agent looks for a change worth sending before the refresh (the server accepts one per second). */
export const REPORT_CHECK_MS = 2_000;
/** At most one log line per this interval when building the report fails (it is retried at every check). */
export const REPORT_ERROR_LOG_EVERY_MS = 60_000;

/** One server connection as the reporter needs it (ServerConn implements it). */
export interface ReportSink {
  readonly connected: boolean;
  sendReport(json: Buffer): boolean;
  on(event: 'up', listener: () => void): unknown;
  off(event: 'up', listener: () => void): unknown;
}

export interface ReporterOptions {
  sinks: readonly ReportSink[];
  build: () => FleetReport;
  log: Logger;
  now?: () => number;
}

export class Reporter {
  private readonly opts: ReporterOptions;
  private readonly sent = new Map<ReportSink, { fingerprint: string; at: number }>();
  private readonly onUp = new Map<ReportSink, () => void>();
  private timer: NodeJS.Timeout | undefined;
  private lastErrorLog = -Infinity;
  private readonly now: () => number;

  constructor(opts: ReporterOptions) {
    this.opts = opts;
    this.now = opts.now ?? Date.now;
  }

  start(): void {
    for (const s of this.opts.sinks) {
      // A new connection gets the report at once (its server knows nothing of us yet).
      const up = () => {
        this.sent.delete(s);
        setImmediate(() => { if (this.timer) this.tick(); });
      };
      this.onUp.set(s, up);
      s.on('up', up);
    }
    this.timer = setInterval(() => this.tick(), REPORT_CHECK_MS);
    this.timer.unref();
    this.tick();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    for (const [s, up] of this.onUp) s.off('up', up);
    this.onUp.clear();
  }

  /** Sends to every connected server that has not got this report's content, or not for REPORT_INTERVAL_MS. */
  tick(): void {
    const targets = this.opts.sinks.filter((s) => s.connected);
    if (!targets.length) return;
    let report: FleetReport;
    try {
      report = this.opts.build();
    } catch (e) {
      const now = this.now();
      if (now - this.lastErrorLog >= REPORT_ERROR_LOG_EVERY_MS) {
        this.lastErrorLog = now;
        this.opts.log.warn({ err: (e as Error).message }, 'cannot build the fleet report');
      }
      return;
    }
    const fingerprint = reportFingerprint(report);
    const now = this.now();
    let json: Buffer | undefined;
    for (const s of targets) {
      const last = this.sent.get(s);
      if (last && last.fingerprint === fingerprint && now - last.at < REPORT_INTERVAL_MS) continue;
      json ??= encodeReport(report);
      if (s.sendReport(json)) this.sent.set(s, { fingerprint, at: now });
    }
  }
}
