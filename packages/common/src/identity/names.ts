// Name rules shared by certificates, enrollment and the CLI.

/** Kubernetes Node names are DNS-1123 subdomains: lower-case alphanumerics, '-' and '.', at most 253 characters. */
export const MAX_NODE_NAME = 253;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

export function isNodeName(s: string): boolean {
  return typeof s === 'string' && s.length > 0 && s.length <= MAX_NODE_NAME && DNS1123_SUBDOMAIN.test(s);
}

/** Kubernetes label values (a node's group is a label value): at most 63 characters. */
export const MAX_GROUP_NAME = 63;
const LABEL_VALUE = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;

export function isGroupName(s: string): boolean {
  return typeof s === 'string' && s.length > 0 && s.length <= MAX_GROUP_NAME && LABEL_VALUE.test(s);
}
