// Builds the plain-JavaScript bundles the bins run under NODE_ENV=production (packages/common/bin/entry.js):
//   packages/agent/dist/edgemesh-agent.cjs, packages/agent/dist/edgemesh.cjs, packages/server/dist/edgemesh-server.cjs
// esbuild bundles our own TypeScript (the @edgemesh/* workspace packages, never the lab) into one CommonJS file per
// binary; npm packages stay external and are require()d from node_modules at run time. Why this shape (measured,
// README "Memory"):
// - No TypeScript at run time: Node's type stripping costs ~18 MiB RSS.
// - CommonJS, not ES modules: an ES-module import of a builtin builds its whole ESM namespace, which runs every lazy
//   getter (`import { createServer } from 'node:http'` loads undici, ~14 MiB), and a CommonJS package imported from
//   an ES module keeps a second copy of its source text; require() does neither. ~7 MiB less idle RSS than ESM output.
// - Lazy features stay lazy: what main.ts/setup.ts import with `await import()` (kubernetes source, DNS, tunnel)
//   becomes a require() run only when that code runs (`dynamic-import` marked unsupported), so an off feature never
//   loads its npm packages.
// - npm packages external: bundling them too measured no smaller RSS, and native addons must stay files; but
//   prom-client is taken from its parts (below).
// Runs as `npm ci`'s `prepare` (and `npm run build`) and in the image build.
import { cpSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, relative, resolve } from 'node:path';
import type { Plugin } from 'esbuild';

const ROOT = resolve(import.meta.dirname, '..');

/** Bare imports other than our workspace packages stay external; the lab is never part of a production bundle. */
const externalPackages: Plugin = {
  name: 'external-packages',
  setup(b) {
    b.onResolve({ filter: /^[^./]/ }, (args) => (args.path.startsWith('@edgemesh/') && !args.path.startsWith('@edgemesh/lab') ? undefined : { path: args.path, external: true }));
  },
};

/**
 * prom-client's index also loads its Pushgateway and cluster aggregator, which pull in https, tls, zlib and cluster
 * (~6 MiB RSS) that the agent and server never use. The bundles get the metric classes from their own files instead.
 * A name not listed here fails the build (esbuild: no matching export), so nothing is silently missing.
 */
const PROM_CLIENT_PARTS: Record<string, string> = {
  Registry: 'registry', Counter: 'counter', Gauge: 'gauge', Histogram: 'histogram', Summary: 'summary', collectDefaultMetrics: 'defaultMetrics',
};
const promClientParts: Plugin = {
  name: 'prom-client-parts',
  setup(b) {
    b.onResolve({ filter: /^prom-client$/ }, () => ({ path: 'prom-client', namespace: 'prom-client-parts' }));
    b.onLoad({ filter: /.*/, namespace: 'prom-client-parts' }, () => ({
      contents: Object.entries(PROM_CLIENT_PARTS).map(([name, file]) => `export { default as ${name} } from 'prom-client/lib/${file}';`).join('\n'),
      loader: 'js',
      resolveDir: ROOT,
    }));
  },
};

export interface BuildTarget {
  outdir: string;
  entryPoints: Record<string, string>;
  /** Keep `import()` as is (default: turned into require(), see above). */
  keepDynamicImport?: boolean;
  /** Directories of files a bundled module reads next to itself (`new URL('./x/', import.meta.url)`): source → dist path. */
  copy?: Record<string, string>;
}

export const TARGETS: BuildTarget[] = [
  // dist/ is as deep as src/: readVersion() (packages/common/src/process.ts) finds the root package.json at
  // '../../../package.json' from import.meta.url in both.
  { outdir: 'packages/agent/dist', entryPoints: { 'edgemesh-agent': 'packages/agent/src/main.ts' } },
  // `edgemesh demo` imports the lab (TypeScript, a checkout only) and names ERR_MODULE_NOT_FOUND when it is absent.
  { outdir: 'packages/agent/dist', entryPoints: { edgemesh: 'packages/agent/src/cli.ts' }, keepDynamicImport: true },
  // fleet/http.ts serves the /ui page from './ui/' next to itself.
  { outdir: 'packages/server/dist', entryPoints: { 'edgemesh-server': 'packages/server/src/main.ts' }, copy: { 'packages/server/src/fleet/ui': 'ui' } },
];

export async function build(): Promise<void> {
  const esbuild = await import('esbuild');
  for (const dir of new Set(TARGETS.map((t) => t.outdir))) rmSync(resolve(ROOT, dir), { recursive: true, force: true });
  for (const t of TARGETS) {
    const outdir = resolve(ROOT, t.outdir);
    const res = await esbuild.build({
      absWorkingDir: ROOT,
      entryPoints: t.entryPoints,
      outdir,
      outExtension: { '.js': '.cjs' },
      bundle: true,
      format: 'cjs',
      platform: 'node',
      target: 'node24',
      supported: { 'dynamic-import': !!t.keepDynamicImport },
      // import.meta has no CommonJS form: its only use (readVersion) gets the bundle's own URL.
      define: { 'import.meta.url': '__edgemeshBundleUrl' },
      banner: { js: "const __edgemeshBundleUrl = require('node:url').pathToFileURL(__filename).href;" },
      charset: 'ascii',
      plugins: [promClientParts, externalPackages],
      legalComments: 'none',
      write: false,
      logLevel: 'warning',
    });
    for (const f of res.outputFiles) {
      // charset 'ascii' escapes strings and identifiers; what is left is in the doc comments esbuild keeps. One such
      // character (an em dash) would make V8 hold the whole source as a two-byte string: escape them too.
      const text = f.text.replace(/[^\x00-\x7f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
      mkdirSync(dirname(f.path), { recursive: true });
      writeFileSync(f.path, text);
      console.log(`build: ${relative(ROOT, f.path)} ${(text.length / 1024).toFixed(0)} KiB`);
    }
    for (const [from, to] of Object.entries(t.copy ?? {})) cpSync(resolve(ROOT, from), resolve(outdir, to), { recursive: true });
  }
}

if (import.meta.main) {
  try {
    await import('esbuild');
  } catch {
    // `npm ci --omit=dev` (a production install) runs `prepare` without devDependencies: nothing to build with.
    // The image builds dist/ in a stage with every dependency and copies it over (Dockerfile).
    if (process.env.npm_lifecycle_event === 'prepare') {
      console.log('build: esbuild is not installed (production install); dist/ not built');
      process.exit(0);
    }
    throw new Error('build: esbuild is not installed: run npm ci');
  }
  await build();
}
