// Admin HTTP server: /healthz (event loop alive), /readyz (all readiness checks pass), /metrics (prom-client),
// /status (JSON from a provider), and routes a component adds (the server's /fleet and /ui). Shared by agent and server.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { Registry, collectDefaultMetrics } from 'prom-client';
import type { Logger } from './log.ts';
import { parseHostPort } from './config.ts';

/** The event loop is called stuck when a timer tick is this late. */
export const HEALTH_LOOP_STALL_MS = 5000;
const HEALTH_TICK_MS = 1000;

export type ReadyCheck = () => boolean;
/** Answers one GET/HEAD request on an added route (a throw answers 500). */
export type RouteHandler = (req: IncomingMessage, res: ServerResponse) => void;

export interface AdminOptions {
  listen: string;
  registry: Registry;
  status: () => unknown;
  log: Logger;
}

export function createRegistry(prefix: string): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix });
  return registry;
}

export class AdminServer {
  readonly checks = new Map<string, ReadyCheck>();
  private readonly routes = new Map<string, RouteHandler>();
  private server: Server | undefined;
  private lastTick = Date.now();
  private tick: NodeJS.Timeout | undefined;
  private readonly opts: AdminOptions;

  constructor(opts: AdminOptions) {
    this.opts = opts;
  }

  /** Registers a named readiness check; /readyz is 200 only when every check returns true. */
  addCheck(name: string, check: ReadyCheck): void {
    this.checks.set(name, check);
  }

  /** The bound address once started (port 0 in the config picks one). */
  address(): { host: string; port: number } | undefined {
    const a = this.server?.address();
    return typeof a === 'object' && a ? { host: a.address, port: a.port } : undefined;
  }

  /** Serves `path` (exact match, GET and HEAD) with `handler`. */
  addRoute(path: string, handler: RouteHandler): void {
    this.routes.set(path, handler);
  }

  /** A check that throws counts as failing (a module's bug must not crash the process from an HTTP request). */
  ready(): { ok: boolean; failing: string[] } {
    const passes = (c: ReadyCheck) => {
      try {
        return c();
      } catch {
        return false;
      }
    };
    const failing = [...this.checks].filter(([, c]) => !passes(c)).map(([n]) => n);
    return { ok: failing.length === 0, failing };
  }

  async start(): Promise<{ host: string; port: number }> {
    const hp = parseHostPort(this.opts.listen);
    if (!hp) throw new Error(`admin.listen: bad address ${this.opts.listen}`);
    this.tick = setInterval(() => { this.lastTick = Date.now(); }, HEALTH_TICK_MS);
    this.tick.unref();
    this.server = createServer((req, res) => {
      const url = (req.url ?? '/').split('?')[0];
      const send = (code: number, body: string, type = 'text/plain; charset=utf-8') => {
        res.writeHead(code, { 'content-type': type, 'cache-control': 'no-store' });
        res.end(body);
      };
      if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'method not allowed\n');
      if (url === '/healthz') {
        const stalled = Date.now() - this.lastTick > HEALTH_LOOP_STALL_MS;
        return stalled ? send(503, 'event loop stalled\n') : send(200, 'ok\n');
      }
      if (url === '/readyz') {
        const r = this.ready();
        return r.ok ? send(200, 'ready\n') : send(503, `not ready: ${r.failing.join(', ')}\n`);
      }
      if (url === '/metrics') {
        this.opts.registry.metrics().then(
          (m) => send(200, m, this.opts.registry.contentType),
          (e: Error) => send(500, `metrics failed: ${e.message}\n`),
        );
        return;
      }
      if (url === '/status') {
        try {
          return send(200, JSON.stringify(this.opts.status(), null, 2) + '\n', 'application/json');
        } catch (e) {
          return send(500, `status failed: ${(e as Error).message}\n`);
        }
      }
      const route = this.routes.get(url);
      if (route) {
        try {
          return route(req, res);
        } catch (e) {
          if (!res.headersSent) return send(500, `${url} failed: ${(e as Error).message}\n`);
          return void res.destroy();
        }
      }
      send(404, `not found: try /healthz /readyz /metrics /status${[...this.routes.keys()].filter((r) => !r.includes('/', 1)).map((r) => ` ${r}`).join('')}\n`);
    });
    this.server.keepAliveTimeout = 5000;
    const srv = this.server;
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(hp.port, hp.host || undefined, () => {
        srv.off('error', reject);
        // After listening, errors (EMFILE on accept) must not become uncaught exceptions that kill the process.
        srv.on('error', (e) => this.opts.log.warn({ err: e.message }, 'admin server error'));
        resolve();
      });
    });
    const addr = this.server.address();
    const bound = typeof addr === 'object' && addr ? { host: addr.address, port: addr.port } : { host: hp.host, port: hp.port };
    this.opts.log.info({ admin: `${bound.host}:${bound.port}` }, 'admin server listening');
    return bound;
  }

  async close(): Promise<void> {
    if (this.tick) clearInterval(this.tick);
    const s = this.server;
    if (!s) return;
    this.server = undefined;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
}
