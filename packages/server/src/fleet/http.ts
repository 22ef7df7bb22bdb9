// The fleet on the server's admin port: GET /fleet (the fleet view as JSON, schema in README "Fleet") and GET /ui (the
// mesh map page). The page and its graph layout library (d3-force, from node_modules) are served from memory, so the
// page works where the browser reaches nothing but this port (air-gapped sites): no CDN, no inline script, a strict
// Content-Security-Policy that allows only this origin.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import type { AdminServer } from '@edgemesh/common/admin';
import type { FleetStore } from './store.ts';

export const UI_CSP = [
  "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self'", "connect-src 'self'",
  "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
].join('; ');

const SECURITY_HEADERS = {
  'content-security-policy': UI_CSP,
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cross-origin-resource-policy': 'same-origin',
  'cache-control': 'no-store',
};

// Next to this module in the sources (src/fleet/ui), next to the bundle in a build (dist/ui: scripts/build.ts copies it).
const UI_DIR = fileURLToPath(new URL('./ui/', import.meta.url));
const requireHere = createRequire(import.meta.url);

/** d3-force and the three modules it needs, loaded in this order as browser globals (their UMD builds). */
const VENDOR = ['d3-dispatch', 'd3-quadtree', 'd3-timer', 'd3-force'] as const;

function vendorFile(pkg: string): string {
  // The package's default export is dist/<pkg>.mjs; its UMD build sits next to it.
  return join(dirname(requireHere.resolve(pkg)), `${pkg}.min.js`);
}

interface Asset { type: string; body: Buffer }

export function uiAssets(): Map<string, Asset> {
  const js = 'text/javascript; charset=utf-8';
  const assets = new Map<string, Asset>();
  const html = readFileSync(join(UI_DIR, 'index.html'));
  assets.set('/ui', { type: 'text/html; charset=utf-8', body: html });
  assets.set('/ui/', { type: 'text/html; charset=utf-8', body: html });
  assets.set('/ui/app.js', { type: js, body: readFileSync(join(UI_DIR, 'app.js')) });
  assets.set('/ui/style.css', { type: 'text/css; charset=utf-8', body: readFileSync(join(UI_DIR, 'style.css')) });
  for (const pkg of VENDOR) assets.set(`/ui/vendor/${pkg}.min.js`, { type: js, body: readFileSync(vendorFile(pkg)) });
  return assets;
}

export interface FleetHttpOptions {
  admin: AdminServer;
  store: FleetStore;
  /** Facts about this server added to /fleet. */
  server: () => { listen: string; agentsConnected: number };
}

/** Adds /fleet and /ui (with its assets) to the admin server. */
export function addFleetRoutes(o: FleetHttpOptions): void {
  o.admin.addRoute('/fleet', (_req, res) => {
    const body = JSON.stringify({ ...o.store.view(), generatedAt: new Date().toISOString(), server: o.server() }, null, 2) + '\n';
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' });
    res.end(body);
  });
  for (const [path, a] of uiAssets()) {
    o.admin.addRoute(path, (_req, res) => {
      res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': a.type, 'content-length': a.body.length });
      res.end(a.body);
    });
  }
}
