// The TCP transport: links to peers that answer on TCP (same LAN, a public or forwarded address) over kernel TCP with
// TLS 1.3 (OpenSSL's AES-GCM), mutually authenticated with the nodes' own keys. Each side presents a link
// certificate (common/identity/linkcert.ts): a self-signed X.509 certificate for its node key carrying its node
// certificate. The TLS handshake proves the key; checkTlsPeer then checks the node certificate inside against our CA,
// the name we meant to reach (dialer) or a Node of the cluster (listener), that key and our revocation list, before a
// byte of the link is read. The link's HELLO then binds the session to this connection with the TLS exporter in place
// of the Noise handshake hash (link.ts, identity.ts), as strong a binding as over Noise: fresh for every connection,
// and only a holder of one of the two node keys can make the proof.
//
// The listener is on TCP `tunnel.listenPort` (the number the UDP socket got, so the LAN candidates of the rendezvous
// name it). Its budgets: connections between accept and a verified peer (TCP_PENDING_CONNECTIONS) and the time a TLS
// handshake may take (TCP_HANDSHAKE_TIMEOUT_MS); refusals are counted in edgemesh_budget_refusals_total.
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { connect, createSecureContext, TLSSocket, type SecureContext } from 'node:tls';
import type { Budget, Budgets } from '@edgemesh/common/budget';
import type * as LinkCertModule from '@edgemesh/common/identity/linkcert';
import { decodeNodeCert } from '@edgemesh/common/identity/cert';
import { isNodeName } from '@edgemesh/common/identity/names';
import type { Logger } from '@edgemesh/common/log';
import type { RawKeyPair } from '@edgemesh/common/tunnel/ed25519';
import type { PeerIdentity } from './identity.ts';
import { addrKey, type Addr } from './punch.ts';

/** TLS exporter label of a link's binding (RFC 8446 7.5): what the HELLO proof covers instead of a Noise hash. */
export const TCP_LINK_EXPORTER_LABEL = 'EXPORTER-edgemesh-link';
export const TCP_LINK_BINDING_BYTES = 32;
/** ALPN of a link: a TLS client of anything else (or an old agent) is refused in the handshake. */
export const TCP_LINK_ALPN = 'edgemesh-link/1';
/** Connections accepted and not yet verified, all callers together: each holds a socket and a TLS handshake's memory.
 *  Real callers are the cluster's nodes, each dialing once per rendezvous; more at once is a flood. */
export const TCP_PENDING_CONNECTIONS = 128;
/** A TLS 1.3 handshake is one round trip (plus the client's certificate): seconds are a broken or hostile caller. */
export const TCP_HANDSHAKE_TIMEOUT_MS = 5_000;
/** A dial to one of the peer's addresses (connect and TLS) gives up after this: a LAN answers in milliseconds, and a
 *  firewall that drops SYNs must not hold the attempt for the kernel's minutes (UDX carries on meanwhile). */
export const TCP_DIAL_TIMEOUT_MS = 3_000;
export const BUDGET_TCP_PENDING = 'tunnel_tcp_pending';
/** Refusals by rule, counted under these budget names too: a handshake over its time, a certificate not of a peer. */
export const REFUSAL_TCP_HANDSHAKE_TIMEOUT = 'tunnel_tcp_handshake_timeout';
export const REFUSAL_TCP_NOT_A_PEER = 'tunnel_tcp_not_a_peer';

/** A verified TLS connection to a peer node: its name and key as its node certificate binds them, the TLS binding. */
export interface TcpPeer {
  node: string;
  socket: TLSSocket;
  remoteKey: Buffer;
  binding: Buffer;
  /** The peer's address (host:port). */
  remote: string;
}

/**
 * linkcert.ts and @peculiar/x509 under it (~135 ms to load, on an agent's start -> ready path when imported up front)
 * are needed only once a TCP link is made: loaded with our first link certificate. Every TLS link waits for that
 * certificate (accept and dial both await context()), so checkTlsPeer always finds the module loaded.
 */
let linkCert: typeof LinkCertModule | undefined;
const loadLinkCert = async (): Promise<typeof LinkCertModule> => (linkCert ??= await import('@edgemesh/common/identity/linkcert'));

/** Our link certificate, made again when our node certificate changes (renewal). */
export class TcpLinkTls {
  private readonly o: { node: string; keyPair: RawKeyPair; identity: PeerIdentity };
  private made: { nodeCert: Buffer; ctx: Promise<SecureContext> } | undefined;

  constructor(o: { node: string; keyPair: RawKeyPair; identity: PeerIdentity }) {
    this.o = o;
  }

