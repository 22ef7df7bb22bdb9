// Pure decisions for the paths to a peer: NAT type from STUN results, whether to punch, when both sides start, the
// ping schedule, when a direct path is dead, when to retry the upgrade, which path carries the session. No sockets
// and no timers here (durations are timers.ts's).
import type { NatType } from '@edgemesh/common/tunnel/protocol';
import {
  MAX_START_DELAY_MS, PATH_TIMEOUT_MS, PUNCH_TIMEOUT_MS, REPUNCH_AFTER_FAILOVER_MS, SHORT_PUNCH_MS, UPGRADE_RETRY_MS,
} from './timers.ts';

export type { NatType };
export interface Addr { host: string; port: number }
export interface Candidate extends Addr { kind: 'lan' | 'stun' | 'prflx' }

export const sameAddr = (a: Addr | undefined, b: Addr | undefined): boolean => !!a && !!b && a.host === b.host && a.port === b.port;
export const addrKey = (a: Addr): string => `${a.host}:${a.port}`;

/**
 * NAT type from two STUN answers on one socket to two server ports: no answer = unknown (UDP blocked or server
 * down); mapped address is one of ours = open; same mapping for both destinations = cone (endpoint-independent
 * mapping); different = symmetric.
 */
export function classifyNat(local: { hosts: readonly string[]; port: number }, m1: Addr | undefined, m2: Addr | undefined): NatType {
  const m = m1 ?? m2;
  if (!m) return 'unknown';
  if (local.hosts.includes(m.host) && m.port === local.port) return 'open';
  if (!m1 || !m2) return 'unknown';
  return sameAddr(m1, m2) ? 'cone' : 'symmetric';
}

/** Symmetric on both sides cannot be punched without guessing two random ports: stay on the relay. */
export function punchPlan(mine: NatType, peer: NatType): 'punch' | 'relay-only' {
  return mine === 'symmetric' && peer === 'symmetric' ? 'relay-only' : 'punch';
}

/**
 * Synchronised start. The initiator starts when the responder's reply reaches it; the responder answers at once
 * and waits about the time its reply needs to travel (its RTT to the server / 2 + the initiator's / 2), so both
 * sides' first pings leave together.
 */
export function startDelayMs(role: 'initiator' | 'responder', rttFromMs: number, rttToMs: number): number {
  if (role === 'initiator') return 0;
  const d = (Math.max(0, rttFromMs) + Math.max(0, rttToMs)) / 2;
  return Math.min(MAX_START_DELAY_MS, Math.round(d));
}

export function punchTimeoutMs(mine: NatType, peer: NatType): number {
  return birthdayRole(mine, peer) ? SHORT_PUNCH_MS : PUNCH_TIMEOUT_MS;
}

/** When to send pings during a punch (ms since start): dense first, then every 500 ms. */
export function punchSchedule(timeoutMs = PUNCH_TIMEOUT_MS): number[] {
  const out = [0, 50, 100, 200, 300, 500, 750, 1000];
  for (let t = 1500; t < timeoutMs; t += 500) out.push(t);
  return out.filter((t) => t < timeoutMs);
}

/** LAN addresses worth offering: IPv4, not loopback, not link-local (the agent's own 169.254.96.16 lives there). */
export function usableLanHost(ip: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(ip) && !ip.startsWith('127.') && !ip.startsWith('169.254.') && ip !== '0.0.0.0';
}

/** Candidates we offer: each LAN address on our port, then the STUN-mapped address. */
export function localCandidates(lanHosts: readonly string[], port: number, mapped: Addr | undefined): Candidate[] {
  const out: Candidate[] = lanHosts.filter(usableLanHost).map((host) => ({ host, port, kind: 'lan' as const }));
  if (mapped && !out.some((c) => sameAddr(c, mapped))) out.push({ ...mapped, kind: 'stun' });
  return out;
}

/** The direct path is dead when nothing authenticated came from the peer for PATH_TIMEOUT_MS. */
export function pathAlive(lastHeardMs: number, nowMs: number, timeoutMs = PATH_TIMEOUT_MS): boolean {
  return nowMs - lastHeardMs <= timeoutMs;
}

export type PunchOutcome = 'direct' | 'failed' | 'relay-only';

export interface UpgradeState {
  lastAttemptMs: number;
  lastOutcome: 'never' | 'lost' | PunchOutcome;
  /** Failed attempts since the direct path was lost (undefined: not recovering from a loss). */
  sinceLost?: number;
}

