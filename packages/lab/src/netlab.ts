// Network-namespace lab: a public network (203.0.113.0/24 on a bridge) with public hosts, and sites behind routers
// that behave like the NAT types of docs/natlab.md. Used by the end-to-end tests and by `edgemesh demo`. Needs root,
// iproute2, iptables (nf_tables backend) and conntrack.
//
// Everything the lab makes lives inside namespaces named `<prefix>-...`: veth pairs are created directly in their
// target namespaces (never in the root namespace), so interface names inside are fixed (eth0, wan0, lan0, br0, pN,
// hN) and can never collide with other runs. A marker file /run/edgemesh-netlab/<prefix>.json claims the prefix and
// records the owner pid; `cleanupStale` removes labs whose owner is gone.
//
// The address plan and the router rules are pure functions (`planLab`, `routerRules`); `buildLab` applies them.
import { spawn as spawnChild, execFileSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { execa } from 'execa';

export type RouterNat =
  | 'none'
  | 'full-cone'
  | 'restricted-cone'
  | 'port-restricted'
  | 'symmetric'
  | 'udp-blocked'
  | 'cgnat';

export const ROUTER_NATS: readonly RouterNat[] = [
  'none', 'full-cone', 'restricted-cone', 'port-restricted', 'symmetric', 'udp-blocked', 'cgnat',
];

export interface SiteSpec {
  name: string;
  nat: RouterNat;
  /** Host names on the site's LAN (198.18.<i>.10, .11, ...). full-cone/restricted-cone forward inbound to the first. */
  hosts: string[];
}

export interface LabSpec {
  /** Namespace name prefix; default `em` + 4 random base36 chars. Letters/digits, 2-10 chars, starting with a letter. */
  prefix?: string;
  /** Host names on the public network (203.0.113.10, .11, ...). */
  publicHosts: string[];
  sites: SiteSpec[];
  /** Optional conntrack UDP timeouts (seconds) on every router: `unreplied` and `stream` (kernel: 30 / 120). */
  udpTimeoutSec?: { unreplied?: number; stream?: number };
}

export interface Host {
  name: string;
  ns: string;
  /** Its own address: 203.0.113.x for public hosts, 198.18.<i>.x for site hosts. */
  ip: string;
  /** Site name for site hosts; undefined for public hosts. */
  site?: string;
  /** Default gateway (the site router's LAN address); undefined for public hosts (on-link default route). */
  gateway?: string;
}

export interface RouterHop {
  ns: string;
  wanIp: string;
  lanIp: string;
}

export interface Router extends RouterHop {
  site: string;
  nat: RouterNat;
  /** The address the public network sees for this site: wanIp, or for cgnat the carrier router's wanIp. */
  publicIp: string;
  /** cgnat only: the carrier-grade NAT between this router (wan 100.64.<i>.2) and the public network. */
  carrier?: RouterHop;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export interface ExecOptions {
  input?: string;
  timeoutMs?: number;
  env?: Record<string, string>;
  cwd?: string;
  /** Throw when the command exits non-zero (default false: the exit code is returned). */
  reject?: boolean;
}

/** Packets to drop: fields left out match anything. Addresses are as the namespace's filter chains see them
 *  (on a router's FORWARD path: LAN addresses of site hosts, real addresses of public hosts). */
export interface FaultSpec {
  src?: string;
  dst?: string;
  proto?: 'udp' | 'tcp' | 'icmp' | 'all';
  sport?: number;
  dport?: number;
  /** Also drop the reverse direction (src/dst and sport/dport swapped). Default true. */
  bidirectional?: boolean;
  /** Drop probability in (0, 1]; below 1 this is random loss (`-m statistic`). Default 1. */
  probability?: number;
}

export interface Fault {
  readonly ns: string;
  readonly spec: FaultSpec;
  remove(): Promise<void>;
}

/** A host name, a site name (its router), one of the lab's namespace names, or anything with a namespace (Host, Router, RouterHop). */
export type Target = string | { ns: string };

export interface Lab {
  readonly prefix: string;
  /** Every namespace the lab made, wan first. */
  readonly namespaces: readonly string[];
  /** The bridge namespace of the public network. */
  readonly wanNs: string;
  hosts(): Host[];
  host(name: string): Host;
  routers(): Router[];
  router(site: string): Router;
  exec(target: Target, cmd: string, args?: string[], opts?: ExecOptions): Promise<ExecResult>;
  /** Starts `cmd` in the target's namespace (own process group); killed at destroy(). */
  spawn(target: Target, cmd: string, args?: string[], opts?: Omit<SpawnOptions, 'detached'>): ChildProcess;
  /** Writes /etc/netns/<ns>/resolv.conf: processes started afterwards in that namespace see it as /etc/resolv.conf. */
  setResolvConf(target: Target, nameservers: string | string[], search?: string[]): void;
  sysctl(target: Target, key: string, value: string | number): Promise<void>;
  /** Drops every conntrack entry (NAT mapping) on the site's router(s). */
  flushConntrack(site: string): Promise<void>;
  /** Drops matching packets in the target namespace (INPUT, FORWARD and OUTPUT). */
  blackhole(target: Target, spec?: FaultSpec): Promise<Fault>;
  unblackhole(fault: Fault): Promise<void>;
  /** Random loss: blackhole with a probability. */
  loss(target: Target, probability: number, spec?: FaultSpec): Promise<Fault>;
  /** Kills spawned processes and everything else in the namespaces, deletes them; idempotent. */
  destroy(): Promise<void>;
}

export interface BuildOptions {
  /** Tear down on process exit / SIGINT / SIGTERM (default true). */
  exitHooks?: boolean;
  log?: { debug(obj: object, msg?: string): void };
}

export const STATE_DIR = '/run/edgemesh-netlab';
export const NETNS_DIR = '/run/netns';
export const ETC_NETNS_DIR = '/etc/netns';
export const WAN_PREFIX = '203.0.113';
export const LAN_PREFIX = '198.18';
export const CGNAT_PREFIX = '100.64';
export const SUBNET_BITS = 24;
/** 203.0.113.(10+k) for the k-th public host. */
export const PUBLIC_HOST_BASE = 10;
export const MAX_PUBLIC_HOSTS = 90;
/** 203.0.113.(100+i) for the router (or cgnat carrier) of the i-th site, i from 1. */
export const SITE_ROUTER_BASE = 100;
export const MAX_SITES = 150;
/** 198.18.<i>.(10+j) for the j-th host of site i. */
export const SITE_HOST_BASE = 10;
export const MAX_SITE_HOSTS = 240;
export const FAULT_CHAIN = 'NETLAB-FAULT';
export const STOP_GRACE_MS = 2000;
export const CMD_TIMEOUT_MS = 20_000;
export const CONFIG_CONCURRENCY = 4;
export const PREFIX_ATTEMPTS = 20;
export const FIRST_IFINDEX = 10;
export const LINK_UP_TIMEOUT_MS = 5000;
export const LINK_POLL_MS = 50;

const NAME_RE = /^[a-z0-9][a-z0-9_.-]{0,30}$/i;
const PREFIX_RE = /^[a-z][a-z0-9]{1,9}$/;

// ---------------------------------------------------------------------------------------------------------------
// Pure planning
// ---------------------------------------------------------------------------------------------------------------

export interface LinkPlan {
  a: { ns: string; name: string };
  b: { ns: string; name: string };
}

export interface NsPlan {
  ns: string;
  role: 'wan' | 'public' | 'router' | 'carrier' | 'site-host';
  /** `ip -batch` lines run in the namespace, in order. */
  ipCmds: string[];
  /** `key=value` sysctls; keys under net.bridge are skipped when br_netfilter is absent. */
  sysctls: string[];
  /** iptables-restore input, if the namespace gets rules. */
  iptables?: string;
}

export interface LabPlan {
  prefix: string;
  wanNs: string;
  namespaces: NsPlan[];
  links: LinkPlan[];
  hosts: Host[];
  routers: Router[];
}

export function nsName(prefix: string, kind: 'wan' | 'h' | 'r' | 'c', name?: string): string {
  return kind === 'wan' ? `${prefix}-wan` : `${prefix}-${kind}-${name}`;
}

const BRIDGE_SYSCTLS = [
  'net.bridge.bridge-nf-call-iptables=0',
  'net.bridge.bridge-nf-call-ip6tables=0',
  'net.bridge.bridge-nf-call-arptables=0',
];

/** Validates the spec and computes namespaces, links, addresses and per-namespace commands. Throws on bad input. */
export function planLab(spec: LabSpec, prefix: string): LabPlan {
  if (!PREFIX_RE.test(prefix)) throw new Error(`netlab: bad prefix ${JSON.stringify(prefix)} (want ${PREFIX_RE})`);
  const names = new Set<string>();
  const claim = (name: string, what: string) => {
    if (!NAME_RE.test(name)) throw new Error(`netlab: bad ${what} name ${JSON.stringify(name)} (want ${NAME_RE})`);
    if (names.has(name)) throw new Error(`netlab: duplicate name ${JSON.stringify(name)} (host and site names share one namespace)`);
    names.add(name);
  };
  if (spec.publicHosts.length > MAX_PUBLIC_HOSTS) throw new Error(`netlab: at most ${MAX_PUBLIC_HOSTS} public hosts`);
  if (spec.sites.length > MAX_SITES) throw new Error(`netlab: at most ${MAX_SITES} sites`);
  for (const h of spec.publicHosts) claim(h, 'host');
  for (const s of spec.sites) {
    claim(s.name, 'site');
    if (!ROUTER_NATS.includes(s.nat)) throw new Error(`netlab: site ${s.name}: unknown nat ${JSON.stringify(s.nat)}`);
    if (s.hosts.length > MAX_SITE_HOSTS) throw new Error(`netlab: site ${s.name}: at most ${MAX_SITE_HOSTS} hosts`);
    for (const h of s.hosts) claim(h, 'host');
  }

  const wanNs = nsName(prefix, 'wan');
  const wan: NsPlan = { ns: wanNs, role: 'wan', ipCmds: ['link set dev lo up', 'link add name br0 type bridge'], sysctls: [...BRIDGE_SYSCTLS] };
  const namespaces: NsPlan[] = [wan];
  const links: LinkPlan[] = [];
  const hosts: Host[] = [];
  const routers: Router[] = [];
  let port = 0;
  const wanPort = (ns: string, name: string) => {
    const p = `p${port++}`;
    links.push({ a: { ns: wanNs, name: p }, b: { ns, name } });
    wan.ipCmds.push(`link set dev ${p} master br0`, `link set dev ${p} up`);
  };
  // Routes on the public network to sites without NAT (their LANs are routed, not translated).
  const openRoutesExcept = (own: number) => spec.sites
    .map((s, i) => ({ s, i: i + 1 }))
    .filter(({ s, i }) => s.nat === 'none' && i !== own)
    .map(({ i }) => `route add ${LAN_PREFIX}.${i}.0/${SUBNET_BITS} via ${WAN_PREFIX}.${SITE_ROUTER_BASE + i}`);
  const openRoutes = openRoutesExcept(0);

  spec.publicHosts.forEach((name, k) => {
    const ns = nsName(prefix, 'h', name);
    const ip = `${WAN_PREFIX}.${PUBLIC_HOST_BASE + k}`;
    wanPort(ns, 'eth0');
    namespaces.push({
      ns, role: 'public', sysctls: [],
      ipCmds: ['link set dev lo up', `addr add ${ip}/${SUBNET_BITS} dev eth0`, 'link set dev eth0 up', 'route add default dev eth0', ...openRoutes],
    });
    hosts.push({ name, ns, ip });
  });

  spec.sites.forEach((site, idx) => {
    const i = idx + 1;
    const ns = nsName(prefix, 'r', site.name);
    const lanIp = `${LAN_PREFIX}.${i}.1`;
    const publicIp = `${WAN_PREFIX}.${SITE_ROUTER_BASE + i}`;
    const hostIps = site.hosts.map((_, j) => `${LAN_PREFIX}.${i}.${SITE_HOST_BASE + j}`);
    const router: NsPlan = { ns, role: 'router', ipCmds: ['link set dev lo up'], sysctls: ['net.ipv4.ip_forward=1', ...BRIDGE_SYSCTLS] };
    let wanIp = publicIp;
    let carrier: RouterHop | undefined;
    if (site.nat === 'cgnat') {
      const cns = nsName(prefix, 'c', site.name);
      carrier = { ns: cns, wanIp: publicIp, lanIp: `${CGNAT_PREFIX}.${i}.1` };
      wanIp = `${CGNAT_PREFIX}.${i}.2`;
      wanPort(cns, 'wan0');
      links.push({ a: { ns: cns, name: 'lan0' }, b: { ns, name: 'wan0' } });
      namespaces.push({
        ns: cns, role: 'carrier', sysctls: ['net.ipv4.ip_forward=1'],
        ipCmds: [
          'link set dev lo up',
          `addr add ${publicIp}/${SUBNET_BITS} dev wan0`, 'link set dev wan0 up',
          `addr add ${carrier.lanIp}/${SUBNET_BITS} dev lan0`, 'link set dev lan0 up',
          'route add default dev wan0', ...openRoutes,
        ],
        iptables: routerRules('port-restricted', []),
      });
      router.ipCmds.push(`addr add ${wanIp}/${SUBNET_BITS} dev wan0`, 'link set dev wan0 up', `route add default via ${carrier.lanIp}`);
    } else {
      wanPort(ns, 'wan0');
      router.ipCmds.push(`addr add ${wanIp}/${SUBNET_BITS} dev wan0`, 'link set dev wan0 up', 'route add default dev wan0', ...openRoutesExcept(i));
    }
    router.ipCmds.push('link add name lan0 type bridge');
    site.hosts.forEach((name, j) => {
      const hns = nsName(prefix, 'h', name);
      const ip = hostIps[j];
      links.push({ a: { ns, name: `h${j}` }, b: { ns: hns, name: 'eth0' } });
      router.ipCmds.push(`link set dev h${j} master lan0`, `link set dev h${j} up`);
      namespaces.push({
        ns: hns, role: 'site-host', sysctls: [],
        ipCmds: ['link set dev lo up', `addr add ${ip}/${SUBNET_BITS} dev eth0`, 'link set dev eth0 up', `route add default via ${lanIp}`],
      });
      hosts.push({ name, ns: hns, ip, site: site.name, gateway: lanIp });
    });
    router.ipCmds.push(`addr add ${lanIp}/${SUBNET_BITS} dev lan0`, 'link set dev lan0 up');
    router.iptables = routerRules(site.nat === 'cgnat' ? 'port-restricted' : site.nat, hostIps);
    namespaces.push(router);
    routers.push({ site: site.name, nat: site.nat, ns, wanIp, lanIp, publicIp, ...(carrier ? { carrier } : {}) });
  });
  wan.ipCmds.push('link set dev br0 up');
  return { prefix, wanNs, namespaces, links, hosts, routers };
}

/**
 * iptables-restore input for a site router (LAN side `lan0`, WAN side `wan0`) per docs/natlab.md. `lanHosts[0]` is the
 * host full-cone and restricted-cone forward inbound UDP to. Every router also gets the fault chain.
 */
export function routerRules(nat: Exclude<RouterNat, 'cgnat'>, lanHosts: string[]): string {
  const first = lanHosts[0];
  const filter = [
    '*filter', ':INPUT ACCEPT [0:0]', ':FORWARD DROP [0:0]', ':OUTPUT ACCEPT [0:0]', `:${FAULT_CHAIN} - [0:0]`,
    `-A INPUT -j ${FAULT_CHAIN}`, `-A FORWARD -j ${FAULT_CHAIN}`, `-A OUTPUT -j ${FAULT_CHAIN}`,
  ];
  const nat4 = ['*nat', ':PREROUTING ACCEPT [0:0]', ':INPUT ACCEPT [0:0]', ':OUTPUT ACCEPT [0:0]', ':POSTROUTING ACCEPT [0:0]'];
  if (nat === 'udp-blocked') filter.push('-A FORWARD -i lan0 -o wan0 -p udp -j DROP');
  if (nat === 'restricted-cone') filter.push('-A FORWARD -i lan0 -o wan0 -p udp -m recent --name seen --rdest --set');
  // Same-LAN traffic when br_netfilter hands bridged frames to iptables.
  filter.push('-A FORWARD -i lan0 -o lan0 -j ACCEPT');
  filter.push('-A FORWARD -i lan0 -o wan0 -j ACCEPT');
  filter.push('-A FORWARD -i wan0 -o lan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT');
  if (nat === 'none') filter.push('-A FORWARD -i wan0 -o lan0 -j ACCEPT');
  if ((nat === 'full-cone' || nat === 'restricted-cone') && first) {
    filter.push(`-A FORWARD -i wan0 -o lan0 -p udp -d ${first} -m conntrack --ctstate DNAT -j ACCEPT`);
  }
  // The router itself never answers unsolicited packets from the WAN (see docs/natlab.md: early punches would otherwise
  // leave a confirmed conntrack entry and force a new mapped port).
  filter.push('-A INPUT -i wan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT', '-A INPUT -i wan0 -j DROP');
  if (nat !== 'none') nat4.push(`-A POSTROUTING -o wan0 -j MASQUERADE${nat === 'symmetric' ? ' --random-fully' : ''}`);
  if (nat === 'full-cone' && first) nat4.push(`-A PREROUTING -i wan0 -p udp -j DNAT --to-destination ${first}`);
  if (nat === 'restricted-cone' && first) {
    nat4.push(`-A PREROUTING -i wan0 -p udp -m recent --name seen --rsource --rcheck --seconds 60 -j DNAT --to-destination ${first}`);
  }
  return [...filter, 'COMMIT', ...nat4, 'COMMIT', ''].join('\n');
}

/** iptables arguments (after the chain) for the rules of one fault. */
export function faultRuleArgs(spec: FaultSpec): string[][] {
  const proto = spec.proto ?? 'all';
  if ((spec.sport !== undefined || spec.dport !== undefined) && proto !== 'udp' && proto !== 'tcp') {
    throw new Error('netlab: sport/dport need proto udp or tcp');
  }
  const p = spec.probability ?? 1;
  if (!(p > 0 && p <= 1)) throw new Error(`netlab: probability must be in (0, 1], got ${p}`);
  const one = (src?: string, dst?: string, sport?: number, dport?: number) => {
    const a: string[] = [];
    if (src) a.push('-s', src);
    if (dst) a.push('-d', dst);
    if (proto !== 'all') a.push('-p', proto);
    if (sport !== undefined) a.push('--sport', String(sport));
    if (dport !== undefined) a.push('--dport', String(dport));
    if (p < 1) a.push('-m', 'statistic', '--mode', 'random', '--probability', String(p));
    a.push('-j', 'DROP');
    return a;
  };
  const rules = [one(spec.src, spec.dst, spec.sport, spec.dport)];
  const symmetric = spec.src === spec.dst && spec.sport === spec.dport;
  if ((spec.bidirectional ?? true) && !symmetric) rules.push(one(spec.dst, spec.src, spec.dport, spec.sport));
  return rules;
}

export function randomPrefix(): string {
  const n = randomBytes(4).readUInt32BE(0) % 36 ** 4;
  return `em${n.toString(36).padStart(4, '0')}`;
}

// ---------------------------------------------------------------------------------------------------------------
// I/O helpers
// ---------------------------------------------------------------------------------------------------------------

async function run(cmd: string, args: string[], input?: string): Promise<void> {
  const r = await execa(cmd, args, { input, reject: false, timeout: CMD_TIMEOUT_MS });
  if (r.exitCode !== 0) {
    throw new Error(`netlab: ${cmd} ${args.join(' ')} failed (${r.exitCode ?? r.signal}): ${String(r.stderr).trim() || String(r.stdout).trim()}`);
  }
}

async function pool<T>(items: T[], limit: number, fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  const errors: unknown[] = [];
  const worker = async () => {
    while (next < items.length) {
      const t = items[next++];
      try { await fn(t); } catch (e) { errors.push(e); }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (errors.length) throw errors[0];
}

function existingNamespaces(): string[] {
  try { return readdirSync(NETNS_DIR); } catch { return []; }
}

/** Pids whose network namespace is one of `namespaces` (found through /proc, no processes spawned). */
export function pidsInNamespaces(namespaces: readonly string[]): number[] {
  const inodes = new Set<number>();
  for (const ns of namespaces) {
    try { inodes.add(statSync(`${NETNS_DIR}/${ns}`).ino); } catch { /* gone */ }
  }
  if (!inodes.size) return [];
  const pids: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const m = /net:\[(\d+)\]/.exec(readlinkSync(`/proc/${d}/ns/net`));
      if (m && inodes.has(Number(m[1]))) pids.push(Number(d));
    } catch { /* exited */ }
  }
  return pids.filter((p) => p !== process.pid);
}

function kill(pid: number, sig: NodeJS.Signals): void {
  try { process.kill(pid, sig); } catch { /* gone */ }
}

function procStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]; // field 22: starttime
  } catch {
    return undefined;
  }
}

