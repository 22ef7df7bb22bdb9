// A thin Kubernetes API client for what the kubernetes source needs: list (paginated) and watch (with bookmarks) of
// a few collections over node:http/https, plus kubeconfig loading. It replaces @kubernetes/client-node, whose
// generated API surface costs ~85 MiB RSS to load (README, "Memory"); list+watch needs none of it.
// - Connection: in-cluster service account (KUBERNETES_SERVICE_HOST/PORT, the mounted CA and token, the token
//   re-read for every request because the kubelet rotates it), a kubeconfig file (current context: server, CA file or
//   data, insecure-skip-tls-verify, tls-server-name, client certificate and key as files or data, token or tokenFile,
//   username/password), or a plain http(s) URL without credentials (KubeEdge's metaServer, http://127.0.0.1:10550).
//   Exec credential plugins and auth providers are refused at start, naming cluster.kubeconfig.
// - Not fetch(): node's fetch loads undici (~14 MiB RSS) and cannot bound a response body as it streams.
import { readFileSync } from 'node:fs';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { dirname, isAbsolute, join } from 'node:path';
import { load as loadYaml } from 'js-yaml';
import { ConfigError } from '@edgemesh/common/config';

/** The in-cluster service account's files (mounted by the kubelet). */
export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';
/** A list page: the API server returns at most this many objects per request (what client-go's reflector asks). */
export const KUBE_LIST_PAGE_SIZE = 500;
/** Largest list page body we read (a page of 500 objects is a few MiB; the rest is a broken or hostile server). */
export const KUBE_MAX_LIST_BYTES = 64 * 1024 * 1024;
/** Largest single watch event line (one object). */
export const KUBE_MAX_EVENT_BYTES = 16 * 1024 * 1024;
/** Largest error body we read to name the failure. */
const MAX_ERROR_BODY_BYTES = 64 * 1024;

/** Where and how to reach the API server; files are read when a request is made, not when the config loads. */
export interface KubeConnection {
  /** e.g. https://10.96.0.1:443 (a path prefix is kept). */
  server: string;
  skipTLSVerify: boolean;
  tlsServerName?: string;
  ca?: () => Buffer;
  cert?: () => Buffer;
  key?: () => Buffer;
  /** Bearer token, read fresh per request. */
  token?: () => string;
  basic?: { username: string; password: string };
}

/** What the source and its tests read about the connection (the shape client-node's KubeConfig had). */
export class KubeConfig {
  readonly connection: KubeConnection;
  constructor(connection: KubeConnection) {
    this.connection = connection;
  }
  getCurrentCluster(): { server: string; skipTLSVerify: boolean } {
    return { server: this.connection.server, skipTLSVerify: this.connection.skipTLSVerify };
  }
}

/** An HTTP error from the API server, with the Status it sent when it sent one. */
export class KubeHttpError extends Error {
  readonly statusCode: number;
  constructor(statusCode: number, reason: string) {
    super(`HTTP ${statusCode}${reason ? `: ${reason}` : ''}`);
    this.statusCode = statusCode;
  }
}

const once = <T>(f: () => T): (() => T) => {
  let v: T | undefined;
  return () => (v ??= f());
};

/** In-cluster: the service account. Files are read lazily (they exist only inside a pod). */
export function inClusterConnection(env: NodeJS.ProcessEnv, dir = SERVICE_ACCOUNT_DIR): KubeConnection {
  const host = env.KUBERNETES_SERVICE_HOST!;
  const hostPart = host.includes(':') ? `[${host}]` : host;
  return {
    server: `https://${hostPart}:${env.KUBERNETES_SERVICE_PORT}`,
    skipTLSVerify: false,
    ca: once(() => readFileSync(join(dir, 'ca.crt'))),
    token: () => readFileSync(join(dir, 'token'), 'utf8').trim(),
  };
}

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : {});
const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);

/**
 * Parses a kubeconfig file's text (`file` names it in errors and anchors relative paths). Throws ConfigError naming
 * cluster.kubeconfig. Pure but for the file reads it defers to request time.
 */
