// A ServiceIPTable over the Services' spec.clusterIPs, read from the cluster model. Used by the proxy when no other
// table (dns/serviceips.ts, which also does fake IPs) has been given to it, and by tests.
import type { ServiceIPTable, Snapshot } from '../cluster/types.ts';

export interface SnapshotSource {
  snapshot(): Snapshot;
  subscribe(fn: (snap: Snapshot, prev: Snapshot) => void): () => void;
}

export class ClusterIPTable implements ServiceIPTable {
  private readonly model: SnapshotSource;

  constructor(model: SnapshotSource) {
    this.model = model;
  }

  ipsFor(serviceKey: string): readonly string[] {
    return this.model.snapshot().services.get(serviceKey)?.clusterIPs ?? [];
  }

  serviceFor(ip: string): string | undefined {
    for (const s of this.model.snapshot().services.values()) if (s.clusterIPs.includes(ip)) return s.key;
    return undefined;
  }

  entries(): ReadonlyMap<string, readonly string[]> {
    const out = new Map<string, readonly string[]>();
    for (const s of this.model.snapshot().services.values()) if (s.clusterIPs.length) out.set(s.key, s.clusterIPs);
    return out;
  }

  onChange(fn: () => void): () => void {
    return this.model.subscribe((snap, prev) => {
      if (snap.services === prev.services) return;
      // Services are immutable objects: the IPs can only have changed where an entry was replaced, added or removed.
      if (snap.services.size === prev.services.size && [...snap.services].every(([k, v]) => prev.services.get(k) === v)) return;
      fn();
    });
  }
}
