#!/usr/bin/env bash
# node-up.sh [I] - give cluster cI (started by up.sh, default I=1) ONE real
# worker node on which pods run: kube-scheduler + containerd 1.6 (runc,
# cgroupfs, cgroup v1) + kubelet + kube-proxy (iptables mode), all v1.20.2
# built by node-install.sh. Needs root. Prints the node name on stdout.
#
# Layout (all under $R1KUBE_RUN/cI/node, removed by node-down.sh):
#   containerd.sock, containerd/{root,state}, kubelet/ (root dir), cni/,
#   logs/{pods,containers}, *.pid, *.log
# containerd and the kubelet share a private mount namespace (unshare
# --propagation slave) in which that node's own dirs are bind-mounted on
# /var/log/pods, /var/log/containers and /run/containerd: two nodes (or
# another project's kubelet) on one machine never see or garbage-collect
# each other's pod logs or shim sockets, and every mount a node makes
# (overlay rootfs, netns, volumes) disappears with it.
# Network: CNI bridge r1-<b>-<I> with $POD_NET.I.1/24; that address is also
# the node's InternalIP where the kubelet listens (loopback is not allowed as
# node IP). Pod CIDR $POD_NET.I.0/24; host -> pod IPs are routed directly.
# Idempotent: when all components run it only prints the node name; a
# partially running node is stopped (node-down.sh I) and started again.
#
# Env:
#   R1KUBE_CACHE, R1KUBE_RUN, R1KUBE_TIMEOUT  as for up.sh
#   R1KUBE_POD_NET    first two octets of the pod CIDRs (default 10.222;
#                            node I gets $POD_NET.I.0/24)
#   R1KUBE_NODE_PORT  kubelet port of node 1 (default 10250); node I uses
#                            P=$NODE_PORT+10*(I-1): kubelet P, kube-proxy healthz
#                            P+1 and metrics P+2 (both 127.0.0.1)
#   R1KUBE_KUBE_PROXY auto (default) | 1 | 0. kube-proxy (iptables mode)
#                            owns the host's KUBE-* chains (and all clusters
#                            share the service CIDR 10.0.0.0/24), so only one
#                            works per machine: auto starts it only if no other
#                            kube-proxy runs here; 1 forces it (the other
#                            cluster's ClusterIPs then stop working).
# On failure the node is left as is for debugging: node-down.sh I cleans up.
set -euo pipefail

