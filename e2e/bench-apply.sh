#!/usr/bin/env bash
# e2e/bench-apply.sh [SIZE[:ROUNDS]...] - whole-system benchmark of the
# operator's apply path on a real control plane (etcd, kube-apiserver and
# kube-controller-manager on 127.0.0.1; no worker node: nothing measured
# here needs a pod to run).
#
# Every SIZE N (default: 100 1000) gets a control plane and an operator of
# its own (fresh etcd: no size sees another's objects or load) and ROUNDS
# rounds (default 2; `1000:1` = one round for that size), each on fresh
# namespaces. Each scenario is one `kubectl apply` of all N objects, timed
# from its start:
#   A  apply N plain Deployments: all exist (kubectl apply returned)
#   B  A, until the Deployment controller caught up on all N
#      (status.observedGeneration == metadata.generation)
#   C  apply N R1Pipelines: every child Deployment and Service exists and
#      every R1Pipeline's status caught up (seen on a watch: no poll
#      loads the API server in the window A is compared with)
#   D  C, until the Deployment controller caught up on the N children
#   E  edit the N Deployments of A (an env var of the pod template) until
#      the Deployment controller caught up
#   F  the same edit of the N R1Pipelines of C, until every child
#      Deployment's pod template carries it and every R1Pipeline's status
#      caught up
#   G  F, until the Deployment controller caught up on the children
# Each scenario ends only once the Deployment controller has caught up, so
# no scenario's leftover work slows the next one; within a round the plain
# and the operator scenarios take turns going first.
#
# The operator's cost per size, over the C+D and the F+G windows (from its
# /metrics before the apply and after the window, once its reconcile
# counter stood still for 1 s; CPU from /proc/PID/stat), summed over the
# rounds:
#   rec/pipe   R1Pipeline reconciles per pipeline
#              (ratio1_reconciles_total{kind="R1Pipeline"})
#   req/rec    API requests per R1Pipeline reconcile
#              (ratio1_kube_requests_total, every verb but watch)
#   req/pipe   API requests per pipeline, and the same by verb
#   CPU s      operator CPU seconds (utime + stime) per round
# "n/a" where the binary has no such counter (older builds). Then its RSS
# after the size's rounds and its peak RSS (VmRSS, VmHWM), MiB.
#
# Output: progress on stderr; at the end one table on stdout:
#   a header (date, binary and its sha256 prefix, rounds, replicas, cores,
#   load average), per size and scenario the mean seconds, the ratio to
#   the baseline of the same size in the same run (the machine is noisy:
#   compare ratios, not seconds; C/A, D/B, F/E, G/E, and B/A), and every
#   round's seconds; then the operator's cost rows and RSS.
# Every wait has a deadline (scenarios: 60 s + 0.5 s per object) and a miss
# fails the run with one line: scenario, size, round, how far it got.
# Logs (operator log per size, manifests) stay in $TMPDIR/ratio1-bench-apply.
#
# Env:
#   ROUNDS      rounds per size (default 2). One round of 1000 takes about
#               14 min (B, D, E and G wait for the Deployment controller,
#               whose client is limited to 20 requests/s: ~5 Deployments/s);
#               for a shorter run: `100 1000:1`.
#   RATIO1_BIN  the operator binary to measure (default: build this
#               checkout's release binary). Measure two builds with two
#               runs and compare their ratios.
#   REPLICAS    replicas of every Deployment and R1Pipeline (default 0).
#               There is no node here: pods never start, and the operator
#               re-checks every pipeline whose pods are pending every 5 s,
#               which would pile up from round to round and land in every
#               later scenario; REPLICAS=2 measures that too.
#   OP_ARGS     extra operator arguments (default "--resync-secs 3600":
#               no periodic drift check of earlier rounds' pipelines lands
#               in a later scenario's window)
# Own control plane: run dir $TMPDIR/ratio1-kube-bench, API port 27443,
# etcd 21790 (+10), operator metrics 127.0.0.1:19190, Service range
# 10.0.0.0/16 (every R1Pipeline makes a ClusterIP Service: up.sh's default
# /24 holds 254). Torn down on exit.
set -euo pipefail
shopt -s inherit_errexit   # a failure inside $(...) fails the script too
cd "$(dirname "$0")/.."
. e2e/kube/lib.sh   # wait_until, quiet, running, port_busy

