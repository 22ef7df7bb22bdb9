// Which endpoints a remote agent may make us dial: only ip:port of an endpoint of a Service in our snapshot, with a
// matching port and protocol (no open proxy). Pure.
import type { Endpoint, Snapshot } from '../cluster/types.ts';
import type { DialTarget } from '../proxy/dialer.ts';

export type TargetDecision = { ok: true } | { ok: false; reason: string };

export function checkTarget(snap: Snapshot, h: Pick<DialTarget, 'serviceKey' | 'protocol' | 'ip' | 'port'>): TargetDecision {
  const r = findEndpoint(snap, h);
  return 'endpoint' in r ? { ok: true } : { ok: false, reason: r.reason };
}

/** The endpoint of `h.serviceKey` that `h` names (address and a matching port and protocol), or why there is none. */
export function findEndpoint(snap: Snapshot, h: Pick<DialTarget, 'serviceKey' | 'protocol' | 'ip' | 'port'>): { endpoint: Endpoint } | { reason: string; unknownService?: true } {
  const svc = snap.services.get(h.serviceKey);
  if (!svc) return { reason: `unknown service ${h.serviceKey}`, unknownService: true };
  const proto = h.protocol === 'tcp' ? 'TCP' : 'UDP';
  const eps = snap.endpoints.get(h.serviceKey) ?? [];
  for (const ep of eps) {
    if (ep.address !== h.ip && !ep.addresses.includes(h.ip)) continue;
    if (ep.ports.length) {
      if (ep.ports.some((p) => p.port === h.port && p.protocol === proto)) return { endpoint: ep };
    } else if (svc.ports.some((p) => p.protocol === proto && (p.targetPort === h.port || (p.targetPort === p.port && p.port === h.port)))) {
      return { endpoint: ep };
    }
  }
  return { reason: `${h.ip}:${h.port}/${h.protocol} is not an endpoint of ${h.serviceKey}` };
}
