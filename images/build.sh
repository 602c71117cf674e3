#!/usr/bin/env bash
# Builds the operator, dataplane and sidecar images from images/Dockerfile, the recipe of the
# published images, without a Docker engine or a registry, and prints the folder that holds them
# as docker archives (<component>.tar, named naat.dev/naat-<component>:test) for `ctr images import`.
#
# buildah runs the Dockerfile as it is; only its NODE_IMAGE base differs: instead of the official
# node:<version>-<suite>-slim image, a base assembled here the same way, from Debian <suite>
# (mmdebstrap, from the Debian archive), the Node.js that package.json pins (node_modules/.bin/node,
# from the node-linux-* package) and npm from the npm registry. The base is built once per pin;
# images are rebuilt only when what goes into them changes (a hash of the build context), and
# buildah's layer cache spares the `npm ci` layer when only sources changed. Everything lives under
# $NAAT_CACHE (default ~/.cache/naat), like the control plane's binaries.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${NAAT_CACHE:-$HOME/.cache/naat}
# npm as the base ships it; the official image bundles the npm of its Node.js release.
npm_version=11.19.1
components=(operator dataplane sidecar)

mkdir -p "$cache/images"
# Tests, the lab and CI may call this at the same time: one builds, the others wait for it.
exec 9>"$cache/images/.lock"
flock 9

# The published base names the Node.js release and the Debian suite: node:24.21.0-trixie-slim, with
# the registry's digest after it (@sha256:…) once a release pins it; the base assembled here stands
# in for either.
published=$(sed -n 's/^ARG NODE_IMAGE=//p' "$root/images/Dockerfile")
[[ $published =~ ^node:([0-9]+\.[0-9]+\.[0-9]+)-([a-z]+)-slim(@sha256:[0-9a-f]{64})?$ ]] || {
  echo "cannot read the Node.js release and Debian suite of NODE_IMAGE in images/Dockerfile" >&2
  exit 1
}
node_version=${BASH_REMATCH[1]} suite=${BASH_REMATCH[2]}
node_bin=$(readlink -f "$root/node_modules/.bin/node")
[ "$("$node_bin" --version)" = "v$node_version" ] || {
  echo "node_modules holds Node.js $("$node_bin" --version), the Dockerfile's base v$node_version: run npm ci" >&2
  exit 1
}

buildah() { command buildah --root "$cache/images/storage" --runroot /run/naat-images "$@"; }
step() { echo "building $1" >&2; local t=$SECONDS; "${@:2}"; echo "built $1 in $((SECONDS - t))s" >&2; }

# The machine's own certificate authorities (update-ca-certificates' local folder) go into the base,
# so that `npm ci` and apt-get in the build trust what the machine's npm and apt trust (a TLS proxy's
# CA, say). Only the base assembled here has them; the published images are built on the official one.
local_cas=/usr/local/share/ca-certificates
base_key=$( (printf '%s\n' "$node_version" "$suite" "$npm_version" && find "$local_cas" -type f -exec cat {} + 2>/dev/null) |
  cat - "$0" | sha256sum | cut -c1-12)
base=localhost/naat-node:$node_version-$suite-$base_key
make_base() {
  local tmp c
  tmp=$(mktemp -d)
  mmdebstrap --quiet --variant=minbase --include=ca-certificates --format=tar "$suite" "$tmp/rootfs.tar"
  (cd "$tmp" && npm pack --silent "npm@$npm_version" >/dev/null && mkdir npm && tar -xzf "npm-$npm_version.tgz" -C npm)
  c=$(buildah from scratch)
  buildah add "$c" "$tmp/rootfs.tar" / >/dev/null
  buildah copy "$c" "$node_bin" /usr/local/bin/node >/dev/null
  buildah copy "$c" "$tmp/npm/package" /usr/local/lib/node_modules/npm >/dev/null
  buildah run "$c" -- ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm
  if [ -d "$local_cas" ]; then
    buildah copy "$c" "$local_cas" /usr/local/share/ca-certificates >/dev/null
    buildah run "$c" -- update-ca-certificates >/dev/null
    # Node.js reads its own CA list, not the system's: npm is told where the system's is.
    buildah run "$c" -- sh -c 'echo cafile=/etc/ssl/certs/ca-certificates.crt >/usr/local/etc/npmrc'
  fi
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd node "$c"
  buildah commit --quiet --rm "$c" "$base" >/dev/null
  rm -rf "$tmp"
}
buildah inspect --type image "$base" >/dev/null 2>&1 || step "base $base" make_base

# What the build reads: the context the ignore file lets in, the recipe, this script and the base.
context=$(cd "$root" && find package.json package-lock.json tsconfig.json tsconfig.build.json \
  operator dataplane sidecar common contracts crds proto -type f ! -name '*.test.ts' | sort)
key=$( (cd "$root" && sha256sum $context images/Dockerfile images/Dockerfile.dockerignore && echo "$base") |
  cat - "$0" | sha256sum | cut -c1-16)
out=$cache/images/$key
if [ -f "$out/.complete" ]; then
  echo "$out"
  exit 0
fi
tmp=$out.tmp.$$
rm -rf "$tmp" && mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
for component in "${components[@]}"; do
  step "$component image" buildah bud --quiet --layers --network host --build-arg "NODE_IMAGE=$base" \
    --target "$component" --file "$root/images/Dockerfile" --ignorefile "$root/images/Dockerfile.dockerignore" \
    --tag "localhost/naat-$component:test" "$root" >/dev/null
  buildah push --quiet "localhost/naat-$component:test" \
    "docker-archive:$tmp/$component.tar:naat.dev/naat-$component:test" >/dev/null
done
touch "$tmp/.complete"
rm -rf "$out" && mv "$tmp" "$out"
find "$cache/images" -mindepth 1 -maxdepth 1 -type d ! -path "$out" ! -path "$cache/images/storage" -exec rm -rf {} +
trap - EXIT
echo "$out"
