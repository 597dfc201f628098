#!/usr/bin/env bash
# Builds busybox as its upstream release behaves, for the conformance images' userland: the
# source of the Debian package busybox (the release's own tarball, apt-get source) with
# Debian's package configuration, but without Debian's patches. One of them reverts upstream's
# ash change that keeps environment variables whose names are not shell identifiers
# (`data-1=value-1`, which ConfigMap/Secret envFrom specs print with `sh -c env`); Debian
# needs that for its installer, the upstream image the e2e suite uses has no such patch.
#
# The source comes through apt with a private state directory whose deb-src entries are the
# machine's own Debian sources: the system's apt configuration is not changed.
#
# Output: $HOME/.cache/kip/busybox/<version>/busybox (dynamically linked, like the Debian
# package's). A repeated run with the same version is a no-op. Prints the path on stdout's
# last line.
set -euo pipefail

step() { printf '[busybox %s] %s\n' "$(date +%T)" "$*" >&2; }

version=$(apt-cache policy busybox | sed -n 's/^  Candidate: //p')
[ -n "$version" ] && [ "$version" != "(none)" ] || {
  echo "build-busybox: apt knows no busybox package (run apt-get update)" >&2
  exit 1
}
out="$HOME/.cache/kip/busybox/${version//[:+~]/_}"
if [ -x "$out/busybox" ]; then
  echo "$out/busybox"
  exit 0
fi
mkdir -p "$out"
tmp=$(mktemp -d /tmp/kip-busybox.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# A private apt state whose sources are the system's Debian ones as deb-src.
apt="$tmp/apt"
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/parts"
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  grep -q 'debian-archive-keyring' "$f" || continue
  sed 's/^Types:.*/Types: deb-src/' "$f" >"$apt/parts/$(basename "$f")"
done
if [ -f /etc/apt/sources.list ]; then
  sed -n 's/^deb \(.*\)/deb-src \1/p' /etc/apt/sources.list >"$apt/parts/sources.list"
fi
opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt/parts"
  -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "APT::Sandbox::User=root")
step "fetching the source of busybox $version"
apt-get "${opts[@]}" update >&2
# A binNMU (+bN) is a rebuild of the same source version.
(cd "$tmp" && apt-get "${opts[@]}" source --download-only "busybox=${version%+b[0-9]*}" >&2)

orig=$(compgen -G "$tmp/busybox_*.orig.tar.*" | head -n1)
debian=$(compgen -G "$tmp/busybox_*.debian.tar.*" | head -n1)
mkdir -p "$tmp/src"
tar -xf "$orig" -C "$tmp/src" --strip-components=1
tar -xf "$debian" -C "$tmp" debian/config/pkg/deb
cp "$tmp/debian/config/pkg/deb" "$tmp/src/.config"
step "building busybox $version from its upstream source with Debian's configuration"
(
  cd "$tmp/src"
  # Options of Debian's patches are unknown upstream: oldconfig drops them.
  { yes '' || :; } | make oldconfig >/dev/null
  make -j"$(nproc)" busybox >"$tmp/build.log" 2>&1 || { tail -n 40 "$tmp/build.log" >&2; exit 1; }
)
install -m 0755 "$tmp/src/busybox" "$out/busybox.tmp"
mv "$out/busybox.tmp" "$out/busybox"
step "built $out/busybox"
echo "$out/busybox"
