#!/usr/bin/env bash
# down.sh [--keep] - stop exactly the processes up.sh started (by the PIDs it
# recorded in the run dir; a PID is only signalled if it still runs the
# expected binary), after the worker nodes node-up.sh started (node-down.sh). Without --keep the run dir (etcd data, certs, logs,
# kubeconfigs) is removed afterwards.
#
# A process that is still there 5 s after SIGKILL is reported and makes the
# exit status 1 (the rest is still stopped and removed).
#
# Env: R1KUBE_RUN (default ${TMPDIR:-/tmp}/ratio1-kube),
#      R1KUBE_CACHE (default /var/cache/ratio1-kube)
set -euo pipefail
# shellcheck source=e2e/kube/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # wait_until, exited

RUN="${R1KUBE_RUN:-${TMPDIR:-/tmp}/ratio1-kube}"
CACHE="${R1KUBE_CACHE:-/var/cache/ratio1-kube}"
BIN="$CACHE/bin"
KEEP=0; [ "${1:-}" = "--keep" ] && KEEP=1
failed=0

log() { printf '[ratio1-kube down] %s\n' "$*" >&2; }

[ -d "$RUN" ] || { log "nothing to do ($RUN does not exist)"; exit 0; }

# stop PIDFILE BINNAME
stop() {
  local pidfile="$1" name="$2" pid
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$BIN/$name "; then
    kill -TERM "$pid" 2>/dev/null || true
    if ! WAIT_STEP=0.1 wait_until 10 "" exited "$pid" 2>/dev/null; then
      log "$name (pid $pid) did not stop on TERM within 10 s, sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      WAIT_STEP=0.1 wait_until 5 "$name (pid $pid) gone after SIGKILL" exited "$pid" || { failed=1; return 0; }
    fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

shopt -s nullglob
# worker nodes started by node-up.sh (kube-proxy, kubelet, pods, containerd,
# scheduler) first; they need root, as node-up.sh did
nodes=("$RUN"/c*/node)
if [ ${#nodes[@]} -gt 0 ]; then bash "$(dirname "${BASH_SOURCE[0]}")/node-down.sh" all || true; fi
for d in "$RUN"/c*/; do stop "$d/controller-manager.pid" kube-controller-manager; done
for d in "$RUN"/c*/; do stop "$d/apiserver.pid" kube-apiserver; done
stop "$RUN/etcd.pid" etcd

if [ "$KEEP" = 0 ]; then rm -rf "$RUN"; log "removed $RUN"; fi
exit "$failed"
