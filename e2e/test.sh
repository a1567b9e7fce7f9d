#!/usr/bin/env bash
# e2e/test.sh - every test of the project: unit tests and the end-to-end
# suite against a real control plane (etcd + 3 x kube-apiserver and
# kube-controller-manager on loopback), which this script installs (cached
# in /var/cache/ratio1-kube), starts, and stops again on exit.
#
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

# Own ports and run dir, so the tests never touch a running devnet.
export R1KUBE_RUN="${R1KUBE_RUN:-${TMPDIR:-/tmp}/ratio1-kube-test}"
export R1KUBE_API_PORT="${R1KUBE_API_PORT:-26443}"
export R1KUBE_ETCD_PORT="${R1KUBE_ETCD_PORT:-22790}"
# (all below 32768: the kernel hands out ephemeral ports above it)

step() { printf '\n==> %s\n' "$*" >&2; }

step "installing the test control plane (cached after the first run)"
bash e2e/kube/install.sh

step "installing helm (cached; the chart tests render and lint it)"
R1_HELM=$(bash e2e/tools/helm.sh)
export R1_HELM

step "building"
cargo build --all-targets --locked

step "starting etcd and 9 Kubernetes control planes (c1-c3: single-cluster tests, c4-c6: federation, c8-c9: hostile peers)"
trap 'step "stopping the test control plane"; bash e2e/kube/down.sh' EXIT
bash e2e/kube/up.sh 9 >/dev/null

step "running the tests"
cargo test --all-targets --locked --no-fail-fast "$@"
