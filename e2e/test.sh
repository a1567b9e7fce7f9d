#!/usr/bin/env bash
# e2e/test.sh - every test of the project: unit tests and the end-to-end
# suite against real control planes (etcd + 10 x kube-apiserver and
# kube-controller-manager on loopback) and four real worker nodes (kubelet +
# containerd + runc + CNI bridge on clusters c1, c5, c6 and c7), which this script
# installs (cached in /var/cache/ratio1-kube), starts, and stops again on
# exit. It also builds the operator's image, the sample workloads' images
# and an etcd image offline (e2e/images.sh) and imports them into the nodes.
# Needs root (the worker nodes: containerd, kubelet, iptables, cgroups).
#
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

# Own ports, run dir and pod network, so the tests never touch a running devnet.
export R1KUBE_RUN="${R1KUBE_RUN:-${TMPDIR:-/tmp}/ratio1-kube-test}"
export R1KUBE_API_PORT="${R1KUBE_API_PORT:-26443}"
export R1KUBE_ETCD_PORT="${R1KUBE_ETCD_PORT:-22790}"
export R1KUBE_NODE_PORT="${R1KUBE_NODE_PORT:-20250}"
export R1KUBE_POD_NET="${R1KUBE_POD_NET:-10.223}"
# (all below 32768: the kernel hands out ephemeral ports above it)
# Clusters with a worker node: c1 (the shared operator's tests of running
# pods), c5 and c6 (federation members whose pods really run: PoAI pays
# for them, EDIL's trainer Jobs train on them) and the chart cluster, c7
# (the operator installed by its Helm chart, as a pod, alone on its
# cluster).
export R1_E2E_CHART_CLUSTER=7
export R1_E2E_NODES="1 5 6 $R1_E2E_CHART_CLUSTER"
export R1_OPERATOR_IMAGE=ratio1.local/ratio1-operator:dev

step() { printf '\n==> %s\n' "$*" >&2; }

step "installing the test control plane and worker node (cached after the first run)"
bash e2e/kube/node-install.sh
# CSTORE's etcd in the chart test: this etcd binary, as an offline image
R1_ETCD_IMAGE=$(bash e2e/images.sh ref etcd)
export R1_ETCD_IMAGE

step "installing helm (cached; the chart tests render, lint and install it)"
R1_HELM=$(bash e2e/tools/helm.sh)
export R1_HELM

step "installing protoc if missing (etcd-client compiles etcd's protobufs at build time)"
bash e2e/tools/protoc.sh >/dev/null

step "building"
cargo build --all-targets --locked
cargo build --release --locked --bin ratio1   # the operator image's binary

step "building the images (operator, sample workloads, etcd)"
bash e2e/images.sh build all

step "starting etcd and 10 Kubernetes control planes (c1-c3, c7: single-cluster tests, c4-c6: federation, c8-c9: hostile peers, c10: placement) and nodes on c1, c5, c6, c7"
# The control plane is this run's own: one left running in the run dir
# (another test.sh, e.g. of another checkout, or a killed run) would be
# reused and then stopped by this run's exit. Refuse instead.
if [ -f "$R1KUBE_RUN/etcd.pid" ] && kill -0 "$(cat "$R1KUBE_RUN/etcd.pid")" 2>/dev/null; then
  echo "e2e/test.sh: a control plane already runs in $R1KUBE_RUN (another test run?). Stop it with" \
    "R1KUBE_RUN=$R1KUBE_RUN bash e2e/kube/down.sh, or give this run its own R1KUBE_RUN, R1KUBE_API_PORT," \
    "R1KUBE_ETCD_PORT, R1KUBE_NODE_PORT and R1KUBE_POD_NET." >&2
  exit 1
fi
trap 'step "stopping the test control plane and nodes"; bash e2e/kube/down.sh' EXIT
bash e2e/kube/up.sh 10 >/dev/null
for i in $R1_E2E_NODES; do bash e2e/kube/node-up.sh "$i" >/dev/null; done
bash e2e/images.sh import all

step "running the tests"
cargo test --all-targets --locked --no-fail-fast "$@"
