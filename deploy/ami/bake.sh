#!/bin/sh
# bake.sh: bake what a Kip cell's user data installs into an image, so that cells of it boot
# without downloading anything: kip-cell and runc in /opt/kip/bin, the kip-cell systemd unit
# (not enabled: the user data enables it once the cell's bootstrap is written), and optionally
# images unpacked in the agent's store (/var/lib/kip-cell/images). Kip's user data still pins
# kip-cell's and runc's SHA-256: a baked binary with the pinned hash is used as it is, any other
# is downloaded and replaced at boot. So bake the very files kip serves (its
# cloud.aws.bootstrap.agentPaths and runcPaths).
#
#   bake.sh [--root DIR] --kip-cell FILE|URL [--kip-cell-sha256 HEX] --runc FILE|URL
#           [--runc-sha256 HEX] [--image REF]... [--default-registry HOST[:PORT]]
#           [--insecure-registry HOST[:PORT]]...
#
# --root is the image's root filesystem (default /: run on the instance being imaged, as the
# Packer template kip-cell.pkr.hcl does; a directory: a chroot or a mounted volume). An
# --image is pulled (anonymously) for this machine's architecture by the baked kip-cell, so
# --root must hold a system of this machine's architecture when --image is given. POSIX sh;
# needs sha256sum, and curl or wget for URLs. Run as root (unpacked images keep their owners).
set -eu
umask 022

ROOT=/
KIP_CELL= KIP_CELL_SHA256= RUNC= RUNC_SHA256= IMAGES= DEFAULT_REGISTRY= INSECURE=

die() {
	echo "bake.sh: $*" >&2
	exit 1
}
usage() {
	sed -n '2,/^set -eu/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
	exit 2
}
need_arg() {
	[ $# -ge 2 ] && [ -n "$2" ] || die "flag $1 needs a value"
}

while [ $# -gt 0 ]; do
	case "$1" in
	--root) need_arg "$@"; ROOT=$2; shift 2 ;;
	--kip-cell) need_arg "$@"; KIP_CELL=$2; shift 2 ;;
	--kip-cell-sha256) need_arg "$@"; KIP_CELL_SHA256=$2; shift 2 ;;
	--runc) need_arg "$@"; RUNC=$2; shift 2 ;;
	--runc-sha256) need_arg "$@"; RUNC_SHA256=$2; shift 2 ;;
	--image) need_arg "$@"; IMAGES="$IMAGES $2"; shift 2 ;;
	--default-registry) need_arg "$@"; DEFAULT_REGISTRY=$2; shift 2 ;;
	--insecure-registry) need_arg "$@"; INSECURE="${INSECURE:+$INSECURE,}$2"; shift 2 ;;
	-h | --help) usage ;;
	*) die "unknown argument $1 (--help for usage)" ;;
	esac
done
[ -n "$KIP_CELL" ] || die "flag --kip-cell is required"
[ -n "$RUNC" ] || die "flag --runc is required"
[ -d "$ROOT" ] || die "--root $ROOT is not a directory"
ROOT=$(cd "$ROOT" && pwd)
for h in "$KIP_CELL_SHA256" "$RUNC_SHA256"; do
	case "$h" in
	'') ;;
	*[!0-9a-f]*) die "SHA-256 $h is not 64 lowercase hex digits" ;;
	*) [ ${#h} -eq 64 ] || die "SHA-256 $h is not 64 lowercase hex digits" ;;
	esac
done

BIN=$ROOT/opt/kip/bin
STATE=$ROOT/var/lib/kip-cell
UNIT=$ROOT/etc/systemd/system/kip-cell.service

# A cell's identity must never be baked: each instance enrolls for its own.
for f in "$ROOT/etc/kip/bootstrap.json" "$STATE/agent-key.pem" "$STATE/agent-cert.pem"; do
	[ ! -e "$f" ] || die "$f exists: this root holds a cell's identity; bake from a clean image"
done

# get SRC DEST: copy a file or download a URL.
get() {
	case "$1" in
	http://* | https://*)
		if command -v curl >/dev/null 2>&1; then
			curl -fsSL --retry 5 -o "$2" "$1"
		elif command -v wget >/dev/null 2>&1; then
			wget -q --tries=5 -O "$2" "$1"
		else
			die "neither curl nor wget is installed to download $1"
		fi
		;;
	*) cp "$1" "$2" ;;
	esac
}

# install_bin NAME SRC SHA256: to $BIN/NAME, checked against SHA256 when given.
install_bin() {
	get "$2" "$BIN/.$1.new" || die "fetching $1 from $2 failed"
	got=$(sha256sum "$BIN/.$1.new" | cut -d' ' -f1)
	if [ -n "$3" ] && [ "$got" != "$3" ]; then
		rm -f "$BIN/.$1.new"
		die "$1 from $2 has SHA-256 $got, not $3: refusing it"
	fi
	chmod 0755 "$BIN/.$1.new"
	mv -f "$BIN/.$1.new" "$BIN/$1"
	echo "bake.sh: $1 $got"
}

mkdir -p "$BIN" "$STATE" "$(dirname "$UNIT")"
chmod 0755 "$ROOT/opt/kip" "$BIN"
chmod 0700 "$STATE"
install_bin kip-cell "$KIP_CELL" "$KIP_CELL_SHA256"
install_bin runc "$RUNC" "$RUNC_SHA256"

# The unit kip's user data writes (and rewrites, naming the cell); it starts nothing until a
# bootstrap is there.
cat >"$UNIT" <<'KIP_UNIT_EOF'
[Unit]
Description=Kip cell agent
After=network-online.target
Wants=network-online.target
ConditionPathExists=/etc/kip/bootstrap.json

[Service]
ExecStart=/opt/kip/bin/kip-cell --bootstrap /etc/kip/bootstrap.json --state-dir /var/lib/kip-cell --runc /opt/kip/bin/runc --guard-metadata
Restart=always
RestartSec=2
Delegate=yes
KillMode=mixed
TimeoutStopSec=300

[Install]
WantedBy=multi-user.target
KIP_UNIT_EOF
chmod 0644 "$UNIT"

if [ -n "$IMAGES" ]; then
	# shellcheck disable=SC2086 # IMAGES is a list of references, which hold no spaces
	"$BIN/kip-cell" pull --state-dir "$STATE" ${DEFAULT_REGISTRY:+--default-registry "$DEFAULT_REGISTRY"} \
		${INSECURE:+--insecure-registry "$INSECURE"} $IMAGES || die "pulling images into $STATE failed"
	# Keep only the unpacked images: what this agent pulled them as (refs), its lease and the
	# locks are per agent; each pod fetches its image's manifest again with its own pull
	# secrets before it uses one of these.
	rm -rf "$STATE/images/refs" "$STATE/images/leases" "$STATE/images/locks" "$STATE/images/tmp" "$STATE/images/lock"
fi

{
	echo "# baked by deploy/ami/bake.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "kip-cell $(sha256sum "$BIN/kip-cell" | cut -d' ' -f1)"
	echo "runc $(sha256sum "$BIN/runc" | cut -d' ' -f1)"
	for ref in $IMAGES; do echo "image $ref"; done
} >"$ROOT/opt/kip/baked.txt"
chmod 0644 "$ROOT/opt/kip/baked.txt"
echo "bake.sh: baked into $ROOT (see $ROOT/opt/kip/baked.txt)"
