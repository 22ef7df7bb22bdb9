// Applies the interception rules: detects the iptables backend, renders the desired state (rules.ts) and applies it
// as one `iptables-restore --noflush` batch. Syncs go through one BoundedRunner: a change is applied at once (then at
// most one sync per SYNC_MIN_INTERVAL_MS), a failed sync is retried with backoff, and every REASSERT_MS the kernel is
// read back (iptables-save) and re-asserted only when it differs. Removed on stop, left in place on a handoff.
import { execa } from './exec.ts';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Logger } from '@edgemesh/common/log';
import { BoundedRunner, type RunReason } from '@edgemesh/common/runner';
import { CHAIN, chooseBackend, NODE_LOCAL, natMatches, parseNatSave, renderCleanup, renderSync, ruleKey, type Backend, type InterceptRule, type NatState } from './rules.ts';

/** Read the kernel's rules back this often and re-apply them when they differ (someone flushed or reordered them). */
export const REASSERT_MS = 30_000;
/** Syncs start at least this far apart: a burst of changes becomes one batch, the first change is applied at once. */
export const SYNC_MIN_INTERVAL_MS = 100;
/** conntrack deletions per sync for newly intercepted UDP ports (stale un-NATed flows); the rest age out. */
export const CONNTRACK_FLUSH_MAX = 256;
/** A failed sync is retried after this long, doubling up to SYNC_RETRY_MAX_MS (a change is still applied at once). */
export const SYNC_RETRY_MS = 1000;
export const SYNC_RETRY_MAX_MS = 30_000;
/** iptables lock wait, seconds. */
export const XTABLES_WAIT_S = 5;

export interface Binaries { iptables: string; restore: string; save: string; backend: Backend }

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
    ? { backend, iptables: `iptables-${backend}`, restore: `iptables-${backend}-restore`, save: `iptables-${backend}-save` }
    : { backend, iptables: 'iptables', restore: 'iptables-restore', save: 'iptables-save' };
}

export interface InterceptorOptions {
  log: Logger;
  registry: Registry;
  reassertMs?: number;
  minIntervalMs?: number;
  binaries?: Binaries;
}

/**
 * Who writes the rules. `own`: this agent applies them. `follow`: another agent with the same stateDir (the one this
 * agent takes over from) owns them; this one only reads the kernel back to see whether its own desired rules are
 * already there (identical), and starts applying when it claims them (claim()).
 */
export type InterceptMode = 'own' | 'follow';

export class IptablesInterceptor {
  private readonly log: Logger;
  private readonly reassertMs: number;
  private readonly minIntervalMs: number;
  private bins: Binaries | undefined;
  private desired: readonly InterceptRule[] = [];
  /** Generation of the desired state (one per setDesired). */
  private generation = 0;
  /** Newest generation known to be in the kernel (applied by us, or found there while following). */
  private inKernel = 0;
  /** The kernel held what we last applied when last looked at (false between finding it changed and re-asserting). */
  private kernelOk = false;
  private mode: InterceptMode = 'own';
  private runner: BoundedRunner | undefined;
  private stopped = false;
  private readonly mSync: Histogram;
  private readonly mFail: Counter;
  private readonly mRules: Gauge;
  private readonly mReassert: Counter;