interface Marker { pid: number; start: string | undefined; namespaces: string[]; created: string }

function markerPath(prefix: string): string {
  return `${STATE_DIR}/${prefix}.json`;
}

function readMarker(prefix: string): Marker | undefined {
  try { return JSON.parse(readFileSync(markerPath(prefix), 'utf8')) as Marker; } catch { return undefined; }
}

function ownerAlive(m: Marker): boolean {
  const start = procStart(m.pid);
  return start !== undefined && start === m.start;
}

/** Synchronous teardown of a set of namespaces: kill what runs in them, delete them, remove /etc/netns dirs. */
function removeNamespacesSync(namespaces: readonly string[]): void {
  for (const pid of pidsInNamespaces(namespaces)) kill(pid, 'SIGKILL');
  const present = new Set(existingNamespaces());
  const del = namespaces.filter((ns) => present.has(ns));
  if (del.length) {
    try {
      execFileSync('ip', ['-force', '-batch', '-'], { input: del.map((ns) => `netns del ${ns}\n`).join(''), stdio: ['pipe', 'ignore', 'ignore'] });
    } catch { /* reported by the caller's check */ }
  }
  for (const ns of namespaces) rmSync(`${ETC_NETNS_DIR}/${ns}`, { recursive: true, force: true });
}

