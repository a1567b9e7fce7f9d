#!/usr/bin/env bash
# e2e/devnet.sh up [N] | down | status
#
# A local Ratio1 network on this machine: N (default 3) real Kubernetes
# control planes sharing one etcd (e2e/kube), each with a real worker node
# (kubelet + containerd + runc + CNI bridge: pods run), one `ratio1 operator`
# per cluster, an R1Node each, and the samples from manifests/samples/
# applied, running on images built here (e2e/images.sh). Each operator
# keeps its CSTORE replica in its own etcd process (never the one behind the
# API servers, never another cluster's): client port 24400+<cluster>, peer
# port 24500+<cluster> ($R1_DEVNET_CSTORE_PORT moves both), data in
# .devnet/c<cluster>/cstore-etcd. The API servers, etcds and operators
# listen on 127.0.0.1, the pods on local bridges (10.222.<cluster>.0/24).
# State lives in .devnet/ (gitignored). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
DEVNET="$ROOT/.devnet"
export R1KUBE_RUN="$DEVNET/kube"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/ratio1"
ETCD_BIN="${R1KUBE_CACHE:-/var/cache/ratio1-kube}/bin/etcd"
CSTORE_PORT="${R1_DEVNET_CSTORE_PORT:-24400}"

t0=$(date +%s)
step() { printf '[%4ss] %s\n' "$(( $(date +%s) - t0 ))" "$*" >&2; }
die() { printf 'devnet: %s\n' "$*" >&2; exit 1; }

. e2e/kube/lib.sh   # wait_until, quiet
# pid_alive PIDFILE: the recorded process runs
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# CSTORE's etcd of cluster I: its client URL, and its peer port
cstore_url() { echo "http://127.0.0.1:$((CSTORE_PORT + $1))"; }
cstore_peer_port() { echo $((CSTORE_PORT + 100 + $1)); }

# cstore_up I DIR: start cluster I's own CSTORE etcd (kept if it runs) and
# wait until it is healthy
cstore_up() {
  local i="$1" d="$2" url peer kube_etcd
  url=$(cstore_url "$i"); peer=$(cstore_peer_port "$i")
  kube_etcd="${R1KUBE_ETCD_PORT:-23790}"
  for p in "$((CSTORE_PORT + i))" "$peer"; do
    { [ "$p" = "$kube_etcd" ] || [ "$p" = "$((kube_etcd + 10))" ]; } \
      && die "CSTORE etcd port $p is the Kubernetes etcd's: set R1_DEVNET_CSTORE_PORT"
  done
  if alive "$d/cstore-etcd.pid" "$ETCD_BIN"; then return 0; fi
  for p in "$((CSTORE_PORT + i))" "$peer"; do
    port_busy 127.0.0.1 "$p" && die "c$i: port $p (CSTORE etcd) is in use: set R1_DEVNET_CSTORE_PORT"
  done
  step "cluster c$i: starting its CSTORE etcd on $url (data $d/cstore-etcd, log $d/cstore-etcd.log)"
  start "$d/cstore-etcd.pid" "$d/cstore-etcd.log" "$ETCD_BIN" \
    --name "cstore-c$i" --data-dir "$d/cstore-etcd" \
    --listen-client-urls "$url" --advertise-client-urls "$url" \
    --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "cstore-c$i=http://127.0.0.1:$peer" --initial-cluster-token "devnet-cstore-c$i" \
    --auto-compaction-mode periodic --auto-compaction-retention 1h \
    --logger zap --log-outputs stderr --log-level warn
  cstore_healthy() {
    curl -sf -m 2 "$url/health" 2>/dev/null | grep -q '"health":"true"' && return 0
    alive "$d/cstore-etcd.pid" "$ETCD_BIN" || { tail -n 20 "$d/cstore-etcd.log" >&2; die "c$i: CSTORE etcd exited (log: $d/cstore-etcd.log)"; }
    return 1
  }
  WAIT_STEP=0.1 wait_until 60 "c$i: CSTORE etcd healthy on $url (log: $d/cstore-etcd.log)" cstore_healthy
}

# stop_recorded PIDFILE BINPATH WHAT: TERM the recorded process if it still
# runs that binary, and wait until it has exited (KILL after 10 s)
stop_recorded() {
  local pid
  if alive "$1" "$2"; then
    pid=$(cat "$1")
    kill -TERM "$pid" 2>/dev/null || true
    if ! WAIT_STEP=0.1 wait_until 10 "" exited "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      WAIT_STEP=0.1 wait_until 5 "$3 (pid $pid) gone after SIGKILL" exited "$pid" || true
    fi
    step "stopped $3"
  fi
  rm -f "$1"
}