  constructor(opts: InterceptorOptions) {
    this.log = opts.log;
    this.reassertMs = opts.reassertMs ?? REASSERT_MS;
    this.minIntervalMs = opts.minIntervalMs ?? SYNC_MIN_INTERVAL_MS;
    this.bins = opts.binaries;
    this.mSync = new Histogram({ name: 'edgemesh_intercept_sync_duration_seconds', help: 'Time to apply the interception rules (one iptables-restore batch)', buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], registers: [opts.registry] });
    this.mFail = new Counter({ name: 'edgemesh_intercept_sync_failures_total', help: 'Failed interception rule syncs', registers: [opts.registry] });
    this.mRules = new Gauge({ name: 'edgemesh_intercept_rules', help: 'Interception rules currently applied', registers: [opts.registry] });
    this.mReassert = new Counter({ name: 'edgemesh_intercept_reasserts_total', help: 'Times the kernel\'s rules were found changed (flushed, reordered) and re-applied', registers: [opts.registry] });
  }

  get backend(): Backend | undefined {
    return this.bins?.backend;
  }

  /**
   * Detects the backend; in `own` mode removes whatever a previous run left behind. `follow` leaves the kernel
   * alone: the running agent's rules stay in force until this one claims them.
   */
  async start(mode: InterceptMode = 'own'): Promise<void> {
    this.bins ??= await detectBinaries();
    this.mode = mode;
    if (mode === 'own') {
      await this.restore(renderCleanup((await this.read()).jumps));
      this.log.info({ backend: this.bins.backend, chain: CHAIN }, 'iptables interception ready (leftovers removed)');
    } else {
      this.log.info({ backend: this.bins.backend, chain: CHAIN }, 'iptables interception following the running agent\'s rules');
    }
    this.runner = this.newRunner();
  }

  private newRunner(): BoundedRunner {
    return new BoundedRunner({
      minIntervalMs: this.minIntervalMs,
      maxIntervalMs: this.reassertMs,
      retryMinMs: SYNC_RETRY_MS,
      retryMaxMs: SYNC_RETRY_MAX_MS,
      run: (reason) => this.sync(reason),
      onError: (e, ms) => this.log.error({ err: (e as Error).message, retryInMs: ms }, 'applying interception rules failed; retrying'),
    });
  }

  /** Replaces the desired rule set; applied at once (or after SYNC_MIN_INTERVAL_MS). Returns its generation. */
  setDesired(rules: readonly InterceptRule[]): number {
    this.desired = rules;
    this.generation++;
    this.runner?.run();
    return this.generation;
  }

  /** The rules of generation `gen` (or a later one) are in the kernel. */
  appliedFor(gen: number): boolean {
    return this.inKernel >= gen;
  }

  /**
   * The kernel holds the rules we put there. False only when a read-back found them changed (flushed, reordered)
   * and they are not re-asserted yet, or before anything was applied.
   */
  healthy(): boolean {
    return this.kernelOk;
  }

  /** True when the latest desired state is in the kernel. */
  synced(): boolean {
    return this.inKernel === this.generation;
  }

  /** Follow mode: reads the kernel back now; resolves whether it holds exactly our desired rules. */
  async check(): Promise<boolean> {
    if (!this.runner) return false;
    const gen = this.generation;
    await this.runner.runNow();
    return this.inKernel >= gen;
  }

  /** Takes the rules over from the agent we followed: applies ours now (a no-op batch when they are identical). */
  async claim(): Promise<void> {
    this.mode = 'own';
    if (!this.runner) return;
    const gen = this.generation;
    await this.runner.runNow();
    if (this.inKernel < gen) throw new Error('could not apply the interception rules');
  }

  /** Stops syncing and leaves the rules in place (a successor uses them). Waits for a sync under way. */
  async release(): Promise<void> {
    this.stopped = true;
    await this.runner?.stop();
  }

  /** Starts syncing again after release() (the successor went away before taking over). */
  resume(): void {
    if (!this.stopped || !this.runner) return;
    this.stopped = false;
    this.runner = this.newRunner();
    // The successor may have changed the kernel: read it back at once and re-assert what differs.
    this.runner.run();
  }

  /**
   * One sync. Following: read back only. Owning: a periodic run reads back and re-applies only what differs; a
   * requested run (or a retry) applies the desired state.
   */
  private async sync(reason: RunReason): Promise<void> {
    if (this.stopped) return;
    const gen = this.generation;
    const rules = this.desired;
    const state = await this.read();
    const match = natMatches(rules, state);
    if (this.mode === 'follow') {
      this.kernelOk = match.ok;
      if (match.ok) this.inKernel = Math.max(this.inKernel, gen);
      return;
    }
    if (reason === 'periodic') {
      if (match.ok) {
        this.kernelOk = true;
        this.inKernel = Math.max(this.inKernel, gen);
        return;
      }
      if (this.inKernel > 0) {
        // Someone changed our rules behind our back: readiness says so until they are back.
        this.kernelOk = false;
        this.mReassert.inc();
        this.log.warn({ why: match.why }, 'interception rules changed in the kernel; re-asserting');
      }
    }
    const t0 = performance.now();
    try {
      await this.restore(renderSync(rules, state.jumps));
    } catch (e) {
      this.mFail.inc();
      throw e;
    }
    this.inKernel = Math.max(this.inKernel, gen);
    this.kernelOk = true;
    this.mRules.set(rules.length);
    this.flushStaleUdp(rules, state);
    this.mSync.observe((performance.now() - t0) / 1000);
    this.log.debug({ rules: rules.length, ms: Math.round(performance.now() - t0) }, 'interception rules applied');
  }
  /**
   * UDP flows to a Service IP that started before its rule existed have a conntrack entry without the DNAT and keep
   * bypassing the proxy until they go idle (kube-proxy clears them too). Deletes them for UDP ports whose rule was
   * not in the kernel before this sync (`before`): never for rules already there (a takeover re-applying the running
   * agent's identical rules must not cut its live, correctly DNATed flows).
   */
  private flushStaleUdp(rules: readonly InterceptRule[], before: NatState): void {
    const had = new Set((before.chain ?? []).map((l) => ruleKey(l)?.split(' ')).filter((k) => k?.[1] === 'udp').map((k) => `${k![0]} ${k![2]}`));
    const added = [...new Set(rules.filter((r) => r.protocol === 'udp').map((r) => `${r.ip} ${r.port}`))].filter((k) => !had.has(k)).slice(0, CONNTRACK_FLUSH_MAX);
    if (!added.length) return;
    void (async () => {
      for (const k of added) {
        const [ip, port] = k.split(' ');
        // A nodePort matches every local address: its flows go by port alone (as kube-proxy clears them).
        const dst = ip === NODE_LOCAL ? [] : ['--orig-dst', ip];
        // Exit 1 = nothing to delete; a missing conntrack binary is fine too (entries then age out).
        const r = await execa('conntrack', ['-D', '-p', 'udp', ...dst, '--orig-port-dst', port], { reject: false });
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
    await this.runner?.stop();
    // Following another agent (a takeover that never completed): the rules are its, not ours to remove.
    if (!this.bins || this.mode === 'follow') return;
    try {
      await this.restore(renderCleanup((await this.read()).jumps));
      this.log.info('interception rules removed');
    } catch (e) {
      this.log.error({ err: (e as Error).message }, 'removing interception rules failed');
    }
  }

  /** Our jumps and chain as the kernel has them (one `iptables-save -t nat`). */
  private async read(): Promise<NatState> {
    const bins = this.bins!;
    const r = await execa(bins.save, ['-t', 'nat'], { reject: false });
    if (r.exitCode !== 0) throw new Error(`${bins.save} -t nat: ${r.stderr.trim()}`);
    return parseNatSave(r.stdout);
  }

  private async restore(text: string): Promise<void> {
    const bins = this.bins!;
    const r = await execa(bins.restore, ['-w', String(XTABLES_WAIT_S), '--noflush'], { input: text, reject: false });
    if (r.exitCode !== 0) throw new Error(`${bins.restore} failed (exit ${r.exitCode}): ${r.stderr.trim().split('\n').slice(0, 3).join('; ')}`);
  }
}
