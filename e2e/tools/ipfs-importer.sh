#!/usr/bin/env bash
# Installs (once, cached) the reference IPFS importer used by the e2e tests
# to check R1FS CIDs against `ipfs add --cid-version 1`, and prints the
# absolute path of the runnable script as the last line on stdout:
#
#   CIDS=$(e2e/tools/ipfs-importer.sh | tail -n1)
#   node "$CIDS" FILE_OR_DIR...      # one line each: PATH<TAB>CID
#
# Packages come from Debian apt (node, npm: only when missing) and the npm
# registry (the two pinned packages and their dependencies). Everything is
# logged to stderr. The cache dir is ${R1_NPM_CACHE:-/var/cache/ratio1-npm}/ipfs-importer.
set -euo pipefail

# Versions verified with node v20 (see ipfs-cids.mjs for what is computed).
IMPORTER_VERSION=17.1.1
BLOCKSTORE_VERSION=7.0.1

log() { printf 'ipfs-importer: %s\n' "$*" >&2; }

here=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
src="$here/ipfs-cids.mjs"
[[ -f "$src" ]] || { log "missing $src"; exit 1; }

cache_root=${R1_NPM_CACHE:-/var/cache/ratio1-npm}
dir="$cache_root/ipfs-importer"
stamp="$dir/.installed"
want="ipfs-unixfs-importer@$IMPORTER_VERSION blockstore-core@$BLOCKSTORE_VERSION"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  log "node/npm missing: installing Debian's nodejs and npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update >&2
  apt-get install -y nodejs npm >&2
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if (( node_major < 20 )); then
  log "warning: node $(node --version) is older than the v20 these versions were verified with"
fi

mkdir -p "$dir"
# Concurrent runs (parallel e2e jobs) install one at a time.
exec 9>"$dir/.lock"
flock 9

installed_ok() {
  [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] || return 1
  local got
  # shellcheck disable=SC2016 # a JS template literal, not a shell expansion
  got=$(cd "$dir" && node -p '
    ["ipfs-unixfs-importer", "blockstore-core"]
      .map(p => `${p}@${require(`./node_modules/${p}/package.json`).version}`).join(" ")' 2>/dev/null) || return 1
  [[ "$got" == "$want" ]]
}

if installed_ok; then
  log "cached: $want in $dir"
else
  log "installing $want into $dir"
  rm -f "$stamp"
  rm -rf "$dir/node_modules" "$dir/package.json" "$dir/package-lock.json"
  printf '{ "name": "r1-ipfs-importer", "private": true, "type": "module" }\n' >"$dir/package.json"
  npm install --prefix "$dir" --save-exact --no-audit --no-fund --no-update-notifier \
    "ipfs-unixfs-importer@$IMPORTER_VERSION" "blockstore-core@$BLOCKSTORE_VERSION" >&2
  # The modules must load under this node before the install counts.
  (cd "$dir" && node --input-type=module -e '
    await import("ipfs-unixfs-importer"); await import("ipfs-unixfs-importer/chunker")
    await import("ipfs-unixfs-importer/layout"); await import("blockstore-core/memory")') >&2
  printf '%s' "$want" >"$stamp"
  log "installed $want"
fi

# Copied, not linked: node resolves its imports from the script's real path.
dst="$dir/ipfs-cids.mjs"
if ! cmp -s "$src" "$dst"; then
  tmp=$(mktemp "$dir/.ipfs-cids.XXXXXX")
  cp "$src" "$tmp"
  chmod 0755 "$tmp"
  mv -f "$tmp" "$dst"
  log "copied ipfs-cids.mjs to $dst"
fi

printf '%s\n' "$(readlink -f "$dst")"
