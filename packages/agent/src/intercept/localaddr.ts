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

/** An address this process put on an interface and removes when it is done with it. */
export interface AddedAddress { ip: string; prefix: number; iface: string }

/** What this process added (and so removes at the end), by IP: handed to a successor in a takeover. */
const added = new Map<string, AddedAddress>();
/** A handoff happened: the addresses stay for the successor, releases remove nothing. */
let keep = false;

/** The addresses this process added and still holds (a successor adopts them). */
export function addedAddresses(): AddedAddress[] {
  return [...added.values()];
}

/**
 * true: releasing a lease leaves the address in place — an agent handing over (the successor uses it and removes it
 * later), or a successor before it took over (the running agent still uses it). false: releases remove again.
 */
export function keepLocalAddresses(k: boolean): void {
  keep = k;
}

async function removeAddress(a: AddedAddress, log: Logger): Promise<void> {
  if (added.get(a.ip) === a) added.delete(a.ip);
  if (keep) {
    log.info({ ip: a.ip, iface: a.iface }, 'left the local address for the agent that took over');
    return;
  }
  await execa('ip', ['addr', 'del', `${a.ip}/${a.prefix}`, 'dev', a.iface], { reject: false });
  if (a.iface !== 'lo') {
    const left = await execa('ip', ['-o', 'addr', 'show', 'dev', a.iface], { reject: false });
    // Remove the interface when nothing else of ours is left on it.
    if (left.exitCode === 0 && !/\binet6? /.test(left.stdout.replace(/inet6 fe80[^\n]*/g, ''))) {
      await execa('ip', ['link', 'del', 'dev', a.iface], { reject: false });
    }
  }
  log.info({ ip: a.ip, iface: a.iface }, 'removed local address');
}

function leaseFor(a: AddedAddress, log: Logger): LocalAddressLease {
  added.set(a.ip, a);
  let released = false;
  return {
    async release() {
      if (released) return;
      released = true;
      await removeAddress(a, log);
    },
  };
}

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
  return leaseFor({ ip, prefix, iface }, log);
}

/** Fallback when the kernel has no dummy interfaces: the address lives on `lo` and only it is removed on release. */
async function onLoopback(ip: string, prefix: number, log: Logger): Promise<LocalAddressLease> {
  await execa('ip', ['link', 'set', 'dev', 'lo', 'up']);
  await execa('ip', ['addr', 'replace', `${ip}/${prefix}`, 'dev', 'lo']);
  log.info({ ip, iface: 'lo' }, 'added local address (no dummy interface support)');
  return leaseFor({ ip, prefix, iface: 'lo' }, log);
}

/** Ref-counted leases so DNS and the proxy can share one address (the default 169.254.96.16 for both). */
const leases = new Map<string, { count: number; lease: Promise<LocalAddressLease> }>();

/**
 * Takes over addresses the agent we replace added (it leaves them in place): this process removes them when it is
 * done, as if it had added them. Only addresses that are still local are adopted.
 */
export function adoptLocalAddresses(list: readonly AddedAddress[], log: Logger): void {
  for (const a of list) {
    if (!a || typeof a.ip !== 'string' || typeof a.iface !== 'string' || !Number.isInteger(a.prefix) || leases.has(a.ip) || !isLocalAddress(a.ip)) continue;
    if (!/^[A-Za-z0-9_.-]{1,15}$/.test(a.iface)) continue; // an interface name, nothing else reaches `ip`
    const entry = { count: 0, lease: Promise.resolve(leaseFor({ ip: a.ip, prefix: a.prefix, iface: a.iface }, log)) };
    leases.set(a.ip, entry);
    log.info({ ip: a.ip, iface: a.iface }, 'adopted the local address from the agent taken over');
  }
}

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
