#!/bin/sh
# Image entrypoint. Picks the iptables back end (legacy or nft) that the node's rules already live in, so the agent's
# chains sit in the same tables as kube-proxy's and the kubelet's (rules written through the other back end would be
# invisible to them and evaluated in an order nobody controls). Then execs the command, so node is PID 1 and gets
# SIGTERM directly (the agent removes its rules on SIGTERM).
#   EDGEMESH_IPTABLES_MODE=auto (default) | legacy | nft
# auto: a back end holding kube-proxy's or the kubelet's marker chain wins; otherwise the one with more rules;
# nft on a tie (the Debian default). Skipped when not root (the server needs no iptables).
set -eu

IPTABLES_DIRS=/opt/edgemesh

rules() { # number of rules a save command prints (0 when it fails, e.g. without the kernel module)
  { "$1" 2>/dev/null || true; } | grep -c '^-' || true
}

has_marker() { # kube-proxy's KUBE-IPTABLES-HINT or the kubelet's KUBE-KUBELET-CANARY chain
  { "$1" -t mangle 2>/dev/null || true; } | grep -qE '^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY) '
}

pick_mode() {
  if has_marker iptables-nft-save; then echo nft; return; fi
  if has_marker iptables-legacy-save; then echo legacy; return; fi
  legacy=$(( $(rules iptables-legacy-save) + $(rules ip6tables-legacy-save) ))
  nft=$(( $(rules iptables-nft-save) + $(rules ip6tables-nft-save) ))
  if [ "$legacy" -gt "$nft" ]; then echo legacy; else echo nft; fi
}

mode="${EDGEMESH_IPTABLES_MODE:-auto}"
if [ "$mode" = auto ]; then
  if [ "$(id -u)" = 0 ]; then mode=$(pick_mode); else mode=none; fi
fi
case "$mode" in
  legacy|nft) PATH="$IPTABLES_DIRS/iptables-$mode:$PATH"; export PATH ;;
  none) ;;
  *) echo "edgemesh-entrypoint: EDGEMESH_IPTABLES_MODE must be auto, legacy or nft, got '$mode'" >&2; exit 2 ;;
esac

if [ "$#" -eq 0 ]; then set -- node packages/agent/bin/edgemesh-agent.js --help; fi
exec "$@"
