#!/usr/bin/env bash
# Release-profile comparison: builds poshta once per profile variant for aarch64 and x86_64
# musl, reports the stripped static sizes, and times a fixed CPU workload with the native
# (x86_64) binary. The figures behind [profile.release] (docs/decisions.md, "Release profile").
#
# usage: images/profile-size.sh [VARIANT...]      (default: all variants below)
#
# Variants override Cargo.toml's [profile.release] through CARGO_PROFILE_RELEASE_* variables,
# so nothing is edited. Each variant rebuilds every crate (a few minutes each on 2 cores).
#
# Workload (x86_64 binary, run on this machine; CPU time = user+sys of the process):
#   argon2: `poshta user add --password-stdin` 5 times (argon2id m=19456 KiB t=2: pure Rust
#           blake2 + memory bandwidth, the slowest thing a board does per login)
#   smtp:   `poshta serve` receiving and delivering $MSGS 1 KiB messages from smtp-source
#           (10 sessions, one message per connection), CPU time of the server process.
# REUSE=1 skips the build when an earlier run left the variant's binaries in $OUT.
# Only 127.0.0.1 is used. Needs smtp-source (Debian's postfix package) for the smtp figure;
# without it that column says "-".
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=images/lib/cross-env.sh
. "$HERE/lib/cross-env.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
MSGS=${MSGS:-1000}
OUT=${OUT:-$ROOT/dist/profile-size}
mkdir -p "$OUT"

# name -> "opt lto cgu panic"
declare -A VARIANTS=(
    [base]="3 false 16 unwind"
    [o3-fat]="3 fat 1 abort"
    [o3-thin]="3 thin 1 abort"
    [o3-fat-unwind]="3 fat 1 unwind"
    [os-fat]="s fat 1 abort"
    [oz-fat]="z fat 1 abort"
)
ORDER=(base o3-fat o3-thin o3-fat-unwind os-fat oz-fat)
[ $# -gt 0 ] && ORDER=("$@")

cpu_of_pid() { # utime+stime in ms of a live process (field 14, 15 after the comm field)
    local stat ticks
    stat=$(cat "/proc/$1/stat")
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat
    ticks=$(getconf CLK_TCK)
    echo $(((${12} + ${13}) * 1000 / ticks))
}

workload() { # BIN -> prints "argon2_ms smtp_ms"
    local bin=$1 d port pid argon smtp=- i n
    d=$(mktemp -d)
    port=$((20000 + RANDOM % 20000))
    mkdir -p "$d/spool" "$d/mail"
    cat >"$d/main.cf" <<EOF
smtpd_listen = 127.0.0.1:$port
queue_directory = $d/spool
virtual_mailbox_base = $d/mail
mailbox_users_file = $d/users
mydestination = bench.example
myhostname = mx.bench.example
mynetworks = 127.0.0.0/8
EOF
    local t0 t1 me=$BASHPID # this (sub)shell: its cutime/cstime count the waited-for children
    t0=$(awk '{print $16+$17}' "/proc/$me/stat")
    for i in 1 2 3 4 5; do
        echo "pw$i" | "$bin" user add "u$i" --password-stdin -c "$d/main.cf" >/dev/null 2>&1
    done
    echo pw | "$bin" user add alice --password-stdin -c "$d/main.cf" >/dev/null 2>&1
    t1=$(awk '{print $16+$17}' "/proc/$me/stat")
    argon=$(((t1 - t0) * 1000 * 5 / (6 * $(getconf CLK_TCK))))
    if command -v smtp-source >/dev/null; then
        "$bin" serve -c "$d/main.cf" >"$d/serve.log" 2>&1 &
        pid=$!
        for i in $(seq 100); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            sleep 0.1
        done
        timeout 120 smtp-source -s 10 -m "$MSGS" -l 1024 -f s@client.example -t alice@bench.example \
            "127.0.0.1:$port" || true
        for i in $(seq 600); do
            n=$(find "$d/mail/alice/new" -type f 2>/dev/null | wc -l)
            [ "$n" -ge "$MSGS" ] && break
            sleep 0.1
        done
        smtp=$(cpu_of_pid "$pid")
        [ "$n" -ge "$MSGS" ] || smtp="$smtp(only $n delivered)"
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$d"
    echo "$argon $smtp"
}

printf '%-14s %-4s %-5s %-4s %-7s %12s %12s %10s %12s\n' variant opt lto cgu panic \
    aarch64_B x86_64_B argon2_ms "smtp_ms/${MSGS}" | tee "$OUT/results.txt"
for v in "${ORDER[@]}"; do
    read -r opt lto cgu panic <<<"${VARIANTS[$v]}"
    export CARGO_PROFILE_RELEASE_OPT_LEVEL=$opt CARGO_PROFILE_RELEASE_LTO=$lto \
        CARGO_PROFILE_RELEASE_CODEGEN_UNITS=$cgu CARGO_PROFILE_RELEASE_PANIC=$panic \
        CARGO_PROFILE_RELEASE_STRIP=true CARGO_PROFILE_RELEASE_DEBUG=false
    if [ "${REUSE:-0}" = 1 ] && [ -x "$OUT/poshta-x86_64-unknown-linux-musl-$v" ]; then
        : # REUSE=1: time the binaries of an earlier run again
    else
        (cd "$ROOT" && cargo build -q --release --locked --bin poshta \
            --target aarch64-unknown-linux-musl --target x86_64-unknown-linux-musl)
        for t in aarch64-unknown-linux-musl x86_64-unknown-linux-musl; do
            cp "$CARGO_TARGET_DIR/$t/release/poshta" "$OUT/poshta-$t-$v"
        done
    fi
    a=$(stat -c %s "$OUT/poshta-aarch64-unknown-linux-musl-$v")
    x=$(stat -c %s "$OUT/poshta-x86_64-unknown-linux-musl-$v")
    read -r argon smtp <<<"$(workload "$OUT/poshta-x86_64-unknown-linux-musl-$v")"
    printf '%-14s %-4s %-5s %-4s %-7s %12s %12s %10s %12s\n' "$v" "$opt" "$lto" "$cgu" "$panic" \
        "$a" "$x" "$argon" "$smtp" | tee -a "$OUT/results.txt"
done
