// The figures each bench writes to bench/results/<name>.json (the `data` field), read by bench/readme.ts.

export interface DnsData {
  seconds: number;
  warmupS: number;
  clients: number;
  outstanding: number;
  /** Servers pinned to CPU 0 and dnsperf to CPU 1. */
  pinned: boolean;
  clusterNames: number;
  forwardedNames: number;
  rows: { what: string; agentQps: number; unboundQps: number; agentOutcome: string; unboundOutcome: string }[];
  upstreamQueries: { udp: number; tcp: number };
}

export interface ProxyRow {
  key: 'bulk-up' | 'bulk-down' | 'keep-alive' | 'new-conns';
  name: string;
  unit: string;
  /** Alternating runs: agent, haproxy, agent, haproxy; the table uses each side's best. */
  agentRuns: number[];
  haproxyRuns: number[];
}

export interface LatencyRun { p50: number; p99: number }

export interface ProxyData {
  seconds: number;
  wrkConns: number;
  haproxy: string;
  rows: ProxyRow[];
  /** Keep-alive request latency (µs, wrk -c1), direct to the backend and through each proxy, runs in turn. */
  latency?: { direct: LatencyRun[]; agent: LatencyRun[]; haproxy: LatencyRun[] };
  /** The flat-group phase (proxy.directCIDRs): the backends on a second host (a network namespace across a veth),
   *  dialed directly from this one as pods of another node; the same measures through the agent and haproxy. */
  flat?: { link: string; rows: ProxyRow[]; latency?: { direct: LatencyRun[]; agent: LatencyRun[]; haproxy: LatencyRun[] }; tunnelDials: number };
  sync: { ports: number; agentSyncMsAvg: number; syncs: number; restoreMs: number; rules: number; listeners: number; startMs: number; rulesLeftAfterStop: boolean; rssMiB: number };
}

export interface TunnelTtd {
  name: string;
  /** A pair the goal "p95 < 1 s" applies to (no birthday mode needed). */
  goal: boolean;
  /** Time to direct per run; null = no direct path within ttdTimeoutMs (a miss). */
  ms: (number | null)[];
  firstStreamMs: number[];
  /** conntrack entries between the pair deleted on its routers before each run (the previous run's NAT state). */
  natEntriesDeleted: number[];
}

export interface TunnelData {
  mb: number;
  repeats: number;
  ttdRuns: number;
  ttdTimeoutMs: number;
  rawMbps: number[];
  directMbps: number[];
  relayMbps: number[];
  /** Same-LAN pair (two hosts on one LAN segment behind the same router): iperf3 raw TCP between them, and one stream
   *  over the tunnel's direct path between them. Absent in results written before the pair was added. */
  lanRawMbps?: number[];
  lanMbps?: number[];
  /** What carried the same-LAN streams (/status transport: tcp, udx). */
  lanTransport?: string;
  ttd: TunnelTtd[];
}

export interface Spread { median: number; min: number; max: number; rounds: number }

/** RSS of a process from /proc/PID/status, MiB: total, anonymous (heap, malloc, stacks), file-backed (code). */
export interface RssSplit { rss: number; anon: number; file: number }

/** One cluster source (file / kubernetes) driving the real agent binary. */
export interface ClusterProfile {
  /** Nothing in the cluster, after SETTLE_MS. */
  idle: RssSplit;
  /** `services` added to that running agent, after settling. */
  inPlace: RssSplit;
  /** From the change (manifests written / objects in the fake API) until all `services` are in the model. */
  inPlaceMs: number;
  /** `step` more added in place, after settling. */
  inPlaceStep: RssSplit;
  /** A fresh agent (empty stateDir) with `services` already in the cluster: spawn -> /readyz 200, wall and CPU. */
  readyMs: number;
  readyCpuMs: number;
  /** Its RSS with everything in the model, after settling. */
  cold: RssSplit;
  /** The same with `step` Services. */
  coldStepReadyMs: number;
  coldStepReadyCpuMs: number;
  coldStep: RssSplit;
  /** MiB per `step` Services: (cold - coldStep) / (services / step - 1), and inPlaceStep - inPlace. */
  perStepColdMiB: number;
  perStepInPlaceMiB: number;
}

/** The V8 sizing a bin ran with: the memory limit it was given and the flags seen on its command line. */
export interface V8Sizing { memoryLimit: string; flags: string[] }

