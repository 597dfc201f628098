#!/usr/bin/env bash
# make demo: on a fresh Debian machine with Go, as root — installs what Kip needs, builds the
# control plane (once, cached) and kip, runs `kip up` in the background, applies the sample Job
# and Deployment from examples/, and shows what happened: pods with their cell IPs, the Cell
# objects, the logs, and each web replica answering. Then it keeps Kip running until Ctrl-C
# (or stops right away with DEMO_EXIT=1), and `kip up` removes everything it made.
#
# Environment: KIP_HOME (default ~/.kip), DEMO_EXIT=1, KIP_CP_BIN (prebuilt control plane).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

say "installing Debian packages (hack/install-deps.sh)"
hack/install-deps.sh
say "building the control plane (hack/build-control-plane.sh; ~15 minutes the first time, cached after)"
KIP_CP_BIN=$(hack/build-control-plane.sh | tail -n1)
export KIP_CP_BIN
say "building kip and kip-cell into bin/"
go build -o bin/ ./cmd/...

home=${KIP_HOME:-$HOME/.kip}
ready=$(mktemp)
say "starting kip up --home $home"
bin/kip up --home "$home" >"$ready" &
kip_pid=$!
stop() {
  trap - INT TERM EXIT
  if kill -0 "$kip_pid" 2>/dev/null; then
    say "stopping kip up (it removes every cell, the bridge, the control plane and its files)"
    kill -TERM "$kip_pid" 2>/dev/null || true
    wait "$kip_pid" 2>/dev/null || true
  fi
  rm -f "$ready"
}
trap stop EXIT
trap 'exit 130' INT TERM

# Wait for the ready line (kip up prints it once the virtual node is Ready).
for _ in $(seq 1 600); do
  grep -q "kip is up" "$ready" && break
  kill -0 "$kip_pid" 2>/dev/null || { echo "kip up exited before it was ready" >&2; exit 1; }
  sleep 0.5
done
grep -q "kip is up" "$ready" || { echo "kip up was not ready within 5 minutes" >&2; exit 1; }
cat "$ready" >&2

export KUBECONFIG=$home/kubeconfig
kubectl() { "$KIP_CP_BIN/kubectl" "$@"; }

say "kubectl get nodes -o wide"
kubectl get nodes -o wide
say "kubectl apply -f examples/job.yaml -f examples/deployment.yaml"
kubectl apply -f examples/job.yaml -f examples/deployment.yaml
say "waiting for the Job to complete and the Deployment to roll out"
kubectl wait --for=condition=complete job/hello-kip --timeout=180s
kubectl rollout status deployment/web --timeout=180s

say "kubectl get pods -o wide  (each pod IP is its own cell)"
kubectl get pods -o wide
say "kubectl get cells"
kubectl get cells -o wide 2>/dev/null || kubectl get cells || echo "(no Cell resource registered)"
say "kubectl logs job/hello-kip"
kubectl logs job/hello-kip
say "asking each web replica over the bridge"
for ip in $(kubectl get pods -l app=web -o jsonpath='{.items[*].status.podIP}'); do
  printf '%s: ' "$ip"; busybox wget -qO- "http://$ip:8080/" || echo "(no answer)"
done
say "kubectl get events (the story)"
kubectl get events --sort-by=.lastTimestamp | tail -n 25

if [ "${DEMO_EXIT:-0}" = 1 ]; then
  exit 0
fi
say "Kip is running. In another shell:  export KUBECONFIG=$KUBECONFIG; $KIP_CP_BIN/kubectl get pods -o wide
   Ctrl-C here stops it and removes everything."
wait "$kip_pid"