async function removeNamespaces(namespaces: readonly string[]): Promise<void> {
  for (const pid of pidsInNamespaces(namespaces)) kill(pid, 'SIGKILL');
  const present = new Set(existingNamespaces());
  const del = namespaces.filter((ns) => present.has(ns));
  if (del.length) {
    await execa('ip', ['-force', '-batch', '-'], { input: del.map((ns) => `netns del ${ns}\n`).join(''), reject: false, timeout: CMD_TIMEOUT_MS });
  }
  for (const ns of namespaces) rmSync(`${ETC_NETNS_DIR}/${ns}`, { recursive: true, force: true });
  const left = new Set(existingNamespaces());
  const stuck = namespaces.filter((ns) => left.has(ns));
  if (stuck.length) throw new Error(`netlab: could not delete namespaces ${stuck.join(', ')}`);
}

// ---------------------------------------------------------------------------------------------------------------
// Exit hooks
// ---------------------------------------------------------------------------------------------------------------

const live = new Set<LabImpl>();
let hooksInstalled = false;

function onExit(): void {
  for (const lab of [...live]) lab.destroySync();
}

function onSignal(sig: NodeJS.Signals): void {
  // Someone else handles shutdown (and may call destroy()); the 'exit' hook still runs when they exit.
  if (process.listenerCount(sig) > 1) return;
  onExit();
  uninstallHooks();
  process.kill(process.pid, sig);
}

