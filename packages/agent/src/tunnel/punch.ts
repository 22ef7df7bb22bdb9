// Pure decisions for the direct path: NAT type from STUN results, whether to punch, when both sides start, the
// ping schedule, when a direct path is dead, when to retry the upgrade. No sockets here.

export type NatType = 'open' | 'cone' | 'symmetric' | 'unknown';
export interface Addr { host: string; port: number }
export interface Candidate extends Addr { kind: 'lan' | 'stun' | 'prflx' }

/** Tailscale's numbers: heartbeat on the active path, path trusted this long after the last authenticated answer. */
export const HEARTBEAT_MS = 2_000;
export const PATH_TIMEOUT_MS = 6_500;
/** Pinging every candidate stops after this long without a pong: the peer stays on the relay. */
export const PUNCH_TIMEOUT_MS = 6_000;
/** Try to upgrade a relayed peer again this often (Tailscale: 60 s); sooner right after losing a direct path. */
export const UPGRADE_RETRY_MS = 60_000;
export const REPUNCH_AFTER_FAILOVER_MS = 1_000;
/** The responder never waits longer than this for the synchronised start. */
export const MAX_START_DELAY_MS = 1_000;
/** STUN answers older than this are refreshed (Tailscale: 27 s). */
export const STUN_FRESH_MS = 27_000;

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

/** With exactly one symmetric side, peer-reflexive learning works within a few RTTs or not at all (port-restricted
 *  filtering): the normal punch is cut short and birthday mode follows. */
export const SHORT_PUNCH_MS = 1_500;

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

/** Validates candidates from the wire (bounded count, IPv4/6 literal hosts, real ports). */
export function parseCandidates(v: unknown, max = 16): Candidate[] {
  if (!Array.isArray(v)) return [];
  const out: Candidate[] = [];
  for (const c of v.slice(0, max)) {
    if (!c || typeof c !== 'object') continue;
    const { host, port, kind } = c as Record<string, unknown>;
    if (typeof host !== 'string' || !/^[0-9a-fA-F.:]{2,45}$/.test(host)) continue;
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) continue;
    out.push({ host, port, kind: kind === 'lan' || kind === 'stun' ? kind : 'prflx' });
  }
  return out;
}

/** The direct path is dead when nothing authenticated came from the peer for PATH_TIMEOUT_MS. */
export function pathAlive(lastHeardMs: number, nowMs: number, timeoutMs = PATH_TIMEOUT_MS): boolean {
  return nowMs - lastHeardMs <= timeoutMs;
}

export interface UpgradeState { lastAttemptMs: number; lastOutcome: 'never' | 'direct' | 'failed' | 'lost' | 'relay-only' }

/** Whether to (re)try punching to a peer that is on the relay now. */
export function shouldTryUpgrade(s: UpgradeState, nowMs: number, retryMs = UPGRADE_RETRY_MS): boolean {
  switch (s.lastOutcome) {
    case 'never':
      return true;
    case 'lost':
      return nowMs - s.lastAttemptMs >= REPUNCH_AFTER_FAILOVER_MS;
    default:
      return nowMs - s.lastAttemptMs >= retryMs;
  }
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
/** Probes are sent in batches: BIRTHDAY_BATCH every BIRTHDAY_BATCH_MS. */
export const BIRTHDAY_BATCH = 8;
export const BIRTHDAY_BATCH_MS = 40;
/** First round from the hard side with a low TTL: opens its own NAT without the far NAT seeing the packets. */
export const BIRTHDAY_LOW_TTL = 5;
export const BIRTHDAY_TIMEOUT_MS = 12_000;
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
