// Which agent runs for a stateDir, and the line to the one being taken over. The running agent owns the unix socket
// `<stateDir>/agent.sock` (the directory is 0700: only root reaches it). An agent starting:
// - binds its own socket under a unique temporary name, then hard-links it to agent.sock: link() fails when the
//   name exists, so of two agents starting on an empty stateDir exactly one gets it (the other finds it running);
// - when agent.sock exists and answers, that agent runs: this one says hello and, welcomed, takes over from it
//   (another takeover under way: "busy", it waits and tries again, so two successors racing go one after the other);
// - when agent.sock exists and refuses (its agent crashed), the stale name is renamed away and checked once more
//   under its new name before it is deleted: a racer that just put a live socket there gets it back.
// A successor moves its socket over agent.sock (rename, atomic) once the old agent has released the rules, so the
// name always leads to a live agent. libuv deletes a socket's bind path when the socket closes: binding under the
// temporary name (gone by then) keeps that from deleting another agent's agent.sock.
import { linkSync, mkdirSync, renameSync, statSync, unlinkSync, chmodSync, type Stats } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { ConfigError } from '@edgemesh/common/config';
import type { Logger } from '@edgemesh/common/log';
import { sleep } from '@edgemesh/common/backoff';
import { encodeMessage, HANDOFF_VERSION, LineReader, parseMessage, type Message } from './protocol.ts';

export const SOCKET_FILE = 'agent.sock';
/** Wait between tries while another takeover is under way (or the running agent is still starting). */
export const BUSY_RETRY_MS = 250;
/** A peer must say hello / answer it within this long. */
export const HELLO_TIMEOUT_MS = 5000;
/** Longest unix socket path (sun_path, with its terminating NUL). */
export const MAX_SOCKET_PATH = 107;
/** Handoff connections open at once on the running agent (one successor, plus a few that will be told busy). */
export const MAX_HANDOFF_CONNS = 8;
/** Bytes queued to a slow peer before relayed datagrams are dropped (counted by the caller). */
export const MAX_PEER_QUEUE_BYTES = 4 << 20;

/** One end of a handoff connection: line-delimited JSON messages. */
export class Peer {
  private readonly sock: Socket;
  private readonly reader = new LineReader();
  private onMsg: (m: Message) => void = () => {};
  private readonly closers: (() => void)[] = [];
  closed = false;

  constructor(sock: Socket) {
    this.sock = sock;
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      const lines = this.reader.push(d);
      if (!lines) return this.close(); // an over-long line: not our peer
      for (const l of lines) {
        const m = parseMessage(l);
        if (m) this.onMsg(m);
      }
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      this.closed = true;
      for (const f of this.closers.splice(0)) f();
    });
  }

  onMessage(fn: (m: Message) => void): void {
    this.onMsg = fn;
  }

  onClose(fn: () => void): void {
    if (this.closed) fn();
    else this.closers.push(fn);
  }

  /** Sends a message; false when it was not queued (closed, or a relayed datagram over the queue limit). */
  send(m: Message): boolean {
    if (this.closed || this.sock.destroyed) return false;
    if (m.t === 'udp' && this.sock.writableLength > MAX_PEER_QUEUE_BYTES) return false;
    this.sock.write(encodeMessage(m));
    return true;
  }

  /** Waits for the next message (undefined: closed or timed out). */
  next(timeoutMs: number): Promise<Message | undefined> {
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(undefined), timeoutMs);
      this.onMessage((m) => { clearTimeout(t); resolve(m); });
      this.onClose(() => { clearTimeout(t); resolve(undefined); });
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

type Probe = { kind: 'live'; peer: Peer } | { kind: 'refused' } | { kind: 'missing' };

function probe(path: string): Promise<Probe> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => resolve({ kind: 'live', peer: new Peer(s) }));
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ENOENT' ? { kind: 'missing' } : { kind: 'refused' }));
  });
}

const sameFile = (a: Stats, b: Stats) => a.ino === b.ino && a.dev === b.dev;

export interface Predecessor {
  peer: Peer;
  welcome: Extract<Message, { t: 'welcome' }>;
}

export class HandoffSocket {
  readonly path: string;
  private readonly tmp: string;
  private readonly server: Server;
  private readonly log: Logger;
  private mine: Stats | undefined;
  private readonly conns = new Set<Socket>();
  /** Set by the agent once it can be taken over; until then a successor is told busy. */
  onHello: ((peer: Peer, hello: Extract<Message, { t: 'hello' }>) => void) | undefined;

