// An in-process fake Kubernetes API server (node:http) that speaks list + watch the way the real one does, with
// fault injection, for driving the kubernetes source's client in tests.
// - One global resourceVersion counter; every object carries metadata.resourceVersion; lists carry the list RV.
// - GET <collection>                          -> {kind: XList, metadata: {resourceVersion}, items}
// - GET <collection>?watch=true&resourceVersion=N -> newline-delimited JSON events after N, then live events.
//   N older than the retained event window -> 410 (as an ERROR event on a 200 stream, or as HTTP 410).
// - Faults: HTTP status on the next lists, ERROR 410 on open watches, dropped connections, silent watches,
//   BOOKMARK events, unknown collections -> 404 (an absent CRD).
// - POST /apis/authentication.k8s.io/v1/tokenreviews answers from `tokens` (token -> who it belongs to and its
//   audiences) the way the apiserver does: authenticated only when the token is known and one of its audiences was
//   asked for; status.audiences is the intersection. Unknown tokens -> authenticated false.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export type Obj = { apiVersion?: string; kind?: string; metadata: { name: string; namespace?: string; resourceVersion?: string; [k: string]: unknown }; [k: string]: unknown };

interface Event { rv: number; type: 'ADDED' | 'MODIFIED' | 'DELETED'; object: Obj }
interface Watcher { res: ServerResponse; silent: boolean }
interface Collection {
  listKind: string;
  objects: Map<string, Obj>;
  events: Event[];
  watchers: Set<Watcher>;
}

export const COLLECTIONS: Record<string, string> = {
  '/api/v1/services': 'ServiceList',
  '/apis/discovery.k8s.io/v1/endpointslices': 'EndpointSliceList',
  '/api/v1/nodes': 'NodeList',
};

export class FakeApiServer {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private readonly cols = new Map<string, Collection>();
  private rv = 100;
  /** Events at or before this RV are compacted: watches from older RVs get 410. */
  private compactedRv = 0;
  /** Per collection: statuses to answer the next lists with (consumed one per list). */
  private readonly listFaults = new Map<string, number[]>();
  /** Collections whose new watches hang silently (headers sent, then nothing). */
  private readonly silentWatch = new Set<string>();
  /** Collections whose lists hang (never answered) while set. */
  private readonly hangList = new Set<string>();
  /** How a too-old watch is refused: ERROR event on a 200 stream (like the apiserver) or HTTP 410. */
  goneMode: 'event' | 'http' = 'event';
  readonly requests: { method: string; url: string }[] = [];
  /** Tokens the TokenReview endpoint knows. */
  readonly tokens = new Map<string, { username: string; audiences: string[]; extra?: Record<string, string[]> }>();
  /** TokenReview requests received (their spec). */
  readonly reviews: { token: string; audiences?: string[] }[] = [];
  /** The next TokenReviews answer this HTTP status (consumed one per review). */
  readonly reviewFaults: number[] = [];
  url = '';

  constructor(collections: Record<string, string> = COLLECTIONS) {
    for (const [path, listKind] of Object.entries(collections)) this.addCollection(path, listKind);
  }

  /** Registers a collection (e.g. a CRD being installed). Unknown paths answer 404. */
  addCollection(path: string, listKind: string): void {
    if (!this.cols.has(path)) this.cols.set(path, { listKind, objects: new Map(), events: [], watchers: new Set() });
  }

