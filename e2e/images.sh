#!/usr/bin/env bash
# e2e/images.sh [build|import|ref] [operator|samples|etcd|all] - the container images
# of the project, built here, offline (no registry, no daemon), as
# `docker save` archives in $R1_IMAGES_DIR, and (import) loaded into the
# containerd of every worker node that e2e/kube/node-up.sh runs in $R1KUBE_RUN.
#
#   ratio1.local/ratio1-operator:dev  the operator: the `ratio1` binary
#       ($R1_OPERATOR_BIN, default the release build) on a minimal root
#       filesystem holding only the shared libraries `ldd` lists for it, an
#       /etc/passwd with `nonroot` (uid/gid 65532) and /tmp; runs as
#       65532:65532 with `ratio1 operator` as its command, like the
#       Dockerfile's distroless image.
#   ratio1.local/model-server:0.1     a small model-serving endpoint (busybox
#       httpd on :8080): GET / (model card), GET /healthz, GET
#       /cgi-bin/predict?text=... (a lexicon sentiment model answering JSON).
#   ratio1.local/batch-embed:0.1      a batch Job: embeds a corpus (R1FS input
#       dir if mounted, else a built-in one) into hashed bag-of-words vectors
#       and writes the result to $OUT (default /tmp/out/result.json), to
#       stdout and to the termination message (pod status shows it).
#
#   ratio1.local/etcd:<version>       CSTORE's etcd for the Helm chart's
#       StatefulSet (value etcd.image): the etcd binary the control planes
#       use ($R1KUBE_CACHE/bin/etcd, Debian's etcd-server, from
#       e2e/kube/install.sh), tagged with its version, on a minimal root
#       filesystem like the operator's (the binary and what `ldd` lists);
#       /usr/local/bin/etcd as its command, as in etcd's own images
#       (gcr.io/etcd-development/etcd), runs as 65532:65532.
#       `images.sh ref etcd` prints the reference.
#
# Both sample images run as uid 65532 and exit at once on SIGTERM (their
# entrypoint traps it; busybox as PID 1 would otherwise ignore it and every
# pod deletion would wait out its grace period).
#
# Rebuilt only when an input changed (the binaries, this script, busybox).
# Needs e2e/kube/node-install.sh first (busybox, etcd); import needs root.
# Env: R1_IMAGES_DIR (default ${CARGO_TARGET_DIR:-./target}/images),
#      R1_OPERATOR_BIN, R1KUBE_CACHE, R1KUBE_RUN.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
ACTION="${1:-build}"; WHAT="${2:-all}"
CACHE="${R1KUBE_CACHE:-/var/cache/ratio1-kube}"
RUN="${R1KUBE_RUN:-${TMPDIR:-/tmp}/ratio1-kube}"
OUT="${R1_IMAGES_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/images}"
OPERATOR_BIN="${R1_OPERATOR_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/ratio1}"
BUSYBOX="$CACHE/busybox"
OPERATOR_IMAGE=ratio1.local/ratio1-operator:dev
ETCD_BIN="$CACHE/bin/etcd"
SERVER_IMAGE=ratio1.local/model-server:0.1
JOB_IMAGE=ratio1.local/batch-embed:0.1

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }
USAGE="usage: $0 [build|import|ref] [operator|samples|etcd|all]"
case "$ACTION" in build|import|ref) ;; *) die "$USAGE" ;; esac
case "$WHAT" in operator|samples|etcd|all) ;; *) die "$USAGE" ;; esac

# etcd_image: ratio1.local/etcd:<the version of $ETCD_BIN>
etcd_image() {
  local v
  [ -x "$ETCD_BIN" ] || die "$ETCD_BIN missing: run e2e/kube/install.sh first"
  v="$("$ETCD_BIN" --version | awk '/^etcd Version:/ {print $3}')"
  [ -n "$v" ] || die "cannot read the version of $ETCD_BIN"
  echo "ratio1.local/etcd:$v"
}
if [ "$ACTION" = ref ]; then
  case "$WHAT" in
    operator) echo "$OPERATOR_IMAGE" ;;
    etcd) etcd_image ;;
    samples) echo "$SERVER_IMAGE"; echo "$JOB_IMAGE" ;;
    all) echo "$OPERATOR_IMAGE"; echo "$SERVER_IMAGE"; echo "$JOB_IMAGE"; etcd_image ;;
  esac
  exit 0
