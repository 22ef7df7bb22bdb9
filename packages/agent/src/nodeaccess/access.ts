// Node access: reaching a node's own host port (sshd on 22, the kubelet, ...) through the mesh, dialed by that node's
// agent on its loopback — the SOCKS5 destination `<nodeName>:<port>`. The *serving* node decides, never the caller:
// only ports in its own `nodeAccess.allowedPorts`, only for callers it admits (nodeAccess.allowedNodes /
// allowedGroups; both empty = any authenticated node of the cluster). Never an open proxy: the far agent dials
// 127.0.0.1 (then ::1), nothing else.
//
// Two halves:
// - NodeDialer (calling side): opens a byte stream to `port` on `node`. The tunnel implements it for other nodes with
//   a "node access" stream (header: target node's port; no Service, no IP); LoopbackNodeDialer serves this node.
// - admitNodeAccess (serving side): the pure decision, then dialLoopback() — the tunnel's serving side calls both for
//   an incoming node-access stream, with the caller identity the link authenticated.
import { connect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { NodeInfo } from '../cluster/types.ts';
import { DialError } from '../proxy/dialer.ts';
import { codeOf, TCP_KEEPALIVE_MS } from '../proxy/direct.ts';

export interface NodeDialer {
  /**
   * A connected stream to `port` on `node`'s own loopback, dialed by that node's agent after it admitted us. Rejects
   * with DialError: `forbidden` (the port is not allowed there, or we are not admitted), `refused` (nothing listens),
   * `timeout`, `unreachable`, `no-route` (no path to that node: no tunnel, or the node is unknown to the tunnel).
   */
  dialNode(node: string, port: number, signal: AbortSignal): Promise<Duplex>;
}

/** `nodeAccess.*` of the serving node's config. */
export interface NodeAccessConfig {
  readonly allowedPorts: readonly number[];
  readonly allowedGroups: readonly string[];
  readonly allowedNodes: readonly string[];
}

export interface NodeAccessCaller {
  /** The caller's node name as the link authenticated it (its certificate / the key the server vouched for). */
  readonly node: string;
  /** False when the stream's origin is not an authenticated peer: always refused. */
  readonly authenticated: boolean;
}

export type NodeAccessDecision = { readonly ok: true } | { readonly ok: false; readonly reason: string };

/**
 * May `caller` reach `port` on this node? Pure. `nodes`: this node's snapshot (a caller must be a Node of the cluster;
 * its group comes from there, never from what the caller says). `self`: this node's own name (its local SOCKS5 users
 * are admitted by identity; the port rule still applies).
 */
export function admitNodeAccess(cfg: NodeAccessConfig, caller: NodeAccessCaller, port: number, nodes: ReadonlyMap<string, NodeInfo>, self?: string): NodeAccessDecision {
  if (!Number.isInteger(port) || port < 1 || port > 65535) return { ok: false, reason: `port ${port} is not a TCP port` };
  if (!cfg.allowedPorts.includes(port)) return { ok: false, reason: `port ${port} is not in nodeAccess.allowedPorts` };
  if (self !== undefined && caller.node === self) return { ok: true };
  if (!caller.authenticated) return { ok: false, reason: 'the caller is not an authenticated node' };
  const info = nodes.get(caller.node);
  if (!info) return { ok: false, reason: `caller ${caller.node} is not a node of the cluster` };
  if (!cfg.allowedNodes.length && !cfg.allowedGroups.length) return { ok: true };
  if (cfg.allowedNodes.includes(caller.node)) return { ok: true };
  if (info.group !== undefined && cfg.allowedGroups.includes(info.group)) return { ok: true };
  return { ok: false, reason: `caller ${caller.node} (group ${info.group ?? 'none'}) is not in nodeAccess.allowedNodes or allowedGroups` };
}

/** Loopback addresses tried in order: sshd and most daemons listen on both; some only on one. */
export const LOOPBACK_ADDRESSES = ['127.0.0.1', '::1'] as const;

/** Connects to `port` on this host's loopback (127.0.0.1, then ::1 when refused there). Rejects with DialError. */
export async function dialLoopback(port: number, signal: AbortSignal): Promise<Socket> {
  let last: DialError | undefined;
  for (const host of LOOPBACK_ADDRESSES) {
    try {
      return await dialOne(host, port, signal);
    } catch (e) {
      last = e as DialError;
      if (last.code !== 'refused' && last.code !== 'unreachable') throw last;
    }
  }
  throw last!;
}

function dialOne(host: string, port: number, signal: AbortSignal): Promise<Socket> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(new DialError('timeout', `dial ${host}:${port}: aborted`));
    const sock = connect({ host, port, allowHalfOpen: true, noDelay: true, keepAlive: true, keepAliveInitialDelay: TCP_KEEPALIVE_MS });
    const onAbort = () => {
      sock.destroy();
      reject(new DialError('timeout', `dial ${host}:${port}: timed out`));
    };
    signal.addEventListener('abort', onAbort, { once: true });
    sock.once('error', (e: NodeJS.ErrnoException) => {
      signal.removeEventListener('abort', onAbort);
      reject(new DialError(codeOf(e), `dial ${host}:${port}: ${e.code ?? e.message}`));
    });
    sock.once('connect', () => {
      signal.removeEventListener('abort', onAbort);
      sock.removeAllListeners('error');
      resolve(sock);
    });
  });
}

/**
 * The NodeDialer for this node itself (SOCKS5 `<thisNode>:<port>`): the same admission rule as for peers, then the
 * loopback dial. Other nodes are handed to `remote` (the tunnel's NodeDialer), or fail with no-route without one.
 */
export class LocalFirstNodeDialer implements NodeDialer {
  private readonly o: { self: string; config: NodeAccessConfig; nodes: () => ReadonlyMap<string, NodeInfo>; remote: () => NodeDialer | undefined };

  constructor(o: { self: string; config: NodeAccessConfig; nodes: () => ReadonlyMap<string, NodeInfo>; remote: () => NodeDialer | undefined }) {
    this.o = o;
  }

  async dialNode(node: string, port: number, signal: AbortSignal): Promise<Duplex> {
    if (node === this.o.self) {
      const d = admitNodeAccess(this.o.config, { node, authenticated: true }, port, this.o.nodes(), this.o.self);
      if (!d.ok) throw new DialError('forbidden', d.reason);
      return dialLoopback(port, signal);
    }
    const remote = this.o.remote();
    if (!remote) throw new DialError('no-route', `no tunnel to reach node ${node} (node access needs the tunnel)`);
    return remote.dialNode(node, port, signal);
  }
}
