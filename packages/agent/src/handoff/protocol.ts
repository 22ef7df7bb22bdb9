// The handoff protocol between a running agent and the agent taking over from it (same stateDir), spoken over the
// unix socket `<stateDir>/agent.sock`: one JSON object per line. Pure: messages are parsed and checked here.
//
//   successor -> running:  hello    {v, pid, version}
//   running -> successor:  welcome  {v, addresses, peers}      (or busy: another takeover is under way; retry)
//   successor:             starts alongside (same ports, SO_REUSEPORT), follows the rules, becomes ready
//   successor -> running:  ready    {udp}                      the UDP addresses it serves
//   running -> successor:  released                           it stopped changing rules and the port table
//   successor:             applies its rules (identical), owns the socket path
//   successor -> running:  go
//   running:               stops accepting, drains; replies it still owes leave from the successor's sockets:
//   running -> successor:  udp      {local, to, port, data}
import type { AddedAddress } from '../intercept/localaddr.ts';

export const HANDOFF_VERSION = 1;
/** Longest line accepted (a relayed datagram of 64 KiB is about 87 KiB in base64). */
export const MAX_LINE_BYTES = 128 * 1024;

export type Message =
  | { t: 'hello'; v: number; pid: number; version: string }
  | { t: 'welcome'; v: number; addresses: AddedAddress[]; peers: string[] }
  | { t: 'busy' }
  | { t: 'ready'; udp: string[] }
  | { t: 'released' }
  | { t: 'go' }
  | { t: 'udp'; local: string; to: string; port: number; data: string };

const isStr = (v: unknown): v is string => typeof v === 'string';
const isInt = (v: unknown, lo: number, hi: number): v is number => Number.isInteger(v) && (v as number) >= lo && (v as number) <= hi;
const strs = (v: unknown, max: number): v is string[] => Array.isArray(v) && v.length <= max && v.every((x) => isStr(x) && x.length <= 256);
const ADDR = /^[0-9a-fA-F:.]{2,45}$/;

/** Parses one line; undefined for anything malformed or of an unknown type. */
export function parseMessage(line: string): Message | undefined {
  let m: Record<string, unknown>;
  try {
    const v: unknown = JSON.parse(line);
    if (!v || typeof v !== 'object' || Array.isArray(v)) return undefined;
    m = v as Record<string, unknown>;
  } catch {
    return undefined;
  }
  switch (m.t) {
    case 'hello':
      return isInt(m.v, 1, 1000) && isInt(m.pid, 0, 2 ** 31) && isStr(m.version) ? { t: 'hello', v: m.v, pid: m.pid, version: m.version.slice(0, 64) } : undefined;
    case 'welcome': {
      if (!isInt(m.v, 1, 1000) || !Array.isArray(m.addresses) || m.addresses.length > 16 || !strs(m.peers, 10_000)) return undefined;
      const addresses: AddedAddress[] = [];
      for (const a of m.addresses as Record<string, unknown>[]) {
        if (!a || !isStr(a.ip) || !ADDR.test(a.ip) || !isStr(a.iface) || !isInt(a.prefix, 0, 128)) return undefined;
        addresses.push({ ip: a.ip, iface: a.iface, prefix: a.prefix });
      }
      return { t: 'welcome', v: m.v, addresses, peers: m.peers };
    }
    case 'busy':
    case 'released':
    case 'go':
      return { t: m.t };
    case 'ready':
      return strs(m.udp, 100_000) ? { t: 'ready', udp: m.udp } : undefined;
    case 'udp':
      return isStr(m.local) && isStr(m.to) && ADDR.test(m.to) && isInt(m.port, 1, 65535) && isStr(m.data)
        ? { t: 'udp', local: m.local, to: m.to, port: m.port, data: m.data }
        : undefined;
    default:
      return undefined;
  }
}

export function encodeMessage(m: Message): string {
  return JSON.stringify(m) + '\n';
}

/** Splits a byte stream into lines; a line longer than MAX_LINE_BYTES is an error (the peer is cut off). */
export class LineReader {
  private buf = '';
  /** Feeds a chunk; returns the complete lines, or undefined when the peer sent an over-long line. */
  push(chunk: string): string[] | undefined {
    this.buf += chunk;
    const lines = this.buf.split('\n');
    this.buf = lines.pop()!;
    if (this.buf.length > MAX_LINE_BYTES || lines.some((l) => l.length > MAX_LINE_BYTES)) return undefined;
    return lines.filter((l) => l.length > 0);
  }
}
