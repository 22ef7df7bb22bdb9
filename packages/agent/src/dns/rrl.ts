// Response-rate limiting of UDP answers, as BIND's and unbound's RRL: identical answers (same question, same
// response code) to one client prefix (/24 for IPv4, /56 for IPv6) draw on one account credited `rate` per second
// (at most `rate` banked); an account in debt — at most `rate × window` — means every answer on it is limited until
// the flood stops for long enough. Of the limited answers every `slip`-th is sent as a truncated (TC) reply with no
// records, so a real client behind a spoofed flood retries over TCP and still gets its answer; the rest are dropped.
// A reflector sending at most `rate` answers per second per prefix and name is useless for amplification.
// rrlStep and clientPrefix are pure; RateLimiter owns the bounded table of accounts.

export interface RrlParams {
  /** Identical answers per second per client prefix. 0 = off. */
  readonly rate: number;
  /** Every slip-th limited answer is sent truncated (TC); 0 = drop them all, 1 = truncate them all. */
  readonly slip: number;
  /** How long (s) a flood is remembered: the account may fall `rate × window` into debt. */
  readonly windowSeconds: number;
}

export interface RrlAccount {
  balance: number;
  /** ms of the last update */
  last: number;
  /** Limited answers so far (drives the slip counter). */
  limited: number;
}

export type RrlAction = 'send' | 'drop' | 'slip';

/** IPv4 /24, IPv6 /56: the prefixes RRL accounts per client, as BIND's defaults. */
export const RRL_IPV4_PREFIX = 24;
export const RRL_IPV6_PREFIX = 56;
/** Accounts kept; past this the oldest are forgotten (a flood of spoofed prefixes cannot grow memory). */
export const RRL_MAX_ACCOUNTS = 100_000;
/** How many of the oldest accounts go at once when the table is full (amortises the cleanup). */
const RRL_PRUNE = 1024;

export function newAccount(now: number, p: RrlParams): RrlAccount {
  return { balance: p.rate, last: now, limited: 0 };
}

/** Accounts one answer at `now` (ms): credit for the time since the last one, debit one, decide. Mutates `a`. */
export function rrlStep(a: RrlAccount, now: number, p: RrlParams): RrlAction {
  const elapsed = now - a.last;
  if (elapsed > 0) {
    a.balance = Math.min(p.rate, a.balance + (elapsed * p.rate) / 1000);
    a.last = now;
  }
  a.balance -= 1;
  if (a.balance >= 0) return 'send';
  const floor = -p.rate * p.windowSeconds;
  if (a.balance < floor) a.balance = floor;
  a.limited++;
  return p.slip > 0 && a.limited % p.slip === 0 ? 'slip' : 'drop';
}

/** Expands an IPv6 address to its eight 16-bit groups; undefined when malformed. */
export function ipv6Groups(addr: string): number[] | undefined {
  let s = addr;
  const pct = s.indexOf('%');
  if (pct >= 0) s = s.slice(0, pct);
  if (s.includes('.')) {
    // Embedded IPv4 (`::ffff:10.0.0.1`): rewrite its four bytes as two groups.
    const colon = s.lastIndexOf(':');
    const v4 = s.slice(colon + 1).split('.').map((x) => (/^\d{1,3}$/.test(x) ? Number(x) : NaN));
    if (colon < 0 || v4.length !== 4 || v4.some((n) => !(n <= 255))) return undefined;
    s = `${s.slice(0, colon + 1)}${((v4[0] << 8) | v4[1]).toString(16)}:${((v4[2] << 8) | v4[3]).toString(16)}`;
  }
  const parts = s.split('::');
  if (parts.length > 2) return undefined;
  const parse = (p: string) => (p === '' ? [] : p.split(':').map((g) => (/^[0-9a-fA-F]{1,4}$/.test(g) ? parseInt(g, 16) : NaN)));
  const head = parse(parts[0]);
  const rest = parts.length === 2 ? parse(parts[1]) : [];
  if (head.some(Number.isNaN) || rest.some(Number.isNaN)) return undefined;
  const known = head.length + rest.length;
  if (parts.length === 1 ? known !== 8 : known > 7) return undefined;
  return [...head, ...new Array<number>(8 - known).fill(0), ...rest];
}

/** The client prefix RRL accounts an address under: `a.b.c` for IPv4 (/24), the first 56 bits for IPv6. */
export function clientPrefix(address: string): string {
  const dot = address.lastIndexOf('.');
  if (dot > 0 && !address.includes(':')) return address.slice(0, dot);
  if (dot > 0 && address.slice(0, 7).toLowerCase() === '::ffff:') return address.slice(7, dot);
  const g = ipv6Groups(address);
  if (!g) return address;
  return `${g[0].toString(16)}:${g[1].toString(16)}:${g[2].toString(16)}:${(g[3] >> 8).toString(16)}/56`;
}

/** The table of accounts: per client prefix, per answer key (wire.ts answerKey). */
export class RateLimiter {
  readonly params: RrlParams;
  private readonly byPrefix = new Map<string, Map<number, RrlAccount>>();
  /** Source address → its prefix's accounts (one lookup per answer instead of two). */
  private readonly byAddress = new Map<string, Map<number, RrlAccount>>();
  private count = 0;
  private readonly maxAccounts: number;

  constructor(params: RrlParams, maxAccounts = RRL_MAX_ACCOUNTS) {
    this.params = params;
    this.maxAccounts = maxAccounts;
  }

  get enabled(): boolean {
    return this.params.rate > 0;
  }

  /** Accounts held. */
  get size(): number {
    return this.count;
  }

  /** What to do with an answer `answerKey` to `address` at `now` (ms). */
  decide(address: string, answerKey: number, now: number): RrlAction {
    if (this.params.rate <= 0) return 'send';
    let accounts = this.byAddress.get(address);
    if (accounts === undefined) {
      const prefix = clientPrefix(address);
      accounts = this.byPrefix.get(prefix);
      if (!accounts) {
        accounts = new Map();
        this.byPrefix.set(prefix, accounts);
      }
      if (this.byAddress.size >= this.maxAccounts) this.byAddress.clear();
      this.byAddress.set(address, accounts);
    }
    let a = accounts.get(answerKey);
    if (!a) {
      if (this.count >= this.maxAccounts) this.prune();
      a = newAccount(now, this.params);
      accounts.set(answerKey, a);
      this.count++;
    }
    return rrlStep(a, now, this.params);
  }

  /** Forgets about RRL_PRUNE of the oldest accounts (oldest prefixes first, their oldest answers first). */
  private prune(): void {
    let n = 0;
    for (const [prefix, accounts] of this.byPrefix) {
      for (const k of accounts.keys()) {
        accounts.delete(k);
        this.count--;
        if (++n >= RRL_PRUNE) break;
      }
      if (accounts.size === 0) this.byPrefix.delete(prefix);
      if (n >= RRL_PRUNE) break;
    }
    // Addresses may point at a prefix map that was just dropped: forget them (re-resolved on their next answer).
    this.byAddress.clear();
  }
}
