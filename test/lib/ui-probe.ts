// Opens the server's /ui page in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core), waits
// until the map shows what is expected, and reports what the DOM holds, every request the page made (each must be to
// the admin host: anything else is aborted and listed), CSP violations and console errors; optionally a screenshot.
// Runs in-process, or as a script inside a lab namespace: `node ui-probe.ts URL NODES LINKS [SCREENSHOT]` prints JSON.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

// The functions passed to page.evaluate run in the page; the project's type-check has no DOM library.
/* eslint-disable @typescript-eslint/no-explicit-any */
declare const document: any;
declare const window: any;
declare const MouseEvent: any;

export const CHROMIUM = '/usr/bin/chromium';
export const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run',
];
/** Generous: Chromium starts in 1-3 s on the 2-core machine, the page polls /fleet every 3 s. */
export const PAGE_TIMEOUT_MS = 45_000;

export interface UiProbe {
  nodes: { node: string; group: string; cls: string }[];
  links: { a: string; b: string; path: string }[];
  clusters: string[];
  matrix: { a: string; b: string; path: string; text: string }[];
  warnings: { kind: string; text: string }[];
  health: string;
  mode: string;
  nodeTooltip: string;
  linkTooltip: string;
  requests: string[];
  offHost: string[];
  cspViolations: string[];
  consoleErrors: string[];
  responseTypes: Record<string, string>;
}

export async function probeUi(url: string, want: { nodes: number; links: number }, screenshot?: string): Promise<UiProbe> {
  const adminHost = new URL(url).host;
  const profile = mkdtempSync(join(tmpdir(), 'em-chromium-'));
  const requests: string[] = [];
  const offHost: string[] = [];
  const consoleErrors: string[] = [];
  const responseTypes: Record<string, string> = {};
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS, viewport: { width: 1440, height: 900 },
    serviceWorkers: 'block', timeout: PAGE_TIMEOUT_MS,
  });
  try {
    // Every request of every page in this profile goes through here: only the admin host is let through.
    await context.route('**/*', (route) => {
      const u = route.request().url();
      requests.push(u);
      let host = '';
      try { host = new URL(u).host; } catch { /* not a URL */ }
      if (host !== adminHost) {
        offHost.push(u);
        return route.abort('blockedbyclient');
      }
      return route.continue();
    });
    context.on('request', (r) => { if (!requests.includes(r.url())) requests.push(r.url()); });
    context.on('response', (r) => { responseTypes[new URL(r.url()).pathname] = r.headers()['content-type'] ?? ''; });
    await context.addInitScript(() => {
      const w = window as { __csp: string[] };
      w.__csp = [];
      document.addEventListener('securitypolicyviolation', (e: { violatedDirective: string; blockedURI: string }) => w.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
    });
    const page = context.pages()[0] ?? (await context.newPage());
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
    page.on('pageerror', (e) => consoleErrors.push(String(e)));
    await page.goto(url, { waitUntil: 'load', timeout: PAGE_TIMEOUT_MS });
    await page.waitForFunction((w: { nodes: number; links: number }) => document.querySelectorAll('#map g.node').length >= w.nodes && document.querySelectorAll('#map line.link').length >= w.links,
      want, { timeout: PAGE_TIMEOUT_MS, polling: 250 });
    const dom = await page.evaluate(() => {
      const attr = (e: any, a: string): string => e.getAttribute(a) ?? '';
      const all = (sel: string): any[] => [...document.querySelectorAll(sel)];
      return {
        nodes: all('#map g.node').map((g) => ({ node: attr(g, 'data-node'), group: attr(g, 'data-group'), cls: attr(g, 'class') })),
        links: all('#map line.link').map((l) => ({ a: attr(l, 'data-a'), b: attr(l, 'data-b'), path: attr(l, 'data-path') })),
        clusters: all('#map g.cluster').map((c) => attr(c, 'data-group')),
        matrix: all('#matrix td.cell').map((td) => ({ a: attr(td, 'data-a'), b: attr(td, 'data-b'), path: attr(td, 'data-path'), text: String(td.textContent ?? '') })),
        warnings: all('#warnings li').map((li) => ({ kind: attr(li, 'data-kind'), text: String(li.textContent ?? '') })),
        health: String(document.getElementById('health')?.textContent ?? ''),
        mode: String(document.getElementById('map')?.dataset.mode ?? ''),
        csp: (window as { __csp: string[] }).__csp,
      };
    });
    // Hover: a node by the pointer; a link by a synthetic mousemove (a 3 px line is a poor pointer target).
    await page.hover('#map g.node circle');
    const nodeTooltip = await page.textContent('#tooltip') ?? '';
    const linkTooltip = await page.evaluate((): string => {
      const l = document.querySelector('#map line.link');
      l?.dispatchEvent(new MouseEvent('mousemove', { bubbles: true, clientX: 100, clientY: 100 }));
      const t = document.getElementById('tooltip');
      return t && !t.hidden ? t.textContent ?? '' : '';
    });
    if (screenshot) {
      await page.mouse.move(0, 0);
      await page.evaluate(() => { const t = document.getElementById('tooltip'); if (t) t.hidden = true; });
      await page.screenshot({ path: screenshot, fullPage: true });
    }
    const { csp, ...rest } = dom;
    return { ...rest, nodeTooltip, linkTooltip, requests, offHost, cspViolations: csp, consoleErrors, responseTypes };
  } finally {
    await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const [url, nodes, links, shot] = process.argv.slice(2);
  probeUi(url, { nodes: Number(nodes), links: Number(links) }, shot || undefined).then(
    (r) => { process.stdout.write(JSON.stringify(r) + '\n'); },
    (e: Error) => { process.stdout.write(JSON.stringify({ error: e.message }) + '\n'); process.exitCode = 1; },
  );
}
