#!/usr/bin/env bash
# make bench: runs every benchmark once (-benchtime=1x: each benchmark loops over its own N of
# pods/cells and reports p50/p99 with b.ReportMetric), then prints the p50/p99 lines together.
# Benchmarks that need the real control plane live under test/e2e (build tag e2e) and run when
# the control plane binaries are available (KIP_CP_BIN, or hack/build-control-plane.sh's cache).
#
# Environment: KIP_BENCH (regexp, default "."), KIP_BENCH_TIMEOUT (default 30m).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mkdir -p .cache
log=.cache/bench.log
: >"$log"

mapfile -t pkgs < <(grep -rlE --include='*_test.go' '^func Benchmark' internal cmd 2>/dev/null | xargs -r -n1 dirname | sort -u | sed 's|^|./|')
mapfile -t e2e < <(grep -rlE --include='*_test.go' '^func Benchmark' test 2>/dev/null | xargs -r -n1 dirname | sort -u | sed 's|^|./|')

run() {
  echo "=== go test -run '^\$' -bench ${KIP_BENCH:-.} -benchtime=1x $*" >&2
  go test -run '^$' -bench "${KIP_BENCH:-.}" -benchtime=1x -timeout "${KIP_BENCH_TIMEOUT:-30m}" "$@" 2>&1 | tee -a "$log"
  return "${PIPESTATUS[0]}"
}

rc=0
if [ ${#pkgs[@]} -gt 0 ]; then run "${pkgs[@]}" || rc=1; fi
if [ ${#e2e[@]} -gt 0 ]; then
  if [ -z "${KIP_CP_BIN:-}" ]; then
    KIP_CP_BIN=$(hack/build-control-plane.sh | tail -n1); export KIP_CP_BIN
  fi
  go build -o bin/ ./cmd/...
  KIP_BIN=$root/bin run -tags e2e "${e2e[@]}" || rc=1
fi

echo
echo "=== p50/p99 (full output in $log)"
grep -E 'p50|p99' "$log" | sed -E 's/[[:space:]]+/ /g' || echo "(no benchmark reported p50/p99)"
exit $rc
