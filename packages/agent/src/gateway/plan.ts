// What the ingress gateway listens on and where each listener routes: a pure function of the Istio Gateways and
// VirtualServices in the snapshot and this node's labels.
//
// Rules (Istio's, narrowed to what this gateway implements; everything else is named in `warnings`):
// - A Gateway is served by this node when every label of its `spec.selector` is on this node's Node (an empty
//   selector selects every gateway node). Gateways are taken in key order; so are VirtualServices.
// - One listener per port. Its kind comes from the first server on the port: HTTP -> `http`; HTTPS and TLS -> `tls`
//   (several of them share the port, told apart by SNI); TCP -> `tcp`. A later server of another kind on the same
//   port is dropped. HTTP2, GRPC and other protocols are not served.
// - TLS modes: SIMPLE terminates with the kubernetes.io/tls Secret `credentialName` in the Gateway's namespace (then
//   HTTP routes for HTTPS, TCP routes for TLS); PASSTHROUGH routes the still-encrypted stream by SNI with the
//   VirtualServices' `tls` routes. MUTUAL, ISTIO_MUTUAL and AUTO_PASSTHROUGH are not served.
// - A VirtualService binds to a server when its `gateways` name the Gateway (`name` in the VirtualService's namespace,
//   or `namespace/name`), the server's host namespace part allows it (`ns/host`, `./host` = the Gateway's namespace,
//   `*\/host` or `host` = any), and its hosts intersect the server's hosts.
// - HTTP routes keep their order; a route's `match.port` / `match.gateways` restrict it; unsupported match
//   conditions (regex, queryParams, ...) never match; routes without a destination we can reach are dropped.
// - A destination host is a Service of the cluster: `svc` (the VirtualService's namespace), `svc.ns`, `svc.ns.svc`,
//   `svc.ns.svc.<domain>`. Other hosts (ServiceEntries, outside names) and subsets are not served.
import type { GatewayServer, HttpMatch, HttpRoute, IstioGateway, L4Route, RouteDestination, VirtualService } from '../cluster/types.ts';
import { intersectHosts } from './match.ts';

export type ListenerKind = 'http' | 'tls' | 'tcp';

export interface Destination {
  readonly serviceKey: string;
  /** Service port; undefined = the Service's only TCP port (resolved when connecting). */
  readonly port: number | undefined;
  readonly weight: number;
}

export interface HttpRoutePlan {
  /** `namespace/name#index` of the VirtualService route (metrics, /status, logs). */
  readonly id: string;
  readonly match: readonly HttpMatch[];
  readonly destinations: readonly Destination[];
  readonly rewriteUri?: string;
  readonly timeoutMs?: number;
}

export interface VirtualHost {
  /** Host patterns (lower case) this virtual host answers. */
  readonly hosts: readonly string[];
  readonly routes: readonly HttpRoutePlan[];
  /** HTTP server with tls.httpsRedirect: answer 301 to https. */
  readonly httpsRedirect: boolean;
  /** The Gateway server's own host patterns (ties between virtual hosts go to the more specific server). */
  readonly serverHosts: readonly string[];
}

export interface L4RoutePlan {
  readonly id: string;
  /** SNI patterns (tls passthrough); empty = any. */
  readonly sniHosts: readonly string[];
  readonly destinations: readonly Destination[];
}

/** One TLS server on a `tls` listener: the SNI names it answers and what it does with them. */
export interface TlsServerPlan {
  readonly gateway: string;
  readonly hosts: readonly string[];
  readonly mode: 'passthrough' | 'terminate';
  /** terminate: the Secret (`namespace/name`) with the certificate. */
  readonly secret?: string;
  /** terminate: HTTPS -> http (vhosts), TLS -> tcp (tcp routes). */
  readonly inner?: 'http' | 'tcp';
  readonly vhosts: readonly VirtualHost[];
  /** passthrough: the tls routes (by SNI); terminate + tcp: the tcp routes. */
  readonly routes: readonly L4RoutePlan[];
}

export interface ListenerPlan {
  readonly port: number;
  readonly kind: ListenerKind;
  /** The Gateway servers behind it (for /status). */
  readonly servers: readonly { readonly gateway: string; readonly protocol: string; readonly hosts: readonly string[]; readonly tlsMode?: string }[];
  /** http */
  readonly vhosts: readonly VirtualHost[];
  /** tls */
  readonly tls: readonly TlsServerPlan[];
  /** tcp */
  readonly routes: readonly L4RoutePlan[];
}

