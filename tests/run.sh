#!/usr/bin/env bash
# The README's test command: installs what the tests need on a fresh Debian machine
# (when run as root; otherwise it says what to install), builds poshta and runs every test:
# unit and transcript tests (cargo test) and end-to-end tests with real clients (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=()
command -v swaks >/dev/null 2>&1 || apt_pkgs+=(swaks)
dpkg -s libnet-ssleay-perl >/dev/null 2>&1 || apt_pkgs+=(libnet-ssleay-perl)
command -v msmtp >/dev/null 2>&1 || apt_pkgs+=(msmtp)
command -v s-nail >/dev/null 2>&1 || apt_pkgs+=(s-nail)
command -v openssl >/dev/null 2>&1 || apt_pkgs+=(openssl)
command -v fetchmail >/dev/null 2>&1 || apt_pkgs+=(fetchmail)
command -v getmail >/dev/null 2>&1 || apt_pkgs+=(getmail6)
command -v curl >/dev/null 2>&1 || apt_pkgs+=(curl)
# dnsmasq (the binary only: dnsmasq-base starts no service) serves MX records on a loopback
# port for tests/e2e/test_mx.py.
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || apt_pkgs+=(dnsmasq-base)
python3 -c 'import pytest' >/dev/null 2>&1 || need_pytest=1

if [ ${#apt_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        # The mirror has once answered with a size mismatch: retry.
        for i in 1 2 3; do
            if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}"; then
                break
            fi
            [ "$i" = 3 ] && { echo "tests/run.sh: apt-get install ${apt_pkgs[*]} failed" >&2; exit 1; }
            sleep 5
        done
    else
        echo "tests/run.sh: missing Debian packages; run: sudo apt-get install ${apt_pkgs[*]}" >&2
        exit 1
    fi
fi
# Postfix and Dovecot's auth service (its SASL server) as real peers for
# tests/e2e/test_postfix_peer.py: installed with no configuration and their services never
# started (policy-rc.d answers "forbidden" during the install); the test runs private
# instances on loopback ports. Not root: the test skips itself.
if [ "$(id -u)" = 0 ] && { ! [ -x /usr/sbin/postfix ] || ! [ -x /usr/sbin/dovecot ]; }; then
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    for i in 1 2 3; do
        if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix dovecot-core >/dev/null; then
            break
        fi
        [ "$i" = 3 ] && echo "tests/run.sh: could not install postfix dovecot-core; the Postfix peer tests will be skipped" >&2
        sleep 5
    done
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable postfix.service dovecot.service dovecot.socket >/dev/null 2>&1 || true
    fi
fi
if [ "${need_pytest:-0}" = 1 ]; then
    python3 -m pip install -q pytest || { echo "tests/run.sh: run: python3 -m pip install pytest" >&2; exit 1; }
fi

# fail2ban-regex checks poshta's log lines against the stock Postfix filters. Unpacked, not
# installed: installing would start a fail2ban service.
f2b=tests/.cache/fail2ban
if [ ! -x "$f2b/usr/bin/fail2ban-regex" ]; then
    mkdir -p "$f2b"
    if (cd tests/.cache && { apt-get download fail2ban >/dev/null 2>&1 ||
            { [ "$(id -u)" = 0 ] && apt-get update -qq && apt-get download fail2ban >/dev/null 2>&1; }; }); then
        dpkg -x tests/.cache/fail2ban_*.deb "$f2b"
    else
        echo "tests/run.sh: could not download fail2ban; its test will be skipped" >&2
    fi
fi
export FAIL2BAN_ROOT="$PWD/$f2b"

# smtp-sink (a fake relay target for tests/e2e/test_relay.py), from Debian's postfix package,
# unpacked the same way.
pf=tests/.cache/postfix
if [ ! -x "$pf/usr/sbin/smtp-sink" ]; then
    mkdir -p "$pf"
    if (cd tests/.cache && { apt-get download postfix >/dev/null 2>&1 ||
            { [ "$(id -u)" = 0 ] && apt-get update -qq && apt-get download postfix >/dev/null 2>&1; }; }); then
        dpkg -x tests/.cache/postfix_*.deb "$pf"
    else
        echo "tests/run.sh: could not download postfix; the smtp-sink test will be skipped" >&2
    fi
fi
export SMTP_SINK="$PWD/$pf/usr/sbin/smtp-sink"

# bsd-mailx (Debian's mail(1), which always runs /usr/sbin/sendmail) for
# tests/e2e/test_sendmail.py, unpacked: installing it would pull in exim4. It needs
# liblockfile1 (libbsd0 is in the base system); the test puts that library on
# LD_LIBRARY_PATH.
mx=tests/.cache/bsd-mailx
if [ ! -x "$mx/usr/bin/bsd-mailx" ] || ! ls "$mx"/usr/lib/*/liblockfile.so.1 >/dev/null 2>&1; then
    mkdir -p "$mx"
    if (cd tests/.cache && { apt-get download bsd-mailx liblockfile1 >/dev/null 2>&1 ||
            { [ "$(id -u)" = 0 ] && apt-get update -qq && apt-get download bsd-mailx liblockfile1 >/dev/null 2>&1; }; }); then
        for deb in tests/.cache/bsd-mailx_*.deb tests/.cache/liblockfile1_*.deb; do dpkg -x "$deb" "$mx"; done
    else
        echo "tests/run.sh: could not download bsd-mailx; its test will be skipped" >&2
    fi
fi
export BSD_MAILX_ROOT="$PWD/$mx"

cargo build --locked --all-targets
cargo test --locked
POSHTA_BIN="$PWD/target/debug/poshta" python3 -m pytest -q -p no:cacheprovider tests/e2e "$@"

# The appliance's promises (issue 8), unless POSHTA_SKIP_CROSS=1 (quick local runs): the
# static aarch64 binary builds and stays within its 4 MiB budget, the library's tests pass
# as aarch64 and armv7 code under qemu-user, and the board image works. The scripts install their
# cross toolchain and qemu when root.
if [ "${POSHTA_SKIP_CROSS:-0}" != 1 ]; then
    images/build-binaries.sh aarch64-unknown-linux-musl
    images/test-aarch64.sh
    # The generic-arm64 image boots under qemu-system-aarch64 (TCG) and serves mail: SMTP
    # in, POP3 out, poshta.conf from the FAT partition, a power cut under load (~2 min).
    images/test-image.sh generic-arm64
    # The library's tests as armv7 code under qemu-arm (std built from source: ~4 min).
    images/test-armv7.sh
fi
