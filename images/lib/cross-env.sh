# shellcheck shell=bash
# Sourced by images/*.sh: the C cross compilers, archivers and linkers cargo needs for the
# static musl targets. ring (rustls' and rcgen's crypto) compiles C and assembly with
# CC_<triple>; the Rust std for *-musl targets brings musl's libc.a and crt objects itself,
# so Debian's glibc cross gcc only drives the link (the -dev package gives it the headers
# ring's C includes). Set here rather than in .cargo/config.toml so a native `cargo build`
# never depends on a cross toolchain being installed.

export CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-musl-gcc}
export AR_x86_64_unknown_linux_musl=${AR_x86_64_unknown_linux_musl:-ar}

export CC_aarch64_unknown_linux_musl=${CC_aarch64_unknown_linux_musl:-aarch64-linux-gnu-gcc}
export AR_aarch64_unknown_linux_musl=${AR_aarch64_unknown_linux_musl:-aarch64-linux-gnu-ar}
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER:-aarch64-linux-gnu-gcc}

export CC_armv7_unknown_linux_musleabihf=${CC_armv7_unknown_linux_musleabihf:-arm-linux-gnueabihf-gcc}
export AR_armv7_unknown_linux_musleabihf=${AR_armv7_unknown_linux_musleabihf:-arm-linux-gnueabihf-ar}
export CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_LINKER=${CARGO_TARGET_ARMV7_UNKNOWN_LINUX_MUSLEABIHF_LINKER:-arm-linux-gnueabihf-gcc}

# The strip for each target's binaries.
strip_for() {
    case "$1" in
        x86_64-*) echo strip ;;
        aarch64-*) echo aarch64-linux-gnu-strip ;;
        armv7-*) echo arm-linux-gnueabihf-strip ;;
        *) return 1 ;;
    esac
}
