# e2e/kube/mkimage.sh - sourced by node-install.sh and e2e/images.sh.
#
# mkimage NAME:TAG OUT.tar ROOTFS ENTRYPOINT_JSON CMD_JSON [USER] [EXTRA_CONFIG_JSON]
# Writes a `docker save`-format archive (manifest.json + image config + one
# uncompressed layer made from ROOTFS) that `ctr images import` and
# `docker load` accept. Reproducible: files are sorted, owned by root unless
# chowned in ROOTFS with --numeric-owner semantics, mtimes are zero.
# No registry, no daemon: that is how images are made here, offline.
mkimage() {
  local ref="$1" out="$2" rootfs="$3" ep="$4" cmd="$5" user="${6:-}" extra="${7:-}" t diff cfg cfgsha
  t="$(mktemp -d)"
  tar -C "$rootfs" --sort=name --numeric-owner --mtime=@0 -cf "$t/layer.tar" .
  diff="$(sha256sum "$t/layer.tar" | cut -d' ' -f1)"
  mkdir "$t/$diff" && mv "$t/layer.tar" "$t/$diff/layer.tar"
  cfg="{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"1970-01-01T00:00:00Z\",\"config\":{\"Env\":[\"PATH=/usr/local/bin:/bin:/sbin:/usr/bin:/usr/sbin\"],\"Entrypoint\":$ep,\"Cmd\":$cmd,\"WorkingDir\":\"/\"${user:+,\"User\":\"$user\"}${extra:+,$extra}},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff\"]},\"history\":[{\"created\":\"1970-01-01T00:00:00Z\",\"created_by\":\"ratio1-operator e2e/kube/mkimage.sh\"}]}"
  cfgsha="$(printf '%s' "$cfg" | sha256sum | cut -d' ' -f1)"
  printf '%s' "$cfg" >"$t/$cfgsha.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' "$cfgsha" "$ref" "$diff" >"$t/manifest.json"
  tar -C "$t" --numeric-owner --owner=0 --group=0 --mtime=@0 -cf "$out.tmp" manifest.json "$cfgsha.json" "$diff/layer.tar"
  mv "$out.tmp" "$out"
  rm -rf "$t"
}