status() {
  local n=0
  printf '\n%-8s %-10s %-54s %-20s %-6s %-9s %s\n' CLUSTER R1NODE PEER-ID ROLES PEERS LICENSED KUBECONFIG
  for kc in "$R1KUBE_RUN"/c*/kubeconfig; do
    [ -f "$kc" ] || continue
    n=$((n+1)); c=$(basename "$(dirname "$kc")")
    kubectl --kubeconfig "$kc" get r1n -o jsonpath='{range .items[*]}{.metadata.name}{"|"}{.status.peerId}{"|"}{.spec.roles}{"|"}{.status.peers}{"|"}{.status.conditions[?(@.type=="Licensed")].status}{"\n"}{end}' 2>/dev/null |
      while IFS='|' read -r name peer roles peers lic; do printf '%-8s %-10s %-54s %-20s %-6s %-9s %s\n' "$c" "$name" "$peer" "$roles" "${peers:-0}" "$lic" "$kc"; done
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
  printf '\n%-8s %-26s %-8s %s\n' CLUSTER CSTORE-ETCD HEALTHY DATA
  for d in "$DEVNET"/c*/; do
    [ -f "$d/cstore-etcd.pid" ] || continue
    c=$(basename "$d"); url=$(cstore_url "${c#c}")
    h=$(curl -sf -m 2 "$url/health" 2>/dev/null | grep -o '"health":"[a-z]*"' | cut -d'"' -f4) || true
    printf '%-8s %-26s %-8s %s\n' "$c" "$url" "${h:-no}" "${d}cstore-etcd"
  done
}