export interface GatewayPlan {
  readonly listeners: readonly ListenerPlan[];
  /** Gateways this node serves. */
  readonly gateways: readonly string[];
  readonly warnings: readonly string[];
  /** Secrets (`namespace/name`) the terminating servers need. */
  readonly secrets: readonly string[];
}

export interface PlanInput {
  readonly gateways: Iterable<IstioGateway>;
  readonly virtualServices: Iterable<VirtualService>;
  /** This node's labels (undefined: this agent's Node is unknown: only selector-less Gateways). */
  readonly nodeLabels: Readonly<Record<string, string>> | undefined;
  readonly domain: string;
  /** Secrets present in the snapshot (a missing one is warned about). */
  readonly secretKeys?: ReadonlySet<string>;
}

/** At most this many warnings are kept (the rest are counted). */
export const MAX_PLAN_WARNINGS = 100;

export function selectsNode(g: IstioGateway, labels: Readonly<Record<string, string>> | undefined): boolean {
  const sel = Object.entries(g.selector);
  if (!sel.length) return true;
  return !!labels && sel.every(([k, v]) => labels[k] === v);
}

/** Does VirtualService `vs` name Gateway `g` in `refs` (`name` in the VirtualService's namespace, or `ns/name`)? */
export function refersTo(refs: readonly string[], vs: VirtualService, g: IstioGateway): boolean {
  return refs.some((r) => (r.includes('/') ? r === g.key : r === g.name && vs.namespace === g.namespace));
}

/** A server host `ns/host`, `./host`, `*\/host` or `host` -> which namespace may bind (undefined = any) and the host. */
export function splitServerHost(h: string, gatewayNs: string): { ns: string | undefined; host: string } {
  const i = h.indexOf('/');
  if (i < 0) return { ns: undefined, host: h.toLowerCase() };
  const ns = h.slice(0, i);
  const host = h.slice(i + 1).toLowerCase();
  return { ns: ns === '*' ? undefined : ns === '.' ? gatewayNs : ns, host };
}

/** The Service key for a destination host, or undefined when it is not a Service name of this cluster. */
export function destinationService(host: string, vsNamespace: string, domain: string): string | undefined {
  const h = host.toLowerCase().replace(/\.$/, '');
  const labels = h.split('.');
  const d = domain.toLowerCase().replace(/\.$/, '');
  if (labels.some((l) => !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(l))) return undefined;
  if (labels.length === 1) return `${vsNamespace}/${labels[0]}`;
  if (labels.length === 2) return `${labels[1]}/${labels[0]}`;
  if (labels.length === 3 && labels[2] === 'svc') return `${labels[1]}/${labels[0]}`;
  if (h.endsWith(`.svc.${d}`) && labels.length === 3 + d.split('.').length) return `${labels[1]}/${labels[0]}`;
  return undefined;
}

class Warnings {
  readonly list: string[] = [];
  private dropped = 0;
  add(w: string): void {
    if (this.list.length < MAX_PLAN_WARNINGS) this.list.push(w);
    else this.dropped++;
  }
  done(): string[] {
    return this.dropped ? [...this.list, `${this.dropped} more warnings`] : this.list;
  }
}

function destinations(route: readonly RouteDestination[], vs: VirtualService, id: string, domain: string, w: Warnings): Destination[] {
  const out: Destination[] = [];
  for (const d of route) {
    if (d.subset) {
      w.add(`${id}: destination ${d.host} subset ${d.subset}: subsets are not supported; destination skipped`);
      continue;
    }
    const key = destinationService(d.host, vs.namespace, domain);
    if (!key) {
      w.add(`${id}: destination ${d.host} is not a Service of the cluster; destination skipped`);
      continue;
    }
    out.push({ serviceKey: key, port: d.port, weight: d.weight });
  }
  return out;
}

interface ServerCtx {
  readonly g: IstioGateway;
  readonly s: GatewayServer;
  readonly index: number;
}

