#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-scheduler, kube-controller-manager and kubectl from the
# pinned tool modules under hack/tools into a cache directory outside the clone, once.
#
# Output: ${KIP_CP_BIN:-$HOME/.cache/kip/cp-bin/<key>} where <key> hashes both go.sum files and
# the Go version. A stamp file makes repeated runs a no-op. Prints the directory on stdout's last line.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/hack/tools"
k8s_version=v1.37.2
key=$(cat "$tools/k8s/go.sum" "$tools/etcd/go.sum" <(go version) | sha256sum | cut -c1-12)
out=${KIP_CP_BIN:-$HOME/.cache/kip/cp-bin/$k8s_version-$key}
stamp="$out/.stamp"
bins=(etcd kube-apiserver kube-scheduler kube-controller-manager kubectl)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
  for b in "${bins[@]}"; do [ -x "$out/$b" ] || { rm -f "$stamp"; break; }; done
fi
if [ -f "$stamp" ]; then
  echo "control plane binaries up to date in $out" >&2
  echo "$out"
  exit 0
fi

mkdir -p "$out"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/component-base/version.buildDate=$date \
 -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version -X k8s.io/client-go/pkg/version.gitMajor=1 \
 -X k8s.io/client-go/pkg/version.gitMinor=37"

step() { printf '[build-control-plane %s] %s\n' "$(date +%T)" "$*" >&2; }

if [ ! -x "$out/etcd" ]; then
  step "building etcd v3.7.3 (about 1-2 min cold)"
  (cd "$tools/etcd" && go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3 && mv "$out/etcd.tmp" "$out/etcd")
fi
for c in kube-apiserver kube-scheduler kube-controller-manager kubectl; do
  if [ ! -x "$out/$c" ]; then
    step "building $c $k8s_version (kube-apiserver takes about 9 min cold on 2 cores)"
    (cd "$tools/k8s" && go build -trimpath -ldflags "$ldflags" -o "$out/$c.tmp" "k8s.io/kubernetes/cmd/$c" && mv "$out/$c.tmp" "$out/$c")
  fi
done
echo "$key" > "$stamp"
step "done: $out"
echo "$out"
