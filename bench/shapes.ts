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

export interface ProxyData {
  seconds: number;
  wrkConns: number;
  haproxy: string;
  rows: ProxyRow[];
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
  ttd: TunnelTtd[];
}

export interface Spread { median: number; min: number; max: number; rounds: number }

export interface ClusterData {
  services: number;
  endpoints: number;
  files: number;
  debounceMs: number;
  file: {
    rssIdleMiB: number;
    rssLoadedMiB: number;
    rssRightAfterMiB: number;
    endpointsInModel: number | null;
    writeMs: number;
    /** All Services visible in /metrics after the first manifest write. */
    visibleMs: number;
    stateFileMiB: number;
    /** In-process initial read of all Services. */
    loadMs: number;
    change: Spread;
    changeSmall: Spread & { services: number };
  };
  kube: { rssIdleMiB: number; rssLoadedMiB: number; visibleMs: number; events: number; listMs: number; watch: Spread };
}