  async start(): Promise<string> {
    this.server = createServer((req, res) => this.handle(req, res));
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.url;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  private col(path: string): Collection {
    const c = this.cols.get(path);
    if (!c) throw new Error(`fakeapi: no collection ${path}`);
    return c;
  }

  private static key(o: Obj): string {
    return o.metadata.namespace ? `${o.metadata.namespace}/${o.metadata.name}` : o.metadata.name;
  }

  /** Creates or updates an object (bumps the RV, streams ADDED/MODIFIED). */
  upsert(path: string, obj: Obj): Obj {
    const c = this.col(path);
    const o: Obj = structuredClone(obj);
    o.metadata.resourceVersion = String(++this.rv);
    const k = FakeApiServer.key(o);
    const type = c.objects.has(k) ? 'MODIFIED' : 'ADDED';
    c.objects.set(k, o);
    this.emit(c, { rv: this.rv, type, object: o });
    return o;
  }

  delete(path: string, key: string): void {
    const c = this.col(path);
    const o = c.objects.get(key);
    if (!o) throw new Error(`fakeapi: no ${key} in ${path}`);
    c.objects.delete(key);
    const gone: Obj = structuredClone(o);
    gone.metadata.resourceVersion = String(++this.rv);
    this.emit(c, { rv: this.rv, type: 'DELETED', object: gone });
  }

  /** Current objects of a collection (key -> resourceVersion). */
  state(path: string): Map<string, string> {
    return new Map([...this.col(path).objects].map(([k, o]) => [k, o.metadata.resourceVersion!]));
  }

  /** Forgets the event history up to now: watches resuming from an older RV get 410 Gone. */
  compact(): void {
    this.compactedRv = this.rv;
    for (const c of this.cols.values()) c.events = [];
  }

  /** Sends an ERROR 410 event on every open watch of the collection and closes it (like the apiserver). */
  expireWatches(path: string): void {
    const c = this.col(path);
    this.compact();
    for (const w of c.watchers) {
      w.res.end(JSON.stringify({ type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', status: 'Failure', message: 'too old resource version', reason: 'Expired', code: 410 } }) + '\n');
    }
    c.watchers.clear();
  }

  /** Destroys the TCP connections of every open watch (no clean end). */
  dropWatches(path?: string): number {
    let n = 0;
    for (const [p, c] of this.cols) {
      if (path && p !== path) continue;
      for (const w of c.watchers) { w.res.socket?.destroy(); n++; }
      c.watchers.clear();
    }
    return n;
  }

  /** The next `count` lists of `path` answer HTTP `status`. */
  failLists(path: string, status: number, count = 1): void {
    this.listFaults.set(path, [...(this.listFaults.get(path) ?? []), ...Array<number>(count).fill(status)]);
  }

  /** Open and future watches of `path` stop sending anything (socket stays open) until `silence(path, false)`. */
  silence(path: string, on = true): void {
    const c = this.col(path);
    if (on) {
      this.silentWatch.add(path);
      for (const w of c.watchers) w.silent = true;
    } else this.silentWatch.delete(path);
  }

  /** Lists of `path` hang (no answer) while on. */
  hangLists(path: string, on = true): void {
    if (on) this.hangList.add(path);
    else this.hangList.delete(path);
  }

  /** Sends a BOOKMARK with the current RV to every open watch of the collection. */
  bookmark(path: string): void {
    const c = this.col(path);
    const kind = c.listKind.replace(/List$/, '');
    for (const w of c.watchers) {
      if (!w.silent) w.res.write(JSON.stringify({ type: 'BOOKMARK', object: { kind, apiVersion: 'v1', metadata: { resourceVersion: String(this.rv) } } }) + '\n');
    }
  }

  watcherCount(path: string): number {
    return this.col(path).watchers.size;
  }

  private emit(c: Collection, ev: Event): void {
    c.events.push(ev);
    const line = JSON.stringify({ type: ev.type, object: ev.object }) + '\n';
    for (const w of c.watchers) if (!w.silent) w.res.write(line);
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    this.requests.push({ method: req.method ?? 'GET', url: req.url ?? '' });
    const u = new URL(req.url ?? '/', 'http://x');
    const c = this.cols.get(u.pathname);
    const json = (code: number, body: unknown) => {
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    const status = (code: number, reason: string, message: string) => json(code, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code });
    if (req.method === 'POST' && u.pathname === '/apis/authentication.k8s.io/v1/tokenreviews') return this.tokenReview(req, json, status);
    if (!c) return status(404, 'NotFound', 'the server could not find the requested resource');
    if (u.searchParams.get('watch') === 'true') return this.watch(u, c, res, status);
    const fault = this.listFaults.get(u.pathname)?.shift();
    if (fault) return status(fault, 'InternalError', `injected ${fault}`);
    if (this.hangList.has(u.pathname)) return; // never answered
    json(200, { kind: c.listKind, apiVersion: 'v1', metadata: { resourceVersion: String(this.rv) }, items: [...c.objects.values()] });
  }

  private tokenReview(req: IncomingMessage, json: (code: number, body: unknown) => void, status: (code: number, reason: string, message: string) => void): void {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d: string) => { body += d; });
    req.on('end', () => {
      const fault = this.reviewFaults.shift();
      if (fault) return status(fault, 'InternalError', `injected ${fault}`);
      let spec: { token?: string; audiences?: string[] };
      try {
        spec = (JSON.parse(body) as { spec?: typeof spec }).spec ?? {};
      } catch {
        return status(400, 'BadRequest', 'not JSON');
      }
      this.reviews.push({ token: spec.token ?? '', audiences: spec.audiences });
      const who = this.tokens.get(spec.token ?? '');
      const asked = spec.audiences?.length ? spec.audiences : ['https://kubernetes.default.svc'];
      const audiences = who ? who.audiences.filter((a) => asked.includes(a)) : [];
      const out = { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec, status: {} as Record<string, unknown> };
      if (who && audiences.length) out.status = { authenticated: true, audiences, user: { username: who.username, uid: 'uid-' + who.username, groups: ['system:serviceaccounts', 'system:authenticated'], extra: who.extra ?? {} } };
      else out.status = { authenticated: false, error: who ? 'token audiences do not match' : 'invalid bearer token' };
      json(201, out);
    });
  }

  private watch(u: URL, c: Collection, res: ServerResponse, status: (code: number, reason: string, message: string) => void): void {
    const from = Number(u.searchParams.get('resourceVersion') || '0');
    const tooOld = from !== 0 && from < this.compactedRv;
    if (tooOld && this.goneMode === 'http') return status(410, 'Expired', 'too old resource version');
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    res.flushHeaders();
    if (tooOld) {
      res.end(JSON.stringify({ type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', status: 'Failure', message: 'too old resource version', reason: 'Expired', code: 410 } }) + '\n');
      return;
    }
    const w: Watcher = { res, silent: this.silentWatch.has(u.pathname) };
    if (!w.silent) {
      // RV 0/absent: synthetic ADDED for the current state; else every retained event after the RV.
      const backlog = from === 0 ? [...c.objects.values()].map((object) => ({ type: 'ADDED', object })) : c.events.filter((e) => e.rv > from);
      for (const e of backlog) res.write(JSON.stringify({ type: e.type, object: e.object }) + '\n');
    }
    c.watchers.add(w);
    res.on('close', () => c.watchers.delete(w));
  }
}
