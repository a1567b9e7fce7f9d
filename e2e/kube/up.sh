#!/usr/bin/env bash
# up.sh [N] - start one etcd plus N (default 1) independent Kubernetes control
# planes (kube-apiserver + kube-controller-manager) on 127.0.0.1. All clusters
# share the etcd, each under its own --etcd-prefix (/kte/cN).
# Prints one kubeconfig path per cluster on stdout (everything else: stderr).
# Idempotent: components already running (recorded PID alive) are kept.
#
# Env:
#   R1KUBE_CACHE      where install.sh put bin/ (default /var/cache/ratio1-kube)
#   R1KUBE_RUN        run dir: pids, logs, certs, kubeconfigs, etcd data
#                            (default ${TMPDIR:-/tmp}/ratio1-kube)
#   R1KUBE_ETCD_PORT  etcd client port (default 23790; peer port = +10)
#   R1KUBE_API_PORT   secure port of cluster 1 (default 16443; cluster i = +i-1)
#   R1KUBE_NO_CM=1    do not start kube-controller-managers
#   R1KUBE_SERVICE_CIDR  ClusterIP range of every cluster (default
#                     10.0.0.0/24: 254 Services; node-up.sh expects the
#                     `kubernetes` Service at its first address, 10.0.0.1)
#   R1KUBE_TIMEOUT    seconds to wait for readiness (default 90)
set -euo pipefail