export function kubeconfigConnection(text: string, file: string): KubeConnection {
  const fail = (why: string): never => {
    throw new ConfigError('cluster.kubeconfig', `kubeconfig ${file}: ${why}`);
  };
  let doc: Obj;
  try {
    doc = obj(loadYaml(text));
  } catch (e) {
    return fail(`not valid YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  const named = (list: unknown, name: string | undefined, what: string): Obj => {
    const hit = (Array.isArray(list) ? list : []).map(obj).find((e) => e.name === name);
    return hit ? obj(hit[what]) : fail(`${what} ${JSON.stringify(name)} not found`);
  };
  const current = str(doc['current-context']);
  if (!current) return fail('has no current cluster (current-context is empty)');
  const ctx = named(doc.contexts, current, 'context');
  const cluster = named(doc.clusters, str(ctx.cluster), 'cluster');
  const user = str(ctx.user) ? named(doc.users, str(ctx.user), 'user') : {};
  const server = str(cluster.server);
  if (!server) return fail(`cluster ${JSON.stringify(ctx.cluster)} has no server`);
  if (!/^https?:\/\//.test(server)) return fail(`server ${JSON.stringify(server)} is not an http(s) URL`);
  const base = dirname(file);
  const path = (p: string) => (isAbsolute(p) ? p : join(base, p));
  /** `<name>-data` (base64) or `<name>` (a file). */
  const material = (o: Obj, name: string): (() => Buffer) | undefined => {
    const data = str(o[`${name}-data`]);
    if (data) {
      const b = Buffer.from(data, 'base64');
      return () => b;
    }
    const f = str(o[name]);
    return f ? once(() => readFileSync(path(f))) : undefined;
  };
  if (user.exec !== undefined || user['auth-provider'] !== undefined) {
    return fail('exec credential plugins and auth providers are not supported: use a token, tokenFile or a client certificate');
  }
  const token = str(user.token);
  const tokenFile = str(user.tokenFile);
  const username = str(user.username);
  return {
    // A trailing slash would double up with the collection paths.
    server: server.replace(/\/+$/, ''),
    // Plain http has no TLS to verify (KubeEdge's metaServer on loopback).
    skipTLSVerify: cluster['insecure-skip-tls-verify'] === true || server.startsWith('http:'),
    tlsServerName: str(cluster['tls-server-name']),
    ca: material(cluster, 'certificate-authority'),
    cert: material(user, 'client-certificate'),
    key: material(user, 'client-key'),
    token: token ? () => token : tokenFile ? () => readFileSync(path(tokenFile), 'utf8').trim() : undefined,
    basic: username ? { username, password: str(user.password) ?? '' } : undefined,
  };
}

/**
 * Sends a GET and resolves with the response once its headers arrived and its status is 200; any other status is
 * read (bounded) and thrown as a KubeHttpError. `signal` aborts the request at any point (also mid-body).
 */
export function get(conn: KubeConnection, path: string, query: Record<string, string>, signal: AbortSignal): Promise<IncomingMessage> {
  return send(conn, 'GET', path, query, undefined, signal, 200);
}

/** POSTs a JSON object (e.g. a TokenReview) and resolves with the parsed reply, read up to `maxBytes`. */
export async function postJson(conn: KubeConnection, path: string, body: object, signal: AbortSignal, maxBytes = MAX_ERROR_BODY_BYTES): Promise<Record<string, unknown>> {
  const res = await send(conn, 'POST', path, {}, Buffer.from(JSON.stringify(body)), signal, 201);
  return obj(JSON.parse(await readBody(res, maxBytes)));
}

function send(conn: KubeConnection, method: 'GET' | 'POST', path: string, query: Record<string, string>, body: Buffer | undefined, signal: AbortSignal, okStatus: number): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    let url: URL;
    let headers: Record<string, string>;
    let tls: { ca?: Buffer; cert?: Buffer; key?: Buffer };
    try {
      url = new URL(conn.server + path);
      for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
      headers = { accept: 'application/json' };
      if (body) { headers['content-type'] = 'application/json'; headers['content-length'] = String(body.length); }
      const token = conn.token?.();
      if (token) headers.authorization = `Bearer ${token}`;
      else if (conn.basic) headers.authorization = `Basic ${Buffer.from(`${conn.basic.username}:${conn.basic.password}`).toString('base64')}`;
      tls = { ca: conn.ca?.(), cert: conn.cert?.(), key: conn.key?.() };
    } catch (e) {
      // An unreadable token, CA or key file: a failed request, retried by the supervisor.
      reject(e);
      return;
    }
    const https = url.protocol === 'https:';
    const req = (https ? httpsRequest : httpRequest)(url, {
      method, headers, signal,
      ...(https ? { ...tls, rejectUnauthorized: !conn.skipTLSVerify, servername: conn.tlsServerName } : {}),
    }, (res) => {
      if (res.statusCode === okStatus || (method === 'POST' && res.statusCode === 200)) {
        resolve(res);
        return;
      }
      readBody(res, MAX_ERROR_BODY_BYTES).then((body) => {
        let reason = '';
        try {
          reason = str(obj(JSON.parse(body)).message) ?? '';
        } catch {
          reason = '';
        }
        reject(new KubeHttpError(res.statusCode ?? 0, reason.slice(0, 200)));
      }, reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Reads a response body up to `max` bytes (more is an error). */
export function readBody(res: IncomingMessage, max: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    res.on('data', (c: Buffer) => {
      n += c.length;
      if (n > max) {
        res.destroy(new Error(`response larger than ${max} bytes`));
        return;
      }
      chunks.push(c);
    });
    res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    res.on('error', reject);
    // Closed before its end (connection reset, aborted): settles nothing if 'end' came first.
    res.on('close', () => reject(new Error('response closed before its end')));
  });
}

export interface ListResult { items: Obj[]; resourceVersion: string }

/**
 * Lists a collection in pages of KUBE_LIST_PAGE_SIZE (the API server keeps one consistent snapshot across the pages
 * of one list). A 410 on a page (the continue token expired) propagates: the caller lists again.
 */
export async function list(conn: KubeConnection, path: string, signal: AbortSignal, query: Record<string, string> = {}): Promise<ListResult> {
  const items: Obj[] = [];
  let cont: string | undefined;
  let resourceVersion = '';
  do {
    const res = await get(conn, path, { ...query, limit: String(KUBE_LIST_PAGE_SIZE), ...(cont ? { continue: cont } : {}) }, signal);
    const page = obj(JSON.parse(await readBody(res, KUBE_MAX_LIST_BYTES)));
    const md = obj(page.metadata);
    for (const it of Array.isArray(page.items) ? page.items : []) items.push(obj(it));
    resourceVersion = str(md.resourceVersion) ?? resourceVersion;
    cont = str(md.continue);
  } while (cont);
  return { items, resourceVersion };
}

export interface WatchEvent { type: string; object: Obj }

/**
 * Splits a watch stream into events (one JSON object per line). Calls `onEvent` for each; rejects on a line over
 * KUBE_MAX_EVENT_BYTES or one that is not JSON; resolves when the server ends the stream. Incremental and pure
 * but for the stream.
 */
export function readEvents(res: IncomingMessage, onEvent: (e: WatchEvent) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const fail = (e: Error) => {
      res.destroy();
      reject(e);
    };
    const line = (buf: Buffer) => {
      const text = buf.toString('utf8').trim();
      if (!text) return;
      let ev: Obj;
      try {
        ev = obj(JSON.parse(text));
      } catch {
        throw new Error('watch: an event is not JSON');
      }
      onEvent({ type: String(ev.type ?? ''), object: obj(ev.object) });
    };
    res.on('data', (chunk: Buffer) => {
      try {
        let start = 0;
        for (let nl = chunk.indexOf(10); nl !== -1; nl = chunk.indexOf(10, start)) {
          const part = chunk.subarray(start, nl);
          if (pending.length) {
            pending.push(part);
            line(Buffer.concat(pending));
            pending = [];
            pendingBytes = 0;
          } else line(part);
          start = nl + 1;
        }
        if (start < chunk.length) {
          pending.push(chunk.subarray(start));
          pendingBytes += chunk.length - start;
          if (pendingBytes > KUBE_MAX_EVENT_BYTES) throw new Error(`watch: an event larger than ${KUBE_MAX_EVENT_BYTES} bytes`);
        }
      } catch (e) {
        fail(e as Error);
      }
    });
    res.on('end', () => {
      try {
        if (pending.length) line(Buffer.concat(pending));
        resolve();
      } catch (e) {
        reject(e as Error);
      }
    });
    res.on('error', reject);
    res.on('close', () => reject(new Error('watch connection closed before its end')));
  });
}
