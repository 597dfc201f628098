#!/usr/bin/env bash
# Installs the Debian packages Kip's local cells and tests need, once (idempotent), and
# extracts Debian's dynamically linked busybox (the binary internal/imagebuild puts in the
# seeded images) into ${XDG_CACHE_HOME:-~/.cache}/kip/busybox. The `busybox` package conflicts
# with `busybox-static` (the host's /bin/busybox), so it is downloaded and extracted, never
# installed.
set -euo pipefail
pkgs=(runc busybox-static iptables nftables iproute2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
updated=""
if [ ${#missing[@]} -eq 0 ]; then
  echo "[install-deps] packages present: ${pkgs[*]}" >&2
else
  echo "[install-deps] installing: ${missing[*]}" >&2
  $sudo apt-get update -q
  updated=1
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

cache="${XDG_CACHE_HOME:-$HOME/.cache}/kip"
bb="$cache/busybox"
if [ -x "$bb/bin/busybox" ]; then
  echo "[install-deps] dynamic busybox present: $bb/bin/busybox" >&2
  exit 0
fi
mkdir -p "$cache/debs"
if ! ls "$cache"/debs/busybox_*.deb >/dev/null 2>&1; then
  echo "[install-deps] downloading Debian's busybox package into $cache/debs" >&2
  # apt-get download writes into the working directory; -o ... keeps apt from switching to
  # its sandbox user, which could not write into a root-owned cache.
  (cd "$cache/debs" && { apt-get -q -o APT::Sandbox::User=root download busybox ||
    { [ -n "$updated" ] || $sudo apt-get update -q; apt-get -q -o APT::Sandbox::User=root download busybox; }; })
fi
deb=$(ls "$cache"/debs/busybox_*.deb | sort | tail -1)
tmp=$(mktemp -d "$cache/busybox.XXXXXX")
dpkg-deb -x "$deb" "$tmp"
rm -rf "$bb"
mv "$tmp" "$bb"
echo "[install-deps] dynamic busybox extracted: $bb/bin/busybox (from $(basename "$deb"))" >&2
