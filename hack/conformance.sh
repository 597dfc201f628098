#!/usr/bin/env bash
# make conformance: runs Kubernetes v1.37.2's own e2e suite (e2e.test) against Kip, offline, as
# root, and prints the pass count. See docs/conformance.md.
#
#  1. Builds e2e.test, the ginkgo CLI (the version that suite requires), agnhost and nonewprivs
#     from the pinned module hack/tools/conformance into ~/.cache/kip/conformance/<key> (<key>
#     hashes that go.mod, go.sum and the Go version; rebuilt only when they change: e2e.test
#     takes about 15 minutes cold on 2 cores).
#  2. Starts `kip up` in the background (its own --home, bridge and subnet) unless KUBECONFIG
#     points to a running one, and removes the virtual node's NoSchedule taint.
#  3. Builds the images the suite lists (hack/tools/conformance-images: agnhost, busybox, pause,
#     nonewprivs, nginx, glibc-dns-testing; busybox is built from its Debian source without
#     Debian's patches by hack/build-busybox.sh, cached in ~/.cache/kip/busybox; Debian's curl,
#     nc, dig, nginx and getent (libc-bin) come from apt-get download into ~/.cache/kip/debs,
#     extracted, never installed; their libraries from this Debian host)
#     and pushes them to kip's registry; writes KUBE_TEST_REPO_LIST pointing every registry there.
#  4. Runs `ginkgo -p` over e2e.test, writes junit.xml, the ginkgo output and summary.txt to the
#     results directory, prints the counts, and stops kip up.
#
# Environment:
#   CONFORMANCE_LABELS   ginkgo --label-filter (default 'Conformance && NodeConformance')
#   CONFORMANCE_FOCUS    ginkgo --focus regexp, e.g. '\[sig-network\]' with CONFORMANCE_LABELS=Conformance
#   CONFORMANCE_SKIP     ginkgo --skip regexp
#   CONFORMANCE_PROCS    parallel ginkgo processes (default 6)
#   CONFORMANCE_TIMEOUT  ginkgo --timeout (default 3h)
#   CONFORMANCE_RESULTS  results directory (default .cache/conformance/<date-time>)
#   CONFORMANCE_BUILD_ONLY=1  stop after step 1
#   CONFORMANCE_BRIDGE / CONFORMANCE_SUBNET  kip up's bridge and subnet (default kipconf0,
#                        10.251.0.0/22); give another pair to run beside a conformance run
#   KUBECONFIG           use this running kip up instead of starting one; its registry is
#                        KIP_REGISTRY (default: the node's InternalIP, port 5000), pushed to
#                        with the credentials in $DOCKER_CONFIG (kip up's <home>/registry-auth)
#   KIP_CONFORMANCE_CACHE  cache root (default ~/.cache/kip/conformance)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tools="$root/hack/tools/conformance"
k8s_version=v1.37.2
cache=${KIP_CONFORMANCE_CACHE:-$HOME/.cache/kip/conformance}
debs="$HOME/.cache/kip/debs"
labels=${CONFORMANCE_LABELS-Conformance && NodeConformance}
focus=${CONFORMANCE_FOCUS:-}
skip=${CONFORMANCE_SKIP:-}
procs=${CONFORMANCE_PROCS:-6}
timeout=${CONFORMANCE_TIMEOUT:-3h}
results=${CONFORMANCE_RESULTS:-$root/.cache/conformance/$(date +%Y%m%d-%H%M%S)}

step() { printf '[conformance %s] %s\n' "$(date +%T)" "$*" >&2; }

# --- 1. binaries --------------------------------------------------------------------------
key=$(cat "$tools/go.mod" "$tools/go.sum" <(go version) | sha256sum | cut -c1-12)
bin="$cache/$k8s_version-$key"
stamp="$bin/.stamp"
tools_bins=(e2e.test ginkgo agnhost nonewprivs)
if [ -f "$stamp" ]; then
  for b in "${tools_bins[@]}"; do [ -x "$bin/$b" ] || { rm -f "$stamp"; break; }; done
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
  step "e2e.test, ginkgo, agnhost and nonewprivs up to date in $bin"