SIZES=("$@"); [ ${#SIZES[@]} -gt 0 ] || SIZES=(100 1000)
ROUNDS="${ROUNDS:-2}"; REPLICAS="${REPLICAS:-0}"
OP_ARGS="${OP_ARGS---resync-secs 3600}"
export R1KUBE_RUN="${TMPDIR:-/tmp}/ratio1-kube-bench" R1KUBE_API_PORT=27443 R1KUBE_ETCD_PORT=21790
export R1KUBE_SERVICE_CIDR=10.0.0.0/16
WORK="${TMPDIR:-/tmp}/ratio1-bench-apply"
METRICS=127.0.0.1:19190

log() { printf '[bench-apply] %s\n' "$*" >&2; }
die() { printf '%s: FAILED: %s\n' "${0##*/}" "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.2f", b - a}'; }

seen=" "
for s in "${SIZES[@]}"; do
  [[ "$s" =~ ^[1-9][0-9]*(:[1-9][0-9]*)?$ ]] || die "usage: $0 [SIZE[:ROUNDS]...] (got '$s')"
  case "$seen" in *" ${s%%:*} "*) die "size ${s%%:*} given twice" ;; esac
  seen+="${s%%:*} "
done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number"
[[ "$REPLICAS" =~ ^[0-9]+$ ]] || die "REPLICAS must be a number"
read -ra op_args <<<"$OP_ARGS"

bash e2e/kube/install.sh
if [ -n "${RATIO1_BIN:-}" ]; then
  [ -x "$RATIO1_BIN" ] || die "RATIO1_BIN=$RATIO1_BIN is not an executable file"
  BIN="$RATIO1_BIN"
else
  log "building ratio1 (release)"
  bash e2e/tools/protoc.sh >/dev/null
  cargo build --release --locked --bin ratio1 >&2
  BIN="${CARGO_TARGET_DIR:-target}/release/ratio1"
fi
BIN="$(realpath "$BIN")"
BIN_SUM="$(sha256sum "$BIN" | cut -c1-12)"
command -v kubectl >/dev/null || die "kubectl not found"

# A control plane left in this run dir by a killed run: ours, stop it.
bash e2e/kube/down.sh 2>/dev/null
port_busy 127.0.0.1 "${METRICS#*:}" && die "port ${METRICS#*:} (operator metrics) is in use"
rm -rf "$WORK"; mkdir -p "$WORK"

OP=""; OPLOG=""; KC=""
k() { kubectl --kubeconfig "$KC" --request-timeout=120s "$@"; }
op_running() { [ -n "$OP" ] && running "$OP"; }
op_alive() { # (inside waits) the operator has not crashed or exited
  op_running || { tail -n 20 "$OPLOG" >&2; die "the operator (pid $OP) exited (log: $OPLOG)"; }
}
op_stop() {
  [ -n "$OP" ] || return 0
  if op_running; then
    kill -TERM "$OP" 2>/dev/null || true
    WAIT_STEP=0.1 wait_until 30 "operator (pid $OP) exits on SIGTERM" exited "$OP" || kill -KILL "$OP" 2>/dev/null || true
  fi
  wait "$OP" 2>/dev/null || true
  OP=""
}
teardown() { op_stop; bash e2e/kube/down.sh >/dev/null 2>&1 || log "e2e/kube/down.sh failed: R1KUBE_RUN=$R1KUBE_RUN bash e2e/kube/down.sh"; }
trap teardown EXIT
trap 'exit 130' INT TERM

cluster_up() { # N: control plane, CRDs, operator
  log "N=$1: starting etcd, kube-apiserver, kube-controller-manager"
  KC="$(bash e2e/kube/up.sh 1 | tail -n1)"
  k apply --server-side -f crds/ >/dev/null
  # (kubectl wait errors out while a new CRD has no conditions yet: retry)
  wait_until 60 "CRD r1pipelines.ratio1.ai established" \
    quiet k wait --for condition=established --timeout=10s crd/r1pipelines.ratio1.ai
  k create namespace ratio1-system >/dev/null
  OPLOG="$WORK/operator-N$1.log"
  KUBECONFIG="$KC" "$BIN" operator --metrics-addr "$METRICS" --identity bench --log-format json "${op_args[@]}" >"$OPLOG" 2>&1 &
  OP=$!
  wait_until 60 "operator ready on http://$METRICS/readyz" ready \
    || { tail -n 20 "$OPLOG" >&2; exit 1; }
}
ready() { op_alive; quiet curl -sf -m 2 "http://$METRICS/readyz"; }
cluster_down() {
  op_stop
  bash e2e/kube/down.sh >/dev/null 2>"$WORK/down.log" || { cat "$WORK/down.log" >&2; die "e2e/kube/down.sh failed (above)"; }
}

# ------------------------------------------------------------------ objects
# Pod template of every object; EDIT is the value of the env var an edit changes.
template() { # app edit
  cat <<Y
  template:
    metadata: {labels: {app: $1}}
    spec:
      containers:
      - name: main
        image: nginx:1.27
        env: [{name: BENCH_EDIT, value: "$2"}]
        ports: [{name: http, containerPort: 8080}]
Y
}
gen_pipelines() { # ns edit
  local i
  for i in $(seq 1 "$N"); do
    printf -- '---\napiVersion: ratio1.ai/v1alpha1\nkind: R1Pipeline\nmetadata: {name: p%s, namespace: %s}\nspec:\n  replicas: %s\n' "$i" "$1" "$REPLICAS"
    template "p$i" "$2"
  done
}
gen_deployments() { # ns edit
  local i
  for i in $(seq 1 "$N"); do
    printf -- '---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d%s, namespace: %s}\nspec:\n  replicas: %s\n  selector: {matchLabels: {app: d%s}}\n' "$i" "$1" "$REPLICAS" "$i"
    template "d$i" "$2"
  done
}

# ------------------------------------------------------------------ checks
# Objects of KIND in NS whose status.observedGeneration equals metadata.generation
caught_up() { # kind ns
  k get "$1" -n "$2" -o jsonpath='{range .items[*]}{.metadata.generation}={.status.observedGeneration}{"\n"}{end}' |
    awk -F= '$1 == $2 && $1 != "" {n++} END {print n + 0}'
}
children() { # kind ns: the operator's children of that kind
  k get "$1" -n "$2" -l app.kubernetes.io/managed-by=ratio1-operator -o name | awk 'END {print NR}'
}
# Deployments in NS whose pod template has BENCH_EDIT=value
carrying() { # ns value
  k get deployments -n "$1" -o jsonpath='{range .items[*]}{.spec.template.spec.containers[0].env[0].value}{"\n"}{end}' |
    awk -v v="$2" '$0 == v {n++} END {print n + 0}'
}
# Wait checks. Each sets WAIT_PROGRESS (how far it got: wait_until appends
# it to its failure line) and fails the run if the operator died.
deployments_caught_up() { # ns
  op_alive
  local n; n=$(caught_up deployments "$1") || n="?"
  WAIT_PROGRESS="$n of $N Deployments caught up"
  [ "$n" = "$N" ]
}
pipelines_applied() { # ns
  op_alive
  local p d=- s=-
  p=$(caught_up r1pipelines "$1") || p="?"
  if [ "$p" = "$N" ]; then
    d=$(children deployments "$1") || d="?"
    s=$(children services "$1") || s="?"
  fi
  WAIT_PROGRESS="$p of $N R1Pipeline statuses caught up; Deployments: $d, Services: $s of $N"
  [ "$p" = "$N" ] && [ "$d" = "$N" ] && [ "$s" = "$N" ]
}
pipelines_edited() { # ns value
  op_alive
  local p c=-
  p=$(caught_up r1pipelines "$1") || p="?"
  [ "$p" = "$N" ] && { c=$(carrying "$1" "$2") || c="?"; }
  WAIT_PROGRESS="$p of $N R1Pipeline statuses caught up; $c of $N children carry the edit"
  [ "$p" = "$N" ] && [ "$c" = "$N" ]
}
# Scenario C's end, seen on one watch rather than a poll: a poll lists all
# N objects every step (and starts a kubectl), loading the machine during
# the very window it measures, while A, the baseline, ends when kubectl
# apply returns. C's log line also says when its kubectl apply returned:
# what is left after it is the operator's tail.
# watch_start KIND NS starts the watch and a reader of its lines in the
# background, and returns once the watch is set up (kubectl -v=6 logs the
# watch request when the API server answered it; the namespace is new, so
# every object comes after that, as an event); once all N objects have
# status.observedGeneration == metadata.generation, the reader writes the
# time to $WORK/watch.done. watch_wait WHAT waits for it until $DEADLINE
# and stops the watch.
watch_start() { # kind ns
  local fifo="$WORK/watch.fifo"
  rm -f "$fifo" "$WORK/watch.done"; mkfifo "$fifo"
  # (kubectl itself, so that kill stops it; no request timeout: a watch
  # may outlast the 120 s of every other request)
  kubectl --kubeconfig "$KC" --request-timeout=0 -v=6 get "$1" -n "$2" --watch \
    -o jsonpath='{.metadata.name}={.metadata.generation}={.status.observedGeneration}{"\n"}' >"$fifo" 2>"$WORK/watch.err" &
  WATCH_PID=$!
  watch_read <"$fifo" &
  READER_PID=$!
  WAIT_STEP=0.05 wait_until 30 "a watch on $1 in $2 set up" watch_ready
}
# Line by line (awk would read ahead in blocks, and see the last lines
# only when kubectl exits). The initial list prints as lines with no name.
watch_read() {
  local -A at=()
  local name gen obs
  while [ ${#at[@]} -lt "$N" ] && IFS='=' read -r name gen obs; do
    [ -n "$name" ] || continue
    if [ -n "$gen" ] && [ "$gen" = "$obs" ]; then at[$name]=1; else unset "at[$name]"; fi
  done
  [ ${#at[@]} -ge "$N" ] && now >"$WORK/watch.done"
}
watch_ready() {
  grep -q 'watch=true.* 200 OK' "$WORK/watch.err" 2>/dev/null && return 0
  running "$WATCH_PID" || die "the watch ended before it was set up: $(tail -n1 "$WORK/watch.err")"
  return 1
}
watch_finished() {
  op_alive
  [ -s "$WORK/watch.done" ] && return 0
  running "$READER_PID" || die "the watch ended before every status caught up: $(grep -v '^I' "$WORK/watch.err" | tail -n1)"
  WAIT_PROGRESS="statuses still catching up"
  return 1
}
watch_wait() { # what
  local rc=0
  WAIT_STEP=0.1 wait_until "$DEADLINE" "$1" watch_finished || rc=1
  kill "$WATCH_PID" "$READER_PID" 2>/dev/null || true
  wait "$WATCH_PID" "$READER_PID" 2>/dev/null || true
  rm -f "$WORK/watch.fifo"
  return $rc
}
reconciles_still() { # (after a window) the reconcile counter did not move for WAIT_STEP
  op_alive
  scrape
  [ "$M_REC" = "${PREV_REC:-}" ] && return 0
  PREV_REC="$M_REC"; WAIT_PROGRESS="reconciles still counting: $M_REC"; return 1
}

# ------------------------------------------------------------------ operator cost
# scrape: M_REC (R1Pipeline reconciles; a series appears at its first
# count, so none is 0), M_VERBS ("verb=count ..." of
# ratio1_kube_requests_total, "na" while it has no series: a binary
# without it, as by the time the operator is ready it made requests)
scrape() {
  local m
  m="$(curl -sf -m 10 "http://$METRICS/metrics")" || die "cannot read http://$METRICS/metrics"
  read -r M_REC M_VERBS < <(printf '%s\n' "$m" | awk '
    /^ratio1_reconciles_total[{]/ && /kind="R1Pipeline"/ {rec = $NF}
    /^ratio1_kube_requests_total[{]/ && match($0, /verb="[^"]*"/) {
      c[substr($0, RSTART + 6, RLENGTH - 7)] += $NF; hq = 1
    }
    END {
      printf "%d", rec
      if (!hq) printf " na"
      else for (v in c) printf " %s=%d", v, c[v]
      print ""
    }')
}
cpu_ticks() { sed 's/.*) //' "/proc/$OP/stat" | awk '{print $12 + $13}'; }
CLK_TCK="$(getconf CLK_TCK)"
# A window's deltas are added to the size's and phase's totals:
# P_REC[N:phase], P_VERB[N:phase:verb], P_CPU[N:phase] (ticks);
# P_VERB[N:phase:na]: no requests counter.
declare -A P_REC P_VERB P_CPU
window_start() { scrape; W_REC="$M_REC"; W_VERBS="$M_VERBS"; W_CPU="$(cpu_ticks)"; }
window_end() { # phase
  PREV_REC=""
  WAIT_STEP=1 wait_until $((30 + N / 20)) "N=$N: operator idle after $1 (reconcile counter still for 1 s)" reconciles_still
  local cpu v kv b before
  cpu="$(cpu_ticks)"
  P_CPU[$N:$1]=$(( ${P_CPU[$N:$1]:-0} + cpu - W_CPU ))
  P_REC[$N:$1]=$(( ${P_REC[$N:$1]:-0} + M_REC - W_REC ))
  if [ "$M_VERBS" = na ]; then P_VERB[$N:$1:na]=1; return; fi
  for kv in $M_VERBS; do
    v="${kv%%=*}"; before=0
    for b in $W_VERBS; do [ "${b%%=*}" = "$v" ] && before="${b#*=}"; done
    P_VERB[$N:$1:$v]=$(( ${P_VERB[$N:$1:$v]:-0} + ${kv#*=} - before ))
  done
}

# ------------------------------------------------------------------ scenarios
# Each sets R_<scenario> (seconds) for the round and appends to S[<size>:<scenario>].
declare -A S
record() { S[$N:$1]="${S[$N:$1]:-}${S[$N:$1]:+ }$2"; log "N=$N round $R: $1 ${2}s"; }
plain_create() {
  local ns="plain-$R" t0 a
  k create namespace "$ns" >/dev/null
  gen_deployments "$ns" v0 >"$WORK/N$N-$ns.yaml"
  t0=$(now)
  k apply -f "$WORK/N$N-$ns.yaml" >/dev/null
  a=$(since "$t0")
  WAIT_STEP=$STEP wait_until "$DEADLINE" "N=$N round $R, B: $N Deployments applied, Deployment controller caught up" \
    deployments_caught_up "$ns"
  record A "$a"; record B "$(since "$t0")"
}
operator_create() {
  local ns="op-$R" t0 end
  k create namespace "$ns" >/dev/null
  gen_pipelines "$ns" v0 >"$WORK/N$N-$ns.yaml"
  window_start
  watch_start r1pipelines "$ns"
  t0=$(now)
  k apply -f "$WORK/N$N-$ns.yaml" >/dev/null
  log "N=$N round $R: C's kubectl apply returned after $(since "$t0")s"
  watch_wait "N=$N round $R, C: $N R1Pipelines applied, statuses caught up"
  # Children are applied before a status is written: they exist by then
  # (else C ends when they do).
  end="$(cat "$WORK/watch.done")"
  if ! pipelines_applied "$ns"; then
    WAIT_STEP=$STEP wait_until "$DEADLINE" "N=$N round $R, C: $N R1Pipelines applied, children exist and statuses caught up" \
      pipelines_applied "$ns"
    end="$(now)"
  fi
  record C "$(awk -v a="$t0" -v b="$end" 'BEGIN {printf "%.2f", b - a}')"
  WAIT_STEP=$STEP wait_until "$DEADLINE" "N=$N round $R, D: the Deployment controller caught up on $N children" \
    deployments_caught_up "$ns"
  record D "$(since "$t0")"
  window_end create
}
plain_edit() {
  local ns="plain-$R" t0
  gen_deployments "$ns" v1 >"$WORK/N$N-$ns-edit.yaml"
  t0=$(now)
  k apply -f "$WORK/N$N-$ns-edit.yaml" >/dev/null
  WAIT_STEP=$STEP wait_until "$DEADLINE" "N=$N round $R, E: $N Deployments edited, Deployment controller caught up" \
    deployments_caught_up "$ns"
  record E "$(since "$t0")"
}
operator_edit() {
  local ns="op-$R" t0
  gen_pipelines "$ns" v1 >"$WORK/N$N-$ns-edit.yaml"
  window_start
  t0=$(now)
  k apply -f "$WORK/N$N-$ns-edit.yaml" >/dev/null
  WAIT_STEP=$STEP wait_until "$DEADLINE" "N=$N round $R, F: $N R1Pipelines edited, every child carries the edit and statuses caught up" \
    pipelines_edited "$ns" v1
  record F "$(since "$t0")"
  WAIT_STEP=$STEP wait_until "$DEADLINE" "N=$N round $R, G: the Deployment controller caught up on $N edited children" \
    deployments_caught_up "$ns"
  record G "$(since "$t0")"
  window_end edit
}

# ------------------------------------------------------------------ run
declare -A RSS HWM NR
LOAD0="$(cut -d' ' -f1-3 /proc/loadavg)"; DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
for size in "${SIZES[@]}"; do
  N="${size%%:*}"; rounds="$ROUNDS"; [ "$size" != "$N" ] && rounds="${size#*:}"
  NR[$N]="$rounds"
  DEADLINE=$((60 + N / 2))
  STEP=$(awk -v n="$N" 'BEGIN {printf "%.2f", 0.1 + n / 2500}')   # polls list all N objects: fewer when N is large
  cluster_up "$N"
  for R in $(seq 1 "$rounds"); do
    log "N=$N round $R of $rounds: create (A, B / C, D), then edit (E / F, G)"
    if [ $((R % 2)) = 1 ]; then plain_create; operator_create; plain_edit; operator_edit
    else operator_create; plain_create; operator_edit; plain_edit; fi
  done
  RSS[$N]=$(awk '/^VmRSS/ {print int($2 / 1024)}' "/proc/$OP/status")
  HWM[$N]=$(awk '/^VmHWM/ {print int($2 / 1024)}' "/proc/$OP/status")
  cluster_down
done

# ------------------------------------------------------------------ table
mean() { printf '%s\n' "$@" | awk '{s += $1} END {printf "%.2f", s / NR}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN {if (a != "na" && b != "na" && b > 0) printf "%.2f", a / b; else print "n/a"}'; }
desc() {
  case "$1" in
    A) echo "apply N Deployments: all exist" ;;
    B) echo "A, until the Deployment controller caught up" ;;
    C) echo "apply N R1Pipelines: children exist, status caught up" ;;
    D) echo "C, until the Deployment controller caught up" ;;
    E) echo "edit N Deployments, until the controller caught up" ;;
    F) echo "edit N R1Pipelines: children carry it, status caught up" ;;
    G) echo "F, until the Deployment controller caught up" ;;
  esac
}
base() { case "$1" in A|B|C) echo A ;; D) echo B ;; E|F|G) echo E ;; esac; }
{
  printf '\n## bench-apply, %s: %s (sha256 %s)\n' "$DATE" "$BIN" "$BIN_SUM"
  printf '## replicas %s, operator args "%s", %s cores, load average %s at start, %s at end\n\n' \
    "$REPLICAS" "$OP_ARGS" "$(nproc)" "$LOAD0" "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf '%6s %-2s %-56s %7s %6s %4s  %s\n' N "" "scenario (seconds from the start of the apply)" "mean s" ratio of "rounds (s)"
  for size in "${SIZES[@]}"; do
    N="${size%%:*}"
    for sc in A B C D E F G; do
      # shellcheck disable=SC2086  # (the rounds' values, one word each)
      m=$(mean ${S[$N:$sc]}); b=$(base "$sc")
      # shellcheck disable=SC2086
      printf '%6s %-2s %-56s %7s %6s %4s  %s\n' "$N" "$sc" "$(desc "$sc")" "$m" "$(ratio "$m" "$(mean ${S[$N:$b]})")" "$b" "${S[$N:$sc]}"
    done
  done
  printf '\n%6s %-13s %6s %8s %8s %8s %9s  %s\n' N "operator in" rounds rec/pipe req/rec req/pipe "CPU s/rd" "requests per pipeline by verb"
  for size in "${SIZES[@]}"; do
    N="${size%%:*}"; r="${NR[$N]}"
    for ph in create edit; do
      req=na; verbs="n/a"
      if [ -z "${P_VERB[$N:$ph:na]:-}" ]; then
        req=0; verbs=""
        for key in "${!P_VERB[@]}"; do
          [ "${key%:*}" = "$N:$ph" ] || continue
          v="${key##*:}"
          [ "$v" = watch ] || req=$(( req + P_VERB[$key] ))
          verbs+="$v $(div "${P_VERB[$key]}" $((N * r))) "
        done
        verbs="$(printf '%s' "$verbs" | xargs -n2 | sort | paste -sd' ')"
      fi
      label="C+D (create)"; [ "$ph" = edit ] && label="F+G (edit)"
      printf '%6s %-13s %6s %8s %8s %8s %9s  %s\n' "$N" "$label" "$r" "$(div "${P_REC[$N:$ph]}" $((N * r)))" \
        "$(div "$req" "${P_REC[$N:$ph]}")" "$(div "$req" $((N * r)))" \
        "$(awk -v t="${P_CPU[$N:$ph]}" -v h="$CLK_TCK" -v r="$r" 'BEGIN {printf "%.2f", t / h / r}')" "${verbs:-none}"
    done
  done
  printf '\n%6s %s\n' N "operator RSS after the size's rounds (peak), MiB"
  for size in "${SIZES[@]}"; do N="${size%%:*}"; printf '%6s %s (%s)\n' "$N" "${RSS[$N]}" "${HWM[$N]}"; done
  printf '\n(rec: R1Pipeline reconciles, ratio1_reconciles_total; req: API requests of every verb but watch,\n'
  printf ' ratio1_kube_requests_total; both over the C+D or F+G windows of all rounds, per pipeline = / (N x rounds);\n'
  printf ' CPU s/rd: operator CPU seconds (utime + stime) in those windows, per round)\n'
}
