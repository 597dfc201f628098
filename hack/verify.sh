#!/usr/bin/env bash
# make verify: formatting, vet, and the dependency rules of docs/architecture.md:
#   - cloud backends (internal/cloud/...) never import cells, provider, controllers or config;
#   - cells never imports config or a concrete cloud backend (it takes plain Options);
#   - instancetype is pure data: it imports nothing under internal/cloud;
#   - provider never imports internal/cloud/... itself (cells translates cloud errors);
#   - the agent side (internal/agent/..., cmd/kip-cell) imports only cellapi and the shared leaf
#     packages (admit, cellenroll, cgroups, logctx, pki, podenv, poddns, syncbuf), never kip's host side;
#   - only cmd/kip, the CLI (internal/cli/...) and the wiring (internal/kipnode) name a concrete
#     backend.
# Each violation is printed with the offending import; any violation fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mod=$(go list -m)
fail=0

echo "== gofmt" >&2
bad=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$bad" ]; then echo "not gofmt'ed:"; echo "$bad"; fail=1; fi

echo "== go vet" >&2
[ -n "${VERIFY_SKIP_VET:-}" ] || go vet ./... || fail=1

echo "== dependency direction" >&2
# deps PKG prints the module-internal packages PKG imports (directly or not).
deps() { go list -deps "$1" 2>/dev/null | grep "^$mod/" || true; }
forbid() { # forbid PKGPATTERN BANNED_REGEXP WHY
  local p
  for p in $(go list "$mod/$1" 2>/dev/null); do
    local hits
    hits=$(deps "$p" | grep -E "$2" || true)
    if [ -n "$hits" ]; then
      echo "$p imports $(echo $hits) — $3"; fail=1
    fi
  done
}
forbid "internal/cloud/..." "^$mod/internal/(cells|provider|controllers|config)(/|$)" "backends must not depend on their users"
forbid "internal/cells" "^$mod/internal/(config|cloud/[^/]+)(/|$)" "cells takes plain options and the cloud interface, not config or a backend"
forbid "internal/instancetype/..." "^$mod/internal/cloud(/|$)" "instancetype is pure data; catalog refreshes live under their backend"
# direct imports only: provider reaches the cloud through cells, never itself.
for p in $(go list "$mod/internal/provider/..."); do
  hits=$(go list -f '{{join .Imports "\n"}}' "$p" | grep -E "^$mod/internal/cloud(/|$)" || true)
  if [ -n "$hits" ]; then echo "$p imports $(echo $hits) — provider must not import the cloud (cells translates its errors)"; fail=1; fi
done
agent_ok="^$mod/(internal/(agent|admit|cellapi|cellenroll|cgroups|logctx|pki|podenv|poddns|syncbuf)|cmd/kip-cell)(/|$)"
for p in $(go list "$mod/internal/agent/..." "$mod/cmd/kip-cell"); do
  hits=$(deps "$p" | grep -vE "$agent_ok" || true)
  if [ -n "$hits" ]; then echo "$p imports $(echo $hits) — the agent imports only cellapi and shared leaf packages"; fail=1; fi
done
for p in $(go list ./... 2>/dev/null); do
  case "$p" in
    "$mod/cmd/"*|"$mod/internal/cli/"*|"$mod/internal/kipnode"|"$mod/internal/cloud/"*|"$mod/test/"*) continue ;;
  esac
  hits=$(go list -f '{{join .Imports "\n"}}' "$p" | grep -E "^$mod/internal/cloud/(local|aws|azure)$" || true)
  if [ -n "$hits" ]; then echo "$p names a concrete backend ($hits); only cmd, internal/cli and internal/kipnode may"; fail=1; fi
done

if [ $fail -ne 0 ]; then echo "verify: FAILED" >&2; exit 1; fi
echo "verify: OK" >&2
