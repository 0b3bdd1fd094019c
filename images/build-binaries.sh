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

# armv7: `rustup target add armv7-unknown-linux-musleabihf` answers HTTP 404 on this
# project's machines, so std is built from the toolchain's rust-src (-Zbuild-std, allowed on
# stable by RUSTC_BOOTSTRAP=1). Without the target's rust-std there are no self-contained
# musl crt objects or libc.a, so Debian's musl-dev:armhf is unpacked (no dpkg architecture
# is added: a private apt state downloads the one .deb) and gcc links through its specs file,
# with -C link-self-contained=no. std's unwind crate links libunwind.a; gcc's libgcc_eh.a is
# the same unwinder (it only needs dl_iterate_phdr, which musl has), so it stands in.
ARMV7_SYSROOT=$CACHE/armv7-musl
prepare_armv7() {
    apt_install gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
    rustup component list --installed 2>/dev/null | grep -q '^rust-src' || rustup component add rust-src >&2
    if [ ! -f "$ARMV7_SYSROOT/usr/lib/arm-linux-musleabihf/libc.a" ]; then
        local apt=$CACHE/apt-armhf
        mkdir -p "$apt/state/lists/partial" "$apt/cache/archives/partial" "$ARMV7_SYSROOT"
        : >"$apt/status"
        local opts=(-o "Dir::State=$apt/state" -o "Dir::State::status=$apt/status"
            -o "Dir::Cache=$apt/cache" -o APT::Architecture=armhf -o APT::Architectures=armhf
            -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
        local i ok=0
        for i in 1 2 3; do
            # An index that fails (the security mirror has answered a size mismatch) does
            # not matter as long as musl-dev comes down: the download decides.
            apt-get "${opts[@]}" update -q >/dev/null 2>&1 || true
            if (cd "$apt" && apt-get "${opts[@]}" download musl-dev:armhf >/dev/null 2>&1); then
                ok=1
                break
            fi
            log "apt-get download musl-dev:armhf failed (attempt $i), retrying"
            sleep 5
        done
        [ $ok = 1 ] || die "could not download musl-dev:armhf"
        local deb
        for deb in "$apt"/musl-dev_*_armhf.deb; do :; done
        dpkg-deb -x "$deb" "$ARMV7_SYSROOT"
    fi
    local lib=$ARMV7_SYSROOT/usr/lib/arm-linux-musleabihf
    # The specs file names /usr/...; point it into the unpacked tree.
    # rustc may link a static PIE: that needs musl's self-relocating rcrt1.o, not Scrt1.o.
    sed -e "s|/usr/|$ARMV7_SYSROOT/usr/|g" \
        -e "s|%{!shared: \([^ ]*\)/Scrt1.o}|%{static-pie: \1/rcrt1.o} %{!static-pie: %{!shared: \1/Scrt1.o}}|" \
        "$lib/musl-gcc.specs" >"$CACHE/armv7-musl-gcc.specs"
    grep -q rcrt1.o "$CACHE/armv7-musl-gcc.specs" || die "unexpected musl-gcc.specs layout in musl-dev:armhf"
    local gcclib
    gcclib=$(dirname "$(arm-linux-gnueabihf-gcc -print-libgcc-file-name)")
    mkdir -p "$CACHE/armv7-unwind"
    ln -sf "$gcclib/libgcc_eh.a" "$CACHE/armv7-unwind/libunwind.a"
    cat >"$CACHE/armv7-musl-gcc" <<EOF
#!/bin/sh
exec arm-linux-gnueabihf-gcc -specs "$CACHE/armv7-musl-gcc.specs" "\$@"
EOF
    chmod +x "$CACHE/armv7-musl-gcc"
    export CC_armv7_unknown_linux_musleabihf=$CACHE/armv7-musl-gcc
    export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_LINKER=$CACHE/armv7-musl-gcc
    export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_RUSTFLAGS="-C link-self-contained=no -C target-feature=+crt-static -L native=$CACHE/armv7-unwind"
}

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