N="${1:-1}"
[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [N>=1]" >&2; exit 2; }

CACHE="${R1KUBE_CACHE:-/var/cache/ratio1-kube}"
BIN="$CACHE/bin"
RUN="${R1KUBE_RUN:-${TMPDIR:-/tmp}/ratio1-kube}"
ETCD_PORT="${R1KUBE_ETCD_PORT:-23790}"
ETCD_PEER_PORT=$((ETCD_PORT + 10))
API_PORT="${R1KUBE_API_PORT:-16443}"
TIMEOUT="${R1KUBE_TIMEOUT:-90}"
SERVICE_CIDR="${R1KUBE_SERVICE_CIDR:-10.0.0.0/24}"

log() { printf '[ratio1-kube up] %s\n' "$*" >&2; }
die() { printf '[ratio1-kube up] ERROR: %s\n' "$*" >&2; exit 1; }

for b in etcd kube-apiserver kube-controller-manager; do
  [ -x "$BIN/$b" ] || die "$BIN/$b missing: run install.sh first (R1KUBE_CACHE=$CACHE)"
done
for t in curl openssl; do command -v "$t" >/dev/null || die "$t not found"; done
mkdir -p "$RUN"

# alive, port_busy, start, wait_until
# shellcheck source=e2e/kube/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

now_ms() { date +%s%3N; }

# ------------------------------------------------------------------ etcd
ETCD_URL="http://127.0.0.1:$ETCD_PORT"
if alive "$RUN/etcd.pid" "$BIN/etcd"; then
  log "etcd already running (pid $(cat "$RUN/etcd.pid"))"
else
  for pf in "$RUN"/c*/apiserver.pid; do
    [ -e "$pf" ] || continue
    alive "$pf" "$BIN/kube-apiserver" && die "etcd is gone but $(dirname "$pf") still runs: run down.sh first"
  done
  port_busy 127.0.0.1 "$ETCD_PORT" && die "port $ETCD_PORT in use by something else (set R1KUBE_ETCD_PORT)"
  rm -rf "$RUN/etcd-data"     # fresh state when etcd was not running
  t0=$(now_ms)
  start "$RUN/etcd.pid" "$RUN/etcd.log" "$BIN/etcd" \
    --name kte --data-dir "$RUN/etcd-data" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "kte=http://127.0.0.1:$ETCD_PEER_PORT" \
    --logger zap --log-outputs stderr --log-level warn \
    --quota-backend-bytes $((2*1024*1024*1024)) --snapshot-count 10000
  etcd_healthy() {
    curl -sf -m 2 "$ETCD_URL/health" 2>/dev/null | grep -q '"health":"true"' && return 0
    alive "$RUN/etcd.pid" "$BIN/etcd" || { tail -n 20 "$RUN/etcd.log" >&2; die "etcd exited (log: $RUN/etcd.log)"; }
    return 1
  }
  WAIT_STEP=0.1 wait_until "$TIMEOUT" "etcd healthy on $ETCD_URL (log: $RUN/etcd.log)" etcd_healthy
  log "etcd ready on $ETCD_URL in $(( $(now_ms) - t0 ))ms (pid $(cat "$RUN/etcd.pid"))"
fi

# ------------------------------------------------------------------ clusters
TOKEN=admintoken    # static bearer token, user admin in group system:masters

started=()
for i in $(seq 1 "$N"); do
  d="$RUN/c$i"; port=$((API_PORT + i - 1))
  mkdir -p "$d/certs"
  if alive "$d/apiserver.pid" "$BIN/kube-apiserver"; then
    log "cluster c$i: apiserver already running (pid $(cat "$d/apiserver.pid"), port $port)"
  else
    port_busy 127.0.0.1 "$port" && die "port $port in use by something else (set R1KUBE_API_PORT)"
    [ -f "$d/sa.key" ] || openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
    [ -f "$d/sa.pub" ] || openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
    # client cert the apiserver presents to kubelets (logs/exec/port-forward;
    # used by node-up.sh): own CA per cluster, CN kube-apiserver-kubelet-client
    # in group system:masters
    if [ ! -f "$d/kubelet-client.crt" ]; then
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -subj "/CN=r1-c$i-kubelet-client-ca" -keyout "$d/kubelet-client-ca.key" -out "$d/kubelet-client-ca.crt" 2>/dev/null
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" -keyout "$d/kubelet-client.key" -out "$d/kubelet-client.csr" 2>/dev/null
      printf 'extendedKeyUsage=clientAuth\n' >"$d/kubelet-client.ext"
      openssl x509 -req -in "$d/kubelet-client.csr" -CA "$d/kubelet-client-ca.crt" -CAkey "$d/kubelet-client-ca.key" \
        -CAcreateserial -days 3650 -extfile "$d/kubelet-client.ext" -out "$d/kubelet-client.crt" 2>/dev/null
      rm -f "$d/kubelet-client.csr" "$d/kubelet-client.ext"
    fi
    printf '%s,admin,admin,system:masters\n' "$TOKEN" >"$d/tokens.csv"
    rm -f "$d/certs/apiserver.crt" "$d/certs/apiserver.key"   # regenerated self-signed
    start "$d/apiserver.pid" "$d/apiserver.log" "$BIN/kube-apiserver" \
      --etcd-servers="$ETCD_URL" --etcd-prefix="/kte/c$i" \
      --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$port" \
      --cert-dir="$d/certs" \
      --service-cluster-ip-range="$SERVICE_CIDR" \
      --token-auth-file="$d/tokens.csv" --authorization-mode=RBAC \
      --service-account-issuer=https://kubernetes.default.svc \
      --service-account-key-file="$d/sa.pub" --service-account-signing-key-file="$d/sa.key" \
      --allow-privileged=true \
      --endpoint-reconciler-type=none --profiling=false \
      --kubelet-client-certificate="$d/kubelet-client.crt" --kubelet-client-key="$d/kubelet-client.key" \
      --kubelet-preferred-address-types=InternalIP,Hostname,ExternalIP \
      --v=1
    started+=("$i:$(now_ms)")
  fi
done

# wait for /readyz of each apiserver, then write kubeconfig
for i in $(seq 1 "$N"); do
  d="$RUN/c$i"; port=$((API_PORT + i - 1)); url="https://127.0.0.1:$port"
  t0=""
  for s in "${started[@]:-}"; do [ "${s%%:*}" = "$i" ] && t0="${s#*:}"; done
  apiserver_ready() {
    [ "$(curl -sk -m 2 -H "Authorization: Bearer $TOKEN" "$url/readyz" 2>/dev/null)" = ok ] && return 0
    alive "$d/apiserver.pid" "$BIN/kube-apiserver" || { tail -n 20 "$d/apiserver.log" >&2; die "apiserver c$i exited (log: $d/apiserver.log)"; }
    return 1
  }
  wait_until "$TIMEOUT" "apiserver c$i ready on $url (log: $d/apiserver.log)" apiserver_ready
  [ -n "$t0" ] && log "cluster c$i: apiserver ready on $url in $(( $(now_ms) - t0 ))ms (pid $(cat "$d/apiserver.pid"))"

  # The apiserver's self-signed serving cert file holds the leaf, then its CA.
  ca_b64="$(awk '/BEGIN CERT/{n++} n==2' "$d/certs/apiserver.crt" | base64 | tr -d '\n')"
  [ -n "$ca_b64" ] || ca_b64="$(base64 <"$d/certs/apiserver.crt" | tr -d '\n')"
  umask 077
  cat >"$d/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: kte-c$i
  cluster:
    server: $url
    certificate-authority-data: $ca_b64
users:
- name: kte-admin
  user:
    token: $TOKEN
contexts:
- name: kte-c$i
  context: {cluster: kte-c$i, user: kte-admin, namespace: default}
current-context: kte-c$i
KC
  umask 022

  if [ "${R1KUBE_NO_CM:-0}" != 1 ] && ! alive "$d/controller-manager.pid" "$BIN/kube-controller-manager"; then
    start "$d/controller-manager.pid" "$d/controller-manager.log" "$BIN/kube-controller-manager" \
      --kubeconfig="$d/kubeconfig" --leader-elect=false \
      --port=0 --secure-port=0 \
      --service-account-private-key-file="$d/sa.key" \
      --root-ca-file="$d/certs/apiserver.crt" \
      --use-service-account-credentials=false \
      --controllers='*,-nodeipam,-cloud-node-lifecycle,-ttl,-bootstrapsigner,-tokencleaner,-csrsigning,-csrapproving,-csrcleaner,-route,-service,-persistentvolume-binder,-attachdetach,-persistentvolume-expander,-ephemeral-volume,-endpointslicemirroring' \
      --v=1
    log "cluster c$i: controller-manager started (pid $(cat "$d/controller-manager.pid"))"
  fi
done

# controller-managers: give them a moment and make sure they did not die
if [ "${R1KUBE_NO_CM:-0}" != 1 ]; then
  sleep 1
  for i in $(seq 1 "$N"); do
    d="$RUN/c$i"
    alive "$d/controller-manager.pid" "$BIN/kube-controller-manager" \
      || { tail -n 20 "$d/controller-manager.log" >&2; die "controller-manager c$i exited (log: $d/controller-manager.log)"; }
  done
fi

for i in $(seq 1 "$N"); do echo "$RUN/c$i/kubeconfig"; done