export interface ClusterData {
  services: number;
  endpoints: number;
  files: number;
  /** The "extra Services" step (1,000). */
  step: number;
  settleMs: number;
  /** Which code the agent and server ran: the built JavaScript (dist/) or the TypeScript sources (--source). */
  code: 'dist' | 'src';
  agentV8: V8Sizing;
  serverV8: V8Sizing;
  file: ClusterProfile;
  kubernetes: ClusterProfile;
  server: { idle: RssSplit; after: RssSplit };
  /** In-process, the sources alone (no agent binary): file change -> model, watch event -> model. */
  latency: {
    debounceMs: number;
    /** File source with `services` Services: initial read, then one file rewritten per round. */
    file: Spread & { loadMs: number };
    /** The same with `smallServices` loaded. */
    fileSmall: Spread & { loadMs: number; services: number };
    /** Kubernetes source against the fake API with `services` Services: initial list, then one Service per round. */
    kube: Spread & { listMs: number };
  };
}

/** One sample of a process: seconds since the soak started, RSS (MiB), open descriptors (-1 = process gone). */
export interface SoakSample { t: number; rssMiB: number; fds: number }

export interface SoakProcess {
  /** Every --sample seconds, attacks or not. */
  samples: SoakSample[];
  /** At the start and after each rest (the quiet point of a cycle): what the slope and flatness are computed from. */
  quiet: SoakSample[];
}

export interface SoakData {
  /** Seconds actually run (the last cycle ends before --duration). */
  durationS: number;
  requestedS: number;
  attackS: number;
  restS: number;
  sampleS: number;
  nofile: number;
  /** EDGEMESH_MEMORY_LIMIT given to the server and the agents (V8 sized as under the chart's limits), if any. */
  memoryLimits?: { server: string; agent: string };
  serverDied: boolean;
  /** The pod's calls through the mesh: each answered within 2 s (ok) or not (failed), and the slowest. */
  legit: { ok: Record<'dns' | 'tcp' | 'udp', number>; failed: Record<'dns' | 'tcp' | 'udp', number>; maxMs: Record<'dns' | 'tcp' | 'udp', number>; errors: string[] };
  /** Attacks run, with the summaries of the first runs of each (what the attacker got). */
  attacks: Record<string, { runs: number; attacker: Record<string, unknown>[] }>;
  /** server, n1, n2. */
  processes: Record<string, SoakProcess>;
}

/** bench/server/run.ts: N simulated agents against one edgemesh-server. RSS in KiB (VmRSS), CPU in seconds. */
export interface ServerBenchData {
  agents: number;
  /** --agents; `agents` is less when the server's descriptor limit (`fdLimit`) cannot hold that many. */
  agentsRequested: number;
  fdLimit: number;
  /** The server's stateDir on tmpfs (pin writes' fdatasync left out of the enrollment phase). */
  stateOnTmpfs: boolean;
  /** EDGEMESH_MEMORY_LIMIT the server ran under (V8 sized for it). */
  memoryLimit: string;
  /** Phase 1: every agent enrolled once (bootstrap: certificate issued and pinned), then left. */
  enrolled: number;
  enrollMs: number;
  registered: number;
  failed: number;
  /** Client processes and loopback source addresses the agents came from. */
  procs: number;
  sources: number;
  /** Phase 2: every agent signs in again (ENROLL renew) and stays: wall time until all did (or failed), the rate,
   *  and the server's CPU time meanwhile. */
  registerMs: number;
  registerPerSec: number;
  registerCpuS: number;
  /** With no agent connected, after phase 1 and `settleS`. */
  rssIdleKiB: number;
  /** After all signed in and `settleS` seconds. */
  rssLoadedKiB: number;
  rssAfterWindowKiB: number;
  kibPerAgent: number;
  settleS: number;
  /** The same N connections and heartbeats against a bare node:tls server (bench/server/tls-ref.ts). */
  reference?: { connected: number; connectMs: number; rssIdleKiB: number; rssLoadedKiB: number; kibPerConn: number; heartbeatCpuPct: number };
  /** The heartbeat window: the agents only answer the server's PINGs. */
  heartbeatWindowS: number;
  heartbeatCpuS: number;
  heartbeatCpuPct: number;
  aliveAfterWindow: number;
}
