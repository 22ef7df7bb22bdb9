// The serving side of a stream a peer opened: authorize.ts decides whether this node serves it to that caller (a
// cluster Node, an endpoint on this node, ready, not loopback, within the Service's strict scope); limits.ts budgets
// what it holds (streams and UDP sockets per peer and in total, a descriptor under fd pressure). It is dialed with
// the proxy's DirectDialer within the time the caller has left (less the answer's travel), errors mapped to codes by
// the proxy's codeOf; then the proxy's splice (half-close both ways) for TCP, or length-framed datagrams for UDP.
import type { Counter } from 'prom-client';
import type { Logger } from '@edgemesh/common/log';
import { isFdExhaustion } from '@edgemesh/common/fds';
import type { Snapshot } from '../cluster/types.ts';
import { DialError, dialDeadline, type DatagramChannel, type Dialer, type DialErrorCode } from '../proxy/dialer.ts';
import { codeOf } from '../proxy/direct.ts';
import { splice } from '../proxy/splice.ts';
import { authorizeServe, type ServePolicy } from './authorize.ts';
import { DatagramDecoder, encodeDatagram } from './datagram.ts';
import type { TunnelBudgets } from './limits.ts';
import type { StreamHeader } from './linkproto.ts';
import type { TunnelStream } from './stream.ts';
import { remoteDialMs, UDP_IDLE_MS } from './timers.ts';

/** Rate-limited log key of authorization refusals (one line per REFUSAL_LOG_INTERVAL_MS with the count). */
export const SERVE_FORBIDDEN_LOG = 'tunnel_serve_forbidden';

export interface ServeContext {
  snapshot: () => Snapshot;
  policy: ServePolicy;
  dialer: Dialer;
  log: Logger;
  budgets: TunnelBudgets;
  /** edgemesh_tunnel_serve_refused_total{reason}. */
  refused: Counter<'reason'>;
  onOutcome: (outcome: string) => void;
}

/**
 * Answers one incoming stream from `caller` (the node name the link authenticated). `rttMs`: the link's RTT, so our
 * dial ends in time for the caller to hear back.
 */
export function serveStream(ctx: ServeContext, caller: string, h: StreamHeader, rttMs: number | null, accept: () => TunnelStream, reject: (code: DialErrorCode, message: string) => void): void {
  const t = h.target;
  const d = authorizeServe(ctx.snapshot(), ctx.policy, { caller, target: t });
  if (!d.ok) {
    ctx.refused.inc({ reason: d.reason });
    ctx.budgets.budgets.refusals.note(SERVE_FORBIDDEN_LOG, { peer: caller, reason: d.reason, target: `${t.ip}:${t.port}/${t.protocol}`, service: t.serviceKey });
    ctx.onOutcome('forbidden');
    return reject('forbidden', d.message);
  }
  const ms = remoteDialMs(h.timeoutMs, rttMs);
  if (ms <= 0) {
    // The caller gives up before an answer could reach it: dialing would only leave a connection nobody takes.
    ctx.onOutcome('timeout');
    return reject('timeout', `the caller's deadline leaves no time to dial ${t.ip}:${t.port}`);
  }
  const admitted = ctx.budgets.admitServed(caller, t.protocol === 'udp');
  if ('refused' in admitted) {
    ctx.onOutcome('limit');
    return reject('refused', `this node serves no more streams now (${admitted.refused})`);
  }
  const lease = admitted.lease;
  const deadline = dialDeadline(ms);
  const fail = (e: unknown) => {
    lease.release();
    // Descriptors ran out: this one operation fails, and new served streams are shed until a sample shows room.
    if (isFdExhaustion(e) || isFdExhaustion({ code: (e as DialError)?.sysCode })) ctx.budgets.fds?.noteExhausted();
    const code = e instanceof DialError ? e.code : codeOf(e as NodeJS.ErrnoException);
    ctx.onOutcome(code);
    reject(code, (e as Error).message);
  };
  // Holds `lease` for as long as the stream lives (close ends every path: done, error, peer gone, our destroy).
  const take = (): TunnelStream => {
    const s = accept();
    if (s.destroyed) lease.release();
    else lease.releaseOn(s, 'close');
    return s;
  };
  if (t.protocol === 'tcp') {
    ctx.dialer.dialTcp(t, deadline).then((sock) => {
      ctx.onOutcome('ok');
      try {
        splice(take(), sock);
      } catch (e) {
        lease.release();
        sock.destroy();
        ctx.log.error({ err: e }, 'serving a stream failed');
      }
    }, fail).catch((e: unknown) => ctx.log.error({ err: e }, 'serving a stream failed'));
    return;
  }
  ctx.dialer.openUdp(t, deadline).then((ch) => {
    ctx.onOutcome('ok');
    try {
      carryDatagrams(take(), ch);
    } catch (e) {
      lease.release();
      ch.close();
      ctx.log.error({ err: e }, 'serving a stream failed');
    }
  }, fail).catch((e: unknown) => ctx.log.error({ err: e }, 'serving a stream failed'));
}

/** Datagrams of a local UDP flow over a stream ([len u16][datagram]), closed after UDP_IDLE_MS without any. */
function carryDatagrams(s: TunnelStream, ch: DatagramChannel): void {
  const dec = new DatagramDecoder();
  let idle = setTimeout(() => s.destroy(), UDP_IDLE_MS);
  const touch = () => {
    clearTimeout(idle);
    idle = setTimeout(() => s.destroy(), UDP_IDLE_MS);
  };
  ch.onMessage((m) => {
    touch();
    s.write(encodeDatagram(m));
  });
  ch.onClose(() => s.destroy());
  s.on('data', (c: Buffer) => {
    touch();
    for (const d of dec.push(c)) ch.send(d);
  });
  const done = () => {
    clearTimeout(idle);
    ch.close();
  };
  s.on('close', done);
  s.on('error', done);
  s.on('end', () => s.end());
}