  private constructor(stateDir: string, log: Logger) {
    this.path = join(stateDir, SOCKET_FILE);
    this.tmp = join(stateDir, `agent.${process.pid}.${randomBytes(4).toString('hex')}.sock`);
    this.log = log;
    this.server = createServer((s) => this.accept(s));
  }

  /**
   * Claims the stateDir: resolves as its running agent (`predecessor` undefined) or as the successor of the agent
   * running now (welcomed). `stopped` ends the waiting (a signal while starting).
   */
  static async open(stateDir: string, log: Logger, version: string, stopped: () => boolean): Promise<{ socket: HandoffSocket; predecessor?: Predecessor }> {
    const h = new HandoffSocket(stateDir, log);
    if (Buffer.byteLength(h.tmp) > MAX_SOCKET_PATH) throw new ConfigError('stateDir', `too long for the handoff socket (${Buffer.byteLength(h.tmp)} bytes of path, at most ${MAX_SOCKET_PATH})`);
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    await new Promise<void>((resolve, reject) => {
      h.server.once('error', reject);
      h.server.listen(h.tmp, () => { h.server.off('error', reject); resolve(); });
    });
    h.server.on('error', (e) => log.warn({ err: e.message }, 'handoff socket error'));
    chmodSync(h.tmp, 0o600);
    let waitingLogged = false;
    try {
      while (!stopped()) {
        try {
          linkSync(h.tmp, h.path);
          unlinkSync(h.tmp);
          h.mine = statSync(h.path);
          return { socket: h };
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        }
        const p = await probe(h.path);
        if (p.kind === 'missing') continue;
        if (p.kind === 'refused') {
          await h.removeStale();
          continue;
        }
        p.peer.send({ t: 'hello', v: HANDOFF_VERSION, pid: process.pid, version });
        const m = await p.peer.next(HELLO_TIMEOUT_MS);
        if (m?.t === 'welcome') return { socket: h, predecessor: { peer: p.peer, welcome: m } };
        p.peer.close();
        if (!waitingLogged) log.info({ reply: m?.t ?? 'none' }, 'an agent runs on this stateDir and cannot be taken over yet (starting, or another takeover under way); waiting');
        waitingLogged = true;
        await sleep(BUSY_RETRY_MS);
      }
    } catch (e) {
      await h.close();
      throw e;
    }
    await h.close();
    throw new HandoffAborted();
  }

  /** agent.sock is the socket of an agent that is gone: rename it away, check it under that name, delete it. */
  private async removeStale(): Promise<void> {
    const grave = `${this.path}.stale.${randomBytes(4).toString('hex')}`;
    try {
      renameSync(this.path, grave);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw e;
    }
    const p = await probe(grave);
    if (p.kind === 'live') {
      // Another agent put its live socket there meanwhile: give it back.
      p.peer.close();
      try {
        linkSync(grave, this.path);
      } catch {
        this.log.error({ path: this.path }, 'two agents claimed the handoff socket at once');
      }
    } else {
      this.log.info({ path: this.path }, 'removed the handoff socket of an agent that is gone');
    }
    try { unlinkSync(grave); } catch { /* gone already */ }
  }

  /** agent.sock leads to this agent. */
  ownsPath(): boolean {
    if (!this.mine) return false;
    try {
      return sameFile(statSync(this.path), this.mine);
    } catch {
      return false;
    }
  }

  /** The successor's step: agent.sock leads to this agent from now on (atomic; the old agent stays reachable by its connection). */
  takePath(): void {
    renameSync(this.tmp, this.path);
    this.mine = statSync(this.path);
  }

  private accept(s: Socket): void {
    if (this.conns.size >= MAX_HANDOFF_CONNS) return void s.destroy();
    this.conns.add(s);
    s.once('close', () => this.conns.delete(s));
    const peer = new Peer(s);
    void peer.next(HELLO_TIMEOUT_MS).then((m) => {
      if (m?.t !== 'hello') return peer.close();
      if (!this.onHello || !this.ownsPath()) {
        peer.send({ t: 'busy' });
        return peer.close();
      }
      this.onHello(peer, m);
    });
  }

  /** Stops listening; removes agent.sock when it still leads here (a successor's agent.sock is left alone). */
  async close(): Promise<void> {
    if (this.ownsPath()) {
      try { unlinkSync(this.path); } catch { /* gone */ }
    }
    this.mine = undefined;
    for (const c of this.conns) c.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

/** open() gave up because the agent is stopping. */
export class HandoffAborted extends Error {}