else
  mkdir -p "$bin"
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
  export CGO_ENABLED=0
  (
    cd "$tools"
    export GOFLAGS=-mod=readonly
    if [ ! -x "$bin/e2e.test" ]; then
      step "building e2e.test $k8s_version (about 15 minutes cold on 2 cores)"
      start=$(date +%s)
      go test -c -vet=off -trimpath -ldflags "$ldflags" -o "$bin/e2e.test.tmp" k8s.io/kubernetes/test/e2e
      mv "$bin/e2e.test.tmp" "$bin/e2e.test"
      step "e2e.test built in $(($(date +%s) - start))s"
    fi
    step "building ginkgo, agnhost and nonewprivs"
    go build -trimpath -ldflags "-s -w" -o "$bin/ginkgo" github.com/onsi/ginkgo/v2/ginkgo
    go build -trimpath -ldflags "-s -w" -o "$bin/agnhost" k8s.io/kubernetes/test/images/agnhost
    go build -trimpath -ldflags "-s -w" -o "$bin/nonewprivs" k8s.io/kubernetes/test/images/nonewprivs
  )
  unset CGO_ENABLED
  echo "$key" >"$stamp"
fi
if [ -n "${CONFORMANCE_BUILD_ONLY:-}" ]; then
  echo "$bin"
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "conformance: run as root (kip up makes a bridge and network namespaces)" >&2; exit 1; }
mkdir -p "$results"
results=$(cd "$results" && pwd)
work=$(mktemp -d /tmp/kip-conformance.XXXXXX)

cp_bin=$(hack/build-control-plane.sh | tail -n1)
kubectl() { "$cp_bin/kubectl" "$@"; }
step "building kip, kip-cell and the image and summary tools"
go build -o bin/ ./cmd/...
go build -o "$work/" ./hack/tools/conformance-images ./hack/tools/junit-summary

# Debian packages for the images' userland, downloaded once (never installed).
mkdir -p "$debs"
# extract DIR PACKAGE...: downloads each package once, then extracts it under $work/DIR.
extract() {
  local dir="$work/$1" p deb
  shift
  mkdir -p "$dir"
  for p in "$@"; do
    if ! compgen -G "$debs/${p}_*.deb" >/dev/null; then
      step "apt-get download $p"
      (cd "$debs" && apt-get download -o APT::Sandbox::User=root "$p" >&2)
    fi
    deb=$(compgen -G "$debs/${p}_*.deb" | sort | tail -n1)
    dpkg-deb -x "$deb" "$dir"
  done
}
# busybox as upstream releases it (Debian's package reverts upstream ash's keeping of
# environment variables such as data-1): built from its Debian source without the patches.
busybox_bin=$(hack/build-busybox.sh | tail -n1)
extract curl curl
extract nc netcat-openbsd
extract nginx nginx nginx-common
# dig, with the libraries of bind9 that a plain Debian host does not have.
extract dig bind9-dnsutils bind9-libs libuv1 liblmdb0 libmaxminddb0 libfstrm0 libjemalloc2
# getent, glibc's own (the DNS specs' queriers: glibc-dns-testing and agnhost, whose upstream
# alpine has musl's), of the host's glibc version.
extract getent libc-bin

