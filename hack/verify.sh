#!/usr/bin/env bash
# make verify: formatting, vet, and the dependency rules of docs (STYLE.md "Layout"):
#   - cloud backends (internal/cloud/...) never import cells, provider, controllers or config;
#   - the agent side (internal/agent/...) never imports kip's host side;
#   - only cmd/kip and the CLI wiring (internal/cli/...) name a concrete backend.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mod=$(go list -m)
fail=0

echo "== gofmt" >&2
bad=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$bad" ]; then echo "not gofmt'ed:"; echo "$bad"; fail=1; fi

echo "== go vet" >&2
go vet ./... || fail=1

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
forbid "internal/agent/..." "^$mod/internal/(cells|provider|controllers|cloud)(/|$)" "the agent imports cellapi, not kip's host side"
for p in $(go list ./... 2>/dev/null); do
  case "$p" in
    "$mod/cmd/"*|"$mod/internal/cli/"*|"$mod/internal/cloud/"*|"$mod/test/"*) continue ;;
  esac
  hits=$(go list -f '{{join .Imports "\n"}}' "$p" | grep -E "^$mod/internal/cloud/(local|aws|azure)$" || true)
  if [ -n "$hits" ]; then echo "$p names a concrete backend ($hits); only cmd and internal/cli may"; fail=1; fi
done

if [ $fail -ne 0 ]; then echo "verify: FAILED" >&2; exit 1; fi
echo "verify: OK" >&2
