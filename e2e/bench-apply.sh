#!/usr/bin/env bash
# e2e/bench-apply.sh [N] - whole-system benchmark on a real control plane.
#
# Applies N (default 100) R1Pipelines with `kubectl apply` and measures the
# time until every child (Deployment + Service) exists and every pipeline's
# status has caught up (observedGeneration == generation). Baseline, in the
# same run and on the same API server: N plain Deployments applied with
# kubectl, until the Deployment controller's status has caught up. Two
# rounds each, interleaved. Prints a table and the operator's memory.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100}"; ROUNDS="${ROUNDS:-2}"
export R1KUBE_RUN="${TMPDIR:-/tmp}/ratio1-kube-bench" R1KUBE_API_PORT=27443 R1KUBE_ETCD_PORT=21790
W="$R1KUBE_RUN/work"

log() { printf '[bench] %s\n' "$*" >&2; }
now() { date +%s.%N; }

bash e2e/kube/install.sh
log "building ratio1 (release)"
cargo build --release --locked --bin ratio1 >&2
BIN="${CARGO_TARGET_DIR:-target}/release/ratio1"
trap 'kill "${OP:-0}" 2>/dev/null || true; bash e2e/kube/down.sh' EXIT
KC=$(bash e2e/kube/up.sh 1 | tail -n1)
k() { kubectl --kubeconfig "$KC" "$@"; }
mkdir -p "$W"
k apply --server-side -f crds/ >/dev/null
for _ in $(seq 1 100); do k wait --for condition=established crd/r1pipelines.ratio1.ai >/dev/null 2>&1 && break; sleep 0.3; done
k create namespace ratio1-system >/dev/null
KUBECONFIG="$KC" "$BIN" operator --metrics-addr 127.0.0.1:19190 --identity bench --log-format json >"$W/operator.log" 2>&1 &
OP=$!
for _ in $(seq 1 100); do curl -sf 127.0.0.1:19190/readyz >/dev/null && break; sleep 0.2; done

gen_pipelines() { # ns
  for i in $(seq 1 "$N"); do cat <<Y
---
apiVersion: ratio1.ai/v1alpha1
kind: R1Pipeline
metadata: {name: p$i, namespace: $1}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: p$i}}
    spec:
      containers:
      - name: main
        image: nginx:1.27
        ports: [{name: http, containerPort: 8080}]
Y
  done
}
gen_deployments() { # ns
  for i in $(seq 1 "$N"); do cat <<Y
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d$i, namespace: $1}
spec:
  replicas: 2
  selector: {matchLabels: {app: d$i}}
  template:
    metadata: {labels: {app: d$i}}
    spec:
      containers:
      - name: main
        image: nginx:1.27
        ports: [{name: http, containerPort: 8080}]
Y
  done
}
# caught-up count: objects whose status.observedGeneration equals metadata.generation
caught_up() { # kind ns
  k get "$1" -n "$2" -o jsonpath='{range .items[*]}{.metadata.generation}={.status.observedGeneration}{"\n"}{end}' |
    awk -F= '$1==$2 && $1!=""' | wc -l
}
count() { k get "$1" -n "$2" -l app.kubernetes.io/managed-by=ratio1-operator --no-headers 2>/dev/null | wc -l; }

# Each run ends only when the Deployment controller has also caught up, so
# that no run's leftover work slows the next one down.
settle() { until [ "$(caught_up deployments "$1")" -ge "$N" ]; do sleep 0.1; done; }
run_plain() { # ns -> "seconds-until-all-exist seconds-until-status-caught-up"
  k create namespace "$1" >/dev/null
  gen_deployments "$1" >"$W/$1.yaml"
  local t0 t1; t0=$(now)
  k apply -f "$W/$1.yaml" >/dev/null
  t1=$(now)
  settle "$1"
  echo "$(echo "$t1 - $t0" | bc) $(echo "$(now) - $t0" | bc)"
}
run_operator() { # ns -> seconds until children exist and pipeline status caught up
  k create namespace "$1" >/dev/null
  gen_pipelines "$1" >"$W/$1.yaml"
  local t0 t1; t0=$(now)
  k apply -f "$W/$1.yaml" >/dev/null
  until [ "$(caught_up r1pipelines "$1")" -ge "$N" ] && [ "$(count deployments "$1")" -ge "$N" ] \
        && [ "$(count services "$1")" -ge "$N" ]; do sleep 0.1; done
  t1=$(now)
  settle "$1"
  echo "$(echo "$t1 - $t0" | bc) $(echo "$(now) - $t0" | bc)"
}

command -v bc >/dev/null || { apt-get install -y -qq bc >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq bc >/dev/null; }; }
plain_exist=(); plain_status=(); op=(); op_full=()
for r in $(seq 1 "$ROUNDS"); do
  log "round $r: $N Deployments with kubectl"
  read -r a b <<<"$(run_plain "plain-$r")"; plain_exist+=("$a"); plain_status+=("$b")
  log "round $r: $N R1Pipelines through the operator"
  read -r a b <<<"$(run_operator "op-$r")"; op+=("$a"); op_full+=("$b")
done
rss=$(awk '/VmRSS/{print $2}' "/proc/$OP/status"); hwm=$(awk '/VmHWM/{print $2}' "/proc/$OP/status")

mean() { printf '%s\n' "$@" | awk '{s+=$1} END {printf "%.2f", s/NR}'; }
ratio() { echo "scale=2; $1 / $2" | bc | sed 's/^\./0./'; }
pe=$(mean "${plain_exist[@]}"); ps=$(mean "${plain_status[@]}"); om=$(mean "${op[@]}"); of=$(mean "${op_full[@]}")
printf '\n%-58s %8s %9s %14s\n' "scenario (N=$N, mean of $ROUNDS rounds)" seconds "ratio" "rounds"
printf '%-58s %8s %9s %14s\n' "A: kubectl apply N Deployments, until all exist" "$pe" "1.00" "${plain_exist[*]}"
printf '%-58s %8s %9s %14s\n' "B: same, until the Deployment controller caught up" "$ps" "$(ratio "$ps" "$pe")" "${plain_status[*]}"
printf '%-58s %8s %9s %14s\n' "C: kubectl apply N R1Pipelines, until Deploy+Svc exist" "$om" "$(ratio "$om" "$pe")" "${op[*]}"
printf '%-58s %8s %9s %14s\n' "   and every R1Pipeline status caught up (vs A)" "" "" ""
printf '%-58s %8s %9s %14s\n' "D: C, until the Deployment controller caught up (vs B)" "$of" "$(ratio "$of" "$ps")" "${op_full[*]}"
printf '%-58s %s MiB (peak %s MiB)\n' "operator RSS after the run" "$((rss/1024))" "$((hwm/1024))"
