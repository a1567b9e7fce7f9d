#!/usr/bin/env bash
# e2e/bench-run.sh - how long until pods run, on a real control plane with
# a real worker node (kubelet + containerd), and how long `devnet up` takes.
#
# 1. Apply-to-pods-Ready: `kubectl apply` of an R1Pipeline (Service mode,
#    REPLICAS replicas of the model server, readiness probe every 1 s) until
#    its pods are Ready (the Deployment the operator made reports
#    readyReplicas = REPLICAS), and until the R1Pipeline itself says
#    Ready=True. Baseline in the same run, same node, same template: the
#    equivalent Deployment applied directly. ROUNDS rounds, interleaved
#    (the order alternates). The operator is the release binary, on the host.
# 2. `e2e/devnet.sh up` (3 clusters + nodes + operators + samples, until
#    the samples run) from nothing running (build caches warm), then again
#    on the running devnet; then `devnet.sh down`. Skipped with DEVNET=0.
#    The devnet must not be running already (it would be torn down).
#
# Prints a table. Every wait has a deadline and fails the script loudly.
# Needs root (worker nodes). Env: ROUNDS (5), REPLICAS (2), DEVNET (1).
set -euo pipefail
shopt -s inherit_errexit   # a failed wait inside $(...) fails the script too
cd "$(dirname "$0")/.."
. e2e/kube/lib.sh   # wait_until, quiet, running
ROUNDS="${ROUNDS:-5}"; REPLICAS="${REPLICAS:-2}"; DEVNET="${DEVNET:-1}"
export R1KUBE_RUN="${TMPDIR:-/tmp}/ratio1-kube-benchrun" R1KUBE_API_PORT=28443 R1KUBE_ETCD_PORT=28790
export R1KUBE_POD_NET=10.225 R1KUBE_NODE_PORT=22250
W="$R1KUBE_RUN/work"
BIN="${CARGO_TARGET_DIR:-target}/release/ratio1"

log() { printf '[bench-run] %s\n' "$*" >&2; }
die() { printf '[bench-run] FAILED: %s\n' "$*" >&2; exit 1; }
ms() { date +%s%3N; }

[ "$(id -u)" = 0 ] || die "needs root (the worker node)"
if [ "$DEVNET" = 1 ] && [ -d .devnet/kube ]; then die "a devnet is running (.devnet/kube): stop it (e2e/devnet.sh down) or run with DEVNET=0"; fi
bash e2e/kube/node-install.sh
log "building ratio1 (release)"
bash e2e/tools/protoc.sh >/dev/null
cargo build --release --locked --bin ratio1 >&2
bash e2e/images.sh build samples
trap 'kill "${OP:-0}" 2>/dev/null || true; bash e2e/kube/down.sh' EXIT
KC=$(bash e2e/kube/up.sh 1 | tail -n1)
mkdir -p "$W"
bash e2e/kube/node-up.sh 1 >/dev/null 2>"$W/node-up.log" || { cat "$W/node-up.log" >&2; die "node-up.sh failed"; }
NODE_MS=$(sed -n 's/.*Ready in \([0-9]*\)ms.*/\1/p' "$W/node-up.log")
bash e2e/images.sh import samples
k() { kubectl --kubeconfig "$KC" "$@"; }
k apply --server-side -f crds/ >/dev/null
# (kubectl wait errors out while a new CRD has no conditions yet: retry)
wait_until 60 "CRD r1pipelines.ratio1.ai established" \
  quiet k wait --for condition=established --timeout=10s crd/r1pipelines.ratio1.ai
k create namespace ratio1-system >/dev/null
k create namespace bench >/dev/null
# (pods of a namespace without its default ServiceAccount are refused)
wait_until 30 "ServiceAccount bench/default created" quiet k -n bench get sa default
KUBECONFIG="$KC" "$BIN" operator --metrics-addr 127.0.0.1:19290 --identity bench-run --log-format json >"$W/operator.log" 2>&1 &
OP=$!
op_ready() {
  running "$OP" || { tail -n 20 "$W/operator.log" >&2; die "operator exited (log: $W/operator.log)"; }
  quiet curl -sf -m 2 127.0.0.1:19290/readyz
}
wait_until 30 "operator ready on 127.0.0.1:19290" op_ready

template() { cat <<Y
    metadata: {labels: {app: $1}}
    spec:
      containers:
      - name: server
        image: ratio1.local/model-server:0.1
        imagePullPolicy: Never
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
Y
}
deployment() { printf 'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: %s, namespace: bench}\nspec:\n  replicas: %s\n  selector: {matchLabels: {app: %s}}\n  template:\n' "$1" "$REPLICAS" "$1"; template "$1"; }
pipeline() { printf 'apiVersion: ratio1.ai/v1alpha1\nkind: R1Pipeline\nmetadata: {name: %s, namespace: bench}\nspec:\n  mode: Service\n  replicas: %s\n  template:\n' "$1" "$REPLICAS"; template "$1"; }

