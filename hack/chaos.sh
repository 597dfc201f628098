#!/usr/bin/env bash
# make chaos: seeded, randomized fault rounds over the local backend with the real control
# plane, kip and cells (test/chaos, docs/chaos.md); prints each round's plan and verdict and a
# tally at the end. Root only (network namespaces, cgroups).
#
# Environment:
#   CHAOS_ROUNDS   rounds to run (default 50)
#   CHAOS_SEED     the seed (default: random, printed first); a round's plan depends on the
#                  seed and its number alone
#   CHAOS_ONLY     comma-separated round numbers to replay alone (with the seed that failed)
#   CHAOS_DURATION stop starting rounds after this long (a Go duration like 45m); the tally
#                  says how many ran
#   CHAOS_TIMEOUT  go test -timeout (default: 6 minutes a round plus 15)
#   KIP_CP_BIN     control plane binary dir (default: built by hack/build-control-plane.sh)
#   KIP_TEST_LOGS  where the full log goes (default .cache/test-logs/chaos.log)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rounds=${CHAOS_ROUNDS:-50}
if [ -n "${CHAOS_ONLY:-}" ]; then
  n=$(tr ',' ' ' <<<"$CHAOS_ONLY" | wc -w)
else
  n=$rounds
fi
timeout=${CHAOS_TIMEOUT:-$(( n * 6 + 15 ))m}
logdir=${KIP_TEST_LOGS:-$root/.cache/test-logs}
mkdir -p "$logdir"

if [ -z "${KIP_CP_BIN:-}" ]; then
  KIP_CP_BIN=$(hack/build-control-plane.sh | tail -n1) || { echo "make chaos: building the control plane failed" >&2; exit 1; }
  export KIP_CP_BIN
fi
go build -o bin/ ./cmd/... || { echo "make chaos: building kip failed" >&2; exit 1; }
export KIP_BIN=$root/bin KIP_REQUIRE_NETNS=1 CHAOS_ROUNDS="$rounds"

s=$(date +%s)
# -v so the rounds print as they finish; the full log (kip's start-up lines included) in chaos.log.
go test -count=1 -tags chaos -timeout "$timeout" -run '^TestChaos$' -v ./test/chaos/ 2>&1 | tee "$logdir/chaos.log" \
  | grep --line-buffered -vE '^\[e2e |^=== RUN|^\s*$'
rc=${PIPESTATUS[0]}
echo "make chaos: exit $rc after $(( $(date +%s) - s ))s (log $logdir/chaos.log)" >&2
exit "$rc"
