// The interception rules as text for `iptables-restore --noflush`: a pure rendering of the desired state plus the
// observed position of our jumps. One batch: it applies all or nothing.
export const CHAIN = 'EDGEMESH-SERVICES';
export const JUMP_COMMENT = 'edgemesh service interception';
/** Built-in nat chains our chain is jumped from, at position 1 (before kube-proxy's KUBE-SERVICES). */
export const HOOKS = ['PREROUTING', 'OUTPUT'] as const;
export type Hook = (typeof HOOKS)[number];

/**
 * The `ip` of a rule that matches every address of this node (`-m addrtype --dst-type LOCAL`, as kube-proxy's
 * KUBE-NODEPORTS): a Service's nodePort.
 */
export const NODE_LOCAL = 'local';

export interface InterceptRule {
  /** Service IP, externalIP or load-balancer IP (IPv4), or NODE_LOCAL for a nodePort. */
  readonly ip: string;
  readonly protocol: 'tcp' | 'udp';
  readonly port: number;
  /** `ns/svc:port` */
  readonly comment: string;
  /** Where the agent listens for this service port. */
  readonly toIP: string;
  readonly toPort: number;
}

/** What `iptables -t nat -S <hook>` showed about our jumps: the exact lines (for -D) and whether one is first. */
export interface HookState {
  readonly jumpLines: readonly string[];
  readonly first: boolean;
}
export type JumpState = Readonly<Record<Hook, HookState>>;

export const NO_JUMPS: JumpState = { PREROUTING: { jumpLines: [], first: false }, OUTPUT: { jumpLines: [], first: false } };

/** Parses `iptables -t nat -S <hook>` output for jumps to our chain. */
export function parseHook(listing: string, hook: Hook): HookState {
  const rules = listing.split('\n').map((l) => l.trim()).filter((l) => l.startsWith(`-A ${hook} `));
  const isJump = (l: string) => new RegExp(`(^|\\s)-j ${CHAIN}(\\s|$)`).test(l);
  return { jumpLines: rules.filter(isJump), first: rules.length > 0 && isJump(rules[0]) };
}

/** Redirect (REDIRECT --to-ports) when the listener is on the wildcard address; DNAT to the address otherwise. */
export function usesRedirect(bindIP: string): boolean {
  return bindIP === '0.0.0.0';
}

const quote = (s: string) => `"${s.replace(/["\\\n\r]/g, '_').slice(0, 255)}"`;

export function ruleLine(r: InterceptRule): string {
  const target = usesRedirect(r.toIP) ? `-j REDIRECT --to-ports ${r.toPort}` : `-j DNAT --to-destination ${r.toIP}:${r.toPort}`;
  // iptables-save prints the matches back in this order (the read-back compares keys, not text, anyway).
  const dst = r.ip === NODE_LOCAL ? `-p ${r.protocol} -m addrtype --dst-type LOCAL` : `-d ${r.ip}/32 -p ${r.protocol}`;
  return `-A ${CHAIN} ${dst} -m ${r.protocol} --dport ${r.port} -m comment --comment ${quote(r.comment)} ${target}`;
}

/**
 * Rule order: rules for one address (Service IPs, externalIPs, load-balancer IPs) first, then the nodePorts, which
 * match any local address (kube-proxy also jumps to KUBE-NODEPORTS last); within each by address, protocol, port.
 */
function compareRules(a: InterceptRule, b: InterceptRule): number {
  const la = a.ip === NODE_LOCAL ? 1 : 0;
  const lb = b.ip === NODE_LOCAL ? 1 : 0;
  if (la !== lb) return la - lb;
  return a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : a.protocol < b.protocol ? -1 : a.protocol > b.protocol ? 1 : a.port - b.port;
}

function jumpFix(jumps: JumpState): string[] {
  const out: string[] = [];
  for (const h of HOOKS) {
    const s = jumps[h];
    if (s.first && s.jumpLines.length === 1) continue;
    for (const l of s.jumpLines) out.push(l.replace(/^-A /, '-D '));
    out.push(`-I ${h} 1 -m comment --comment ${quote(JUMP_COMMENT)} -j ${CHAIN}`);
  }
  return out;
}

/**
 * The batch that makes the nat table hold exactly `rules` in our chain, jumped once from the top of each hook.
 * Declaring the chain flushes it (with --noflush only the declared chain is refilled).
 */