fi
# shellcheck source=e2e/kube/mkimage.sh
. "$ROOT/e2e/kube/mkimage.sh"
mkdir -p "$OUT"

# fresh OUT.tar KEY: true when OUT.tar was built from inputs with this key
fresh() { [ -s "$1" ] && [ "$(cat "$1.key" 2>/dev/null)" = "$2" ]; }
self_sum() { sha256sum "$ROOT/e2e/images.sh" "$ROOT/e2e/kube/mkimage.sh" | sha256sum | cut -c1-16; }

# busybox_root DIR: a busybox root filesystem (all applets in /bin), with
# the nonroot user of the operator image
busybox_root() {
  local r="$1" a
  [ -x "$BUSYBOX" ] || die "$BUSYBOX missing: run e2e/kube/node-install.sh first"
  mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/proc" "$r/sys" "$r/dev"
  chmod 1777 "$r/tmp"
  install -m 0755 "$BUSYBOX" "$r/bin/busybox"
  for a in $("$BUSYBOX" --list); do [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"; done
  passwd_group "$r"
}
passwd_group() {
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$1/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$1/etc/group"
}

# binary_root ROOTFS BIN NAME: a root filesystem holding BIN as
# /usr/local/bin/NAME, exactly the shared objects it needs, the nonroot
# user and /tmp
binary_root() {
  local r="$1" bin="$2" name="$3"
  mkdir -p "$r/usr/local/bin" "$r/etc" "$r/tmp"
  chmod 1777 "$r/tmp"
  install -m 0755 "$bin" "$r/usr/local/bin/$name"
  rootfs_with_libs "$r" "$bin"
  passwd_group "$r"
}

# rootfs_with_libs ROOTFS BIN: copy into ROOTFS exactly the shared objects
# the dynamic loader resolves for BIN
rootfs_with_libs() {
  local r="$1" bin="$2" lib
  for lib in $(ldd "$bin" | awk '/=>/ {print $3} !/=>/ && $1 ~ /^\// {print $1}' | sort -u); do
    [ -f "$lib" ] || die "ldd names $lib, which does not exist"
    mkdir -p "$r$(dirname "$lib")"
    cp -L "$lib" "$r$lib"
  done
}

build_operator() {
  local out="$OUT/ratio1-operator.tar" key t r
  [ -x "$OPERATOR_BIN" ] || die "$OPERATOR_BIN missing: cargo build --release --locked --bin ratio1 (or set R1_OPERATOR_BIN)"
  key="$(sha256sum "$OPERATOR_BIN" | cut -c1-16)-$(self_sum)"
  if fresh "$out" "$key"; then log "$OPERATOR_IMAGE up to date"; return; fi
  t="$(mktemp -d)"; r="$t/rootfs"
  binary_root "$r" "$OPERATOR_BIN" ratio1
  mkdir -p "$r/home/nonroot"
  chown -R 0:0 "$r"; chown 65532:65532 "$r/home/nonroot"
  # does it start in that root, with nothing else? (chroot: what the
  # container sees, minus the namespaces)
  chroot --userspec=65532:65532 "$r" /usr/local/bin/ratio1 --version >/dev/null 2>&1 \
    || chroot --userspec=65532:65532 "$r" /usr/local/bin/ratio1 --help >/dev/null \
    || die "the operator binary does not run in its minimal root filesystem"
  mkimage "$OPERATOR_IMAGE" "$out" "$r" '["/usr/local/bin/ratio1"]' '["operator"]' '65532:65532' \
    '"ExposedPorts":{"8080/tcp":{}}'
  echo "$key" >"$out.key"
  log "$OPERATOR_IMAGE: $(du -h "$out" | cut -f1), the binary and $(ldd "$OPERATOR_BIN" | grep -c "/") shared objects from ldd: $(ldd "$OPERATOR_BIN" | awk '/\// {print $1}' | tr "\n" " ")"
  rm -rf "$t"
}

build_etcd() {
  local out="$OUT/etcd.tar" ref key t r
  ref="$(etcd_image)"
  key="$(sha256sum "$ETCD_BIN" | cut -c1-16)-$(self_sum)"
  if fresh "$out" "$key"; then log "$ref up to date"; return; fi
  t="$(mktemp -d)"; r="$t/rootfs"
  binary_root "$r" "$ETCD_BIN" etcd
  mkdir -p "$r/var/lib/etcd"
  chown -R 0:0 "$r"; chown 65532:65532 "$r/var/lib/etcd"; chmod 0700 "$r/var/lib/etcd"
  chroot --userspec=65532:65532 "$r" /usr/local/bin/etcd --version >/dev/null \
    || die "etcd does not run in its minimal root filesystem"
  mkimage "$ref" "$out" "$r" 'null' '["/usr/local/bin/etcd"]' '65532:65532' \
    '"ExposedPorts":{"2379/tcp":{},"2380/tcp":{}}'
  echo "$key" >"$out.key"
  log "$ref: $(du -h "$out" | cut -f1), the binary and $(ldd "$ETCD_BIN" | grep -c "/") shared objects from ldd"
  rm -rf "$t"
}

build_server() {
  local out="$OUT/model-server.tar" key t r
  key="$(sha256sum "$BUSYBOX" | cut -c1-16)-$(self_sum)"
  if fresh "$out" "$key"; then log "$SERVER_IMAGE up to date"; return; fi
  t="$(mktemp -d)"; r="$t/rootfs"
  busybox_root "$r"
  mkdir -p "$r/www/v1" "$r/www/cgi-bin"
  cat >"$r/www/index.html" <<'HTML'
{"model":"sentiment-lexicon","version":"0.1","task":"text-classification","labels":["negative","neutral","positive"],"endpoints":["/cgi-bin/predict?text=...","/healthz"]}
HTML
  echo ok >"$r/www/healthz"
  cat >"$r/www/cgi-bin/predict" <<'CGI'
#!/bin/sh
# A tiny lexicon model: +1 per positive word, -1 per negative word.
text=$(printf '%s' "${QUERY_STRING#*text=}" | sed 's/&.*//; s/+/ /g; s/%20/ /g' | tr 'A-Z' 'a-z')
# The lexicon R1FS delivers (word<TAB>score per line) when mounted, else
# the built-in one.
lexicon="${LEXICON:-/models/sentiment}"
score=0
if [ -f "$lexicon" ]; then
  source=r1fs
  for w in $text; do
    s=$(awk -F '\t' -v w="$w" '$1 == w { print $2; exit }' "$lexicon")
    score=$((score + ${s:-0}))
  done
else
  source=builtin
  for w in $text; do
    case "$w" in
      good|great|love|excellent|happy|fast|nice|wonderful|best|like) score=$((score + 1)) ;;
      bad|awful|hate|terrible|sad|slow|poor|worst|broken|dislike) score=$((score - 1)) ;;
    esac
  done