# --- 2. kip up ------------------------------------------------------------------------------
kip_pid=
cleanup() {
  trap - INT TERM EXIT
  if [ -n "$kip_pid" ] && kill -0 "$kip_pid" 2>/dev/null; then
    step "stopping kip up (log: $results/kip-up.log)"
    kill -TERM "$kip_pid" 2>/dev/null || true
    wait "$kip_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -n "${KUBECONFIG:-}" ]; then
  step "using the running cluster of KUBECONFIG=$KUBECONFIG"
  node_ip=$(kubectl get nodes -o jsonpath='{.items[0].status.addresses[?(@.type=="InternalIP")].address}')
  registry=${KIP_REGISTRY:-$node_ip:5000}
else
  home="$work/home"
  step "starting kip up --home $home (log: $results/kip-up.log)"
  bin/kip up --home "$home" --cp-bin "$cp_bin" --bridge "${CONFORMANCE_BRIDGE:-kipconf0}" \
    --subnet "${CONFORMANCE_SUBNET:-10.251.0.0/22}" \
    --registry-port 0 >"$work/ready" 2>"$results/kip-up.log" &
  kip_pid=$!
  for _ in $(seq 1 600); do
    grep -q "kip is up" "$work/ready" && break
    kill -0 "$kip_pid" 2>/dev/null || { echo "kip up exited before it was ready; see $results/kip-up.log" >&2; exit 1; }
    sleep 1
  done
  grep -q "kip is up" "$work/ready" || { echo "kip up was not ready in 10 minutes" >&2; exit 1; }
  export KUBECONFIG="$home/kubeconfig"
  # kip up's registry takes pushes only with its credentials (conformance-images reads them
  # through the default keychain).
  export DOCKER_CONFIG="$home/registry-auth"
  registry=$(sed -n 's/.*(registry \([^;]*\);.*/\1/p' "$work/ready")
fi
step "registry $registry; removing the virtual node's NoSchedule taint"
taint=virtual-kubelet.io/provider
for n in $(kubectl get nodes -o jsonpath='{.items[*].metadata.name}'); do
  if kubectl get node "$n" -o jsonpath='{.spec.taints[*].key}' | grep -qwF "$taint"; then
    kubectl taint nodes "$n" "$taint:NoSchedule-" >&2
  fi
done

# --- 3. images ------------------------------------------------------------------------------
cat >"$results/repo-list.yaml" <<EOF
promoterE2eRegistry: $registry/e2e-test-images
buildImageRegistry: $registry/build-image
gcEtcdRegistry: $registry
gcRegistry: $registry
sigStorageRegistry: $registry/sig-storage
privateRegistry: $registry/k8s-authenticated-test
dockerLibraryRegistry: $registry/library
cloudProviderGcpRegistry: $registry/cloud-provider-gcp
EOF
export KUBE_TEST_REPO_LIST="$results/repo-list.yaml"
"$bin/e2e.test" --list-images >"$results/images.txt"
step "building and pushing the images ($(wc -l <"$results/images.txt") listed)"
"$work/conformance-images" -registry "$registry" -images "$results/images.txt" \
  -busybox "$busybox_bin" -agnhost "$bin/agnhost" -nonewprivs "$bin/nonewprivs" \
  -agnhost-tool "$work/curl=usr/bin/curl" -agnhost-tool "$work/nc=bin/nc.openbsd=/usr/bin/nc" \
  -agnhost-tool "$work/dig=usr/bin/dig" -agnhost-tool "$work/getent=usr/bin/getent" \
  -glibc-dns-tool "$work/dig=usr/bin/dig" -glibc-dns-tool "$work/getent=usr/bin/getent" \
  -agnhost-src "$(cd "$tools" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/test/images/agnhost" \
  -nginx-root "$work/nginx" -private "$registry/k8s-authenticated-test" | tee "$results/images-pushed.txt" | tail -n1 >&2

# --- 4. run ---------------------------------------------------------------------------------
args=(-p "--procs=$procs" "--timeout=$timeout" --no-color --output-dir="$results" --junit-report=junit.xml)
[ -z "$labels" ] || args+=("--label-filter=$labels")
[ -z "$focus" ] || args+=("--focus=$focus")
[ -z "$skip" ] || args+=("--skip=$skip")
step "running e2e.test: ginkgo ${args[*]} (output: $results/e2e.log)"
start=$(date +%s)
rc=0
"$bin/ginkgo" "${args[@]}" "$bin/e2e.test" -- --provider=skeleton --kubeconfig="$KUBECONFIG" \
  --kubectl-path="$cp_bin/kubectl" >"$results/e2e.log" 2>&1 || rc=$?
step "e2e.test finished in $(($(date +%s) - start))s (ginkgo exit $rc)"
"$work/junit-summary" "$results/junit.xml" >"$results/summary.txt"
cat "$results/summary.txt"
step "results in $results"