/** The upgrade state after an attempt ended (or the direct path was lost) at `nowMs`. */
export function upgradeAfter(s: UpgradeState, outcome: UpgradeState['lastOutcome'], nowMs: number): UpgradeState {
  if (outcome === 'lost') return { lastAttemptMs: nowMs, lastOutcome: 'lost', sinceLost: 0 };
  if (outcome === 'direct') return { lastAttemptMs: nowMs, lastOutcome: 'direct' };
  return { lastAttemptMs: nowMs, lastOutcome: outcome, sinceLost: s.sinceLost === undefined ? undefined : s.sinceLost + 1 };
}

/** How long after the last attempt to punch again: at once the first time; right after losing a direct path
 *  REPUNCH_AFTER_FAILOVER_MS, doubling with each failure up to `retryMs`; otherwise `retryMs`. */
export function upgradeDelayMs(s: UpgradeState, retryMs = UPGRADE_RETRY_MS): number {
  if (s.lastOutcome === 'never') return 0;
  if (s.lastOutcome === 'lost') return Math.min(retryMs, REPUNCH_AFTER_FAILOVER_MS);
  if (s.sinceLost !== undefined) return Math.min(retryMs, REPUNCH_AFTER_FAILOVER_MS * 2 ** s.sinceLost);
  return retryMs;
}

/** Whether to (re)try punching to a peer that is on the relay now. */
export function shouldTryUpgrade(s: UpgradeState, nowMs: number, retryMs = UPGRADE_RETRY_MS): boolean {
  return nowMs - s.lastAttemptMs >= upgradeDelayMs(s, retryMs);
}

/** After an attempt ended: the mode of the one to follow at once, if any. A normal punch we asked for that failed
 *  with exactly one symmetric side goes on with birthday mode. */
export function followUpMode(outcome: PunchOutcome, mode: 'normal' | 'birthday', requested: boolean, mine: NatType, peer: NatType): 'birthday' | undefined {
  return outcome === 'failed' && mode === 'normal' && requested && birthdayRole(mine, peer) ? 'birthday' : undefined;
}

/** Which link carries the session: the direct one when it is up and not suspected dead, else a relay link. */
export function choosePath(s: { direct: boolean; directSuspect: boolean; relay: boolean }): 'direct' | 'relay' | 'none' {
  if (s.direct && (!s.directSuspect || !s.relay)) return 'direct';
  return s.relay ? 'relay' : s.direct ? 'direct' : 'none';
}

/** Anti-replay window over a 64-bit counter (as WireGuard): newer than the highest, or unseen within 64 below. */
export class ReplayWindow {
  private highest = -1n;
  private bitmap = 0n;
  static readonly SIZE = 64n;

  accept(counter: bigint): boolean {
    if (counter > this.highest) {
      const shift = counter - this.highest;
      this.bitmap = shift >= ReplayWindow.SIZE ? 1n : ((this.bitmap << shift) | 1n) & ((1n << ReplayWindow.SIZE) - 1n);
      this.highest = counter;
      return true;
    }
    const back = this.highest - counter;
    if (back >= ReplayWindow.SIZE) return false;
    const bit = 1n << back;
    if (this.bitmap & bit) return false;
    this.bitmap |= bit;
    return true;
  }
}

// ---------- birthday mode (exactly one side symmetric) ----------

/** The hard (symmetric) side opens this many sockets, each making its own NAT mapping toward the easy side. */
export const BIRTHDAY_SOCKETS = 256;
/** The easy side probes at most this many random ports on the hard side's public address (~1000 ≈ 98 % hit). */
export const BIRTHDAY_PROBES = 1600;
/** Probes are sent in batches: BIRTHDAY_BATCH every BIRTHDAY_BATCH_MS (timers.ts). */
export const BIRTHDAY_BATCH = 8;
/** First round from the hard side with a low TTL: opens its own NAT without the far NAT seeing the packets. */
export const BIRTHDAY_LOW_TTL = 5;
/** Ports a NAT hands out (MASQUERADE --random-fully picks from here). */
export const EPHEMERAL_MIN_PORT = 1024;

/**
 * Birthday role, when exactly one side is symmetric and the other answered STUN (cone or open): the symmetric side
 * is 'hard' (many sockets, answers), the other 'easy' (probes random ports, connects on the first pong).
 */
export function birthdayRole(mine: NatType, peer: NatType): 'hard' | 'easy' | undefined {
  const punchable = (t: NatType) => t === 'cone' || t === 'open';
  if (mine === 'symmetric' && punchable(peer)) return 'hard';
  if (peer === 'symmetric' && punchable(mine)) return 'easy';
  return undefined;
}

/** `n` distinct random ports from the ephemeral range (the easy side's probe targets). */
export function birthdayPorts(n: number, random: () => number = Math.random): number[] {
  const span = 65536 - EPHEMERAL_MIN_PORT;
  const out = new Set<number>();
  const want = Math.min(n, span);
  while (out.size < want) out.add(EPHEMERAL_MIN_PORT + Math.floor(random() * span));
  return [...out];
}