  /** The secure context with our current link certificate; undefined before our first enrollment. */
  context(): Promise<SecureContext> | undefined {
    const nodeCert = this.o.identity.ourCert();
    if (!nodeCert.length) return undefined;
    if (!this.made?.nodeCert.equals(nodeCert)) {
      const notAfter = decodeNodeCert(nodeCert).notAfter;
      const ctx = loadLinkCert()
        .then((m) => m.makeLinkCert({ name: this.o.node, secretKey: this.o.keyPair.secretKey, nodeCert, notAfter, now: Date.now() }))
        .then(({ certPem, keyPem }) => createSecureContext({ cert: certPem, key: keyPem, minVersion: 'TLSv1.3' }));
      ctx.catch(() => { if (this.made?.ctx === ctx) this.made = undefined; });
      this.made = { nodeCert, ctx };
    }
    return this.made.ctx;
  }
}

/**
 * Who the other end of a finished TLS handshake is: its link certificate's node certificate must verify (our CA,
 * `expect` when given, the key TLS proved, not revoked) and, on accept, name a Node of our cluster.
 */
export function checkTlsPeer(socket: TLSSocket, id: PeerIdentity, expect: string | undefined, isPeerNode: (node: string) => boolean): { node: string; remoteKey: Buffer } | { why: string } {
  if (socket.alpnProtocol !== TCP_LINK_ALPN) return { why: 'not an edgemesh link (ALPN)' };
  const der = socket.getPeerX509Certificate()?.raw;
  const parts = der && linkCert?.linkCertParts(der);
  if (!parts) return { why: 'no link certificate' };
  let name: string;
  try {
    name = decodeNodeCert(parts.nodeCert).name;
  } catch {
    return { why: 'malformed node certificate' };
  }
  if (expect !== undefined && name !== expect) return { why: `reached node ${name}, not ${expect}` };
  if (!isNodeName(name) || !isPeerNode(name)) return { why: `${name.slice(0, 64)} is not a peer node` };
  const v = id.verifyPeer(parts.nodeCert, name, parts.publicKey);
  if (!v.ok) return { why: `node certificate of ${name} refused: ${v.reason}` };
  return { node: name, remoteKey: parts.publicKey };
}

function binding(socket: TLSSocket): Buffer {
  return socket.exportKeyingMaterial(TCP_LINK_BINDING_BYTES, TCP_LINK_EXPORTER_LABEL, Buffer.alloc(0));
}

export interface TcpListenerOptions {
  port: number;
  host?: string;
  tls: TcpLinkTls;
  identity: PeerIdentity;
  budgets: Budgets;
  isPeerNode: (node: string) => boolean;
  log: Logger;
  /** A verified peer connection (its link handshake is the caller's). */
  onPeer: (p: TcpPeer) => void;
  /** A connection refused after TLS (a certificate that is not of a peer node), counted by the caller. */
  onRefused?: (why: string) => void;
  /** Overrides of TCP_PENDING_CONNECTIONS and TCP_HANDSHAKE_TIMEOUT_MS (tests). */
  maxPending?: number;
  handshakeTimeoutMs?: number;
}

/** The TCP listener of the tunnel (see the top of this file). */
export class TcpLinkListener {
  private readonly o: TcpListenerOptions;
  private readonly server: NetServer;
  private readonly pending: Budget;
  private readonly socks = new Set<Socket>();

  constructor(o: TcpListenerOptions) {
    this.o = o;
    this.pending = o.budgets.budget({ name: BUDGET_TCP_PENDING, max: o.maxPending ?? TCP_PENDING_CONNECTIONS, unit: 'connections' });
    this.server = createNetServer((sock) => this.onConnection(sock));
    this.server.on('error', (e) => this.o.log.warn({ err: e.message }, 'TCP link listener error'));
  }

  /** Binds the port; false (logged) when it cannot (the tunnel goes on without the TCP transport). */
  listen(): Promise<boolean> {
    return new Promise((resolve) => {
      const onError = (e: NodeJS.ErrnoException) => {
        this.o.log.warn({ port: this.o.port, err: e.code ?? e.message }, 'cannot listen on TCP for links, the TCP transport is off');
        resolve(false);
      };
      this.server.once('error', onError);
      this.server.listen({ port: this.o.port, host: this.o.host }, () => {
        this.server.off('error', onError);
        this.o.log.info({ port: this.port }, 'tunnel TCP link listener bound');
        resolve(true);
      });
    });
  }

  get port(): number {
    const a = this.server.address();
    return a && typeof a === 'object' ? a.port : 0;
  }

