#!/usr/bin/env bash
# make bench: runs every benchmark (each reports p50/p99 with b.ReportMetric), then prints the
# p50/p99 lines together.
# Benchmarks that need the real control plane live under test/e2e (build tag e2e) and run when
# the control plane binaries are available (KIP_CP_BIN, or hack/build-control-plane.sh's cache).
#
# Environment: KIP_BENCH (regexp: run only those, once), KIP_BENCH_TIMEOUT (default 60m: the
# 10,000-pod scale run alone takes about half an hour on a loaded 2-core machine).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mkdir -p .cache
log=.cache/bench.log
: >"$log"

mapfile -t pkgs < <(grep -rlE --include='*_test.go' '^func Benchmark' internal cmd 2>/dev/null | xargs -r -n1 dirname | sort -u | sed 's|^|./|')
mapfile -t e2e < <(grep -rlE --include='*_test.go' '^func Benchmark' test 2>/dev/null | xargs -r -n1 dirname | sort -u | sed 's|^|./|')

# Benchmarks come in three kinds, each run with the -benchtime that makes its numbers mean
# something:
#   - self-sized ones boot their own fleet of cells/pods (≥ 20–50; ServiceUpdate: 100 cells,
#     1,000 Services, 100 updates; Scale: KIP_SCALE_PODS simulated pods, default 10,000,
#     docs/design/scale.md) per run: once (1x);
#   - per-operation ones time one container start / pull / pod lifecycle per b.N: 50 times, so
#     their p50/p99 cover at least 50 samples;
#   - pure throughput ones (the selector): the default one second.
# KIP_BENCH=<regexp> instead runs just the matching benchmarks once, for a quick look.
per_op='^Benchmark(ContainerStart|ContainerStartInCell|PullUnpack|PullCached|EC2CallsPerPod)$'
throughput='^Benchmark(Select|SelectUnprepared|NewIndex|SelectorSelect)$'
self_sized='^Benchmark(Boot|CellPull|PodStartup|LocalBurst|CreateToRunning|ServicesApply|ServiceUpdate|Scale)$'

run() {
  local bench=$1 benchtime=$2; shift 2
  echo "=== go test -run '^\$' -bench '$bench' -benchtime=$benchtime $*" >&2
  go test -run '^$' -bench "$bench" -benchtime="$benchtime" -timeout "${KIP_BENCH_TIMEOUT:-60m}" "$@" 2>&1 | tee -a "$log"
  return "${PIPESTATUS[0]}"
}

# run_all ARGS... runs every kind over the given packages.
run_all() {
  if [ -n "${KIP_BENCH:-}" ]; then
    run "$KIP_BENCH" 1x "$@"
    return
  fi
  local rc=0
  run "$self_sized" 1x "$@" || rc=1
  run "$per_op" 50x "$@" || rc=1
  run "$throughput" 1s "$@" || rc=1
  return $rc
}

# Every benchmark must belong to a kind, or it would silently not run.
unknown=$(grep -rhoE --include='*_test.go' '^func Benchmark[A-Za-z0-9_]+' internal cmd test | sed 's/^func //' |
  grep -vE "$per_op|$throughput|$self_sized" || true)
if [ -n "$unknown" ]; then
  echo "hack/bench.sh: benchmarks of no kind (add them to a list above): $unknown" >&2
  exit 1
fi

rc=0
if [ ${#pkgs[@]} -gt 0 ]; then run_all "${pkgs[@]}" || rc=1; fi
if [ ${#e2e[@]} -gt 0 ]; then
  if [ -z "${KIP_CP_BIN:-}" ]; then
    KIP_CP_BIN=$(hack/build-control-plane.sh | tail -n1); export KIP_CP_BIN
  fi
  go build -o bin/ ./cmd/...
  KIP_BIN=$root/bin run_all -tags e2e -v "${e2e[@]}" || rc=1
fi

echo
echo "=== p50/p99 (full output in $log)"
grep -E 'p50|p99' "$log" | sed -E 's/[[:space:]]+/ /g' || echo "(no benchmark reported p50/p99)"
exit $rc
