// How the edgemesh binaries start (plain JavaScript: deciding costs no TypeScript loader).
//
// 1. Which code runs. With NODE_ENV=production (the image sets it) the bin runs the bundle in its package's dist/
//    (`npm run build`, also run by `npm ci`'s prepare and by the Dockerfile), never loading a .ts file. Otherwise, or
//    with EDGEMESH_SOURCE=1, it runs the TypeScript sources, as tests and CI do. NODE_ENV=production without a dist/
//    runs the sources and says so on stderr.
// 2. V8 sized for the box (agent and server only). From the memory limit -- EDGEMESH_MEMORY_LIMIT (bytes, or with a
//    Ki/Mi/Gi suffix) if set, else the cgroup v2 memory.max / v1 memory.limit_in_bytes that libuv reads
//    (process.constrainedMemory()) -- the bin picks --max-semi-space-size and --max-old-space-size (v8Flags below)
//    and replaces itself once with those flags (process.execve: same PID, so it stays PID 1 and gets the signals).
//    No limit: V8's defaults. A flag already in NODE_OPTIONS or on node's command line is left as given. The
//    re-executed process also gets glibc malloc settings for a small box (MALLOC_ENV below).
//    EDGEMESH_V8_SIZING=off skips this step.
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { totalmem } from 'node:os';
import { getHeapStatistics } from 'node:v8';
import { fileURLToPath } from 'node:url';

const MIB = 1024 * 1024;
/** Young generation: one semi-space per this much memory limit (256 MiB limit -> 1 MiB semi-spaces). */
export const SEMI_SPACE_PER_LIMIT = 256;
/** Semi-space bounds in MiB: 1 is V8's smallest useful size; 16 is V8's own default maximum on 64-bit. */
export const SEMI_SPACE_MIN_MIB = 1;
export const SEMI_SPACE_MAX_MIB = 16;
/**
 * Memory kept outside the old generation: the node binary's pages and code (~50 MiB), sockets' and streams' buffers,
 * native allocations (udx, sodium), the young generation. At least this many MiB, or a quarter of the limit.
 */
export const NON_HEAP_RESERVE_MIB = 64;
export const NON_HEAP_RESERVE_FRACTION = 0.25;
/** Smallest old generation we ask for (below this V8 cannot even hold a large cluster model). */
export const OLD_SPACE_MIN_MIB = 32;
/**
 * glibc malloc tuning passed to the re-executed process (unless already set), measured with 5,000 Services (README,
 * "Memory"): ~25 MiB less RSS. MALLOC_ARENA_MAX: node runs ~11 threads and glibc gives each up to one arena of its
 * own, each keeping its freed memory; 2 is enough for one busy JavaScript thread plus helpers. MALLOC_MMAP_THRESHOLD_:
 * a fixed 128 KiB (glibc raises it up to 32 MiB on its own after the first large free) so that large temporary
 * blocks (file reads, state file writes, parser buffers) are mapped and unmapped instead of staying in the heap.
 * musl ignores both.
 */
export const MALLOC_ENV = { MALLOC_ARENA_MAX: '2', MALLOC_MMAP_THRESHOLD_: '131072' };
/** Set in the re-executed process (and removed from its environment at once) so it does not size itself again. */
const SIZED_ENV = 'EDGEMESH_V8_SIZED';

/** Parses EDGEMESH_MEMORY_LIMIT: bytes, or a number with a Ki/Mi/Gi (or K/M/G) suffix. Throws on anything else. */
export function parseMemory(s) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMG]i?)?B?\s*$/i.exec(s);
  if (!m) throw new Error(`EDGEMESH_MEMORY_LIMIT: expected bytes or a size such as 256Mi, got ${JSON.stringify(s)}`);
  const unit = { k: 1024, m: MIB, g: 1024 * MIB }[(m[2] ?? '').charAt(0).toLowerCase()] ?? 1;
  return Math.floor(Number(m[1]) * unit);
}

/**
 * The memory limit to size for, in bytes, or undefined for none. `constrained` is process.constrainedMemory() (0 or a
 * huge value when no cgroup limit applies), `total` the physical memory.
 */
