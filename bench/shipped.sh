# shellcheck shell=bash
# Sourced by bench/lib.sh and bench/smtp-deliver.sh (which define ROOT and log).
#
# The binary a benchmark measures by default is the one users install: the static musl build
# of images/build-binaries.sh (dist/TRIPLE/poshta) on an x86_64 machine (the script's
# aarch64 path drives Debian's cross compiler, which an arm64 host does not have under that
# name; there, and on other machines, the native build is measured and said so). A native
# `cargo build --release` links glibc dynamically and idles at ~2 MiB more RSS (libc.so's
# pages, glibc's arenas), which is not what runs on a board. BENCH_BUILD=native measures that
# build instead (target/release/poshta), e.g. where the musl target cannot be installed.
shipped_triple() {
    case "$(uname -m)" in
        x86_64) echo x86_64-unknown-linux-musl ;;
        *) return 1 ;;
    esac
}

shipped_binary() {
    local t
    if [ "${BENCH_BUILD:-shipped}" = native ] || ! t=$(shipped_triple); then
        echo "${CARGO_TARGET_DIR:-$ROOT/target}/release/poshta"
    else
        echo "$ROOT/dist/$t/poshta"
    fi
}

# shipped_build LOG: build what shipped_binary names (cargo does nothing when it is fresh, and
# a stale binary would otherwise be measured silently); output to LOG.
shipped_build() {
    local t
    if [ "${BENCH_BUILD:-shipped}" = native ] || ! t=$(shipped_triple); then
        log "building poshta (cargo build --release, glibc: not the build that ships)"
        (cd "$ROOT" && exec timeout 1800 cargo build --release) >"$1" 2>&1
    else
        log "building poshta (images/build-binaries.sh $t: the static build that ships)"
        (cd "$ROOT" && exec timeout 1800 images/build-binaries.sh "$t") >"$1" 2>&1
    fi
}
