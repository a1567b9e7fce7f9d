#!/usr/bin/env bash
# node-down.sh [I|all] - stop the node node-up.sh started for cluster cI
# (default: all nodes of the run dir) and remove everything it created:
# kube-proxy, kube-scheduler, kubelet (by recorded PID, only if the PID still
# runs that binary), the pods (their processes are killed via the node's own
# cgroup tree), the containerd shims of this node's socket, containerd, the
# CNI bridge, the pod cgroups and $RUN/cI/node. The node's mounts lived only
# in its private mount namespace and vanish with its processes.
# When no kubelet/kube-proxy is left on the machine it also removes the
# KUBE-* (kubelet, kube-proxy) and CNI-HOSTPORT-*/CNI-DN-* (portmap) iptables
# chains and restores the sysctls recorded by node-up.sh. The Node object is deleted
# (when the apiserver still answers); the pod GC then deletes its pods.
# Best effort: a step that fails is reported and the rest still runs; a
# wait that missed its deadline (a process, pod, shim or cgroup that would
# not go away) makes the exit status 1.
# Env: R1KUBE_RUN, R1KUBE_CACHE as for up.sh.
set -uo pipefail
# shellcheck source=e2e/kube/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # wait_until
failed=0

CACHE="${R1KUBE_CACHE:-/var/cache/ratio1-kube}"
BIN="$CACHE/bin"
RUN="${R1KUBE_RUN:-${TMPDIR:-/tmp}/ratio1-kube}"
export PATH="$BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSCTL_ORIG=/run/ratio1-kube-sysctl.orig