export function memoryLimit(env, constrained, total) {
  if (env.EDGEMESH_MEMORY_LIMIT) return parseMemory(env.EDGEMESH_MEMORY_LIMIT);
  return constrained > 0 && constrained < total ? constrained : undefined;
}

/**
 * V8 flags for a memory limit (bytes). `given` is what NODE_OPTIONS and node's own arguments already say: a flag
 * found there is not added again. `defaultHeapMiB` caps the old generation at what V8 would pick by itself. Pure.
 */
export function v8Flags(limitBytes, given = '', defaultHeapMiB = Infinity) {
  const limitMiB = Math.floor(limitBytes / MIB);
  const semiRaw = Math.floor(limitMiB / SEMI_SPACE_PER_LIMIT);
  let semi = SEMI_SPACE_MIN_MIB;
  while (semi * 2 <= Math.min(semiRaw, SEMI_SPACE_MAX_MIB)) semi *= 2;
  const reserve = Math.max(NON_HEAP_RESERVE_MIB, Math.floor(limitMiB * NON_HEAP_RESERVE_FRACTION));
  const old = Math.min(Math.max(OLD_SPACE_MIN_MIB, limitMiB - reserve), Math.floor(defaultHeapMiB));
  const has = (flag) => new RegExp(`(^|\\s)--${flag.replace(/-/g, '[-_]')}(=|\\s|$)`).test(given);
  const flags = [];
  if (!has('max-semi-space-size')) flags.push(`--max-semi-space-size=${semi}`);
  if (!has('max-old-space-size')) flags.push(`--max-old-space-size=${old}`);
  return flags;
}

/** 'dist' or 'src' for an environment and whether the bundle exists. Pure. */
export function chooseCode(env, distExists) {
  if (env.EDGEMESH_SOURCE && env.EDGEMESH_SOURCE !== '0') return 'src';
  return env.NODE_ENV === 'production' && distExists ? 'dist' : 'src';
}

/** Re-executes this process once with V8 flags for its memory limit (see the header). Returns only when it did not. */
function sizeV8() {
  if (process.env[SIZED_ENV] !== undefined) {
    delete process.env[SIZED_ENV]; // children (iptables, a demo's agents) size themselves
    return;
  }
  if (process.env.EDGEMESH_V8_SIZING === 'off' || typeof process.execve !== 'function') return;
  let limit;
  try {
    limit = memoryLimit(process.env, process.constrainedMemory?.() ?? 0, totalmem());
  } catch (e) {
    // A bad EDGEMESH_MEMORY_LIMIT is a bad config: exit 2 naming it, like every other config error.
    process.stderr.write(`config: ${e.message}\n`);
    process.exit(2);
  }
  if (limit === undefined) return;
  const given = `${process.env.NODE_OPTIONS ?? ''} ${process.execArgv.join(' ')}`;
  // V8's own heap limit for this machine, read in this (still unflagged) process: we never raise it.
  const flags = v8Flags(limit, given, getHeapStatistics().heap_size_limit / MIB);
  if (!flags.length) return;
  try {
    process.execve(process.execPath, [process.execPath, ...flags, ...process.execArgv, ...process.argv.slice(1)], { ...MALLOC_ENV, ...process.env, [SIZED_ENV]: flags.join(' ') });
  } catch (e) {
    process.stderr.write(`could not restart node with ${flags.join(' ')} (${e.message}); running with V8's defaults\n`);
  }
}

/**
 * Starts a binary: `dist` is its bundle's URL (CommonJS), `src` its TypeScript module's URL; both export `exportName`, called
 * with the command-line arguments. `size`: size V8 for the memory limit first (the long-running agent and server).
 */
export async function start({ dist, src, exportName = 'main', size = false }) {
  if (size) sizeV8();
  const distExists = existsSync(fileURLToPath(dist));
  const code = chooseCode(process.env, distExists);
  if (code === 'src' && process.env.NODE_ENV === 'production' && !distExists && !process.env.EDGEMESH_SOURCE) {
    process.stderr.write(`${fileURLToPath(dist)} is not built (npm run build): running the TypeScript sources\n`);
  }
  // The bundle is CommonJS (scripts/build.ts says why): require() it.
  const mod = code === 'dist' ? createRequire(import.meta.url)(fileURLToPath(dist)) : await import(src.href);
  await mod[exportName](process.argv.slice(2));
}
