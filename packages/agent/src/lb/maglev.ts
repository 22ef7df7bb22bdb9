// Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size M where each backend fills
// slots following its own permutation. Balanced to within a few percent and minimally disruptive when a backend
// leaves (only its slots, plus a small fraction of others, move). Pure.
import { fnv1a } from './hash.ts';

/** Table size: a prime well above 100 x the number of endpoints a Service usually has. */
export const MAGLEV_TABLE_SIZE = 65_537;

/** Builds the table for `names` (distinct endpoint identities). Slot values index into `names`. */
export function maglevTable(names: readonly string[], m = MAGLEV_TABLE_SIZE): Int32Array {
  const table = new Int32Array(m).fill(-1);
  const n = names.length;
  if (n === 0) return table;
  const offset = new Uint32Array(n);
  const skip = new Uint32Array(n);
  const next = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    offset[i] = fnv1a(names[i], 0x9e3779b9) % m;
    skip[i] = (fnv1a(names[i], 0x7f4a7c15) % (m - 1)) + 1;
  }
  let filled = 0;
  for (;;) {
    for (let i = 0; i < n; i++) {
      let c = (offset[i] + next[i] * skip[i]) % m;
      while (table[c] >= 0) {
        next[i]++;
        c = (offset[i] + next[i] * skip[i]) % m;
      }
      table[c] = i;
      next[i]++;
      if (++filled === m) return table;
    }
  }
}

/** The index into `names` that `key` maps to, or -1 for an empty table. */
export function maglevLookup(table: Int32Array, key: string): number {
  return table[fnv1a(key) % table.length];
}