# wait_pods T0 NAME: ms since T0 when Deployment NAME reports all replicas ready
pods_ready() { [ "$(k -n bench get deploy "$1" -o jsonpath='{.status.readyReplicas}' 2>/dev/null)" = "$REPLICAS" ]; }
wait_pods() {
  local t0="$1" name="$2"
  WAIT_STEP=0.05 wait_until 120 "pods of $name Ready" pods_ready "$name" || { k -n bench get pods -o wide >&2; exit 1; }
  echo $(( $(ms) - t0 ))
}
wait_pipeline() {
  local t0="$1" name="$2"
  k -n bench wait --for=condition=Ready --timeout=120s "r1p/$name" >/dev/null || die "R1Pipeline $name not Ready within 120 s"
  echo $(( $(ms) - t0 ))
}
run_deployment() { local t0; t0=$(ms); deployment "$1" | k apply -f - >/dev/null; wait_pods "$t0" "$1"; }
run_pipeline() {
  local t0 pods ready
  t0=$(ms); pipeline "$1" | k apply -f - >/dev/null
  pods=$(wait_pods "$t0" "$1"); ready=$(wait_pipeline "$t0" "$1")
  echo "$pods $ready"
}
cleanup() {
  k -n bench delete r1p --all --wait=true --timeout=60s >/dev/null || die "R1Pipelines not deleted"
  k -n bench delete deploy --all --wait=true --timeout=60s >/dev/null || die "Deployments not deleted"
  k -n bench wait --for=delete pod --all --timeout=60s >/dev/null 2>&1 || true
  [ -z "$(k -n bench get pods -o name)" ] || die "pods left after a round"
}

# warm-up (first pod on a fresh node pays for the image unpack)
run_deployment warm >/dev/null; cleanup

declare -a D P S
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    d=$(run_deployment "dep$r"); out=$(run_pipeline "pipe$r")
  else
    out=$(run_pipeline "pipe$r"); d=$(run_deployment "dep$r")
  fi
  p=${out% *}; s=${out#* }
  D+=("$d"); P+=("$p"); S+=("$s")
  log "round $r: Deployment ${d} ms, R1Pipeline pods ${p} ms, R1Pipeline Ready ${s} ms"
  cleanup
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }
md=$(median "${D[@]}"); mp=$(median "${P[@]}"); ms_=$(median "${S[@]}")
RSS=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$OP/status")
kill "$OP"
WAIT_STEP=0.1 wait_until 30 "operator exits on SIGTERM" exited "$OP" || kill -KILL "$OP"
wait "$OP" 2>/dev/null || true; OP=0
bash e2e/kube/down.sh 2>/dev/null; trap - EXIT

if [ "$DEVNET" = 1 ]; then
  log "devnet up (first: nothing running; build caches warm)"
  DL="${TMPDIR:-/tmp}/ratio1-bench-run-devnet"
  t0=$(ms); bash e2e/devnet.sh up >"$DL.1.log" 2>&1 || { tail -n 30 "$DL.1.log" >&2; die "devnet up failed"; }; DV1=$(( $(ms) - t0 ))
  log "devnet up (second: on the running devnet)"
  t0=$(ms); bash e2e/devnet.sh up >"$DL.2.log" 2>&1 || { tail -n 30 "$DL.2.log" >&2; die "second devnet up failed"; }; DV2=$(( $(ms) - t0 ))
  t0=$(ms); bash e2e/devnet.sh down >/dev/null 2>&1 || die "devnet down failed"; DVD=$(( $(ms) - t0 ))
fi

printf '\n## bench-run: apply -> pods Ready (%s replicas, %s rounds, 1 worker node; medians)\n\n' "$REPLICAS" "$ROUNDS"
printf '| what | median ms | rounds (ms) |\n|---|---:|---|\n'
printf '| Deployment applied directly: pods Ready | %s | %s |\n' "$md" "${D[*]}"
printf '| R1Pipeline applied: its pods Ready | %s | %s |\n' "$mp" "${P[*]}"
printf '| R1Pipeline applied: R1Pipeline Ready=True | %s | %s |\n' "$ms_" "${S[*]}"
printf '| ratio pods Ready, R1Pipeline / Deployment | %s | goal <= 1.2 |\n' "$(awk -v a="$mp" -v b="$md" 'BEGIN {printf "%.2f", a/b}')"
printf '| ratio R1Pipeline Ready / Deployment pods Ready | %s | |\n' "$(awk -v a="$ms_" -v b="$md" 'BEGIN {printf "%.2f", a/b}')"
printf '| worker node Ready after node-up.sh | %s | |\n' "$NODE_MS"
printf '| operator RSS after the rounds (MiB) | %s | |\n' "$RSS"
if [ "$DEVNET" = 1 ]; then
  printf '| devnet up, first (3 clusters, nodes, operators, samples running) | %s | |\n' "$DV1"
  printf '| devnet up, second (already running) | %s | |\n' "$DV2"
  printf '| devnet down | %s | |\n' "$DVD"
fi
