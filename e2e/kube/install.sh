#!/usr/bin/env bash
# install.sh - fetch and build a real kube-apiserver + kube-controller-manager
# (Kubernetes 1.20.2 from Debian's source package, built with Go 1.15 from
# bullseye) and etcd 3.4 (Debian bookworm), into a cache dir.
#
# Idempotent: every step is skipped when its result is already there; the
# whole script is a no-op when all binaries exist and answer --version.
#
# Env:
#   R1KUBE_CACHE   cache dir (default /var/cache/ratio1-kube)
#   R1KUBE_KEEP_BUILD=1  keep the extracted source tree and Go build
#                         toolchain + cache after a successful build (default:
#                         removed, ~2.5 GB; the downloaded .deb/.dsc files
#                         (~105 MB) are kept, so a rebuild needs no network)
#   R1KUBE_FORCE=1 rebuild even if the binaries exist
#   R1KUBE_NODE=1  also build the worker node's kube-scheduler, kubelet and
#                  kube-proxy (same source, same `make` as whatever else is
#                  missing; e2e/kube/node-install.sh sets this)
set -euo pipefail

CACHE="${R1KUBE_CACHE:-/var/cache/ratio1-kube}"
BIN="$CACHE/bin"
DL="$CACHE/dl"
GO_PKG_VER="1.15"                 # golang-1.15-go from Debian bullseye
GO_SUITE="bullseye"
K8S_SUITE="bookworm"              # kubernetes source 1.20.5+really1.20.2
K8S_SRC="$CACHE/src/kubernetes"
GOROOT_DIR="$CACHE/go$GO_PKG_VER/usr/lib/go-$GO_PKG_VER"
ETCD_ROOT="$CACHE/etcd-root"

log() { printf '[ratio1-kube install] %s\n' "$*" >&2; }
die() { printf '[ratio1-kube install] ERROR: %s\n' "$*" >&2; exit 1; }

have_bin() { # name -> 0 if $BIN/name exists and runs --version
  [ -x "$BIN/$1" ] && "$BIN/$1" --version >/dev/null 2>&1
}

KUBE_BINS=(kube-apiserver kube-controller-manager)
[ "${R1KUBE_NODE:-0}" = 1 ] && KUBE_BINS+=(kube-scheduler kubelet kube-proxy)

all_done() {
  local b
  for b in "${KUBE_BINS[@]}" etcd; do have_bin "$b" || return 1; done
}

if [ "${R1KUBE_FORCE:-0}" != 1 ] && all_done; then
  log "already installed in $BIN:"
  for b in "${KUBE_BINS[@]}" etcd; do
    printf '  %s: %s\n' "$b" "$("$BIN/$b" --version 2>&1 | head -n1)" >&2
  done
  exit 0
fi

mkdir -p "$BIN" "$DL" "$CACHE/src" || die "cannot create $CACHE (set R1KUBE_CACHE to a writable dir)"

# One install at a time per cache: a second install.sh (devnet and tests
# started together) waits for the first instead of building the same tree
# beside it, then finds what the first one built.
exec 9>"$CACHE/install.lock"
if ! flock -n 9; then
  log "another install.sh runs on $CACHE: waiting for it (at most 60 min)"
  flock -w 3600 9 || die "another install.sh still holds $CACHE/install.lock after 60 min"
fi

# ---------------------------------------------------------------- apt setup
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) for: $*"; fi
}

APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    as_root apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
  fi
}

# Tools needed for the build (CGO is off: no C compiler needed).
need_pkgs=()
for p in make:make rsync:rsync dpkg-source:dpkg-dev curl:curl openssl:openssl xz:xz-utils; do
  command -v "${p%%:*}" >/dev/null 2>&1 || need_pkgs+=("${p#*:}")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  apt_update_once
  log "apt-get install ${need_pkgs[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" \
    || die "apt-get install ${need_pkgs[*]} failed"
fi

# Extra apt sources: bullseye binaries (for golang-1.15) and bookworm
# deb-src (for the kubernetes source package). Pinned low so that nothing
# from bullseye is ever installed/upgraded implicitly.
SRC_FILE=/etc/apt/sources.list.d/ratio1-kube.sources
PIN_FILE=/etc/apt/preferences.d/ratio1-kube.pref
ensure_apt_sources() {
  local ok=1
  apt-cache show "golang-$GO_PKG_VER-go/$GO_SUITE" >/dev/null 2>&1 || ok=0
  apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Version: 1\.20\.' || ok=0
  [ "$ok" = 1 ] && return 0
  log "adding apt sources ($SRC_FILE): $GO_SUITE (deb), $K8S_SUITE (deb-src)"
  as_root tee "$SRC_FILE" >/dev/null <<SRC
# added by e2e/kube/install.sh
Types: deb
URIs: http://deb.debian.org/debian
Suites: $GO_SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $K8S_SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  as_root tee "$PIN_FILE" >/dev/null <<PIN
# added by e2e/kube/install.sh: never pick $GO_SUITE packages implicitly
Package: *
Pin: release n=$GO_SUITE
Pin-Priority: 50
PIN
  APT_UPDATED=0
  apt_update_once
  apt-cache show "golang-$GO_PKG_VER-go/$GO_SUITE" >/dev/null 2>&1 \
    || die "golang-$GO_PKG_VER-go not found in $GO_SUITE after adding sources"
  apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Version: 1\.20\.' \
    || die "kubernetes 1.20 source package not found (deb-src $K8S_SUITE)"
}

# apt-get download/source as root warns about the _apt sandbox; run as root.
APT_DL=(apt-get -q -o APT::Sandbox::User=root)

