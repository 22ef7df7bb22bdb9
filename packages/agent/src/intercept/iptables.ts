// Applies the interception rules: detects the iptables backend, renders the desired state (rules.ts) and applies it
// as one `iptables-restore --noflush` batch; debounced on change, re-asserted on a timer, removed on stop.
import { execa } from './exec.ts';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Logger } from '@edgemesh/common/log';
import { CHAIN, HOOKS, chooseBackend, parseHook, renderCleanup, renderSync, type Backend, type Hook, type InterceptRule, type JumpState } from './rules.ts';

/** Re-apply everything this often even without changes: someone (kube-proxy, an admin) may have flushed it. */
export const REASSERT_MS = 30_000;
/** Coalesce bursts of changes into one batch. */
export const SYNC_DEBOUNCE_MS = 100;
/** conntrack deletions per sync for newly intercepted UDP ports (stale un-NATed flows); the rest age out. */
export const CONNTRACK_FLUSH_MAX = 256;
/** A failed sync is retried after this long (besides the next change and the periodic re-assert). */
export const SYNC_RETRY_MS = 1000;
/** iptables lock wait, seconds. */
export const XTABLES_WAIT_S = 5;

export interface Binaries { iptables: string; restore: string; backend: Backend }

async function exists(bin: string): Promise<boolean> {
  const r = await execa(bin, ['--version'], { reject: false });
  return r.exitCode === 0;
}

async function hasKubeChains(save: string): Promise<boolean> {
  const r = await execa(save, ['-t', 'nat'], { reject: false });
  return r.exitCode === 0 && /^:KUBE-SERVICES /m.test(r.stdout);
}

/** Finds the iptables binaries matching the backend the node already uses (nf_tables or legacy). */
export async function detectBinaries(): Promise<Binaries> {
  const v = await execa('iptables', ['--version'], { reject: false });
  if (v.exitCode !== 0) throw new Error('iptables not found (install iptables or set proxy.intercept: none)');
  const [nftOk, legacyOk] = await Promise.all([exists('iptables-nft'), exists('iptables-legacy')]);
  const [nft, legacy] = await Promise.all([nftOk && hasKubeChains('iptables-nft-save'), legacyOk && hasKubeChains('iptables-legacy-save')]);
  const backend = chooseBackend(v.stdout, { nft, legacy });
  const haveSpecific = backend === 'nft' ? nftOk : legacyOk;
  return haveSpecific
    ? { backend, iptables: `iptables-${backend}`, restore: `iptables-${backend}-restore` }
    : { backend, iptables: 'iptables', restore: 'iptables-restore' };
}

export interface InterceptorOptions {
  log: Logger;
  registry: Registry;
  reassertMs?: number;
  debounceMs?: number;
  binaries?: Binaries;
}

export class IptablesInterceptor {
  private readonly log: Logger;
  private readonly reassertMs: number;
  private readonly debounceMs: number;
  private bins: Binaries | undefined;
  private desired: readonly InterceptRule[] = [];
  private generation = 0;
  private appliedGeneration = -1;
  private debounce: NodeJS.Timeout | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> = Promise.resolve();
  private stopped = false;
  private appliedUdp = new Set<string>();
  private lastOk = false;
  private readonly mSync: Histogram;
  private readonly mFail: Counter;
  private readonly mRules: Gauge;

