// Renders the agent's /status JSON as readable tables for `edgemesh status`. Pure.
import type { AgentStatus } from '../main.ts';

/** Formats rows as a left-aligned table with a header line. */
export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

const dash = (v: unknown): string => (v === null || v === undefined || v === '' ? '-' : String(v));

export function renderStatus(s: AgentStatus): string {
  const out: string[] = [];
  out.push(`node ${s.node}  group ${dash(s.group)}  nat ${dash(s.nat?.type)}  mapped ${dash(s.nat?.mapped)}`);
  out.push('');
  out.push('SERVERS');
  out.push(s.servers.length ? table(['ADDRESS', 'CONNECTED'], s.servers.map((v) => [v.address, v.connected ? 'yes' : 'no'])) : '(none)');
  out.push('');
  out.push('PEERS');
  out.push(s.peers.length
    ? table(['NODE', 'PATH', 'REMOTE', 'RTT'], s.peers.map((p) => [p.node, p.path, dash(p.remote), p.rttMs === null || p.rttMs === undefined ? '-' : `${p.rttMs.toFixed(1)} ms`]))
    : '(none)');
  out.push('');
  out.push('SERVICES');
  out.push(s.services.length
    ? table(['NAME', 'IP', 'PORTS', 'ENDPOINTS', 'ROUTING', 'NODE/GROUP/REGION/CLUSTER'], s.services.map((v) => [
      v.name, dash(v.ip), v.ports.join(',') || '-', String(v.endpoints), v.routing,
      v.tiers ? `${v.tiers.node}/${v.tiers.group}/${v.tiers.region}/${v.tiers.cluster}` : '-',
    ]))
    : '(none)');
  const headless = s.services.flatMap((v) => (v.endpointIPs ?? []).map((e) => [v.name, e.name, e.ip, e.mesh ? 'mesh' : 'pod', e.podIP, dash(e.node), e.ready ? 'yes' : 'no']));
  if (headless.length) {
    out.push('');
    out.push('HEADLESS ENDPOINTS');
    out.push(table(['SERVICE', 'NAME', 'IP', 'VIA', 'POD IP', 'NODE', 'READY'], headless));
  }
  if (s.flat) {
    out.push('');
    out.push(`FLAT  directCIDRs ${s.flat.directCIDRs.join(', ')}  ${s.flat.notFlat.length ? `via the tunnel for now: ${s.flat.notFlat.map((n) => `${n.node} (${n.reason}, retry in ${n.retryInSeconds} s)`).join(', ')}` : 'all nodes direct'}`);
  }
  if (s.socks5) {
    out.push('');
    out.push(`SOCKS5 ${s.socks5.listen}  auth ${s.socks5.auth ? 'username/password' : 'none'}  node access ${s.socks5.nodeAccess}  connections ${s.socks5.connections} (${s.socks5.relaying} relaying)`);
  }
  if (s.gateway) {
    out.push('');
    out.push(`GATEWAY  serving ${s.gateway.gateways.join(', ') || '(no Gateway selects this node)'}`);
    out.push(s.gateway.listeners.length
      ? table(['ADDRESS', 'PORT', 'KIND', 'BOUND', 'CONNECTIONS', 'SERVERS'], s.gateway.listeners.map((l) => [
        l.address, String(l.port), l.kind, l.bound ? 'yes' : `no (${dash(l.error)})`, String(l.connections),
        l.servers.map((v) => `${v.protocol}${v.tlsMode ? `/${v.tlsMode}` : ''} ${v.hosts.join(',')}`).join('; '),
      ]))
      : '(no listeners)');
    for (const w of s.gateway.warnings) out.push(`warning: ${w}`);
  }
  return out.join('\n') + '\n';
}
