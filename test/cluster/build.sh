#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver, kube-controller-manager, kube-scheduler, etcd,
# kwok), the real node's kubelet and kube-proxy, and kubectl from the pinned modules in modules/
# and prints the folder that holds the binaries. They share one build and one cache key because
# every change of a pin costs a cold build: one for all of them rather than one each.
# Binaries are cached under $NAAT_CACHE (default ~/.cache/naat) keyed by a hash of the pinned
# go.mod/go.sum files and of this script, so a rebuild happens only when a pin changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${NAAT_CACHE:-$HOME/.cache/naat}
key=$(cat "$here"/modules/*/go.mod "$here"/modules/*/go.sum "$0" | sha256sum | cut -c1-16)
out=$cache/cluster-bin/$key
mkdir -p "$cache/cluster-bin"
# Tests, the lab and CI may call this at the same time: one builds, the others wait for it.
exec 9>"$cache/cluster-bin/.lock"
flock 9
if [ -f "$out/.complete" ]; then
  echo "$out"
  exit 0
fi
export GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=readonly CGO_ENABLED=0
tmp=$out.tmp.$$
rm -rf "$tmp" && mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT

k8s=$(cd "$here/modules/kubernetes" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
minor=$(echo "$k8s" | cut -d. -f2)
[[ $k8s =~ ^v1\.[0-9]+\.[0-9]+$ ]] || { echo "cannot read the pinned Kubernetes version" >&2; exit 1; }
ld="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld="$ld -X $pkg.gitVersion=$k8s -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

step() { echo "building $1" >&2; local t=$SECONDS; "${@:2}"; echo "built $1 in $((SECONDS - t))s" >&2; }
step "kubernetes $k8s" bash -c "cd '$here/modules/kubernetes' && go build -trimpath -ldflags '$ld' -o '$tmp/' \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl"
step etcd bash -c "cd '$here/modules/etcd' && go build -trimpath -ldflags '-s -w' -o '$tmp/etcd' go.etcd.io/etcd/server/v3"
step kwok bash -c "cd '$here/modules/kwok' && go build -trimpath -ldflags '-s -w' -o '$tmp/kwok' sigs.k8s.io/kwok/cmd/kwok"
touch "$tmp/.complete"
rm -rf "$out" && mv "$tmp" "$out"
find "$cache/cluster-bin" -mindepth 1 -maxdepth 1 -type d ! -path "$out" -exec rm -rf {} +
trap - EXIT
echo "$out"