fi
if [ "$score" -gt 0 ]; then label=positive; elif [ "$score" -lt 0 ]; then label=negative; else label=neutral; fi
printf 'Content-Type: application/json\r\n\r\n'
printf '{"label":"%s","score":%d,"served_by":"%s","model":"%s","lexicon":"%s"}\n' "$label" "$score" "$(hostname)" "${MODEL_NAME:-sentiment-lexicon}" "$source"
CGI
  chmod 0755 "$r/www/cgi-bin/predict"
  cat >"$r/bin/serve" <<'SH'
#!/bin/sh
# PID 1: serve until SIGTERM, then exit at once (busybox as PID 1 would
# ignore SIGTERM and every pod deletion would wait out its grace period).
port="${PORT:-8080}"
echo "model-server: serving ${MODEL_NAME:-sentiment-lexicon} on :$port (models mounted: ${MODELS:-none})"
httpd -f -v -p "$port" -h /www &
pid=$!
trap 'kill $pid 2>/dev/null; exit 0' TERM INT
wait $pid
SH
  chmod 0755 "$r/bin/serve"
  chown -R 0:0 "$r"
  mkimage "$SERVER_IMAGE" "$out" "$r" '["/bin/serve"]' 'null' '65532:65532' '"ExposedPorts":{"8080/tcp":{}}'
  echo "$key" >"$out.key"
  log "$SERVER_IMAGE: $(du -h "$out" | cut -f1)"
  rm -rf "$t"
}