up() {
  local n="${1:-3}"
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "usage: e2e/devnet.sh up [N>=1]"
  command -v kubectl >/dev/null || die "kubectl is needed (Debian: apt-get install kubectl, or any kubectl >= 1.20)"
  mkdir -p "$DEVNET"
  step "installing etcd, kube-apiserver, kube-controller-manager and the worker node (kubelet, kube-proxy, kube-scheduler, containerd; first time: ~8-10 min build from Debian sources; cached after)"
  bash e2e/kube/node-install.sh
  bash e2e/tools/protoc.sh >/dev/null   # etcd-client's build script needs it (Debian's protobuf-compiler if missing)
  step "building ratio1 (first time: ~8 min on 2 cores)"
  cargo build --locked --bin ratio1 2>&1 | grep -E '^(error|warning: unused)|Finished' | sed 's/^/        /' >&2
  [ -x "$BIN" ] || die "build failed: run cargo build --bin ratio1 to see why"
  step "building the sample workloads' images and the operator's (R1FS delivers content with it; offline, cached)"
  bash e2e/images.sh build samples
  R1_OPERATOR_BIN="$BIN" bash e2e/images.sh build operator
  step "starting etcd and $n Kubernetes control planes on 127.0.0.1"
  bash e2e/kube/up.sh "$n" >"$DEVNET/kubeconfigs"
  mapfile -t kcs <"$DEVNET/kubeconfigs"
  for i in $(seq 1 "$n"); do
    node=$(bash e2e/kube/node-up.sh "$i" 2>"$DEVNET/node-up-c$i.log") || { cat "$DEVNET/node-up-c$i.log" >&2; die "node-up.sh $i failed"; }
    step "cluster c$i: worker node $node Ready ($(grep -o 'Ready in [0-9]*ms' "$DEVNET/node-up-c$i.log" || echo 'already running'))"
  done
  bash e2e/images.sh import samples
  R1_OPERATOR_BIN="$BIN" bash e2e/images.sh import operator
  if [ ! -f "$DEVNET/issuer.key" ]; then
    step "creating the network's license issuer key ($DEVNET/issuer.key)"
    "$BIN" license keygen --out "$DEVNET/issuer.key" | awk '/public key/{print $3}' >"$DEVNET/issuer.pub"
  fi
  issuer_pub=$(cat "$DEVNET/issuer.pub")
  bootstrap=""
  for i in $(seq 1 "$n"); do
    kc="${kcs[$((i-1))]}"; d="$DEVNET/c$i"; mkdir -p "$d"
    k() { kubectl --kubeconfig "$kc" "$@"; }
    step "cluster c$i: CRDs and namespace"
    k apply --server-side --force-conflicts -f crds/ >/dev/null
    # (kubectl wait errors out while a new CRD has no conditions yet: retry)
    wait_until 60 "c$i: CRDs established" quiet k wait --for condition=established --timeout=10s \
      crd/r1nodes.ratio1.ai crd/r1pipelines.ratio1.ai crd/r1models.ratio1.ai
    k create namespace ratio1-system --dry-run=client -o yaml | k apply -f - >/dev/null
    port=$((4000 + i))
    cstore_up "$i" "$d"
    if ! pid_alive "$d/operator.pid"; then
      step "cluster c$i: starting ratio1 operator (p2p 127.0.0.1:$port, metrics 127.0.0.1:$((9090 + i - 1)), local API 127.0.0.1:$((9190 + i - 1)), CSTORE $(cstore_url "$i"), log $d/operator.log)"
      args=(operator --namespace ratio1-system --metrics-addr "127.0.0.1:$((9090 + i - 1))" --api-addr "127.0.0.1:$((9190 + i - 1))" --identity "devnet-c$i"
            --p2p-listen "/ip4/127.0.0.1/tcp/$port" --trusted-issuer="$issuer_pub" --cstore-endpoints "$(cstore_url "$i")"
            --data-dir "$d/data" --r1fs-gateway-addr "0.0.0.0:$((9290 + i - 1))"
            --r1fs-pod-endpoint "http://\$(HOST_IP):$((9290 + i - 1))" --r1fs-fetch-image ratio1.local/ratio1-operator:dev
            --epoch-genesis-ms 0 --epoch-length-secs 60)
      [ -n "$bootstrap" ] && args+=(--p2p-bootstrap "$bootstrap")
      KUBECONFIG="$kc" setsid "$BIN" "${args[@]}" >"$d/operator.log" 2>&1 </dev/null &
      echo $! >"$d/operator.pid"
    fi
    roles='[worker]'; class=ND
    if [ "$i" = 1 ]; then roles='[worker, oracle]'; class=MND; fi
    step "cluster c$i: R1Node node-c$i (roles $roles); its identity gives the PeerId the license binds to"
    sed -e "s/^  name: local$/  name: node-c$i/" -e "s/^  roles: \[worker\]$/  roles: $roles/" manifests/samples/r1node.yaml |
      k apply --server-side -f - >/dev/null
    peer=""
    peer_reported() { peer=$(k get r1n "node-c$i" -o jsonpath='{.status.peerId}' 2>/dev/null) && [ -n "$peer" ]; }
    wait_until 60 "c$i: R1Node node-c$i reports its PeerId (see $d/operator.log)" peer_reported
    if ! k -n ratio1-system get secret r1node-license >/dev/null 2>&1; then
      step "cluster c$i: issuing a $class license for $peer"
      token=$("$BIN" license issue --issuer-key "$DEVNET/issuer.key" --peer-id "$peer" --class "$class" --days 30 --id "$class-devnet-c$i")
      k -n ratio1-system create secret generic r1node-license --from-literal=license="$token" >/dev/null
    fi
    [ "$i" = 1 ] && bootstrap="/ip4/127.0.0.1/tcp/$port/p2p/$peer"
    if [ "$i" = 1 ]; then
      step "cluster c1: adding the samples' content to R1FS (the lexicon model and the corpus)"
      for f in manifests/samples/r1fs/sentiment-lexicon.tsv manifests/samples/r1fs/corpus; do
        wait_until 60 "c1: R1FS takes $f (see $d/operator.log)" quiet "$BIN" fs --endpoint http://127.0.0.1:9190 add "$f"
      done
    fi
    step "cluster c$i: applying manifests/samples"
    for f in manifests/samples/r1model-*.yaml manifests/samples/r1pipeline-*.yaml; do k apply --server-side -f "$f" >/dev/null; done
  done
  step "waiting for every resource to report status"
  for i in $(seq 1 "$n"); do
    kc="${kcs[$((i-1))]}"
    kubectl --kubeconfig "$kc" wait --for condition=Licensed --timeout=60s "r1n/node-c$i" >/dev/null \
      || die "c$i: node-c$i not licensed (see $DEVNET/c$i/operator.log)"
    if [ "$n" -gt 1 ]; then
      kubectl --kubeconfig "$kc" wait --for=jsonpath='{.status.peers}'="$((n - 1))" --timeout=90s "r1n/node-c$i" >/dev/null \
        || die "c$i: node-c$i does not see its $((n - 1)) peers (see $DEVNET/c$i/operator.log)"
    fi
    for r in r1p/sentiment-api r1p/embed-corpus r1m/sentiment-lexicon r1m/llm-weights; do
      kubectl --kubeconfig "$kc" wait --for=jsonpath='{.status.observedGeneration}'=1 --timeout=60s -n default "$r" >/dev/null \
        || die "c$i: $r has no status (see $DEVNET/c$i/operator.log)"
    done
  done
  step "waiting for the pipelines' pods: the Service pipelines ready, the Jobs complete"
  for i in $(seq 1 "$n"); do
    kc="${kcs[$((i-1))]}"
    for r in r1p/sentiment-api r1p/embed-corpus; do
      kubectl --kubeconfig "$kc" wait --for=condition=Ready --timeout=120s -n default "$r" >/dev/null || {
        kubectl --kubeconfig "$kc" get "$r" -n default -o jsonpath='{.status.conditions}' >&2; echo >&2
        kubectl --kubeconfig "$kc" get pods -n default -o wide >&2
        die "c$i: $r is not Ready"
      }
    done
  done
  pod_ip=$(kubectl --kubeconfig "${kcs[0]}" get pods -n default -l ratio1.ai/pipeline=sentiment-api \
    -o jsonpath='{.items[0].status.podIP}')
  answer=$(curl -sf -m 5 "http://$pod_ip:8080/cgi-bin/predict?text=great+fast+service") \
    || die "c1: sentiment-api at $pod_ip:8080 does not answer"
  result=$(kubectl --kubeconfig "${kcs[0]}" get pods -n default -l ratio1.ai/pipeline=embed-corpus \
    -o jsonpath='{.items[0].status.containerStatuses[0].state.terminated.message}')
  step "devnet is up"
  status
  cat <<EOF2

Try next:
  export KUBECONFIG=${kcs[0]}
  kubectl get r1n,r1p,r1m -A                  # the ratio1 resources (category: kubectl get ratio1)
  kubectl get deploy,svc,job,pods -n default -o wide   # what the operator materialised, running
  curl "http://$pod_ip:8080/cgi-bin/predict?text=great+fast+service"
      # -> $answer
  kubectl port-forward -n default svc/sentiment-api 8080:8080 &   # or through the Service
  kubectl logs -n default job/embed-corpus    # the batch result ($result)
  kubectl patch r1p sentiment-api -n default --type merge -p '{"spec":{"replicas":4}}'
  kubectl describe r1p sentiment-api -n default
  $BIN network peers --endpoint http://127.0.0.1:9190   # the network as c1 sees it
  $BIN network epoch --endpoint http://127.0.0.1:9190   # the epoch (60 s here) and each peer's availability in the last one
  $BIN oracle status --endpoint http://127.0.0.1:9190   # OracleSync: the last epochs, final or faulty (c1 is the one oracle here)
  $BIN oracle verify <epoch> --trusted-issuer=$issuer_pub --endpoint http://127.0.0.1:9191   # check an epoch's signed record from c2
  $BIN cstore --endpoint http://127.0.0.1:9190 set '~/hello' '"world"'   # CSTORE: write on c1 ...
  $BIN cstore --endpoint http://127.0.0.1:9191 keys node/   # ... read on c2 (replicated); then: status
  kubectl get r1m sentiment-lexicon -n default -o jsonpath='{.status.holders}'   # the R1FS nodes holding the model
  $BIN fs --endpoint http://127.0.0.1:9192 cat \$(kubectl get r1m sentiment-lexicon -n default -o jsonpath='{.status.cid}') | head -3
  $BIN fs --endpoint http://127.0.0.1:9190 add ./some-file   # R1FS: add on c1; ratio1 fs get|cat on any cluster
  curl -s 127.0.0.1:9090/metrics | grep ratio1_p2p
  curl -s $(cstore_url 1)/version           # c1's CSTORE etcd (its own; data in $DEVNET/c1/cstore-etcd)
  e2e/devnet.sh status                        # these tables again
  e2e/devnet.sh down                          # stop everything
EOF2
}

down() {
  for pf in "$DEVNET"/c*/operator.pid; do
    [ -f "$pf" ] || continue
    if pid_alive "$pf"; then kill -TERM "$(cat "$pf")"; step "stopped operator $(basename "$(dirname "$pf")")"; fi
    rm -f "$pf"
  done
  # (after the operators, their clients; before the data goes)
  for pf in "$DEVNET"/c*/cstore-etcd.pid; do
    [ -f "$pf" ] || continue
    stop_recorded "$pf" "$ETCD_BIN" "CSTORE etcd $(basename "$(dirname "$pf")")"
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