const onSigint = () => onSignal('SIGINT');
const onSigterm = () => onSignal('SIGTERM');

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', onExit);
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigterm);
}

function uninstallHooks(): void {
  if (!hooksInstalled) return;
  hooksInstalled = false;
  process.removeListener('exit', onExit);
  process.removeListener('SIGINT', onSigint);
  process.removeListener('SIGTERM', onSigterm);
}

// ---------------------------------------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------------------------------------

class LabImpl implements Lab {
  readonly prefix: string;
  readonly namespaces: readonly string[];
  readonly wanNs: string;
  private readonly plan: LabPlan;
  private readonly children = new Set<ChildProcess>();
  private readonly faultChains = new Set<string>();
  private readonly log?: BuildOptions['log'];
  private destroying?: Promise<void>;

  constructor(plan: LabPlan, log?: BuildOptions['log']) {
    this.plan = plan;
    this.prefix = plan.prefix;
    this.wanNs = plan.wanNs;
    this.namespaces = plan.namespaces.map((n) => n.ns);
    this.log = log;
    for (const n of plan.namespaces) if (n.role === 'router' || n.role === 'carrier') this.faultChains.add(n.ns);
  }

  hosts(): Host[] {
    return this.plan.hosts.map((h) => ({ ...h }));
  }

