#!/usr/bin/env bash
# e2e/bench-deeploy.sh - Deeploy's benchmark on a control plane of its own
# (3 clusters: etcd, kube-apiservers and kube-controller-managers on
# 127.0.0.1; no worker node: nothing measured here needs a pod to run), one
# operator process per cluster (release build) with its own CSTORE etcd,
# federated over libp2p on loopback, heartbeats every 5 s as in production.
#
# Prints a table (the ignored test `bench_deeploy` in e2e/tests/deeploy.rs):
#   - apply of an R1Pipeline on A until its Deployment exists on the target
#     (B or C), one at a time (R1_BENCH_SINGLES, 20) and R1_BENCH_BURST (100)
#     at once, p50/p99, against a plain Deployment created directly on B in
#     the same run;
#   - failover (R1_BENCH_FAILOVERS, 3): the target's operator killed, until
#     the Deployment exists on the other cluster, against the detection
#     window (3 heartbeat intervals = 15 s).
# Every wait has a deadline; a failure fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
export R1KUBE_RUN="${TMPDIR:-/tmp}/ratio1-kube-bench-deeploy" R1KUBE_API_PORT=25443 R1KUBE_ETCD_PORT=23790
log() { printf '[bench-deeploy] %s\n' "$*" >&2; }
bash e2e/kube/install.sh >&2
bash e2e/tools/protoc.sh >/dev/null
log "building the operator and the e2e harness (release)"
cargo test --release --locked --test e2e --no-run >&2
trap 'bash e2e/kube/down.sh >/dev/null 2>&1 || log "R1KUBE_RUN=$R1KUBE_RUN bash e2e/kube/down.sh failed"' EXIT
bash e2e/kube/up.sh 3 >&2
R1_BENCH_CLUSTERS=1,2,3 cargo test --release --locked --test e2e bench_deeploy -- --ignored --nocapture --test-threads 1 \
  2> >(grep -v '^test \|^running \|^$' >&2) | grep -v '^test \|^running \|^$\|^test result'
