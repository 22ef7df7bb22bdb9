// The serving side of a node-access stream (OPEN kind 3, docs/tunnel-protocol.md): a peer asks for a TCP port on this
// node's own loopback (SOCKS5 `<thisNode>:<port>` on the peer's side). This agent decides, over its own config and
// snapshot (nodeaccess/access.ts admitNodeAccess: nodeAccess.allowedPorts, allowedNodes / allowedGroups), with the
// caller's name as the link authenticated it — never what the caller claims. Admitted: a loopback dial (127.0.0.1,
// then ::1) within the caller's remaining time less one RTT, then the proxy's splice (half-close both ways).
//
// Budgets (every network input is hostile): node-access streams in total and per calling peer (dial and relaying
// alike), and a descriptor reserve (FdPressure). A refusal — by rule or by budget — is answered ERR (the caller's
// SOCKS5 reply code follows from its code), counted in edgemesh_tunnel_node_access_served_total{outcome} and in
// edgemesh_budget_refusals_total{budget}, and logged rate-limited (common/budget.ts's RefusalLog).
import type { Budgets, KeyedBudget } from '@edgemesh/common/budget';
import type { FdPressure } from '@edgemesh/common/fds';
import type { Logger } from '@edgemesh/common/log';
import { Counter, type Registry } from 'prom-client';
import type { NodeInfo } from '../cluster/types.ts';
import { admitNodeAccess, dialLoopback, type NodeAccessConfig } from '../nodeaccess/access.ts';
import { DialError, type DialErrorCode } from '../proxy/dialer.ts';
import { codeOf } from '../proxy/direct.ts';
import { splice } from '../proxy/splice.ts';
import type { NodeAccessHeader } from './linkproto.ts';
import type { TunnelStream } from './stream.ts';
import { remoteDialMs } from './timers.ts';

/** Node-access streams served at once, in total: an ssh session or a kubelet call each holds one; far more than a
 *  node's operators use, far fewer than the descriptors it has. */
export const NODE_ACCESS_MAX_STREAMS = 1024;
/** ... and per calling peer, so one node cannot take them all. */
export const NODE_ACCESS_MAX_PER_PEER = 128;
/** Budget names (edgemesh_budget_refusals_total{budget}). `node_access_denied` counts refusals by rule (port not
 *  allowed, caller not admitted). */
export const NODE_ACCESS_BUDGET = 'node_access_streams';
export const NODE_ACCESS_DENIED = 'node_access_denied';

export interface NodeAccessServeOptions {
  /** This node's name (admitNodeAccess's `self`). */
  self: string;
  config: NodeAccessConfig;
  /** This node's snapshot: callers must be Nodes of the cluster, their group comes from here. */
  nodes: () => ReadonlyMap<string, NodeInfo>;
  budgets: Budgets;
  fds?: FdPressure;
  registry: Registry;
  log: Logger;
}

export class NodeAccessServer {
  private readonly o: NodeAccessServeOptions;
  private readonly streams: KeyedBudget;
  private readonly served: Counter<'outcome'>;

  constructor(o: NodeAccessServeOptions) {
    this.o = o;
    this.streams = o.budgets.keyed({ name: NODE_ACCESS_BUDGET, perKey: NODE_ACCESS_MAX_PER_PEER, total: NODE_ACCESS_MAX_STREAMS, unit: 'streams', keyName: 'peer' });
    this.served = new Counter({
      name: 'edgemesh_tunnel_node_access_served_total', registers: [o.registry], labelNames: ['outcome'],
      help: 'Node-access streams peers opened to this node, by outcome: ok, forbidden (not admitted), limit (budget), refused, timeout, unreachable',
    });
  }

  /** Streams being dialed or relayed now. */
  get active(): number {
    return this.streams.used;
  }

  /** Answers one node-access stream from `peer` (authenticated by the link). `rttMs`: the link's RTT. */
  serve(peer: string, h: NodeAccessHeader, rttMs: number | null, accept: () => TunnelStream, reject: (code: DialErrorCode, message: string) => void): void {
    const port = h.nodePort;
    const d = admitNodeAccess(this.o.config, { node: peer, authenticated: true }, port, this.o.nodes(), this.o.self);
    if (!d.ok) {
      this.o.budgets.refuse(NODE_ACCESS_DENIED, { peer, port, reason: d.reason });
      this.served.inc({ outcome: 'forbidden' });
      return reject('forbidden', d.reason);
    }
    const ms = remoteDialMs(h.timeoutMs, rttMs);
    if (ms <= 0) {
      this.served.inc({ outcome: 'timeout' });
      return reject('timeout', `the caller's deadline leaves no time to dial port ${port}`);
    }
    const lease = this.streams.tryAcquire(peer);
    if (!lease) {
      this.served.inc({ outcome: 'limit' });
      return reject('refused', 'too many node-access streams');
    }
    if (this.o.fds && !this.o.fds.admit()) {
      lease.release();
      this.served.inc({ outcome: 'limit' });
      return reject('refused', 'out of descriptors');
    }
    dialLoopback(port, AbortSignal.timeout(ms)).then((sock) => {
      lease.releaseOn(sock, 'close');
      this.served.inc({ outcome: 'ok' });
      this.o.log.debug({ peer, port }, 'node access: serving a stream');
      try {
        splice(accept(), sock);
      } catch (e) {
        sock.destroy();
        this.o.log.error({ err: e }, 'serving a node-access stream failed');
      }
    }, (e: unknown) => {
      lease.release();
      const code = e instanceof DialError ? e.code : codeOf(e as NodeJS.ErrnoException);
      this.served.inc({ outcome: code });
      this.o.log.debug({ peer, port, err: (e as Error).message }, 'node access: dial failed');
      reject(code, (e as Error).message);
    });
  }
}