export function renderSync(rules: readonly InterceptRule[], jumps: JumpState): string {
  const lines = ['*nat', `:${CHAIN} - [0:0]`, ...jumpFix(jumps)];
  // Stable order so that identical desired state renders identical text.
  const sorted = [...rules].sort(compareRules);
  for (const r of sorted) lines.push(ruleLine(r));
  lines.push('COMMIT', '');
  return lines.join('\n');
}

/** The batch that removes every trace: our jumps, the chain's rules, the chain. */
export function renderCleanup(jumps: JumpState): string {
  const lines = ['*nat', `:${CHAIN} - [0:0]`];
  for (const h of HOOKS) for (const l of jumps[h].jumpLines) lines.push(l.replace(/^-A /, '-D '));
  lines.push(`-X ${CHAIN}`, 'COMMIT', '');
  return lines.join('\n');
}

export type Backend = 'nft' | 'legacy';

/**
 * Picks the iptables backend: the one `iptables --version` names, unless only the other one holds kube-proxy's
 * chains (then the node's kube-proxy/CNI uses the other, and our jumps must sit in the same tables).
 */
export function chooseBackend(versionOutput: string, kubeChains: { nft: boolean; legacy: boolean }): Backend {
  const def: Backend = /\(legacy\)/.test(versionOutput) ? 'legacy' : 'nft';
  if (kubeChains.nft && !kubeChains.legacy) return 'nft';
  if (kubeChains.legacy && !kubeChains.nft) return 'legacy';
  return def;
}

/** What `iptables-save -t nat` shows of our state: the jumps per hook and our chain's rules (undefined: no chain). */
export interface NatState {
  readonly jumps: JumpState;
  readonly chain: readonly string[] | undefined;
}

/** Parses `iptables-save -t nat` output (nf_tables and legacy print the same format). Pure. */
export function parseNatSave(text: string): NatState {
  const lines = text.split('\n').map((l) => l.trim());
  const declared = lines.includes(`:${CHAIN} - [0:0]`) || lines.some((l) => l.startsWith(`:${CHAIN} `));
  const jumps = Object.fromEntries(HOOKS.map((h) => [h, parseHook(text, h)])) as Record<Hook, HookState>;
  return { jumps, chain: declared ? lines.filter((l) => l.startsWith(`-A ${CHAIN} `)) : undefined };
}

/**
 * The part of a rule line that decides where traffic goes: destination, protocol, port and target. Comments and the
 * match-module spelling are left out, so a line reads the same however iptables prints it back. Pure.
 */
export function ruleKey(line: string): string | undefined {
  const ip = /(?:^|\s)-d (\d+\.\d+\.\d+\.\d+)(?:\/32)?(?:\s|$)/.exec(line)?.[1];
  const local = /(?:^|\s)-m addrtype --dst-type LOCAL(?:\s|$)/.test(line);
  // Both or neither: not a rule of ours.
  const d = ip && !local ? ip : !ip && local ? NODE_LOCAL : undefined;
  const p = /(?:^|\s)-p (tcp|udp)(?:\s|$)/.exec(line)?.[1];
  const port = /(?:^|\s)--dport (\d+)(?:\s|$)/.exec(line)?.[1];
  const dnat = /-j DNAT --to-destination (\S+)/.exec(line)?.[1];
  const redirect = /-j REDIRECT --to-ports (\d+)/.exec(line)?.[1];
  if (!d || !p || !port || (!dnat && !redirect)) return undefined;
  return `${d} ${p} ${port} ${dnat ? `dnat ${dnat}` : `redirect ${redirect}`}`;
}

/**
 * Whether the kernel holds exactly `rules` in our chain, jumped once from the top of every hook. Pure: the periodic
 * re-assert and a successor checking that the running agent's rules are its own both use it.
 */
export function natMatches(rules: readonly InterceptRule[], state: NatState): { ok: boolean; why?: string } {
  if (!state.chain) return { ok: false, why: 'chain missing' };
  for (const h of HOOKS) {
    const j = state.jumps[h];
    if (!j.first || j.jumpLines.length !== 1) return { ok: false, why: `${h} jump ${j.jumpLines.length ? 'not first' : 'missing'}` };
  }
  const want = rules.map((r) => ruleKey(ruleLine(r))!).sort();
  const have = state.chain.map((l) => ruleKey(l) ?? `unparsed ${l}`).sort();
  if (want.length !== have.length) return { ok: false, why: `${have.length} rules in the chain, ${want.length} wanted` };
  for (let i = 0; i < want.length; i++) if (want[i] !== have[i]) return { ok: false, why: `rule differs: ${have[i]} (wanted ${want[i]})` };
  return { ok: true };
}
