// Makes sure an address the agent listens on (dns.listen, proxy.bindAddress) exists on this host. When it does not,
// a dummy interface holding it as /32 is created; release() removes only what this process added.
import { networkInterfaces } from 'node:os';
import { execa } from './exec.ts';
import type { Logger } from '@edgemesh/common/log';

export const DUMMY_IFACE = 'edgemesh0';

export function isLocalAddress(ip: string): boolean {
  if (ip === '0.0.0.0' || ip === '::' || ip === '') return true;
  return Object.values(networkInterfaces()).some((list) => list?.some((a) => a.address === ip));
}

export interface LocalAddressLease { release(): Promise<void> }

/** Ensures `ip` is a local address; creates/uses the dummy interface when not. Needs NET_ADMIN for the create. */
export async function ensureLocalAddress(ip: string, log: Logger, iface = DUMMY_IFACE): Promise<LocalAddressLease> {
  if (isLocalAddress(ip)) return { release: async () => {} };
  const prefix = ip.includes(':') ? 128 : 32;
  let createdLink = false;
  const links = await execa('ip', ['-o', 'link', 'show', 'dev', iface], { reject: false });
  if (links.exitCode !== 0) {
    const add = await execa('ip', ['link', 'add', 'dev', iface, 'type', 'dummy'], { reject: false });
    if (add.exitCode !== 0) {
      if (!/unknown device type|not supported/i.test(String(add.stderr))) throw new Error(`ip link add dev ${iface} type dummy: ${String(add.stderr).trim()}`);
      return onLoopback(ip, prefix, log); // kernel without the dummy driver (e.g. minimal VM kernels)
    }
    createdLink = true;
  }
  try {
    await execa('ip', ['link', 'set', 'dev', iface, 'up']);
    await execa('ip', ['addr', 'replace', `${ip}/${prefix}`, 'dev', iface]);
  } catch (e) {
    // Leave nothing half made: the interface goes again if this call created it.
    if (createdLink) await execa('ip', ['link', 'del', 'dev', iface], { reject: false });
    throw e;
  }
  log.info({ ip, iface, createdLink }, 'added local address');
  let released = false;
  return {
    async release() {
      if (released) return;
      released = true;
      await execa('ip', ['addr', 'del', `${ip}/${prefix}`, 'dev', iface], { reject: false });
      const left = await execa('ip', ['-o', 'addr', 'show', 'dev', iface], { reject: false });
      // Remove the interface when nothing else of ours is left on it.
      if (left.exitCode === 0 && !/\binet6? /.test(left.stdout.replace(/inet6 fe80[^\n]*/g, ''))) {
        await execa('ip', ['link', 'del', 'dev', iface], { reject: false });
      }
      log.info({ ip, iface }, 'removed local address');
    },
  };
}

/** Fallback when the kernel has no dummy interfaces: the address lives on `lo` and only it is removed on release. */
async function onLoopback(ip: string, prefix: number, log: Logger): Promise<LocalAddressLease> {
  await execa('ip', ['link', 'set', 'dev', 'lo', 'up']);
  await execa('ip', ['addr', 'replace', `${ip}/${prefix}`, 'dev', 'lo']);
  log.info({ ip, iface: 'lo' }, 'added local address (no dummy interface support)');
  let released = false;
  return {
    async release() {
      if (released) return;
      released = true;
      await execa('ip', ['addr', 'del', `${ip}/${prefix}`, 'dev', 'lo'], { reject: false });
      log.info({ ip, iface: 'lo' }, 'removed local address');
    },
  };
}

/** Ref-counted leases so DNS and the proxy can share one address (the default 169.254.96.16 for both). */
const leases = new Map<string, { count: number; lease: Promise<LocalAddressLease> }>();

export async function acquireLocalAddress(ip: string, log: Logger): Promise<LocalAddressLease> {
  let entry = leases.get(ip);
  if (!entry) {
    entry = { count: 0, lease: ensureLocalAddress(ip, log) };
    leases.set(ip, entry);
    entry.lease.catch(() => leases.delete(ip));
  }
  entry.count++;
  const lease = await entry.lease;
  let done = false;
  return {
    async release() {
      if (done) return;
      done = true;
      const e = leases.get(ip);
      if (!e || --e.count > 0) return;
      leases.delete(ip);
      await lease.release();
    },
  };
}