# ---------------------------------------------------------------- etcd
if ! have_bin etcd; then
  ensure_apt_sources
  if ! ls "$DL"/etcd-server_*.deb >/dev/null 2>&1; then
    log "downloading etcd-server ($K8S_SUITE)"
    (cd "$DL" && "${APT_DL[@]}" download "etcd-server/$K8S_SUITE") || die "apt-get download etcd-server failed"
  fi
  rm -rf "$ETCD_ROOT" && mkdir -p "$ETCD_ROOT"
  dpkg -x "$(ls "$DL"/etcd-server_*.deb | head -n1)" "$ETCD_ROOT"
  install -m 0755 "$ETCD_ROOT/usr/bin/etcd" "$BIN/etcd"
  rm -rf "$ETCD_ROOT"
  have_bin etcd || die "extracted etcd does not run"
  log "etcd: $("$BIN/etcd" --version | head -n1)"
fi

# ---------------------------------------------------------------- kube build
WHAT_BINS=()
for b in "${KUBE_BINS[@]}"; do
  if [ "${R1KUBE_FORCE:-0}" = 1 ] || ! have_bin "$b"; then WHAT_BINS+=("$b"); fi
done
if [ ${#WHAT_BINS[@]} -gt 0 ]; then
  ensure_apt_sources

  # Go 1.15: newer Go (1.19 in bookworm) builds an apiserver that segfaults
  # on custom resources (old modern-go/reflect2 in k8s 1.20's vendor/).
  if ! "$GOROOT_DIR/bin/go" version >/dev/null 2>&1; then
    for p in go src; do
      if ! ls "$DL"/golang-$GO_PKG_VER-${p}_*.deb >/dev/null 2>&1; then
        log "downloading golang-$GO_PKG_VER-$p ($GO_SUITE)"
        (cd "$DL" && "${APT_DL[@]}" download "golang-$GO_PKG_VER-$p/$GO_SUITE") \
          || die "apt-get download golang-$GO_PKG_VER-$p/$GO_SUITE failed"
      fi
    done
    rm -rf "$CACHE/go$GO_PKG_VER" && mkdir -p "$CACHE/go$GO_PKG_VER"
    for p in go src; do
      dpkg -x "$(ls "$DL"/golang-$GO_PKG_VER-${p}_*.deb | head -n1)" "$CACHE/go$GO_PKG_VER"
    done
    "$GOROOT_DIR/bin/go" version >/dev/null || die "extracted Go $GO_PKG_VER does not run"
  fi
  log "toolchain: $("$GOROOT_DIR/bin/go" version)"

  if [ ! -f "$K8S_SRC/.kube-test-env-extracted" ]; then
    if ! ls "$DL"/kubernetes_*.dsc >/dev/null 2>&1; then
      log "downloading kubernetes source package ($K8S_SUITE, ~35 MB)"
      (cd "$DL" && "${APT_DL[@]}" source --download-only "kubernetes/$K8S_SUITE") \
        || die "apt-get source kubernetes/$K8S_SUITE failed"
    fi
    rm -rf "$K8S_SRC"
    log "extracting kubernetes source"
    # (gpgv "Can't check signature" noise is expected: apt already verified hashes)
    dpkg-source -q -x "$(ls "$DL"/kubernetes_*.dsc | head -n1)" "$K8S_SRC" >"$CACHE/dpkg-source.log" 2>&1 \
      || { cat "$CACHE/dpkg-source.log" >&2; die "dpkg-source -x failed"; }
    touch "$K8S_SRC/.kube-test-env-extracted"
  fi

  log "building ${WHAT_BINS[*]} (takes ~5-8 min on 2 cores; log: $CACHE/build.log)"
  start=$(date +%s)
  (
    cd "$K8S_SRC"
    mkdir -p .go/src/k8s.io
    [ -L .go/src/k8s.io/kubernetes ] || ln -s ../../.. .go/src/k8s.io/kubernetes
    export GOROOT="$GOROOT_DIR" PATH="$GOROOT_DIR/bin:$PATH" GOPATH="$K8S_SRC/.go" \
           CGO_ENABLED=0 HOME="$CACHE/home" GO111MODULE=
    # dockerless: a kubelet without dockershim and cAdvisor's docker plugin,
    # whose docker probe sleeps 5 x 1 s at every kubelet start when there is
    # no docker (the tag only changes pkg/kubelet)
    export GOFLAGS=-tags=dockerless
    export GOLDFLAGS="-s -w"   # strip symbols (k8s default too)
    mkdir -p "$HOME"
    make WHAT="${WHAT_BINS[*]/#/cmd/}"
  ) >"$CACHE/build.log" 2>&1 || { tail -n 30 "$CACHE/build.log" >&2; die "build failed, see $CACHE/build.log"; }
  for b in "${WHAT_BINS[@]}"; do
    install -m 0755 "$K8S_SRC/_output/bin/$b" "$BIN/$b"
    have_bin "$b" || die "built $b does not run"
  done
  log "build took $(( $(date +%s) - start ))s"
  if [ "${R1KUBE_KEEP_BUILD:-0}" != 1 ]; then
    log "removing build tree, Go toolchain and Go cache (set R1KUBE_KEEP_BUILD=1 to keep; .debs stay in $DL)"
    rm -rf "$K8S_SRC" "$CACHE/home" "$CACHE/go$GO_PKG_VER"
  fi
fi

all_done || die "installation incomplete"
log "installed in $BIN:"
for b in "${KUBE_BINS[@]}" etcd; do
  printf '  %s: %s (%s)\n' "$b" "$("$BIN/$b" --version 2>&1 | head -n1)" "$(du -h "$BIN/$b" | cut -f1)" >&2
done