  host(name: string): Host {
    const h = this.plan.hosts.find((x) => x.name === name);
    if (!h) throw new Error(`netlab: no host ${JSON.stringify(name)}`);
    return { ...h };
  }

  routers(): Router[] {
    return this.plan.routers.map((r) => ({ ...r }));
  }

  router(site: string): Router {
    const r = this.plan.routers.find((x) => x.site === site);
    if (!r) throw new Error(`netlab: no site ${JSON.stringify(site)}`);
    return { ...r };
  }

  private ns(target: Target): string {
    if (typeof target !== 'string') return target.ns;
    const h = this.plan.hosts.find((x) => x.name === target);
    if (h) return h.ns;
    const r = this.plan.routers.find((x) => x.site === target);
    if (r) return r.ns;
    if (this.namespaces.includes(target)) return target;
    throw new Error(`netlab: no host or site ${JSON.stringify(target)}`);
  }

  private checkAlive(): void {
    if (this.destroying) throw new Error(`netlab: lab ${this.prefix} is destroyed`);
  }

  async exec(target: Target, cmd: string, args: string[] = [], opts: ExecOptions = {}): Promise<ExecResult> {
    this.checkAlive();
    const ns = this.ns(target);
    const r = await execa('ip', ['netns', 'exec', ns, cmd, ...args], {
      input: opts.input, timeout: opts.timeoutMs ?? CMD_TIMEOUT_MS, env: opts.env, cwd: opts.cwd, reject: false,
    });
    const res: ExecResult = { stdout: String(r.stdout ?? ''), stderr: String(r.stderr ?? ''), exitCode: r.exitCode ?? -1 };
    if (opts.reject && res.exitCode !== 0) {
      throw new Error(`netlab: [${ns}] ${cmd} ${args.join(' ')} exited ${res.exitCode}${r.timedOut ? ' (timed out)' : ''}: ${res.stderr.trim()}`);
    }
    return res;
  }

