#!/usr/bin/env bash
# e2e/devnet.sh up [N] | down | status
#
# A local Ratio1 network on this machine: N (default 3) real Kubernetes
# control planes sharing one etcd (e2e/kube), one `ratio1 operator` per
# cluster, an R1Node each, and the samples from manifests/samples/ applied.
# Everything listens on 127.0.0.1. State lives in .devnet/ (gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
DEVNET="$ROOT/.devnet"
export R1KUBE_RUN="$DEVNET/kube"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/ratio1"

t0=$(date +%s)
step() { printf '[%4ss] %s\n' "$(( $(date +%s) - t0 ))" "$*" >&2; }
die() { printf 'devnet: %s\n' "$*" >&2; exit 1; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

status() {
  local n=0
  printf '\n%-8s %-16s %-54s %-6s %s\n' CLUSTER R1NODE PEER-ID READY KUBECONFIG
  for kc in "$R1KUBE_RUN"/c*/kubeconfig; do
    [ -f "$kc" ] || continue
    n=$((n+1)); c=$(basename "$(dirname "$kc")")
    kubectl --kubeconfig "$kc" get r1n -o jsonpath='{range .items[*]}{.metadata.name}{"|"}{.status.peerId}{"|"}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null |
      while IFS='|' read -r name peer ready; do printf '%-8s %-16s %-54s %-6s %s\n' "$c" "$name" "$peer" "$ready" "$kc"; done
  done
  [ "$n" -gt 0 ] || { echo "no devnet is running: e2e/devnet.sh up" >&2; return 1; }
  printf '\n%-8s %-14s %-8s %-8s %-6s %-8s %s\n' CLUSTER PIPELINE MODE REPLICAS READY CLUSTERS STATUS
  for kc in "$R1KUBE_RUN"/c*/kubeconfig; do
    c=$(basename "$(dirname "$kc")")
    kubectl --kubeconfig "$kc" get r1p -A -o jsonpath='{range .items[*]}{.metadata.name}{"|"}{.spec.mode}{"|"}{.spec.replicas}{"|"}{.status.readyReplicas}{"|"}{.status.clusters}{"|"}{.status.conditions[?(@.type=="Ready")].reason}{"\n"}{end}' |
      while IFS='|' read -r name mode rep ready cl reason; do printf '%-8s %-14s %-8s %-8s %-6s %-8s %s\n' "$c" "$name" "$mode" "$rep" "${ready:-0}" "${cl:-0}" "$reason"; done
  done
  printf '\n%-8s %-16s %-62s %s\n' CLUSTER MODEL CID READY
  for kc in "$R1KUBE_RUN"/c*/kubeconfig; do
    c=$(basename "$(dirname "$kc")")
    kubectl --kubeconfig "$kc" get r1m -A -o jsonpath='{range .items[*]}{.metadata.name}{"|"}{.status.cid}{"|"}{.status.conditions[?(@.type=="Ready")].reason}{"\n"}{end}' |
      while IFS='|' read -r name cid reason; do printf '%-8s %-16s %-62s %s\n' "$c" "$name" "${cid:--}" "$reason"; done
  done
}

up() {
  local n="${1:-3}"
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "usage: e2e/devnet.sh up [N>=1]"
  command -v kubectl >/dev/null || die "kubectl is needed (Debian: apt-get install kubectl, or any kubectl >= 1.20)"
  mkdir -p "$DEVNET"
  step "installing etcd, kube-apiserver and kube-controller-manager (first time: ~5 min build from Debian sources; cached after)"
  bash e2e/kube/install.sh
  step "building ratio1 (first time: ~8 min on 2 cores)"
  cargo build --locked --bin ratio1 2>&1 | grep -E '^(error|warning: unused)|Finished' | sed 's/^/        /' >&2
  [ -x "$BIN" ] || die "build failed: run cargo build --bin ratio1 to see why"
  step "starting etcd and $n Kubernetes control planes on 127.0.0.1"
  bash e2e/kube/up.sh "$n" >"$DEVNET/kubeconfigs"
  mapfile -t kcs <"$DEVNET/kubeconfigs"
  for i in $(seq 1 "$n"); do
    kc="${kcs[$((i-1))]}"; d="$DEVNET/c$i"; mkdir -p "$d"
    k() { kubectl --kubeconfig "$kc" "$@"; }
    step "cluster c$i: CRDs, namespace, license Secret"
    k apply --server-side --force-conflicts -f crds/ >/dev/null
    # (kubectl wait errors out while a new CRD has no conditions yet: retry)
    for _ in $(seq 1 100); do
      k wait --for condition=established --timeout=30s crd/r1nodes.ratio1.ai crd/r1pipelines.ratio1.ai crd/r1models.ratio1.ai \
        >/dev/null 2>&1 && break
      sleep 0.3
    done
    k create namespace ratio1-system --dry-run=client -o yaml | k apply -f - >/dev/null
    # The token is verified once dAuth is enabled; until then the node
    # reports Licensed=Unknown (AwaitingDAuth).
    k -n ratio1-system create secret generic r1node-license --from-literal=license="devnet-c$i" --dry-run=client -o yaml | k apply -f - >/dev/null
    if ! alive "$d/operator.pid"; then
      step "cluster c$i: starting ratio1 operator (log: $d/operator.log)"
      KUBECONFIG="$kc" setsid "$BIN" operator --namespace ratio1-system --metrics-addr "127.0.0.1:$((9090 + i - 1))" \
        --identity "devnet-c$i" >"$d/operator.log" 2>&1 </dev/null &
      echo $! >"$d/operator.pid"
    fi
    step "cluster c$i: applying manifests/samples"
    sed "s/^  name: local$/  name: node-c$i/" manifests/samples/r1node.yaml | k apply --server-side -f - >/dev/null
    for f in manifests/samples/r1model-*.yaml manifests/samples/r1pipeline-*.yaml; do k apply --server-side -f "$f" >/dev/null; done
  done
  step "waiting for every resource to report status"
  for i in $(seq 1 "$n"); do
    kc="${kcs[$((i-1))]}"
    for r in r1n/node-c$i; do
      kubectl --kubeconfig "$kc" wait --for condition=Ready --timeout=60s "$r" >/dev/null || die "c$i: $r not ready (see $DEVNET/c$i/operator.log)"
    done
    for r in r1p/sentiment-api r1p/embed-corpus r1m/sentiment-onnx r1m/llm-weights; do
      kubectl --kubeconfig "$kc" wait --for=jsonpath='{.status.observedGeneration}'=1 --timeout=60s -n default "$r" >/dev/null \
        || die "c$i: $r has no status (see $DEVNET/c$i/operator.log)"
    done
  done
  step "devnet is up"
  status
  cat <<EOF2

Try next:
  export KUBECONFIG=${kcs[0]}
  kubectl get r1n,r1p,r1m -A                  # the ratio1 resources (category: kubectl get ratio1)
  kubectl get deploy,svc,job -n default       # what the operator materialised
  kubectl patch r1p sentiment-api -n default --type merge -p '{"spec":{"replicas":4}}'
  kubectl describe r1p sentiment-api -n default
  curl -s 127.0.0.1:9090/metrics | grep ratio1_
  e2e/devnet.sh status                        # these tables again
  e2e/devnet.sh down                          # stop everything
EOF2
}

down() {
  for pf in "$DEVNET"/c*/operator.pid; do
    [ -f "$pf" ] || continue
    if alive "$pf"; then kill -TERM "$(cat "$pf")"; step "stopped operator $(basename "$(dirname "$pf")")"; fi
    rm -f "$pf"
  done
  bash e2e/kube/down.sh
  rm -rf "$DEVNET"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  status) status ;;
  *) echo "usage: e2e/devnet.sh up [N] | down | status" >&2; exit 2 ;;
esac