log() { printf '[ratio1-kube node-down] %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }

# gone PID: exited (a zombie not yet reaped by PID 1 counts as gone)
gone() { [ ! -d "/proc/$1" ] || [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" = Z ]; }
cmdline_has() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$2"; }
# stop PIDFILE BINPATH
stop() {
  local pidfile="$1" bin="$2" pid
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if [ -n "$pid" ] && cmdline_has "$pid" "$bin "; then
    kill -TERM "$pid" 2>/dev/null || true
    if ! WAIT_STEP=0.1 wait_until 10 "" gone "$pid" 2>/dev/null; then
      log "$(basename "$bin") (pid $pid) did not stop on TERM within 10 s, sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      WAIT_STEP=0.1 wait_until 5 "$(basename "$bin") (pid $pid) gone after SIGKILL" gone "$pid" || { failed=1; return 0; }
    fi
    log "stopped $(basename "$bin") (pid $pid)"
  fi
  rm -f "$pidfile"
}
# procs_named COMM: live (not zombie) processes with that name
procs_named() { local p; for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" = "$1" ] && ! gone "${p#/proc/}" && echo "${p#/proc/}"; done; }
cgroup_mounts() { awk '$3 == "cgroup" || $3 == "cgroup2" {print $2}' /proc/self/mounts; }
# (the next three are wait_until conditions)
# pods_killed CGROUP: SIGKILL every process in that tree (again on each try:
# forks); true once none is left
# shellcheck disable=SC2317
pods_killed() {
  local pids
  pids="$(find "$1" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)"
  [ -z "$pids" ] && return 0
  # shellcheck disable=SC2086  # one pid a word
  kill -KILL $pids 2>/dev/null
  WAIT_PROGRESS="still there: ${pids//$'\n'/ }"
  return 1
}
# shims_gone SOCK: no live containerd shim of that containerd socket
# shellcheck disable=SC2317
shims_gone() {
  local pid
  for pid in $(procs_named containerd-shim); do cmdline_has "$pid" "-address $1 " && return 1; done
  return 0
}
# cgroup_removed DIR: rmdir the tree, deepest first; true once it is gone
# shellcheck disable=SC2317
cgroup_removed() { find "$1" -depth -type d -exec rmdir {} + 2>/dev/null; [ ! -d "$1" ]; }

node_down() {
  local ND="$1" cg="" br="" sock pids pid mnt
  sock="$ND/containerd.sock"
  [ -f "$ND/cgroup-root" ] && cg="$(cat "$ND/cgroup-root")"
  [ -f "$ND/bridge" ] && br="$(cat "$ND/bridge")"

  if [ -f "$ND/kube-proxy.pid" ]; then
    stop "$ND/kube-proxy.pid" "$BIN/kube-proxy"
    # another kube-proxy still runs (R1KUBE_KUBE_PROXY=1 case): our
    # rules replaced its rules; deleting the canary chain makes it notice and
    # rewrite all KUBE-* rules within its sync period (30 s)
    if [ -n "$(procs_named kube-proxy)" ]; then
      iptables -t mangle -F KUBE-PROXY-CANARY 2>/dev/null; iptables -t mangle -X KUBE-PROXY-CANARY 2>/dev/null || true
    fi
  fi
  stop "$ND/kube-scheduler.pid" "$BIN/kube-scheduler"
  stop "$ND/kubelet.pid" "$BIN/kubelet"
  # delete the Node object (its pods are then removed by the pod GC) so that
  # a later node-up.sh registers a fresh one
  local kc="$ND/../kubeconfig" url
  if [ -f "$ND/node-name" ] && [ -f "$kc" ]; then
    url="$(sed -n 's/^ *server: //p' "$kc" | head -n1)"
    curl -sk -m 5 -o /dev/null -X DELETE -H "Authorization: Bearer $(sed -n 's/^ *token: //p' "$kc" | head -n1)" \
      "$url/api/v1/nodes/$(cat "$ND/node-name")" && log "deleted Node $(cat "$ND/node-name")"
  fi

  # pods: SIGKILL every process in this node's cgroup tree (repeat: forks)
  local h="" x
  for x in pids memory cpu; do [ -n "$cg" ] && [ -d "/sys/fs/cgroup/$x/$cg" ] && { h="/sys/fs/cgroup/$x/$cg"; break; }; done
  if [ -n "$h" ]; then wait_until 5 "the pods' processes in $h killed" pods_killed "$h" || failed=1; fi
  # containerd, then the shims it started (identified by this node's socket)
  stop "$ND/containerd.pid" "$BIN/containerd"
  for pid in $(procs_named containerd-shim); do
    if cmdline_has "$pid" "-address $sock "; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  WAIT_STEP=0.1 wait_until 5 "the containerd shims of $sock gone" shims_gone "$sock" || failed=1

  # the DNAT rules that let this node's pods reach the apiserver
  if [ -f "$ND/api-chain" ] && [ -n "$br" ]; then
    local ch; ch="$(cat "$ND/api-chain")"
    while iptables -t nat -D PREROUTING -i "$br" -j "$ch" 2>/dev/null; do :; done
    iptables -t nat -F "$ch" 2>/dev/null; iptables -t nat -X "$ch" 2>/dev/null || true
  fi
  if [ -n "$br" ] && ip link show "$br" >/dev/null 2>&1; then ip link del "$br" && log "deleted bridge $br"; fi
  if [ -n "$cg" ]; then
    for mnt in $(cgroup_mounts); do
      [ -d "$mnt/$cg" ] || continue
      WAIT_STEP=0.1 wait_until 2 "cgroup $mnt/$cg removed" cgroup_removed "$mnt/$cg" || failed=1
    done
  fi
  if grep -qF " $ND/" /proc/self/mounts; then
    log "WARNING: mounts left under $ND (not removing it):"; grep -F " $ND/" /proc/self/mounts >&2
  else
    rm -rf "$ND"
    log "removed $ND"
  fi
}

shopt -s nullglob
sel="${1:-all}"
if [ "$sel" = all ]; then dirs=("$RUN"/c*/node); else dirs=("$RUN/c$sel/node"); fi
for nd in "${dirs[@]}"; do [ -d "$nd" ] && node_down "$nd"; done

# machine-wide leftovers, only when no kubelet/kube-proxy runs here any more
if [ -z "$(procs_named kubelet)$(procs_named kube-proxy)" ]; then
  # KUBE-* chains (kubelet, kube-proxy) and the portmap plugin's CNI-HOSTPORT-*
  # / CNI-DN-* chains: drop the jumps from the built-in chains, flush, delete
  removed=0
  for t in filter nat mangle; do
    chains="$(iptables -t "$t" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[^ ]*\|CNI-HOSTPORT-[^ ]*\|CNI-DN-[^ ]*\)$/\1/p')"
    [ -n "$chains" ] || continue
    iptables -t "$t" -S 2>/dev/null | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) ' \
      | grep -E -- '-j (KUBE-|CNI-HOSTPORT-|CNI-DN-)' | sed 's/^-A/-D/' | while read -r rule; do
        eval "iptables -t $t $rule" 2>/dev/null || true
      done
    for ch in $chains; do iptables -t "$t" -F "$ch" 2>/dev/null || true; done
    for ch in $chains; do iptables -t "$t" -X "$ch" 2>/dev/null || true; done
    removed=1
  done
  [ "$removed" = 1 ] && log "removed KUBE-*/CNI-HOSTPORT-* iptables chains"
  if [ -f "$SYSCTL_ORIG" ]; then
    while IFS='=' read -r k v; do sysctl -qw "$k=$v" 2>/dev/null || true; done <"$SYSCTL_ORIG"
    log "restored sysctls recorded by node-up.sh: $(tr '\n' ' ' <"$SYSCTL_ORIG")"
    rm -f "$SYSCTL_ORIG"
  fi
fi
exit "$failed"
