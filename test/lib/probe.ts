// A small UDP/TCP probe process inside a lab namespace, driven over stdin/stdout (probe-main.ts). One per host is
// enough: it holds any number of sockets. Reflecting UDP sockets answer "seen <ip>:<port> <data>" (the source
// address they observed, and the data they got), so the sender learns its mapped address and the listener records who reached it.
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Lab, Target } from '../../packages/lab/src/netlab.ts';

export const PROBE_READY_TIMEOUT_MS = 10_000;
export const PROBE_CMD_TIMEOUT_MS = 5_000;
export const PROBE_SCRIPT = new URL('./probe-main.ts', import.meta.url).pathname;

export type ProbeEvent =
  | { ev: 'udp'; local: number; from: string; fromPort: number; data: string }
  | { ev: 'tcp'; local: number; from: string; fromPort: number }
  | { ev: 'ok'; id: number; port?: number; data?: string }
  | { ev: 'error'; id: number; error: string }
  | { ev: 'ready' };

export type UdpEvent = Extract<ProbeEvent, { ev: 'udp' }>;

export class Probe {
  readonly events: ProbeEvent[] = [];
  readonly child: ChildProcess;
  private nextId = 1;
  private waiters = new Set<() => void>();

  private constructor(child: ChildProcess) {
    this.child = child;
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        this.events.push(JSON.parse(line) as ProbeEvent);
      } catch {
        return;
      }
      for (const w of [...this.waiters]) w();
    });
    child.stderr!.resume();
  }

  /** Starts a probe in the target's namespace (the lab kills it at destroy). */
  static async start(lab: Lab, target: Target): Promise<Probe> {
    const p = new Probe(lab.spawn(target, process.execPath, [PROBE_SCRIPT]));
    const ready = await p.waitFor((e) => e.ev === 'ready', PROBE_READY_TIMEOUT_MS);
    if (!ready) throw new Error(`probe in ${typeof target === 'string' ? target : target.ns} did not start`);
    return p;
  }

  /** The first event (past or future) matching `pred`, or undefined after `timeoutMs`. */
  waitFor<T extends ProbeEvent>(pred: (e: ProbeEvent) => e is T, timeoutMs: number): Promise<T | undefined>;
  waitFor(pred: (e: ProbeEvent) => boolean, timeoutMs: number): Promise<ProbeEvent | undefined>;
  waitFor(pred: (e: ProbeEvent) => boolean, timeoutMs: number): Promise<ProbeEvent | undefined> {
    return new Promise((resolve) => {
      const check = () => {
        const e = this.events.find(pred);
        if (e) finish(e);
      };
      const timer = setTimeout(() => finish(undefined), timeoutMs);
      const finish = (e: ProbeEvent | undefined) => {
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve(e);
      };
      this.waiters.add(check);
      check();
    });
  }

  private async request(cmd: Record<string, unknown>): Promise<Extract<ProbeEvent, { ev: 'ok' }>> {
    const id = this.nextId++;
    this.child.stdin!.write(`${JSON.stringify({ ...cmd, id })}\n`);
    const timeout = typeof cmd.timeoutMs === 'number' ? cmd.timeoutMs + PROBE_CMD_TIMEOUT_MS : PROBE_CMD_TIMEOUT_MS;
    const e = await this.waitFor((x) => (x.ev === 'ok' || x.ev === 'error') && x.id === id, timeout);
    if (!e) throw new Error(`probe: no answer to ${JSON.stringify(cmd)}`);
    if (e.ev === 'error') throw new Error(`probe: ${cmd.op}: ${e.error}`);
    return e as Extract<ProbeEvent, { ev: 'ok' }>;
  }

  /** Binds a UDP socket on 0.0.0.0:port (0 = any); returns the port. */
  async udpBind(port: number, opts: { reflect?: boolean } = {}): Promise<number> {
    const r = await this.request({ op: 'udp-bind', port, reflect: !!opts.reflect });
    return r.port!;
  }

  async udpSend(fromPort: number, host: string, port: number, data = 'ping'): Promise<void> {
    await this.request({ op: 'udp-send', from: fromPort, host, port, data });
  }

  /** Datagrams received so far on `localPort` (optionally only those whose data starts with `prefix`). */
  udpReceived(localPort: number, prefix = ''): UdpEvent[] {
    return this.events.filter((e): e is UdpEvent => e.ev === 'udp' && e.local === localPort && e.data.startsWith(prefix));
  }

  /** Waits for a datagram on `localPort` matching `pred`; undefined after `timeoutMs`. */
  waitUdp(localPort: number, pred: (e: UdpEvent) => boolean, timeoutMs: number): Promise<UdpEvent | undefined> {
    return this.waitFor((e): e is UdpEvent => e.ev === 'udp' && e.local === localPort && pred(e), timeoutMs);
  }

  /** Sends to a reflector and returns the address it saw ("ip:port"), or undefined when no answer came in time. */
  async mappedAddress(fromPort: number, host: string, port: number, timeoutMs: number): Promise<string | undefined> {
    const tag = `m${this.nextId}-${Math.random().toString(36).slice(2, 8)}`;
    await this.udpSend(fromPort, host, port, tag);
    const r = await this.waitUdp(fromPort, (e) => e.from === host && e.fromPort === port && e.data === `seen ${e.data.split(' ')[1]} ${tag}`, timeoutMs);
    return r?.data.split(' ')[1];
  }

  async tcpListen(port: number): Promise<void> {
    await this.request({ op: 'tcp-listen', port });
  }

  /** Connects, returns what the listener wrote ("seen ip:port"); throws on error or timeout. */
  async tcpConnect(host: string, port: number, timeoutMs: number): Promise<string> {
    const r = await this.request({ op: 'tcp-connect', host, port, timeoutMs });
    return r.data ?? '';
  }

  close(): void {
    this.child.stdin?.end();
    this.child.kill('SIGTERM');
  }
}