  /** From accept to a verified peer the connection holds a pending lease and runs against TCP_HANDSHAKE_TIMEOUT_MS. */
  private onConnection(sock: Socket): void {
    sock.on('error', () => {}); // every error ends in 'close'
    const lease = this.pending.tryAcquire();
    const ctx = lease && this.o.tls.context();
    if (!lease || !ctx) {
      lease?.release();
      return void sock.destroy();
    }
    this.socks.add(sock);
    let done = false;
    const finish = () => {
      if (done) return false;
      done = true;
      clearTimeout(timer);
      lease.release();
      return true;
    };
    sock.once('close', () => { this.socks.delete(sock); finish(); });
    const timer = setTimeout(() => {
      if (!finish()) return;
      this.o.budgets.refuse(REFUSAL_TCP_HANDSHAKE_TIMEOUT, { remote: sock.remoteAddress });
      sock.destroy();
    }, this.o.handshakeTimeoutMs ?? TCP_HANDSHAKE_TIMEOUT_MS);
    ctx.then((secureContext) => {
      if (done) return;
      const tls = new TLSSocket(sock, { isServer: true, secureContext, requestCert: true, rejectUnauthorized: false, ALPNProtocols: [TCP_LINK_ALPN] });
      tls.on('error', (e) => {
        if (!done) this.o.log.debug({ err: e.message, remote: sock.remoteAddress }, 'TCP link handshake failed');
        tls.destroy();
        sock.destroy();
      });
      tls.once('close', () => sock.destroy());
      tls.once('secure', () => {
        if (!finish()) return;
        const who = checkTlsPeer(tls, this.o.identity, undefined, this.o.isPeerNode);
        if ('why' in who) {
          this.o.onRefused?.(who.why);
          this.o.budgets.refuse(REFUSAL_TCP_NOT_A_PEER, { remote: sock.remoteAddress, why: who.why });
          return void tls.destroy();
        }
        sock.setNoDelay(true);
        this.o.onPeer({ node: who.node, socket: tls, remoteKey: who.remoteKey, binding: binding(tls), remote: `${sock.remoteAddress}:${sock.remotePort}` });
      });
    }, (e: Error) => {
      this.o.log.warn({ err: e.message }, 'no link certificate for a TCP link');
      sock.destroy();
    });
  }

  /** Stops accepting and drops connections still in their handshake (established links belong to their peers). */
  close(): Promise<void> {
    for (const s of this.socks) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** One TLS dial to `to`, verified to be `node` (see checkTlsPeer), within TCP_DIAL_TIMEOUT_MS. */
export function dialTcpOnce(to: Addr, node: string, ctx: SecureContext, id: PeerIdentity, signal?: AbortSignal): Promise<TcpPeer> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: to.host, port: to.port, servername: node, secureContext: ctx, minVersion: 'TLSv1.3', rejectUnauthorized: false, ALPNProtocols: [TCP_LINK_ALPN] });
    const fail = (e: Error) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      sock.destroy();
      reject(e);
    };
    const onAbort = () => fail(new Error('dial abandoned'));
    signal?.addEventListener('abort', onAbort, { once: true });
    const timer = setTimeout(() => fail(new Error(`TCP dial ${addrKey(to)} timed out`)), TCP_DIAL_TIMEOUT_MS);
    sock.once('error', fail);
    sock.once('secureConnect', () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      sock.off('error', fail);
      sock.on('error', () => {});
      const who = checkTlsPeer(sock, id, node, () => true);
      if ('why' in who) {
        sock.destroy();
        return reject(new Error(who.why));
      }
      sock.setNoDelay(true);
      resolve({ node, socket: sock, remoteKey: who.remoteKey, binding: binding(sock), remote: addrKey(to) });
    });
  });
}

/** Dials every target at once; the first verified connection wins, the others are dropped. */
export async function dialTcpLink(targets: readonly Addr[], node: string, tls: TcpLinkTls, id: PeerIdentity): Promise<TcpPeer> {
  const ctx = await tls.context();
  if (!ctx) throw new Error('no link certificate yet');
  if (!targets.length) throw new Error('no TCP address for the peer');
  const ac = new AbortController();
  const dials = targets.map((t) => dialTcpOnce(t, node, ctx, id, ac.signal));
  try {
    const won = await Promise.any(dials);
    ac.abort();
    // A second dial that also connected is dropped once it settles (the abort covers the ones still under way).
    for (const d of dials) d.then((p) => { if (p !== won) p.socket.destroy(); }, () => {});
    return won;
  } catch (e) {
    const errs = e instanceof AggregateError ? e.errors.map((x: Error) => x.message) : [(e as Error).message];
    throw new Error(`no TCP link to ${node}: ${errs.join('; ')}`);
  }
}
