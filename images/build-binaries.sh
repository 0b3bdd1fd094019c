#!/usr/bin/env bash
# Static, stripped release binaries of poshta for the boards, without Docker: the path CI
# uses. Output: dist/<triple>/poshta, plus a size table on stdout.
#
# usage: images/build-binaries.sh [TRIPLE...]
#   default triples: x86_64-unknown-linux-musl aarch64-unknown-linux-musl
#   armv7-unknown-linux-musleabihf is built when named (or ARMV7=1): its std is compiled from
#   source (see below), which adds a few minutes.
#
# Environment: CARGO_TARGET_DIR [target]; SIZE_BUDGET_BYTES [4194304]: the aarch64 binary must
# not be larger (issue 8's budget; the script fails past it); NO_INSTALL=1: never apt-get.
#
# As root on Debian it installs what is missing (retrying apt: the mirror has returned a
# size mismatch once): gcc-aarch64-linux-gnu + libc6-dev-arm64-cross (named explicitly, with
# --no-install-recommends, else ring's C misses bits/libc-header-start.h), musl-tools, and for
# armv7 gcc-arm-linux-gnueabihf + libc6-dev-armhf-cross. Rust targets come from rustup.
# Not root: it says what to install and stops.
#
# Each binary must be static (`file` says "statically linked"; no program interpreter).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=images/lib/cross-env.sh
. "$HERE/lib/cross-env.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DIST=$ROOT/dist
CACHE=$ROOT/dist/.cache
SIZE_BUDGET_BYTES=${SIZE_BUDGET_BYTES:-4194304}

TRIPLES=("$@")
if [ ${#TRIPLES[@]} -eq 0 ]; then
    TRIPLES=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
    [ "${ARMV7:-0}" = 1 ] && TRIPLES+=(armv7-unknown-linux-musleabihf)
fi

log() { echo "build-binaries: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

apt_install() { # PACKAGE... (only those not installed)
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ] || [ "${NO_INSTALL:-0}" = 1 ]; then
        die "missing Debian packages: ${missing[*]} (apt-get install --no-install-recommends ${missing[*]})"
    fi
    log "installing ${missing[*]}"
    local i
    for i in 1 2 3; do
        if apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
            return 0
        fi
        log "apt-get failed (attempt $i), retrying"
        sleep 5
    done
    die "could not install ${missing[*]}"
}

rust_target() { # TRIPLE
    rustup target list --installed 2>/dev/null | grep -qx "$1" && return 0
    rustup target add "$1" >&2 || die "rustup target add $1 failed"
}

# armv7 without rustup's target (HTTP 404 here): images/lib/armv7.sh.
# shellcheck source=images/lib/armv7.sh
. "$HERE/lib/armv7.sh"

build() { # TRIPLE
    local t=$1 extra=()
    case "$t" in
        x86_64-unknown-linux-musl)
            apt_install musl-tools
            rust_target "$t"
            ;;
        aarch64-unknown-linux-musl)
            apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu
            rust_target "$t"
            ;;
        armv7-unknown-linux-musleabihf)
            prepare_armv7
            export RUSTC_BOOTSTRAP=1
            extra=("-Zbuild-std=std,panic_abort") # one argument: cargo's comma list
            ;;
        *) die "unknown target $t (x86_64-unknown-linux-musl, aarch64-unknown-linux-musl, armv7-unknown-linux-musleabihf)" ;;
    esac
    log "cargo build --release --target $t"
    local start=$SECONDS
    (cd "$ROOT" && cargo build --release --locked --bin poshta --target "$t" "${extra[@]}")
    log "$t built in $((SECONDS - start)) s"
    mkdir -p "$DIST/$t"
    cp "$CARGO_TARGET_DIR/$t/release/poshta" "$DIST/$t/poshta.tmp"
    # The release profile strips already; strip again with the target's binutils in case a
    # caller overrode the profile (CARGO_PROFILE_RELEASE_STRIP=false).
    "$(strip_for "$t")" "$DIST/$t/poshta.tmp"
    mv "$DIST/$t/poshta.tmp" "$DIST/$t/poshta"
}

check() { # TRIPLE
    local t=$1 f desc
    f=$DIST/$t/poshta
    desc=$(file -b "$f")
    case "$desc" in
        *"statically linked"*) ;;
        *"static-pie linked"*) ;;
        *) die "$f is not static: $desc" ;;
    esac
    case "$desc" in *interpreter*) die "$f has a program interpreter: $desc" ;; esac
    case "$desc" in *"not stripped"*) die "$f is not stripped: $desc" ;; esac
}

for t in "${TRIPLES[@]}"; do
    build "$t"
    check "$t"
done

status=0
printf '%-32s %10s %8s  %s\n' target bytes MiB file
for t in "${TRIPLES[@]}"; do
    f=$DIST/$t/poshta
    size=$(stat -c %s "$f")
    printf '%-32s %10d %8s  %s\n' "$t" "$size" "$(awk -v s="$size" 'BEGIN{printf "%.2f", s/1048576}')" \
        "$(file -b "$f" | cut -d, -f1-2,4)"
    if [ "$t" = aarch64-unknown-linux-musl ] && [ "$size" -gt "$SIZE_BUDGET_BYTES" ]; then
        log "error: $f is $size bytes, over the budget of $SIZE_BUDGET_BYTES (issue 8)"
        status=1
    fi
done
exit $status