build_job() {
  local out="$OUT/batch-embed.tar" key t r
  key="$(sha256sum "$BUSYBOX" | cut -c1-16)-$(self_sum)"
  if fresh "$out" "$key"; then log "$JOB_IMAGE up to date"; return; fi
  t="$(mktemp -d)"; r="$t/rootfs"
  busybox_root "$r"
  mkdir -p "$r/corpus"
  printf 'the model serves fast answers\nfederated clusters share compute\nevery node earns by availability\n' >"$r/corpus/builtin.txt"
  cat >"$r/bin/embed" <<'SH'
#!/bin/sh
# A batch job: embed every line of the corpus as a 8-dim hashed bag of
# words, write a JSON result, print it, and leave a summary as the
# container's termination message (shown in the pod's status).
set -e
trap 'exit 143' TERM INT
input="${INPUT:-/data/corpus}"; [ -d "$input" ] && [ -n "$(ls -A "$input" 2>/dev/null)" ] || input=/corpus
out="${OUT:-/tmp/out}"; mkdir -p "$out"
n=0; json=""
for f in "$input"/*; do
  while IFS= read -r line || [ -n "$line" ]; do
    [ -n "$line" ] || continue
    v="0 0 0 0 0 0 0 0"
    for w in $line; do
      h=$(printf '%s' "$w" | md5sum | cut -c1-2); b=$(( 0x$h % 8 ))
      v=$(echo "$v" | awk -v b="$b" '{ $(b+1) += 1; print }')
    done
    n=$((n + 1))
    json="$json${json:+,}{\"line\":$n,\"vector\":[$(echo "$v" | tr ' ' ',')]}"
  done <"$f"
done
digest=$(printf '%s' "$json" | sha256sum | cut -c1-16)
result="{\"embedded\":$n,\"dims\":8,\"digest\":\"$digest\",\"worker\":\"$(hostname)\",\"vectors\":[$json]}"
printf '%s\n' "$result" >"$out/result.json"
printf '%s\n' "$result"
printf 'embedded=%s digest=%s result=%s/result.json' "$n" "$digest" "$out" >/dev/termination-log 2>/dev/null || true
SH
  chmod 0755 "$r/bin/embed"
  chown -R 0:0 "$r"
  mkimage "$JOB_IMAGE" "$out" "$r" '["/bin/embed"]' 'null' '65532:65532'
  echo "$key" >"$out.key"
  log "$JOB_IMAGE: $(du -h "$out" | cut -f1)"
  rm -rf "$t"
}

tars=()
if [ "$WHAT" = operator ] || [ "$WHAT" = all ]; then build_operator; tars+=("$OUT/ratio1-operator.tar"); fi
if [ "$WHAT" = samples ] || [ "$WHAT" = all ]; then build_server; build_job; tars+=("$OUT/model-server.tar" "$OUT/batch-embed.tar"); fi
if [ "$WHAT" = etcd ] || [ "$WHAT" = all ]; then build_etcd; tars+=("$OUT/etcd.tar"); fi

if [ "$ACTION" = import ]; then
  [ "$(id -u)" = 0 ] || die "import needs root (each node's containerd socket)"
  shopt -s nullglob
  n=0
  for sock in "$RUN"/c*/node/containerd.sock; do
    for tar in "${tars[@]}"; do
      "$CACHE/bin/ctr" -a "$sock" -n k8s.io images import --snapshotter overlayfs "$tar" >/dev/null \
        || die "importing $tar into $sock failed"
    done
    n=$((n + 1))
  done
  [ "$n" -gt 0 ] || die "no running node in $RUN (e2e/kube/node-up.sh I)"
  log "imported $(for t in "${tars[@]}"; do basename "$t" .tar; done | tr '\n' ' ')into $n node(s) of $RUN"
fi
