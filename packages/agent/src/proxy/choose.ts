// Which dialer reaches an endpoint. Pure.

export type DialerChoice = 'direct' | 'tunnel';

/**
 * Same node (or unknown node) -> direct; another node -> the tunnel when one is configured, else direct as a fallback
 * (flat networks where pod IPs are routable between nodes).
 */
export function chooseDialer(endpointNode: string | undefined, thisNode: string, haveTunnel: boolean): DialerChoice {
  if (endpointNode === undefined || endpointNode === '' || endpointNode === thisNode) return 'direct';
  return haveTunnel ? 'tunnel' : 'direct';
}
