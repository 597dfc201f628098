#!/usr/bin/env bash
# make fuzz: runs every native Go fuzz target for a bounded time, one after another, and
# prints a table of what each did. A crash leaves its input under the package's
# testdata/fuzz/<Target>/ (commit it with the fix: it then runs in every `go test`).
#
# Environment:
#   FUZZTIME       how long each target runs (go test -fuzztime; default 1m)
#   FUZZ_PARALLEL  fuzzing workers per target (go test -parallel; default 1, for shared machines)
#   FUZZ_MINIMIZETIME  go test -fuzzminimizetime (default 60s, go's): time spent shrinking each new
#                  input; less leaves more time to explore on a slow or shared machine
#   FUZZ_TARGETS   an extended regexp; only targets whose "package Target" matches run
#   FUZZ_LOGS      where each target's log goes (default .cache/fuzz-logs)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
fuzztime=${FUZZTIME:-1m}
parallel=${FUZZ_PARALLEL:-1}
logdir=${FUZZ_LOGS:-$root/.cache/fuzz-logs}
mkdir -p "$logdir"

# Every fuzz target, "./package FuzzName", found in the *_test.go files.
mapfile -t targets < <(grep -rE --include='*_test.go' -o '^func Fuzz[A-Za-z0-9_]+' cmd internal |
  sed -E 's#^(.*)/[^/]+_test\.go:func (Fuzz.*)#./\1 \2#' | sort -u)
[ ${#targets[@]} -gt 0 ] || { echo "make fuzz: no fuzz targets found" >&2; exit 1; }

failed=0
declare -a rows=()
for t in "${targets[@]}"; do
  if [ -n "${FUZZ_TARGETS:-}" ] && ! grep -Eq -- "$FUZZ_TARGETS" <<<"$t"; then
    continue
  fi
  read -r pkg fn <<<"$t"
  log=$logdir/$(basename "$pkg")-$fn.log
  printf '=== %s %s for %s\n' "$pkg" "$fn" "$fuzztime" >&2
  go test "$pkg" -run '^$' -fuzz "^$fn\$" -fuzztime "$fuzztime" -parallel "$parallel" \
    -fuzzminimizetime "${FUZZ_MINIMIZETIME:-60s}" >"$log" 2>&1
  rc=$?
  last=$(grep -E '^fuzz: elapsed' "$log" | tail -n1)
  execs=$(sed -nE 's/.*execs: ([0-9]+) .*/\1/p' <<<"$last")
  result=ok
  if [ $rc -ne 0 ]; then
    result="FAIL (log $log)"
    failed=1
    grep -E 'Failing input written to|--- FAIL|panic:' "$log" | head -n3 >&2
  fi
  rows+=("$(printf '%-24s %-22s %12s  %s' "$pkg" "$fn" "${execs:-?}" "$result")")
done

printf '\n%-24s %-22s %12s  %s\n' package target execs result >&2
for r in "${rows[@]}"; do echo "$r" >&2; done
[ $failed -eq 0 ] || { echo "make fuzz: FAILED" >&2; exit 1; }
echo "make fuzz: PASSED (each target ${fuzztime})" >&2
