#!/usr/bin/env bash
# Builds helm from the pinned module in helm/ and prints the path of the binary. Cached under
# $NAAT_CACHE (default ~/.cache/naat) like build.sh's control plane, keyed by a hash of the pinned
# go.mod/go.sum and of this script. It lives beside build.sh rather than in modules/ so that
# pinning a new helm does not change the control plane's cache key and rebuild it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${NAAT_CACHE:-$HOME/.cache/naat}
key=$(cat "$here"/helm/go.mod "$here"/helm/go.sum "$0" | sha256sum | cut -c1-16)
out=$cache/helm-bin/$key
mkdir -p "$cache/helm-bin"
# Tests, the lab and CI may call this at the same time: one builds, the others wait for it.
exec 9>"$cache/helm-bin/.lock"
flock 9
if [ -x "$out/helm" ] && [ -f "$out/.complete" ]; then
  echo "$out/helm"
  exit 0
fi
export GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0
tmp=$out.tmp.$$
rm -rf "$tmp" && mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

helm=$(cd "$here/helm" && go list -m -f '{{.Version}}' helm.sh/helm/v3)
[[ $helm =~ ^v3\.[0-9]+\.[0-9]+$ ]] || { echo "cannot read the pinned helm version" >&2; exit 1; }
# Without these, helm reports v0.0.0 and renders for Kubernetes 1.20 (its built-in default), so
# charts that check .Capabilities.KubeVersion would be judged against the wrong cluster. The
# test control plane (modules/kubernetes) runs the version stamped here.
k8s=$(cd "$here/modules/kubernetes" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
minor=$(echo "$k8s" | cut -d. -f2)
ld="-s -w -X helm.sh/helm/v3/internal/version.version=$helm -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  ld="$ld -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
done

echo "building helm $helm" >&2
t=$SECONDS
(cd "$here/helm" && go build -trimpath -ldflags "$ld" -o "$tmp/helm" helm.sh/helm/v3/cmd/helm)
echo "built helm in $((SECONDS - t))s" >&2
touch "$tmp/.complete"
rm -rf "$out" && mv "$tmp" "$out"
find "$cache/helm-bin" -mindepth 1 -maxdepth 1 -type d ! -path "$out" -exec rm -rf {} +
trap - EXIT
echo "$out/helm"