  spawn(target: Target, cmd: string, args: string[] = [], opts: Omit<SpawnOptions, 'detached'> = {}): ChildProcess {
    this.checkAlive();
    const ns = this.ns(target);
    // `ip netns exec` execs the command, so the child pid is the command; its own group lets destroy() kill helpers too.
    const child = spawnChild('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: 'pipe', ...opts, detached: true });
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    child.once('error', () => this.children.delete(child));
    this.log?.debug({ ns, cmd, pid: child.pid }, 'netlab spawn');
    return child;
  }

  setResolvConf(target: Target, nameservers: string | string[], search: string[] = []): void {
    this.checkAlive();
    const ns = this.ns(target);
    const lines = [...(search.length ? [`search ${search.join(' ')}`] : []), ...[nameservers].flat().map((n) => `nameserver ${n}`)];
    mkdirSync(`${ETC_NETNS_DIR}/${ns}`, { recursive: true });
    writeFileSync(`${ETC_NETNS_DIR}/${ns}/resolv.conf`, `${lines.join('\n')}\n`);
  }

  async sysctl(target: Target, key: string, value: string | number): Promise<void> {
    this.checkAlive();
    await run('ip', ['netns', 'exec', this.ns(target), 'sysctl', '-q', '-w', `${key}=${value}`]);
  }

  async flushConntrack(site: string): Promise<void> {
    this.checkAlive();
    const r = this.router(site);
    for (const ns of [r.ns, r.carrier?.ns].filter((x): x is string => !!x)) {
      await run('ip', ['netns', 'exec', ns, 'conntrack', '-F']);
    }
  }

  private async ensureFaultChain(ns: string): Promise<void> {
    if (this.faultChains.has(ns)) return;
    const input = ['*filter', `:${FAULT_CHAIN} - [0:0]`, `-I INPUT 1 -j ${FAULT_CHAIN}`, `-I FORWARD 1 -j ${FAULT_CHAIN}`,
      `-I OUTPUT 1 -j ${FAULT_CHAIN}`, 'COMMIT', ''].join('\n');
    await run('ip', ['netns', 'exec', ns, 'iptables-restore', '--noflush'], input);
    this.faultChains.add(ns);
  }

  async blackhole(target: Target, spec: FaultSpec = {}): Promise<Fault> {
    this.checkAlive();
    const ns = this.ns(target);
    const rules = faultRuleArgs(spec);
    await this.ensureFaultChain(ns);
    for (const r of rules) await run('ip', ['netns', 'exec', ns, 'iptables', '-A', FAULT_CHAIN, ...r]);
    let removed = false;
    return {
      ns,
      spec: { ...spec },
      remove: async () => {
        if (removed || this.destroying) return;
        removed = true;
        for (const r of rules) await run('ip', ['netns', 'exec', ns, 'iptables', '-D', FAULT_CHAIN, ...r]);
      },
    };
  }

  async unblackhole(fault: Fault): Promise<void> {
    await fault.remove();
  }

  async loss(target: Target, probability: number, spec: FaultSpec = {}): Promise<Fault> {
    return this.blackhole(target, { ...spec, probability });
  }

  /** Applies the plan: namespaces and links from the root namespace, then each namespace's own configuration. */
  async build(udpTimeoutSec?: LabSpec['udpTimeoutSec']): Promise<void> {
    const t0 = Date.now();
    const root = [
      ...this.plan.namespaces.map((n) => `netns add ${n.ns}`),
      // Explicit, lab-unique ifindexes: a veth whose peer has its own ifindex gets its carrier changes handled by the
      // kernel's linkwatch only after up to a second (not "urgent"), leaving bridge ports disabled meanwhile.
      ...this.plan.links.map((l, k) => `link add name ${l.b.name} index ${FIRST_IFINDEX + 2 * k} netns ${l.b.ns} type veth peer name ${l.a.name} index ${FIRST_IFINDEX + 2 * k + 1} netns ${l.a.ns}`),
    ];
    await run('ip', ['-batch', '-'], `${root.join('\n')}\n`);
    const bridgeNf = (() => { try { statSync('/proc/sys/net/bridge'); return true; } catch { return false; } })();
    const timeouts = [
      ...(udpTimeoutSec?.unreplied ? [`net.netfilter.nf_conntrack_udp_timeout=${udpTimeoutSec.unreplied}`] : []),
      ...(udpTimeoutSec?.stream ? [`net.netfilter.nf_conntrack_udp_timeout_stream=${udpTimeoutSec.stream}`] : []),
    ];
    await pool(this.plan.namespaces, CONFIG_CONCURRENCY, async (n) => {
      const sysctls = n.sysctls.filter((s) => bridgeNf || !s.startsWith('net.bridge.'));
      if (sysctls.length) await run('ip', ['netns', 'exec', n.ns, 'sysctl', '-q', '-w', ...sysctls]);
      await run('ip', ['-n', n.ns, '-batch', '-'], `${n.ipCmds.join('\n')}\n`);
      if (n.iptables) await run('ip', ['netns', 'exec', n.ns, 'iptables-restore'], n.iptables);
      if (timeouts.length && (n.role === 'router' || n.role === 'carrier')) {
        await run('ip', ['netns', 'exec', n.ns, 'sysctl', '-q', '-w', ...timeouts]);
      }
    });
    await this.waitLinksUp();
    this.log?.debug({ prefix: this.prefix, namespaces: this.namespaces.length, ms: Date.now() - t0 }, 'netlab built');
  }

  /** Waits until every veth in the wan and router namespaces is operationally up (bridge ports forward then). */
  private async waitLinksUp(): Promise<void> {
    const deadline = Date.now() + LINK_UP_TIMEOUT_MS;
    let pending = this.plan.namespaces.filter((n) => n.role === 'wan' || n.role === 'router' || n.role === 'carrier').map((n) => n.ns);
    for (;;) {
      const down: string[] = [];
      await pool(pending, CONFIG_CONCURRENCY, async (ns) => {
        const r = await execa('ip', ['-n', ns, '-d', '-j', 'link', 'show'], { reject: false, timeout: CMD_TIMEOUT_MS });
        type Link = { ifname: string; operstate: string; linkinfo?: { info_kind?: string } };
        const links = r.exitCode === 0 ? (JSON.parse(String(r.stdout)) as Link[]) : [];
        // Veths only: a bridge's own operstate lags (up to 1 s) without affecting forwarding.
        const veths = links.filter((l) => l.linkinfo?.info_kind === 'veth');
        if (!veths.length || veths.some((l) => l.operstate !== 'UP')) down.push(ns);
      });
      pending = down;
      if (!pending.length) return;
      if (Date.now() > deadline) throw new Error(`netlab: links not up after ${LINK_UP_TIMEOUT_MS} ms in ${pending.join(', ')}`);
      await new Promise((res) => setTimeout(res, LINK_POLL_MS));
    }
  }

  destroy(): Promise<void> {
    this.destroying ??= this.doDestroy();
    return this.destroying;
  }

  private async doDestroy(): Promise<void> {
    const running = [...this.children].filter((c) => c.exitCode === null && c.signalCode === null && c.pid);
    for (const c of running) kill(-c.pid!, 'SIGTERM');
    if (running.length) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all(running.map((c) => new Promise((res) => {
          if (c.exitCode !== null || c.signalCode !== null) res(null);
          else c.once('exit', res);
        }))),
        new Promise((res) => { timer = setTimeout(res, STOP_GRACE_MS); }),
      ]);
      clearTimeout(timer);
      for (const c of running) if (c.exitCode === null && c.signalCode === null) kill(-c.pid!, 'SIGKILL');
    }
    try {
      await removeNamespaces(this.namespaces);
      rmSync(markerPath(this.prefix), { force: true });
    } finally {
      live.delete(this);
      if (!live.size) uninstallHooks();
    }
    this.log?.debug({ prefix: this.prefix }, 'netlab destroyed');
  }

  /** Best-effort synchronous teardown for process exit. */
  destroySync(): void {
    for (const c of this.children) if (c.pid) kill(-c.pid, 'SIGKILL');
    removeNamespacesSync(this.namespaces);
    rmSync(markerPath(this.prefix), { force: true });
    live.delete(this);
  }
}

