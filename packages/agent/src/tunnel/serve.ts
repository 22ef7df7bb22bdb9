// The serving side of a stream a peer opened: the target must be an endpoint we know (target.ts, no open proxy);
// it is dialed with the proxy's DirectDialer within the time the caller has left (less the answer's travel), errors
// mapped to codes by the proxy's codeOf; then the proxy's splice (half-close both ways) for TCP, or length-framed
// datagrams for UDP.
import type { Logger } from '@edgemesh/common/log';
import type { Snapshot } from '../cluster/types.ts';
import { DialError, dialDeadline, type DatagramChannel, type Dialer, type DialErrorCode } from '../proxy/dialer.ts';
import { codeOf } from '../proxy/direct.ts';
import { splice } from '../proxy/splice.ts';
import { DatagramDecoder, encodeDatagram } from './datagram.ts';
import type { StreamHeader } from './linkproto.ts';
import type { TunnelStream } from './stream.ts';
import { checkTarget } from './target.ts';
import { remoteDialMs, UDP_IDLE_MS } from './timers.ts';

export interface ServeContext {
  snapshot: () => Snapshot;
  dialer: Dialer;
  log: Logger;
  onOutcome: (outcome: string) => void;
}

/** Answers one incoming stream. `rttMs`: the link's RTT, so our dial ends in time for the caller to hear back. */
export function serveStream(ctx: ServeContext, h: StreamHeader, rttMs: number | null, accept: () => TunnelStream, reject: (code: DialErrorCode, message: string) => void): void {
  const t = h.target;
  const d = checkTarget(ctx.snapshot(), t);
  if (!d.ok) {
    ctx.log.debug({ target: `${t.ip}:${t.port}`, reason: d.reason }, 'refused a stream to an unknown endpoint');
    ctx.onOutcome('forbidden');
    return reject('forbidden', d.reason);
  }
  const ms = remoteDialMs(h.timeoutMs, rttMs);
  if (ms <= 0) {
    // The caller gives up before an answer could reach it: dialing would only leave a connection nobody takes.
    ctx.onOutcome('timeout');
    return reject('timeout', `the caller's deadline leaves no time to dial ${t.ip}:${t.port}`);
  }
  const deadline = dialDeadline(ms);
  const fail = (e: unknown) => {
    const code = e instanceof DialError ? e.code : codeOf(e as NodeJS.ErrnoException);
    ctx.onOutcome(code);
    reject(code, (e as Error).message);
  };
  if (t.protocol === 'tcp') {
    ctx.dialer.dialTcp(t, deadline).then((sock) => {
      ctx.onOutcome('ok');
      try {
        splice(accept(), sock);
      } catch (e) {
        sock.destroy();
        ctx.log.error({ err: e }, 'serving a stream failed');
      }
    }, fail);
    return;
  }
  ctx.dialer.openUdp(t, deadline).then((ch) => {
    ctx.onOutcome('ok');
    try {
      carryDatagrams(accept(), ch);
    } catch (e) {
      ch.close();
      ctx.log.error({ err: e }, 'serving a stream failed');
    }
  }, fail);
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