  constructor(opts: InterceptorOptions) {
    this.log = opts.log;
    this.reassertMs = opts.reassertMs ?? REASSERT_MS;
    this.debounceMs = opts.debounceMs ?? SYNC_DEBOUNCE_MS;
    this.bins = opts.binaries;
    this.mSync = new Histogram({ name: 'edgemesh_intercept_sync_duration_seconds', help: 'Time to apply the interception rules (one iptables-restore batch)', buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], registers: [opts.registry] });
    this.mFail = new Counter({ name: 'edgemesh_intercept_sync_failures_total', help: 'Failed interception rule syncs', registers: [opts.registry] });
    this.mRules = new Gauge({ name: 'edgemesh_intercept_rules', help: 'Interception rules currently applied', registers: [opts.registry] });
  }

  get backend(): Backend | undefined {
    return this.bins?.backend;
  }

  /** Detects the backend and removes whatever a previous run left behind. */
  async start(): Promise<void> {
    this.bins ??= await detectBinaries();
    await this.restore(renderCleanup(await this.jumps()));
    this.log.info({ backend: this.bins.backend, chain: CHAIN }, 'iptables interception ready (leftovers removed)');
    this.timer = setInterval(() => this.schedule(0), this.reassertMs);
    this.timer.unref();
  }

  /** Replaces the desired rule set; applied after the debounce. */
  setDesired(rules: readonly InterceptRule[]): void {
    this.desired = rules;
    this.generation++;
    this.schedule(this.debounceMs);
  }

  /** Rules have been applied at least once and the last attempt succeeded (a pending debounce is fine). */
  healthy(): boolean {
    return this.appliedGeneration >= 0 && this.lastOk;
  }

  /** True when the latest desired state has been applied successfully. */
  synced(): boolean {
    return this.appliedGeneration === this.generation;
  }

  private schedule(ms: number): void {
    if (this.stopped || this.debounce) return;
    this.debounce = setTimeout(() => {
      this.debounce = undefined;
      this.running = this.running.then(() => this.syncNow());
    }, ms);
  }

  /** Applies the current desired state now (serialised with other syncs). */
  async syncNow(): Promise<void> {
    if (this.stopped) return;
    const gen = this.generation;
    const rules = this.desired;
    const t0 = performance.now();
    try {
      await this.restore(renderSync(rules, await this.jumps()));
      this.appliedGeneration = gen;
      this.lastOk = true;
      this.mRules.set(rules.length);
      this.flushStaleUdp(rules);
      this.mSync.observe((performance.now() - t0) / 1000);
      this.log.debug({ rules: rules.length, ms: Math.round(performance.now() - t0) }, 'interception rules applied');
    } catch (e) {
      this.lastOk = false;
      this.mFail.inc();
      this.log.error({ err: (e as Error).message }, 'applying interception rules failed; retrying');
      if (!this.stopped) setTimeout(() => this.schedule(0), SYNC_RETRY_MS).unref();
    }
  }

  /**
   * UDP flows to a Service IP that started before its rule existed have a conntrack entry without the DNAT and keep
   * bypassing the proxy until they go idle (kube-proxy clears them too). Deletes them for newly added UDP ports.
   */
  private flushStaleUdp(rules: readonly InterceptRule[]): void {
    const now = new Set(rules.filter((r) => r.protocol === 'udp').map((r) => `${r.ip} ${r.port}`));
    const added = [...now].filter((k) => !this.appliedUdp.has(k)).slice(0, CONNTRACK_FLUSH_MAX);
    this.appliedUdp = now;
    if (!added.length) return;
    void (async () => {
      for (const k of added) {
        const [ip, port] = k.split(' ');
        // Exit 1 = nothing to delete; a missing conntrack binary is fine too (entries then age out).
        const r = await execa('conntrack', ['-D', '-p', 'udp', '--orig-dst', ip, '--orig-port-dst', port], { reject: false });
        if (r.failed && r.exitCode !== 1) {
          this.log.debug({ err: r.stderr || r.message }, 'conntrack cleanup skipped');
          return;
        }
      }
    })();
  }

  /** Removes everything this module added. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.debounce) clearTimeout(this.debounce);
    if (this.timer) clearInterval(this.timer);
    await this.running;
    if (!this.bins) return;
    try {
      await this.restore(renderCleanup(await this.jumps()));
      this.log.info('interception rules removed');
    } catch (e) {
      this.log.error({ err: (e as Error).message }, 'removing interception rules failed');
    }
  }

  private async jumps(): Promise<JumpState> {
    const bins = this.bins!;
    const [pre, out] = await Promise.all(HOOKS.map(async (h: Hook) => {
      const r = await execa(bins.iptables, ['-w', String(XTABLES_WAIT_S), '-t', 'nat', '-S', h], { reject: false });
      if (r.exitCode !== 0) throw new Error(`${bins.iptables} -t nat -S ${h}: ${r.stderr.trim()}`);
      return parseHook(r.stdout, h);
    }));
    return { PREROUTING: pre, OUTPUT: out };
  }

  private async restore(text: string): Promise<void> {
    const bins = this.bins!;
    const r = await execa(bins.restore, ['-w', String(XTABLES_WAIT_S), '--noflush'], { input: text, reject: false });
    if (r.exitCode !== 0) throw new Error(`${bins.restore} failed (exit ${r.exitCode}): ${r.stderr.trim().split('\n').slice(0, 3).join('; ')}`);
  }
}