/** Claims a prefix by creating its marker file exclusively; returns false when taken. */
function claimPrefix(plan: LabPlan): boolean {
  mkdirSync(STATE_DIR, { recursive: true });
  if (existingNamespaces().some((ns) => ns.startsWith(`${plan.prefix}-`))) return false;
  const marker: Marker = { pid: process.pid, start: procStart(process.pid), namespaces: plan.namespaces.map((n) => n.ns), created: new Date().toISOString() };
  try {
    writeFileSync(markerPath(plan.prefix), JSON.stringify(marker), { flag: 'wx' });
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  }
}

/** Builds the lab. On failure everything made so far is removed and the error rethrown. */
export async function buildLab(spec: LabSpec, opts: BuildOptions = {}): Promise<Lab> {
  let plan: LabPlan | undefined;
  for (let attempt = 0; attempt < PREFIX_ATTEMPTS && !plan; attempt++) {
    const candidate = planLab(spec, spec.prefix ?? randomPrefix());
    if (claimPrefix(candidate)) plan = candidate;
    else if (spec.prefix) {
      // A fixed prefix: take it over only from a crashed run.
      await cleanupStale(new RegExp(`^${spec.prefix}-`));
      if (claimPrefix(candidate)) plan = candidate;
      else throw new Error(`netlab: prefix ${spec.prefix} is in use by a live lab`);
    }
  }
  if (!plan) throw new Error('netlab: could not find a free prefix');
  const lab = new LabImpl(plan, opts.log);
  live.add(lab);
  if (opts.exitHooks ?? true) installHooks();
  try {
    await lab.build(spec.udpTimeoutSec);
  } catch (e) {
    await lab.destroy().catch(() => {});
    throw e;
  }
  return lab;
}

/**
 * Removes leftovers of crashed runs: every lab whose namespaces match `pattern` (a name prefix such as `em` or
 * `emab12`, or a RegExp over namespace names) and whose owner process is gone. Labs of live processes are kept, as
 * are namespaces netlab did not make (no marker). Returns the namespaces removed.
 */
export async function cleanupStale(pattern: string | RegExp): Promise<string[]> {
  const matches = (ns: string) => (typeof pattern === 'string' ? ns.startsWith(pattern) : pattern.test(ns));
  let markers: string[] = [];
  try { markers = readdirSync(STATE_DIR).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5)); } catch { /* none */ }
  const present = existingNamespaces();
  const removed: string[] = [];
  for (const prefix of markers) {
    const m = readMarker(prefix);
    const mine = present.filter((ns) => ns.startsWith(`${prefix}-`));
    const owned = [...new Set([...(m?.namespaces ?? []), ...mine])];
    if (!owned.some(matches) && !matches(`${prefix}-`)) continue;
    if (m && ownerAlive(m)) continue;
    const gone = owned.filter((ns) => present.includes(ns));
    await removeNamespaces(owned);
    rmSync(markerPath(prefix), { force: true });
    removed.push(...gone);
  }
  return removed;
}
