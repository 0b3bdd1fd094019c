#!/usr/bin/env bash
# Checks board/: every profile's main.cf passes `poshta check` with no errors (warnings, such
# as keys poshta accepts but does not act on yet, are allowed), the systemd unit passes
# `systemd-analyze verify`, and the sysusers/tmpfiles snippets apply to an empty root.
#
# usage: images/check-board.sh [POSHTA_BINARY]
#   default binary: dist/x86_64-unknown-linux-musl/poshta, else $CARGO_TARGET_DIR/release/poshta
#
# Nothing outside a temporary directory is written. Checks needing a tool that is absent
# (systemd-analyze, systemd-sysusers, systemd-tmpfiles) are reported as skipped.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=${1:-}
if [ -z "$BIN" ]; then
    for b in "$ROOT/dist/x86_64-unknown-linux-musl/poshta" "${CARGO_TARGET_DIR:-$ROOT/target}/release/poshta"; do
        [ -x "$b" ] && BIN=$b && break
    done
fi
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then
    echo "check-board: no poshta binary (build one, or pass its path)" >&2
    exit 1
fi
BIN=$(realpath "$BIN")
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail=0

for cf in "$ROOT"/board/*/main.cf; do
    p=$(basename "$(dirname "$cf")")
    if out=$("$BIN" check -c "$cf" 2>&1); then
        echo "ok   $p/main.cf${out:+ ($(grep -c . <<<"$out") warning lines)}"
    else
        echo "FAIL $p/main.cf:"
        printf '%s\n' "$out" | sed 's/^/     /'
        fail=1
    fi
    # The listeners and paths a profile sets must be what postconf reports (no typo'd key
    # silently leaving a default).
    for key in smtpd_listen queue_directory virtual_mailbox_base smtpd_sessions_max; do
        want=$(sed -n "s/^$key = //p" "$cf")
        got=$("$BIN" postconf -c "$cf" "$key" 2>/dev/null | sed -n "s/^$key = //p")
        if [ "$want" != "$got" ]; then
            echo "FAIL $p/main.cf: $key is '$got', the file says '$want'"
            fail=1
        fi
    done
done

if command -v systemd-analyze >/dev/null; then
    # verify wants ExecStart's binary to exist: point the unit at the one being checked.
    sed "s|/usr/local/sbin/poshta|$BIN|g" "$ROOT/board/poshta.service" >"$TMP/poshta.service"
    if out=$(systemd-analyze verify "$TMP/poshta.service" 2>&1) && [ -z "$out" ]; then
        echo "ok   poshta.service (systemd-analyze verify)"
    else
        echo "FAIL poshta.service:"
        printf '%s\n' "$out" | sed 's/^/     /'
        fail=1
    fi
else
    echo "skip poshta.service: no systemd-analyze"
fi

if command -v systemd-sysusers >/dev/null && command -v systemd-tmpfiles >/dev/null; then
    r=$TMP/root
    mkdir -p "$r/etc" "$r/var/lib" "$r/var/spool"
    if systemd-sysusers --root="$r" "$ROOT/board/poshta.sysusers" >/dev/null 2>&1 &&
        grep -q '^poshta:' "$r/etc/passwd" &&
        systemd-tmpfiles --root="$r" --create "$ROOT/board/poshta.tmpfiles" &&
        [ -d "$r/var/spool/poshta" ] && [ -f "$r/etc/poshta/users" ]; then
        echo "ok   poshta.sysusers, poshta.tmpfiles (applied to an empty root)"
    else
        echo "FAIL poshta.sysusers/poshta.tmpfiles"
        fail=1
    fi
else
    echo "skip poshta.sysusers/poshta.tmpfiles: no systemd-sysusers/systemd-tmpfiles"
fi
exit $fail