/** The VirtualServices bound to a server and the hosts they answer there. */
function bound(sc: ServerCtx, vss: readonly VirtualService[]): { vs: VirtualService; hosts: string[] }[] {
  const out: { vs: VirtualService; hosts: string[] }[] = [];
  for (const vs of vss) {
    if (!refersTo(vs.gateways, vs, sc.g)) continue;
    const allowed = sc.s.hosts.map((h) => splitServerHost(h, sc.g.namespace)).filter((x) => x.ns === undefined || x.ns === vs.namespace).map((x) => x.host);
    const hosts = intersectHosts(allowed, vs.hosts);
    if (hosts.length) out.push({ vs, hosts });
  }
  return out;
}

function routeApplies(m: { readonly port?: number; readonly gateways: readonly string[] }, sc: ServerCtx, vs: VirtualService): boolean {
  if (m.port !== undefined && m.port !== sc.s.port) return false;
  if (m.gateways.length && !refersTo(m.gateways, vs, sc.g)) return false;
  return true;
}

function httpRoutes(vs: VirtualService, sc: ServerCtx, domain: string, w: Warnings): HttpRoutePlan[] {
  const out: HttpRoutePlan[] = [];
  vs.http.forEach((r: HttpRoute, i) => {
    const id = `${vs.key}#http${i}`;
    // Matches restricted to other ports or gateways do not apply here; a route whose every match is elsewhere is out.
    const match = r.match.filter((m) => routeApplies(m, sc, vs));
    if (r.match.length && !match.length) return;
    if (r.unsupported.length) w.add(`${id}: ${r.unsupported.join(', ')} not supported (ignored)`);
    for (const m of match) {
      if (m.unsupported.length) w.add(`${id}: match on ${m.unsupported.join(', ')} is not supported: that match never matches`);
      if (m.uri && 'regex' in m.uri) w.add(`${id}: uri regex is not supported: that match never matches`);
      for (const [h, v] of Object.entries(m.headers)) if ('regex' in v) w.add(`${id}: header ${h} regex is not supported: that match never matches`);
    }
    const dests = destinations(r.route, vs, id, domain, w);
    if (!dests.length) {
      w.add(`${id}: no destination this gateway can reach; route skipped`);
      return;
    }
    out.push({ id, match, destinations: dests, rewriteUri: r.rewriteUri, timeoutMs: r.timeoutMs });
  });
  return out;
}

function l4Routes(kind: 'tcp' | 'tls', vs: VirtualService, hosts: readonly string[], sc: ServerCtx, domain: string, w: Warnings): L4RoutePlan[] {
  const out: L4RoutePlan[] = [];
  const list: readonly L4Route[] = kind === 'tcp' ? vs.tcp : vs.tls;
  list.forEach((r, i) => {
    const id = `${vs.key}#${kind}${i}`;
    const dests = destinations(r.route, vs, id, domain, w);
    if (!dests.length) {
      w.add(`${id}: no destination this gateway can reach; route skipped`);
      return;
    }
    const matches = r.match.length ? r.match.filter((m) => routeApplies(m, sc, vs)) : [{ port: undefined, sniHosts: [] as readonly string[], gateways: [] as readonly string[] }];
    for (const m of matches) {
      // tls: SNI hosts from the match, else the VirtualService's hosts bound here.
      const sniHosts = kind === 'tls' ? (m.sniHosts.length ? intersectHosts(hosts, m.sniHosts) : [...hosts]) : [];
      if (kind === 'tls' && !sniHosts.length) continue;
      out.push({ id, sniHosts, destinations: dests });
    }
  });
  return out;
}

function vhostsFor(sc: ServerCtx, vss: readonly VirtualService[], domain: string, w: Warnings): VirtualHost[] {
  const out: VirtualHost[] = [];
  for (const { vs, hosts } of bound(sc, vss)) {
    const routes = httpRoutes(vs, sc, domain, w);
    if (routes.length) out.push({ hosts, routes, httpsRedirect: sc.s.tls?.httpsRedirect === true, serverHosts: sc.s.hosts.map((h) => splitServerHost(h, sc.g.namespace).host) });
  }
  return out;
}

