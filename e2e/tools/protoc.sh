#!/usr/bin/env bash
# e2e/tools/protoc.sh - makes sure `protoc` is on PATH before any cargo
# build: etcd-client (CSTORE) compiles etcd's protobufs in its build script
# and fails without it. Installs Debian's protobuf-compiler when missing
# (as root, or through sudo, like e2e/kube/install.sh), and libprotobuf-dev
# when protoc cannot find the well-known types (google/protobuf/*.proto,
# which etcd's protobufs import: a Recommends of protobuf-compiler, so an
# install without recommends lacks them); a no-op otherwise.
# Prints the path of protoc. The Dockerfile installs the same packages in
# its build stage.
set -euo pipefail

log() { printf '[protoc] %s\n' "$*" >&2; }
die() { printf '[protoc] ERROR: %s\n' "$*" >&2; exit 1; }

# Whether protoc ($1) compiles a file that imports the well-known types.
well_known() {
  local d rc=0
  d="$(mktemp -d)"
  printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\nimport "google/protobuf/struct.proto";\n' >"$d/t.proto"
  "$1" -I"$d" ${PROTOC_INCLUDE:+-I"$PROTOC_INCLUDE"} -o /dev/null "$d/t.proto" >/dev/null 2>&1 || rc=1
  rm -rf "$d"
  return $rc
}

if [ -n "${PROTOC:-}" ]; then
  [ -x "$PROTOC" ] || die "PROTOC=$PROTOC is not an executable file"
  echo "$PROTOC"; exit 0
fi
if command -v protoc >/dev/null 2>&1 && well_known "$(command -v protoc)"; then command -v protoc; exit 0; fi

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "protoc is missing and installing it needs root (or sudo): apt-get install protobuf-compiler"; fi
}
command -v apt-get >/dev/null 2>&1 || die "protoc is missing and this is not Debian: install protoc (protobuf-compiler), or set PROTOC"
log "protoc or its well-known types missing: apt-get install protobuf-compiler libprotobuf-dev"
as_root apt-get update -qq || die "apt-get update failed"
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev >/dev/null \
  || die "apt-get install protobuf-compiler libprotobuf-dev failed"
command -v protoc >/dev/null 2>&1 || die "protobuf-compiler is installed but protoc is not on PATH"
well_known "$(command -v protoc)" || die "protoc cannot find google/protobuf/descriptor.proto even with libprotobuf-dev"
log "$(protoc --version)"
command -v protoc
