#!/usr/bin/env bash
# node-install.sh - everything node-up.sh needs for ONE real worker node per
# cluster, cached in $R1KUBE_CACHE (run as root; idempotent, <1 s when
# everything is cached):
#   - kube-scheduler, kubelet, kube-proxy v1.20.2: built by install.sh
#     (R1KUBE_NODE=1) from the same Debian source with Go 1.15, in the
#     same `make` as kube-apiserver/kube-controller-manager when those are
#     missing too
#   - containerd 1.6, containerd-shim-runc-v2, ctr, runc (Debian bookworm,
#     unpacked privately with dpkg -x: no system service, no /etc/containerd)
#   - CNI plugins bridge, host-local, loopback, portmap
#     (containernetworking-plugins, dpkg -x) -> $CACHE/cni/bin
#   - two images, built locally because no registry is reachable, as
#     docker-archive tarballs in $CACHE/images (imported by node-up.sh):
#       ratio1.local/pause:3.4     /pause from build/pause/linux/pause.c (gcc -static)
#       ratio1.local/busybox:1.35  busybox-static with all applets linked in /bin
#   - system packages (apt-get install, only if missing): iptables, conntrack,
#     gcc + libc6-dev (for the static pause binary)
#
# Env: R1KUBE_CACHE (default /var/cache/ratio1-kube) and the
#      install.sh variables (R1KUBE_KEEP_BUILD, R1KUBE_FORCE).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${R1KUBE_CACHE:-/var/cache/ratio1-kube}"
BIN="$CACHE/bin"
DL="$CACHE/dl"
CNI_BIN="$CACHE/cni/bin"
IMG="$CACHE/images"
SUITE=bookworm
PAUSE_IMAGE="ratio1.local/pause:3.4"
BUSYBOX_IMAGE="ratio1.local/busybox:1.35"

log() { printf '[ratio1-kube node-install] %s\n' "$*" >&2; }
die() { printf '[ratio1-kube node-install] ERROR: %s\n' "$*" >&2; exit 1; }
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) for: $*"; fi
}

# ------------------------------------------------------------ kube binaries
R1KUBE_NODE=1 bash "$HERE/install.sh"

mkdir -p "$BIN" "$DL" "$CNI_BIN" "$IMG"

# ------------------------------------------------------------ system packages
need=()
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v conntrack >/dev/null 2>&1 || need+=(conntrack)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -n "$(ls /usr/lib/*/libc.a 2>/dev/null)" ] || need+=(libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  as_root apt-get update -qq || die "apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
    || die "apt-get install ${need[*]} failed"
fi

# ------------------------------------------------------------ containerd, runc, CNI, busybox
have_node_bins() {
  local b
  for b in containerd containerd-shim-runc-v2 ctr runc; do [ -x "$BIN/$b" ] || return 1; done
  for b in bridge host-local loopback portmap; do [ -x "$CNI_BIN/$b" ] || return 1; done
  [ -x "$CACHE/busybox" ]
}
if ! have_node_bins; then
  for p in containerd runc containernetworking-plugins busybox-static; do
    if ! ls "$DL/${p}_"*.deb >/dev/null 2>&1; then
      log "downloading $p ($SUITE)"
      (cd "$DL" && apt-get -q -o APT::Sandbox::User=root download "$p/$SUITE") >/dev/null \
        || die "apt-get download $p/$SUITE failed"
    fi
  done
  x="$CACHE/node-root"; rm -rf "$x"; mkdir -p "$x"
  for p in containerd runc containernetworking-plugins busybox-static; do
    dpkg -x "$(ls "$DL/${p}_"*.deb | head -n1)" "$x"
  done
  for b in containerd containerd-shim-runc-v2 ctr; do install -m 0755 "$x/usr/bin/$b" "$BIN/$b"; done
  install -m 0755 "$x/usr/sbin/runc" "$BIN/runc"
  for b in bridge host-local loopback portmap; do install -m 0755 "$x/usr/lib/cni/$b" "$CNI_BIN/$b"; done
  install -m 0755 "$x/bin/busybox" "$CACHE/busybox"
  rm -rf "$x"
  have_node_bins || die "node binaries incomplete"
fi

# ------------------------------------------------------------ images
# shellcheck source=e2e/kube/mkimage.sh
. "$HERE/mkimage.sh"
tar_root() { chown -R 0:0 "$1"; }

if [ ! -s "$IMG/pause.tar" ]; then
  log "building $PAUSE_IMAGE (static pause.c from the kubernetes source)"
  t="$(mktemp -d)"
  tar -xzf "$(ls "$DL"/kubernetes_*.orig.tar.gz | head -n1)" -C "$t" --wildcards '*/build/pause/linux/pause.c' \
    || die "pause.c not found in the kubernetes source tarball"
  mkdir -p "$t/rootfs"
  gcc -Os -Wall -Werror -static -DVERSION=v3.4-ratio1 -o "$t/rootfs/pause" "$t"/*/build/pause/linux/pause.c \
    || die "gcc -static pause.c failed (needs gcc + libc6-dev)"
  strip "$t/rootfs/pause" 2>/dev/null || true
  tar_root "$t/rootfs"; mkimage "$PAUSE_IMAGE" "$IMG/pause.tar" "$t/rootfs" '["/pause"]' 'null'
  rm -rf "$t"
fi

if [ ! -s "$IMG/busybox.tar" ]; then
  log "building $BUSYBOX_IMAGE (busybox-static)"
  t="$(mktemp -d)"; r="$t/rootfs"
  mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/root" "$r/var/www" "$r/proc" "$r/sys" "$r/dev"
  chmod 1777 "$r/tmp"
  install -m 0755 "$CACHE/busybox" "$r/bin/busybox"
  for a in $("$CACHE/busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
  echo 'ratio1 e2e busybox' >"$r/var/www/index.html"
  tar_root "$r"; mkimage "$BUSYBOX_IMAGE" "$IMG/busybox.tar" "$r" 'null' '["sh"]'
  rm -rf "$t"
fi
printf '%s\n%s\n' "$PAUSE_IMAGE" "$BUSYBOX_IMAGE" >"$IMG/IMAGES"

log "node components in $BIN, $CNI_BIN, $IMG:"
for b in kube-scheduler kubelet kube-proxy; do printf '  %s: %s\n' "$b" "$("$BIN/$b" --version 2>&1 | head -n1)" >&2; done
printf '  containerd: %s\n' "$("$BIN/containerd" --version)" >&2
printf '  runc: %s\n' "$("$BIN/runc" --version | head -n1)" >&2
printf '  images: %s\n' "$(tr '\n' ' ' <"$IMG/IMAGES")" >&2