export function planGateway(input: PlanInput): GatewayPlan {
  const w = new Warnings();
  const gws = [...input.gateways].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const vss = [...input.virtualServices].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  type Building = { port: number; kind: ListenerKind; servers: ListenerPlan['servers'][number][]; vhosts: VirtualHost[]; tls: TlsServerPlan[]; routes: L4RoutePlan[] };
  const byPort = new Map<number, Building>();
  const served: string[] = [];
  const secrets = new Set<string>();
  for (const g of gws) {
    if (!selectsNode(g, input.nodeLabels)) continue;
    served.push(g.key);
    g.servers.forEach((s, index) => {
      const where = `Gateway ${g.key} server ${index} (port ${s.port} ${s.protocol})`;
      const sc: ServerCtx = { g, s, index };
      let kind: ListenerKind;
      if (s.protocol === 'HTTP') kind = 'http';
      else if (s.protocol === 'HTTPS' || s.protocol === 'TLS') kind = 'tls';
      else if (s.protocol === 'TCP') kind = 'tcp';
      else return w.add(`${where}: protocol ${s.protocol} is not supported (HTTP, HTTPS, TLS, TCP)`);
      const mode = s.tls?.mode ?? (s.tls?.credentialName ? 'SIMPLE' : undefined);
      if (kind === 'tls') {
        if (mode !== 'SIMPLE' && mode !== 'PASSTHROUGH') return w.add(`${where}: tls.mode ${mode ?? '(none)'} is not supported (SIMPLE, PASSTHROUGH)`);
        if (mode === 'SIMPLE' && !s.tls?.credentialName) return w.add(`${where}: SIMPLE needs tls.credentialName (a kubernetes.io/tls Secret)`);
      }
      let l = byPort.get(s.port);
      if (!l) byPort.set(s.port, (l = { port: s.port, kind, servers: [], vhosts: [], tls: [], routes: [] }));
      else if (l.kind !== kind) return w.add(`${where}: port ${s.port} is already a ${l.kind} listener; server skipped`);
      l.servers.push({ gateway: g.key, protocol: s.protocol, hosts: s.hosts, tlsMode: kind === 'tls' ? mode : undefined });
      if (kind === 'http') {
        l.vhosts.push(...vhostsFor(sc, vss, input.domain, w));
      } else if (kind === 'tcp') {
        for (const { vs, hosts } of bound(sc, vss)) l.routes.push(...l4Routes('tcp', vs, hosts, sc, input.domain, w));
      } else {
        const hosts = s.hosts.map((h) => splitServerHost(h, g.namespace).host);
        if (mode === 'PASSTHROUGH') {
          const routes: L4RoutePlan[] = [];
          for (const { vs, hosts: vh } of bound(sc, vss)) routes.push(...l4Routes('tls', vs, vh, sc, input.domain, w));
          l.tls.push({ gateway: g.key, hosts, mode: 'passthrough', vhosts: [], routes });
        } else {
          const secret = `${g.namespace}/${s.tls!.credentialName!}`;
          secrets.add(secret);
          if (input.secretKeys && !input.secretKeys.has(secret)) w.add(`${where}: Secret ${secret} (kubernetes.io/tls) not found; TLS to ${hosts.join(', ')} fails until it exists`);
          if (s.protocol === 'HTTPS') {
            l.tls.push({ gateway: g.key, hosts, mode: 'terminate', secret, inner: 'http', vhosts: vhostsFor(sc, vss, input.domain, w), routes: [] });
          } else {
            const routes: L4RoutePlan[] = [];
            for (const { vs, hosts: vh } of bound(sc, vss)) routes.push(...l4Routes('tcp', vs, vh, sc, input.domain, w));
            l.tls.push({ gateway: g.key, hosts, mode: 'terminate', secret, inner: 'tcp', vhosts: [], routes });
          }
        }
      }
    });
  }
  const listeners = [...byPort.values()].sort((a, b) => a.port - b.port);
  for (const l of listeners) {
    const empty = l.kind === 'http' ? !l.vhosts.length : l.kind === 'tcp' ? !l.routes.length : l.tls.every((t) => (t.inner === 'http' ? !t.vhosts.length : !t.routes.length));
    if (empty) w.add(`port ${l.port} (${l.kind}): no VirtualService routes here; it answers 404 (HTTP) or closes connections`);
  }
  return { listeners, gateways: served, warnings: w.done(), secrets: [...secrets].sort() };
}
