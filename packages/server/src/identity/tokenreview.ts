// Kubernetes enrollment: the agent presents its projected ServiceAccount token (audience AUDIENCE); the server asks
// the API server with a TokenReview and takes the node name from the token's node claim
// (`authentication.kubernetes.io/node-name`, in bound tokens since Kubernetes 1.30), so a node can only ever enroll as
// itself. Only the ServiceAccounts in enrollment.serviceAccounts may enroll: any pod can mint a token with any
// audience for its own ServiceAccount, so the audience alone would let every workload on node X enroll as X.
import { postJson, type KubeConfig } from '@edgemesh/agent/cluster/kubeclient';

export const AUDIENCE = 'edgemesh';
export const NODE_NAME_CLAIM = 'authentication.kubernetes.io/node-name';
/** A TokenReview slower than this counts as failed (the agent retries with backoff). */
export const TOKEN_REVIEW_TIMEOUT_MS = 5000;
/** At most this many TokenReviews in flight; more are refused as busy (each costs the API server work). */
export const MAX_TOKEN_REVIEWS_IN_FLIGHT = 16;
/** Longest token accepted from the network (bound tokens are ~1 KiB). */
export const MAX_SA_TOKEN_CHARS = 8192;

/** The part of TokenReview.status we use, as the API returns it. */
export interface TokenReviewStatus {
  authenticated?: boolean;
  audiences?: string[];
  error?: string;
  user?: { username?: string; uid?: string; groups?: string[]; extra?: Record<string, string[]> };
}

export type ReviewOutcome =
  | { ok: true; node: string; serviceAccount: string }
  | { ok: false; reason: 'not-authenticated' | 'wrong-audience' | 'not-a-service-account' | 'service-account-not-allowed' | 'no-node-claim' | 'review-failed' | 'busy' };

/** What a TokenReview status means for enrollment. Pure. `allowed` holds `namespace/name` entries. */
export function interpretTokenReview(status: TokenReviewStatus | undefined, allowed: readonly string[], audience = AUDIENCE): ReviewOutcome {
  if (!status?.authenticated) return { ok: false, reason: 'not-authenticated' };
  // An API server that ignores spec.audiences returns none: then the token was not checked for ours.
  if (!status.audiences?.includes(audience)) return { ok: false, reason: 'wrong-audience' };
  const m = /^system:serviceaccount:([^:]+):([^:]+)$/.exec(status.user?.username ?? '');
  if (!m) return { ok: false, reason: 'not-a-service-account' };
  const sa = `${m[1]}/${m[2]}`;
  if (!allowed.includes(sa)) return { ok: false, reason: 'service-account-not-allowed' };
  const nodes = status.user?.extra?.[NODE_NAME_CLAIM];
  if (!Array.isArray(nodes) || nodes.length !== 1 || typeof nodes[0] !== 'string' || !nodes[0]) return { ok: false, reason: 'no-node-claim' };
  return { ok: true, node: nodes[0], serviceAccount: sa };
}

export interface TokenReviewer {
  review(token: string): Promise<TokenReviewStatus | 'failed' | 'busy'>;
}

/** TokenReviews against the API server of a kubeconfig (the server's cluster.kubeconfig). */
export class KubeTokenReviewer implements TokenReviewer {
  private readonly kc: KubeConfig;
  private inFlight = 0;
  private readonly timeoutMs: number;
  constructor(kc: KubeConfig, timeoutMs = TOKEN_REVIEW_TIMEOUT_MS) {
    this.kc = kc;
    this.timeoutMs = timeoutMs;
  }

  async review(token: string): Promise<TokenReviewStatus | 'failed' | 'busy'> {
    if (token.length === 0 || token.length > MAX_SA_TOKEN_CHARS) return { authenticated: false };
    if (this.inFlight >= MAX_TOKEN_REVIEWS_IN_FLIGHT) return 'busy';
    this.inFlight++;
    let timer: NodeJS.Timeout | undefined;
    try {
      const body = { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences: [AUDIENCE] } };
      const ac = new AbortController();
      timer = setTimeout(() => ac.abort(), this.timeoutMs);
      const res = await postJson(this.kc.connection, '/apis/authentication.k8s.io/v1/tokenreviews', body, ac.signal)
        .then((v) => v.status as TokenReviewStatus | undefined, () => 'failed' as const);
      return res ?? { authenticated: false };
    } finally {
      clearTimeout(timer);
      this.inFlight--;
    }
  }
}
