#!/usr/bin/env bash
# Run poshta's unit tests (the library's #[cfg(test)] modules) as armv7 (32-bit ARM, musl)
# code under qemu-user, the way they would run on a Raspberry Pi 2/3 with a 32-bit OS.
#
# usage: images/test-armv7.sh [test-binary arguments: a name filter, --skip NAME, ...]
#
# rustup has no armv7 musl std here (HTTP 404), so std and the test harness are built from
# the toolchain's rust-src (-Zbuild-std, RUSTC_BOOTSTRAP=1), with images/lib/armv7.sh's C
# compiler and musl (both installed or downloaded when root). Measured here: build 136 s,
# 294 tests in 97 s under qemu-arm; CI runs it (tests/run.sh). Environment:
# CARGO_TARGET_DIR [target].
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=images/lib/cross-env.sh
. "$HERE/lib/cross-env.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CACHE=$ROOT/dist/.cache
T=armv7-unknown-linux-musleabihf
log() { echo "test-armv7: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}
apt_install() {
    local p missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "missing: ${missing[*]} (apt-get install --no-install-recommends ${missing[*]})"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}
# shellcheck source=images/lib/armv7.sh
. "$HERE/lib/armv7.sh"
apt_install qemu-user-static
prepare_armv7
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_RUNNER=qemu-arm-static
start=$SECONDS
cd "$ROOT"
cargo test --locked --target "$T" -Zbuild-std=std,panic_unwind,test --no-run --lib
built=$SECONDS
cargo test --locked --target "$T" -Zbuild-std=std,panic_unwind,test --lib -- "$@"
echo "test-armv7: build $((built - start)) s, tests under qemu $((SECONDS - built)) s" >&2
