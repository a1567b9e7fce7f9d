#!/usr/bin/env bash
# e2e/dockerfile-check.sh - build the project's Dockerfile, unchanged, with
# a local builder (buildah, a Debian package), where no registry is
# reachable: its two base images are replaced by stand-ins made here.
#
#   rust:1-bookworm              -> Debian bookworm (debootstrap, minbase +
#                                   gcc, libc6-dev, ca-certificates, git,
#                                   curl, pkg-config) + this machine's Rust
#                                   toolchain (Debian packages no Rust >= 1.89,
#                                   the crate's rust-version), CARGO_HOME
#                                   /usr/local/cargo as in the official image,
#                                   and this machine's CA bundle (crates.io is
#                                   reached through its network, which may
#                                   inspect TLS, as a corporate proxy does)
#   gcr.io/distroless/cc-debian12:nonroot
#                                -> glibc, libgcc_s, CA certificates and the
#                                   nonroot user (65532) from that same
#                                   bookworm root, nothing else
#
# Then `buildah bud --pull=never` of the Dockerfile (crates come from
# crates.io and protoc from Debian inside the build, as for a user), and the
# built image's binary is run as uid 65532. Not part of e2e/test.sh (it
# compiles the operator twice in release mode: ~20 min on 2 cores); the
# image the tests run is e2e/images.sh's offline equivalent.
# Needs root. Work dir: $R1_DOCKERFILE_CHECK_DIR (default
# /var/cache/ratio1-operator/dockerfile-check).
set -euo pipefail
cd "$(dirname "$0")/.."
W="${R1_DOCKERFILE_CHECK_DIR:-/var/cache/ratio1-operator/dockerfile-check}"
IMAGE=localhost/ratio1-operator:dockerfile
log() { printf '[dockerfile-check] %s\n' "$*" >&2; }
die() { printf '[dockerfile-check] FAILED: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (buildah, debootstrap)"
need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
mkdir -p "$W"

# ------------------------------------------------------------ bookworm root
if [ ! -f "$W/rust-root/.done" ]; then
  log "debootstrap bookworm (minbase + build tools)"
  rm -rf "$W/rust-root"
  debootstrap --variant=minbase --include=ca-certificates,gcc,libc6-dev,pkg-config,git,curl \
    bookworm "$W/rust-root" http://deb.debian.org/debian >"$W/debootstrap.log" 2>&1 \
    || { tail -n 20 "$W/debootstrap.log" >&2; die "debootstrap failed"; }
  touch "$W/rust-root/.done"
fi

# image_from_root NAME ROOT CONFIG-ARGS...: a one-layer image from a directory
image_from_root() {
  local name="$1" root="$2" c mnt; shift 2
  c=$(buildah from scratch)
  mnt=$(buildah mount "$c")
  cp -a "$root/." "$mnt/"
  buildah umount "$c" >/dev/null
  buildah config "$@" "$c"
  buildah commit -q "$c" "$name" >/dev/null
  buildah rm "$c" >/dev/null
}

SYSROOT="$(rustc --print sysroot)"
RUST_VER="$(rustc --version | cut -d' ' -f2)-ca$(sha256sum /etc/ssl/certs/ca-certificates.crt | cut -c1-12)"
if ! buildah inspect --type image docker.io/library/rust:1-bookworm >/dev/null 2>&1 \
   || [ "$(buildah inspect --type image --format '{{index .ImageAnnotations "ratio1.rust"}}' docker.io/library/rust:1-bookworm 2>/dev/null)" != "$RUST_VER" ]; then
  log "stand-in rust:1-bookworm: bookworm + Rust $RUST_VER"
  t="$W/rust-image"; rm -rf "$t"; cp -a "$W/rust-root" "$t"; rm -f "$t/.done"
  mkdir -p "$t/usr/local/rust" "$t/usr/local/cargo"
  (cd "$SYSROOT" && tar --exclude=./share/doc -cf - .) | tar -C "$t/usr/local/rust" -xf -
  cp /etc/ssl/certs/ca-certificates.crt "$t/etc/ssl/certs/ca-certificates.crt"
  image_from_root docker.io/library/rust:1-bookworm "$t" \
    --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env CARGO_HOME=/usr/local/cargo --env RUST_VERSION="${RUST_VER%-ca*}" --annotation ratio1.rust="$RUST_VER" \
    --cmd bash
  rm -rf "$t"
fi
if ! buildah inspect --type image gcr.io/distroless/cc-debian12:nonroot >/dev/null 2>&1; then
  log "stand-in gcr.io/distroless/cc-debian12:nonroot: glibc, libgcc_s, CA certificates, nonroot"
  r="$W/cc-root"; src="$W/rust-root"; rm -rf "$r"
  mkdir -p "$r/lib/x86_64-linux-gnu" "$r/lib64" "$r/etc/ssl/certs" "$r/tmp" "$r/home/nonroot"
  chmod 1777 "$r/tmp"
  for f in libc.so.6 libm.so.6 libgcc_s.so.1 libdl.so.2 libpthread.so.0 librt.so.1; do
    cp -L "$src/usr/lib/x86_64-linux-gnu/$f" "$r/lib/x86_64-linux-gnu/$f"
  done
  cp -L "$src/usr/lib64/ld-linux-x86-64.so.2" "$r/lib64/" 2>/dev/null || cp -L "$src/lib64/ld-linux-x86-64.so.2" "$r/lib64/"
  cp -L "$src/etc/ssl/certs/ca-certificates.crt" "$r/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$r/etc/group"
  chown 65532:65532 "$r/home/nonroot"
  image_from_root gcr.io/distroless/cc-debian12:nonroot "$r" --user 65532:65532 --workingdir /home/nonroot
  rm -rf "$r"
fi

log "buildah bud Dockerfile (release build of the operator, twice: dependencies, then the crate)"
t0=$(date +%s)
buildah bud --pull=never --isolation chroot --layers -t "$IMAGE" -f Dockerfile . >"$W/bud.log" 2>&1 \
  || { tail -n 40 "$W/bud.log" >&2; die "buildah bud failed (log: $W/bud.log)"; }
log "built $IMAGE in $(( $(date +%s) - t0 )) s"

c=$(buildah from --pull=never "$IMAGE")
trap 'buildah rm "$c" >/dev/null 2>&1 || true' EXIT
[ "$(buildah inspect --format '{{.OCIv1.Config.User}}' "$IMAGE")" = 65532:65532 ] || die "image user is not 65532:65532"
out=$(buildah run --isolation chroot "$c" -- /usr/local/bin/ratio1 --help 2>&1) || die "the image's binary does not run: $out"
printf '%s\n' "$out" | grep -q operator || die "unexpected --help output: $out"
log "OK: $IMAGE runs as $(buildah inspect --format '{{.OCIv1.Config.User}}' "$IMAGE"), entrypoint $(buildah inspect --format '{{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}' "$IMAGE"), size $(buildah images --format '{{.Size}}' "$IMAGE")"
