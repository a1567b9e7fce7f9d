#!/usr/bin/env bash
# node-smoke.sh KUBECONFIG - check that pods really run on the node started by
# node-up.sh: a single pod (start time), a Deployment of 2 busybox httpd
# replicas with a readiness probe (Available, readyReplicas=2), a ClusterIP
# Service answering from the host (kube-proxy; skipped with a note when the
# node has no kube-proxy) and from inside a pod, pod IPs answering from the
# host, a Job that completes, kubectl logs, exec and port-forward.
# Prints "N passed, M failed" and exits non-zero on any failure.
set -uo pipefail
# shellcheck source=e2e/kube/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # wait_until, quiet
KC="${1:?usage: $0 KUBECONFIG}"
IMAGE="${R1KUBE_TEST_IMAGE:-ratio1.local/busybox:1.35}"
k() { kubectl --kubeconfig "$KC" "$@"; }
pass=0; fail=0
ok()  { echo "PASS $*"; pass=$((pass+1)); }
bad() { echo "FAIL $*"; fail=$((fail+1)); }
check() { local name="$1"; shift; if out="$("$@" 2>&1)"; then ok "$name${out:+: $(printf '%s' "$out" | head -c 200 | tr '\n' ' ')}"; else bad "$name: $(printf '%s' "$out" | tail -c 400)"; fi; }
now_ms() { date +%s%3N; }
NS="node-smoke-$$"
k create namespace "$NS" >/dev/null || { echo "FAIL create namespace"; exit 1; }
trap 'k delete namespace "$NS" --wait=false >/dev/null 2>&1' EXIT

# --- one pod: time from create to Ready
t0=$(now_ms)
k -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: single}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {name: c, image: $IMAGE, imagePullPolicy: Never, command: [sleep, "3600"]}
YAML
if k -n "$NS" wait --for=condition=Ready pod/single --timeout=90s >/dev/null; then
  ok "single pod Ready in $(( $(now_ms) - t0 ))ms"
else
  bad "single pod not Ready: $(k -n "$NS" describe pod single | tail -n 15)"
fi

# --- Deployment (2 x busybox httpd) + Service
t0=$(now_ms)
k -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: httpd
        image: $IMAGE
        imagePullPolicy: Never
        command: [sh, -c, 'echo "hello from \$(hostname)" >/var/www/index.html && exec httpd -f -v -p 8080 -h /var/www']
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
YAML
if k -n "$NS" wait --for=condition=Available deploy/web --timeout=90s >/dev/null; then
  ok "deployment Available in $(( $(now_ms) - t0 ))ms, readyReplicas=$(k -n "$NS" get deploy web -o jsonpath='{.status.readyReplicas}')"
else
  bad "deployment not Available: $(k -n "$NS" get pods -o wide 2>&1)"
fi
[ "$(k -n "$NS" get deploy web -o jsonpath='{.status.readyReplicas}')" = 2 ] && ok "readyReplicas=2" || bad "readyReplicas != 2"

for ip in $(k -n "$NS" get pods -l app=web -o jsonpath='{.items[*].status.podIP}'); do
  check "pod IP $ip:8080 from host" curl -sf -m 5 "http://$ip:8080/"
done

CIP="$(k -n "$NS" get svc web -o jsonpath='{.spec.clusterIP}')"
NODE="$(k -n "$NS" get pod single -o jsonpath='{.spec.nodeName}')"
ND="$(dirname "$KC")/node"   # node-up.sh layout; marks whether it started a kube-proxy
if [ ! -d "$ND" ] || [ -f "$ND/kube-proxy.wanted" ]; then
  # (kube-proxy programs a new Service within its sync: give it 10 s; the
  # check below then reports the outcome)
  wait_until 10 "ClusterIP $CIP:80 answers from the host" quiet curl -sf -m 2 "http://$CIP:80/"
  check "ClusterIP $CIP:80 from host (kube-proxy)" curl -sf -m 5 "http://$CIP:80/"
  check "ClusterIP $CIP:80 from a pod (exec wget)" k -n "$NS" exec single -- timeout 5 wget -qO- "http://$CIP:80/"
else
  echo "SKIP ClusterIP checks: node-up.sh started no kube-proxy for this cluster (another one owns this machine's iptables)"
fi

# --- Job
k -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: job}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: c, image: $IMAGE, imagePullPolicy: Never, command: [sh, -c, 'echo job-done-\$((6*7))']}
YAML
t0=$(now_ms)
if k -n "$NS" wait --for=condition=Complete job/job --timeout=90s >/dev/null; then
  ok "job Complete in $(( $(now_ms) - t0 ))ms"
else
  bad "job not Complete: $(k -n "$NS" get pods -o wide 2>&1)"
fi

# --- logs, exec, port-forward (apiserver -> kubelet with client cert)
check "kubectl logs job" sh -c "kubectl --kubeconfig '$KC' -n '$NS' logs job/job | grep -x job-done-42"
WEB_POD="$(k -n "$NS" get pods -l app=web -o jsonpath='{.items[0].metadata.name}')"
check "kubectl logs deploy pod (httpd access log)" sh -c "kubectl --kubeconfig '$KC' -n '$NS' logs '$WEB_POD' | grep -m1 -i 'response\|GET\|connect'"
check "kubectl exec" sh -c "kubectl --kubeconfig '$KC' -n '$NS' exec '$WEB_POD' -- cat /var/www/index.html | grep -x 'hello from $WEB_POD'"
check "kubectl exec -i (stdin)" sh -c "echo ping | kubectl --kubeconfig '$KC' -n '$NS' exec -i single -- cat | grep -x ping"
PF_PORT=$(( 30000 + $$ % 20000 ))
k -n "$NS" port-forward "pod/$WEB_POD" "$PF_PORT:8080" >/dev/null 2>&1 &
PF=$!
if wait_until 10 "kubectl port-forward answers on 127.0.0.1:$PF_PORT" quiet curl -sf -m 2 "http://127.0.0.1:$PF_PORT/"; then
  ok "kubectl port-forward"
else
  bad "kubectl port-forward"
fi
kill "$PF" 2>/dev/null; wait "$PF" 2>/dev/null

# --- deleting a pod: kubelet kills it, the Deployment replaces it
t0=$(now_ms)
k -n "$NS" delete pod "$WEB_POD" --wait=true --timeout=60s >/dev/null && ok "pod deleted in $(( $(now_ms) - t0 ))ms" || bad "pod delete"
k -n "$NS" wait --for=condition=Available deploy/web --timeout=60s >/dev/null \
  && [ "$(k -n "$NS" get deploy web -o jsonpath='{.status.readyReplicas}')" = 2 ] && ok "replacement pod ready" || bad "replacement pod"
echo "node: $NODE"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
