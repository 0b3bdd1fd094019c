# shellcheck shell=bash
# Sourced by images/build-binaries.sh and images/test-armv7.sh (needs apt_install, log, die,
# CACHE): the environment that builds armv7 musl code without rustup's armv7 target.
#
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

