// Which mesh peer has node X: the sets of agents each peer server announced (full set after HELLO, then adds and
// removes). A peer server is trusted only as far as its certificate goes (a compromised one can announce anything),
// so the table is bounded per link and in total; what does not fit is refused and counted by the caller. Pure: no I/O.

/** Names one peer server may announce: the goal is 20,000 agents per replica; room for three times that. */
export const MAX_PRESENCE_PER_LINK = 65_536;
/** Names from all peers together (~100 bytes each: ~25 MiB at most). */
export const MAX_PRESENCE_TOTAL = 262_144;

export class PresenceTable<L> {
  private readonly perLink = new Map<L, Set<string>>();
  /** node -> the links that announced it, most recent last (an agent that moved is on the newest). */
  private readonly byNode = new Map<string, L[]>();
  private total = 0;
  readonly maxPerLink: number;
  readonly maxTotal: number;

  constructor(maxPerLink = MAX_PRESENCE_PER_LINK, maxTotal = MAX_PRESENCE_TOTAL) {
    this.maxPerLink = maxPerLink;
    this.maxTotal = maxTotal;
  }

  /** Adds names for `link`; returns how many were refused (the link's or the total bound was full). */
  add(link: L, names: Iterable<string>): { added: number; refused: number } {
    let set = this.perLink.get(link);
    if (!set) {
      set = new Set();
      this.perLink.set(link, set);
    }
    let added = 0;
    let refused = 0;
    for (const n of names) {
      if (set.has(n)) {
        this.touch(n, link);
        continue;
      }
      if (set.size >= this.maxPerLink || this.total >= this.maxTotal) {
        refused++;
        continue;
      }
      set.add(n);
      this.total++;
      added++;
      this.touch(n, link);
    }
    return { added, refused };
  }

  private touch(n: string, link: L): void {
    const ls = this.byNode.get(n);
    if (!ls) return void this.byNode.set(n, [link]);
    const i = ls.indexOf(link);
    if (i >= 0) ls.splice(i, 1);
    ls.push(link);
  }

  remove(link: L, names: Iterable<string>): number {
    const set = this.perLink.get(link);
    if (!set) return 0;
    let removed = 0;
    for (const n of names) {
      if (!set.delete(n)) continue;
      this.total--;
      removed++;
      this.unlink(n, link);
    }
    return removed;
  }

  private unlink(n: string, link: L): void {
    const ls = this.byNode.get(n);
    if (!ls) return;
    const i = ls.indexOf(link);
    if (i >= 0) ls.splice(i, 1);
    if (!ls.length) this.byNode.delete(n);
  }

  /** The link went away: everything it announced is gone. */
  dropLink(link: L): void {
    const set = this.perLink.get(link);
    if (!set) return;
    for (const n of set) this.unlink(n, link);
    this.total -= set.size;
    this.perLink.delete(link);
  }

  /** The peer that most recently announced `node`. */
  lookup(node: string): L | undefined {
    const ls = this.byNode.get(node);
    return ls ? ls[ls.length - 1] : undefined;
  }

  has(link: L, node: string): boolean {
    return this.perLink.get(link)?.has(node) ?? false;
  }

  sizeOf(link: L): number {
    return this.perLink.get(link)?.size ?? 0;
  }

  get size(): number {
    return this.total;
  }
}