I="${1:-1}"
[[ "$I" =~ ^[1-9][0-9]*$ ]] && [ "$I" -le 254 ] || { echo "usage: $0 [I (cluster number, 1-254)]" >&2; exit 2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${R1KUBE_CACHE:-/var/cache/ratio1-kube}"
BIN="$CACHE/bin"
RUN="${R1KUBE_RUN:-${TMPDIR:-/tmp}/ratio1-kube}"
TIMEOUT="${R1KUBE_TIMEOUT:-90}"
POD_NET="${R1KUBE_POD_NET:-10.222}"
PORT=$(( ${R1KUBE_NODE_PORT:-10250} + 10 * (I - 1) ))
KUBE_PROXY="${R1KUBE_KUBE_PROXY:-auto}"

C="$RUN/c$I"
ND="$C/node"
NODE_NAME="r1-c$I-node"
POD_CIDR="$POD_NET.$I.0/24"
NODE_IP="$POD_NET.$I.1"
BR="r1-${POD_NET#*.}-$I"                                 # <= 15 chars
CG="r1-$(printf '%s' "$RUN" | md5sum | cut -c1-6)-c$I"   # cgroup root of this node's pods
SOCK="$ND/containerd.sock"
PAUSE_IMAGE="ratio1.local/pause:3.4"
export PATH="$BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

log() { printf '[ratio1-kube node-up c%s] %s\n' "$I" "$*" >&2; }
die() { printf '[ratio1-kube node-up c%s] ERROR: %s\n' "$I" "$*" >&2; exit 1; }
now_ms() { date +%s%3N; }

# alive, port_busy, start, wait_until
# shellcheck source=e2e/kube/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# other_procs COMM: pids of processes named COMM that are not this node's
other_procs() {
  local p mine=" "
  for f in "$ND"/*.pid; do [ -f "$f" ] && mine+="$(cat "$f") "; done
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = "$1" ] || continue
    [ "$(sed 's/.*) //' "$p/stat" 2>/dev/null | cut -c1)" = Z ] && continue   # exited, not yet reaped
    case "$mine" in *" ${p#/proc/} "*) ;; *) echo "${p#/proc/}";; esac
  done
}

# ------------------------------------------------------------------ checks
[ "$(id -u)" = 0 ] || die "must run as root (containerd, kubelet, iptables, cgroups)"
for b in kube-scheduler kubelet kube-proxy containerd containerd-shim-runc-v2 ctr runc; do
  [ -x "$BIN/$b" ] || die "$BIN/$b missing: run e2e/kube/node-install.sh first"
done
[ -s "$CACHE/images/pause.tar" ] || die "$CACHE/images missing: run e2e/kube/node-install.sh first"
command -v iptables >/dev/null || die "iptables not found: run e2e/kube/node-install.sh first"
[ -f "$C/kubeconfig" ] && alive "$C/apiserver.pid" "$BIN/kube-apiserver" \
  || die "cluster c$I is not running: run e2e/kube/up.sh $I first"
tr '\0' ' ' <"/proc/$(cat "$C/apiserver.pid")/cmdline" | grep -q -- '--kubelet-client-certificate' \
  || die "apiserver c$I was started by an older up.sh (no kubelet client cert): run e2e/kube/down.sh; e2e/kube/up.sh"
[ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] || die "cgroup v2 host: this recipe (kubelet 1.20, cgroupfs driver) needs cgroup v1"
[ ${#SOCK} -lt 100 ] || die "socket path too long (${#SOCK} chars): $SOCK; use a shorter R1KUBE_RUN"
[ "${#BR}" -le 15 ] || die "bridge name $BR too long"
TOKEN=admintoken
API_URL="$(sed -n 's/^ *server: //p' "$C/kubeconfig" | head -n1)"
API_PORT="${API_URL##*:}"
KUBE_SVC_IP=10.0.0.1                                      # first IP of up.sh's service CIDR
API_CHAIN="R1-API-${POD_NET#*.}-$I"
command -v kubectl >/dev/null || die "kubectl not found"
api() { curl -sk -m 5 -H "Authorization: Bearer $TOKEN" "$API_URL$1"; }

components_alive() {
  alive "$ND/containerd.pid" "$BIN/containerd" && alive "$ND/kubelet.pid" "$BIN/kubelet" \
    && alive "$ND/kube-scheduler.pid" "$BIN/kube-scheduler" \
    && { [ ! -f "$ND/kube-proxy.wanted" ] || alive "$ND/kube-proxy.pid" "$BIN/kube-proxy"; }
}
if [ -d "$ND" ]; then
  if components_alive; then
    log "node $NODE_NAME already running (kubelet pid $(cat "$ND/kubelet.pid"))"
    echo "$NODE_NAME"; exit 0
  fi
  log "node c$I partially running or stale: node-down.sh $I first"
  bash "$HERE/node-down.sh" "$I" || die "node-down.sh $I could not remove the stale node (see above)"
fi

# pod network / ports must be free
if ip link show "$BR" >/dev/null 2>&1; then die "network interface $BR exists (another run dir? set R1KUBE_POD_NET)"; fi
if [ -n "$(ip -4 route show to match "$NODE_IP" | grep -v '^default')" ]; then
  die "$POD_CIDR overlaps an existing route ($(ip -4 route show to match "$NODE_IP" | grep -v '^default' | head -n1)); set R1KUBE_POD_NET"
fi
for p in "$PORT" $((PORT + 1)) $((PORT + 2)); do
  port_busy 127.0.0.1 "$p" && die "port $p in use (set R1KUBE_NODE_PORT)"
done

T0=$(now_ms)
mkdir -p "$ND"/{containerd/root,containerd/state,kubelet,cni/net.d,cni/ipam,logs/pods,logs/containers,run-containerd,volume-plugins}

# ------------------------------------------------------------------ host settings
# Record sysctls that nodes change (kubelet: vm/kernel tunables; kube-proxy:
# route_localnet; here: ip_forward) once per machine boot; node-down.sh
# restores them when the last kubelet/kube-proxy on the machine is gone.
SYSCTL_ORIG=/run/ratio1-kube-sysctl.orig
SYSCTLS="net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.ipv4.conf.all.route_localnet vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes"
if [ ! -f "$SYSCTL_ORIG" ] && [ -z "$(other_procs kubelet)$(other_procs kube-proxy)" ]; then
  for s in $SYSCTLS; do v="$(sysctl -n "$s" 2>/dev/null)" && echo "$s=$v"; done >"$SYSCTL_ORIG"
fi
sysctl -qw net.ipv4.ip_forward=1
[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] && sysctl -qw net.bridge.bridge-nf-call-iptables=1

# Host dirs that get a per-node bind mount inside the node's mount namespace.
# They are created if missing and never removed: removing a directory detaches
# the mounts on it in every other mount namespace (i.e. other running nodes).
mkdir -p /var/log/pods /var/log/containers /run/containerd

# cgroup v1: the node's pod cgroup root in every hierarchy (cpuset needs cpus/mems)
echo "$CG" >"$ND/cgroup-root"
echo "$NODE_NAME" >"$ND/node-name"
while read -r mnt; do
  mkdir -p "$mnt/$CG"
  if [ -f "$mnt/cpuset.cpus" ]; then
    cat "$mnt/cpuset.cpus" >"$mnt/$CG/cpuset.cpus"
    cat "$mnt/cpuset.mems" >"$mnt/$CG/cpuset.mems"
  fi
done < <(awk '$3 == "cgroup" {print $2}' /proc/self/mounts)

# CNI bridge with the gateway address = node IP (the bridge plugin reuses it)
echo "$BR" >"$ND/bridge"
ip link add "$BR" type bridge
ip addr add "$NODE_IP/24" dev "$BR"
ip link set "$BR" up

# ------------------------------------------------------------------ API server from pods
# The apiserver listens on 127.0.0.1 only (nothing of a test cluster is
# exposed beyond this machine). Pods reach it through their gateway, this
# bridge: packets that enter from it for the `kubernetes` Service
# ($KUBE_SVC_IP:443) or for $NODE_IP:$API_PORT (the Service's endpoint, set
# below) are DNATed to 127.0.0.1:$API_PORT, which route_localnet allows on
# this bridge only. The rules match on the bridge, so every cluster's pods
# reach their own apiserver even where one kube-proxy serves another
# cluster's ClusterIPs; the jump sits before kube-proxy's in PREROUTING.
# The serving cert names $KUBE_SVC_IP, so in-cluster clients verify it.
api_jump_first() {
  while iptables -t nat -D PREROUTING -i "$BR" -j "$API_CHAIN" 2>/dev/null; do :; done
  iptables -t nat -I PREROUTING 1 -i "$BR" -j "$API_CHAIN"
}
echo "$API_CHAIN" >"$ND/api-chain"
sysctl -qw "net.ipv4.conf.$BR.route_localnet=1"
iptables -t nat -N "$API_CHAIN" 2>/dev/null || iptables -t nat -F "$API_CHAIN"
iptables -t nat -A "$API_CHAIN" -d "$KUBE_SVC_IP" -p tcp --dport 443 -j DNAT --to-destination "127.0.0.1:$API_PORT"
iptables -t nat -A "$API_CHAIN" -d "$NODE_IP" -p tcp --dport "$API_PORT" -j DNAT --to-destination "127.0.0.1:$API_PORT"
api_jump_first
# (the apiserver runs with --endpoint-reconciler-type=none: nothing else sets them)
kubectl --kubeconfig "$C/kubeconfig" apply -f - >/dev/null <<EOF || die "cannot set the endpoints of Service default/kubernetes"
apiVersion: v1
kind: Endpoints
metadata: {name: kubernetes, namespace: default}
subsets:
- addresses: [{ip: $NODE_IP}]
  ports: [{name: https, port: $API_PORT, protocol: TCP}]
EOF

# ------------------------------------------------------------------ configs
cat >"$ND/cni/net.d/10-ratio1.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "r1-c$I",
  "plugins": [
    {"type": "bridge", "bridge": "$BR", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$ND/cni/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

cat >"$ND/containerd/config.toml" <<EOF
version = 2
root = "$ND/containerd/root"
state = "$ND/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$ND/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  netns_mounts_under_state_dir = true
  # this VM has no CAP_SYS_RESOURCE: negative oom_score_adj (pause -998,
  # Guaranteed pods -997) makes runc fail; clamp to containerd's own (0)
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$BIN/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CACHE/cni/bin"
    conf_dir = "$ND/cni/net.d"
EOF

cat >"$ND/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $PORT
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $C/kubelet-client-ca.crt}
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
cgroupRoot: /$CG
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
volumePluginDir: $ND/volume-plugins
# images cannot be pulled again here: never garbage-collect them
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 10s
# status is computed every second but only posted on change (or every 5m):
# a new node gets Ready (and untainted) ~4 s sooner than with the 10s default
nodeStatusUpdateFrequency: 1s
runtimeRequestTimeout: 2m
resolvConf: /etc/resolv.conf
containerLogMaxSize: 10Mi
containerLogMaxFiles: 2
EOF

cat >"$ND/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $C/kubeconfig}
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
clusterCIDR: $POD_CIDR
mode: iptables
healthzBindAddress: 127.0.0.1:$((PORT + 1))
metricsBindAddress: 127.0.0.1:$((PORT + 2))
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {minSyncPeriod: 0s, syncPeriod: 30s}
EOF

# ------------------------------------------------------------------ start
start "$ND/kube-scheduler.pid" "$ND/kube-scheduler.log" "$BIN/kube-scheduler" \
  --kubeconfig="$C/kubeconfig" --leader-elect=false --port=0 --secure-port=0 --v=1

# containerd in its own mount namespace (see header)
start "$ND/containerd.pid" "$ND/containerd.log" unshare --mount --propagation slave -- /bin/sh -c '
  mount --bind "$1/logs/pods" /var/log/pods &&
  mount --bind "$1/logs/containers" /var/log/containers &&
  mount --bind "$1/run-containerd" /run/containerd &&
  exec "$2" --config "$1/containerd/config.toml" --log-level warn' sh "$ND" "$BIN/containerd"
containerd_answers() {
  ctr -a "$SOCK" version >/dev/null 2>&1 && return 0
  tr -d '\0' <"/proc/$(cat "$ND/containerd.pid")/cmdline" 2>/dev/null | grep -q . \
    || { tail -n 20 "$ND/containerd.log" >&2; die "containerd exited (log: $ND/containerd.log)"; }
  return 1
}
WAIT_STEP=0.1 wait_until "$TIMEOUT" "containerd answers on $SOCK (log: $ND/containerd.log)" containerd_answers \
  || { tail -n 20 "$ND/containerd.log" >&2; exit 1; }
alive "$ND/containerd.pid" "$BIN/containerd" || { tail -n 20 "$ND/containerd.log" >&2; die "containerd did not start (log: $ND/containerd.log)"; }
log "containerd ready in $(( $(now_ms) - T0 ))ms (pid $(cat "$ND/containerd.pid"))"

while read -r img; do
  ctr -a "$SOCK" -n k8s.io images import --snapshotter overlayfs "$CACHE/images/$img" >/dev/null \
    || die "ctr images import $img failed"
done < <(cd "$CACHE/images" && ls *.tar)
log "images imported: $(ctr -a "$SOCK" -n k8s.io images ls -q | grep -v '^sha256:' | tr '\n' ' ')"

KUBELET_T0=$(date +%s)
start "$ND/kubelet.pid" "$ND/kubelet.log" nsenter --mount="/proc/$(cat "$ND/containerd.pid")/ns/mnt" -- \
  "$BIN/kubelet" --config="$ND/kubelet-config.yaml" --kubeconfig="$C/kubeconfig" \
  --root-dir="$ND/kubelet" --cert-dir="$ND/kubelet/pki" \
  --container-runtime=remote --container-runtime-endpoint="unix://$SOCK" --containerd="$SOCK" \
  --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
  --pod-infra-container-image="$PAUSE_IMAGE" --v=1

want_proxy=0
case "$KUBE_PROXY" in
  1) want_proxy=1 ;;
  0) ;;
  auto) if [ -z "$(other_procs kube-proxy)" ]; then want_proxy=1; else
          log "another kube-proxy runs on this machine (pid $(other_procs kube-proxy | tr '\n' ' ')): not starting one; ClusterIPs of c$I are not served here (pod IPs are)"
        fi ;;
  *) die "R1KUBE_KUBE_PROXY must be auto, 1 or 0" ;;
esac
if [ "$want_proxy" = 1 ]; then
  touch "$ND/kube-proxy.wanted"
  start "$ND/kube-proxy.pid" "$ND/kube-proxy.log" "$BIN/kube-proxy" --config="$ND/kube-proxy-config.yaml" --v=1
fi

# ------------------------------------------------------------------ wait for Ready
# node_ready: Ready, posted by this kubelet (heartbeat after its start),
# not-ready taint gone; stops the script if one of the node's processes exited
node_ready() {
  local n hb c
  n="$(api "/api/v1/nodes/$NODE_NAME" 2>/dev/null | tr -d ' \n' || true)"   # (curl gets pretty JSON)
  hb="$(printf '%s' "$n" | sed -n 's/.*"type":"Ready","status":"True","lastHeartbeatTime":"\([^"]*\)".*/\1/p')"
  if [ -n "$hb" ] && [ "$(date -d "$hb" +%s)" -ge "$KUBELET_T0" ] \
     && ! printf '%s' "$n" | grep -q '"key":"node.kubernetes.io/not-ready"'; then return 0; fi
  for c in containerd kubelet kube-scheduler; do
    alive "$ND/$c.pid" "$BIN/$c" || { tail -n 20 "$ND/$c.log" >&2; die "$c exited (log: $ND/$c.log)"; }
  done
  if [ "$want_proxy" = 1 ] && ! alive "$ND/kube-proxy.pid" "$BIN/kube-proxy"; then
    tail -n 20 "$ND/kube-proxy.log" >&2; die "kube-proxy exited (log: $ND/kube-proxy.log)"
  fi
  return 1
}
wait_until "$TIMEOUT" "node $NODE_NAME Ready and untainted (log: $ND/kubelet.log)" node_ready
if [ "$want_proxy" = 1 ]; then
  # kube-proxy prepends its KUBE-SERVICES jump at its first sync: wait for
  # it, then put this node's apiserver rules back in front of it
  proxy_synced() { iptables -t nat -S PREROUTING | grep -q -- '-j KUBE-SERVICES'; }
  wait_until "$TIMEOUT" "kube-proxy programs iptables (log: $ND/kube-proxy.log)" proxy_synced
  api_jump_first
fi
log "node $NODE_NAME Ready in $(( $(now_ms) - T0 ))ms: IP $NODE_IP, pod CIDR $POD_CIDR, kubelet :$PORT, kube-proxy $([ "$want_proxy" = 1 ] && echo "pid $(cat "$ND/kube-proxy.pid")" || echo none)"
echo "$NODE_NAME"
