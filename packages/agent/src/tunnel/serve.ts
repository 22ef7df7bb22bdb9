// The remote half of a stream: check the target is an endpoint we know, dial it locally, answer OK or an error
// code, then carry TCP bytes or length-prefixed UDP datagrams.
import { connect } from 'node:net';
import { createSocket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import type { Logger } from '@edgemesh/common/log';
import type { Snapshot } from '../cluster/types.ts';
import type { DialErrorCode } from '../proxy/dialer.ts';
import { DatagramDecoder, encodeDatagram } from './datagram.ts';
import type { CreditStream } from './credit.ts';
import type { StreamHeader } from './mux.ts';
import { checkTarget } from './target.ts';

export const LOCAL_DIAL_TIMEOUT_MS = 5_000;
/** A UDP flow with no datagram either way for this long is closed. */
export const UDP_IDLE_MS = 120_000;

export function serveIncoming(
  snapshot: () => Snapshot,
  log: Logger,
  h: StreamHeader,
  accept: () => CreditStream,
  reject: (code: DialErrorCode, message: string) => void,
  onOutcome: (outcome: string) => void,
): void {
  const d = checkTarget(snapshot(), h);
  if (!d.ok) {
    log.debug({ target: `${h.ip}:${h.port}`, reason: d.reason }, 'refused a stream to an unknown endpoint');
    onOutcome('forbidden');
    return reject('forbidden', d.reason);
  }
  if (h.protocol === 'tcp') {
    const sock = connect({ host: h.ip, port: h.port, noDelay: true });
    const timer = setTimeout(() => {
      sock.destroy();
      onOutcome('timeout');
      reject('timeout', `connect ${h.ip}:${h.port} timed out`);
    }, LOCAL_DIAL_TIMEOUT_MS);
    sock.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      onOutcome('refused');
      reject(e.code === 'ECONNREFUSED' ? 'refused' : 'unreachable', `connect ${h.ip}:${h.port}: ${e.code ?? e.message}`);
    });
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.removeAllListeners('error');
      onOutcome('ok');
      const s = accept();
      splice(s, sock);
    });
    return;
  }
  const u = createSocket(isIPv6(h.ip) ? 'udp6' : 'udp4');
  u.once('error', (e) => {
    onOutcome('unreachable');
    reject('unreachable', `udp ${h.ip}:${h.port}: ${e.message}`);
    u.close();
  });
  u.connect(h.port, h.ip, () => {
    u.removeAllListeners('error');
    onOutcome('ok');
    const s = accept();
    const dec = new DatagramDecoder();
    let idle = setTimeout(() => s.destroy(), UDP_IDLE_MS);
    const touch = () => {
      clearTimeout(idle);
      idle = setTimeout(() => s.destroy(), UDP_IDLE_MS);
    };
    u.on('message', (m) => {
      touch();
      s.write(encodeDatagram(m));
    });
    u.on('error', () => {});
    s.on('data', (c: Buffer) => {
      touch();
      for (const d of dec.push(c)) u.send(d);
    });
    const done = () => {
      clearTimeout(idle);
      try { u.close(); } catch { /* already closed */ }
    };
    s.on('close', done);
    s.on('error', done);
    s.on('end', () => s.end());
  });
}

/** Pipes a stream and a socket both ways with half-close; an error on either side destroys both. */
export function splice(a: NodeJS.ReadWriteStream & { destroy(e?: Error): void }, b: NodeJS.ReadWriteStream & { destroy(e?: Error): void }): void {
  a.pipe(b);
  b.pipe(a);
  const kill = () => {
    a.destroy();
    b.destroy();
  };
  (a as unknown as NodeJS.EventEmitter).on('error', kill);
  (b as unknown as NodeJS.EventEmitter).on('error', kill);
  (a as unknown as NodeJS.EventEmitter).on('close', () => b.destroy());
  (b as unknown as NodeJS.EventEmitter).on('close', () => a.destroy());
}
