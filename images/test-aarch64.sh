#!/usr/bin/env bash
# Run poshta's unit tests (the library's #[cfg(test)] modules) as an aarch64 musl binary
# under qemu-user, the way they would run on a 64-bit Raspberry Pi.
#
# usage: images/test-aarch64.sh [test-binary arguments: a name filter, --skip NAME, ...]
#
# Needs what images/build-binaries.sh installs for aarch64, plus qemu-user-static (installed
# when missing and run as root). Integration tests (tests/*.rs) are not run: they spawn the
# built binary and talk to it over loopback, which the native test run already covers; the
# library tests are where architecture matters (byte order, usize width, alignment, atomics
# and syscalls through rustix).
#
# Prints the wall time at the end. Environment: CARGO_TARGET_DIR [target].
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=images/lib/cross-env.sh
. "$HERE/lib/cross-env.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
T=aarch64-unknown-linux-musl

need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "test-aarch64: missing: ${need[*]} (apt-get install --no-install-recommends ${need[*]})" >&2
        exit 1
    fi
    for i in 1 2 3; do
        apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null && break
        [ "$i" = 3 ] && exit 1
        sleep 5
    done
fi
rustup target list --installed | grep -qx "$T" || rustup target add "$T"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=qemu-aarch64-static
start=$SECONDS
cd "$ROOT"
cargo test --locked --target "$T" --no-run --lib
built=$SECONDS
cargo test --locked --target "$T" --lib -- "$@"
echo "test-aarch64: build $((built - start)) s, tests under qemu $((SECONDS - built)) s" >&2
