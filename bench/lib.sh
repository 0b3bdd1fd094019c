# shellcheck shell=bash disable=SC2034 # variables used by the sourcing scripts
# Shared pieces of bench/pop3-fetch.sh and bench/tls-submit.sh (sourced, not run):
# logging, killing by pid, per-server cgroups for CPU accounting, the loopback-only DNS
# mount namespace, installing a Debian package without starting its service, building
# poshta, and starting/stopping a private Dovecot instance.
#
# The sourcing script sets SELF (its own path) before sourcing and calls
# `lib_dns_namespace_hook "$@"` first thing, so `SCRIPT --in-dns-namespace DIR CMD...`
# runs CMD in the namespace.

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CACHE=$HERE/.cache
OUTDIR=$HERE/out
KEEP=${KEEP:-0}
BENCH_TMPDIR=${BENCH_TMPDIR:-$CACHE}
START_TIMEOUT=${START_TIMEOUT:-30}
MEM_SAMPLE_MS=${MEM_SAMPLE_MS:-100}
SETTLE_SECS=${SETTLE_SECS:-1}

PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3 # skip pyenv shims: they cost a fork+exec chain per call
tool() { "$PY" "$HERE/benchtool.py" "$@"; }
mb() { "$PY" "$HERE/mailbench.py" "$@"; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# lib_dns_namespace_hook "$@": `--in-dns-namespace DIR CMD...` runs CMD in a new mount
# namespace where /etc/resolv.conf, /etc/hosts and /etc/nsswitch.conf are DIR's
# loopback-only files (so a peer server never asks the machine's resolver).
lib_dns_namespace_hook() {
    [ "${1:-}" = --in-dns-namespace ] || return 0
    shift
    # shellcheck disable=SC2016 # $1 and $@ are the inner sh's
    exec unshare -m --propagation private sh -c '
        mount --bind "$1/resolv.conf" /etc/resolv.conf &&
        mount --bind "$1/hosts" /etc/hosts &&
        mount --bind "$1/nsswitch.conf" /etc/nsswitch.conf &&
        shift && exec "$@"' in-dns-namespace "$@"
}

# make_ns_files DIR: the three loopback-only name-service files.
make_ns_files() {
    mkdir -p "$1"
    printf '127.0.0.1 localhost\n' >"$1/hosts"
    printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$1/resolv.conf"
    printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files\nservices: files\n' >"$1/nsswitch.conf"
}

in_dns_ns() { # in_dns_ns NSDIR CMD...: run CMD in the namespace (through the sourcing script)
    local ns=$1
    shift
    bash "$SELF" --in-dns-namespace "$ns" "$@"
}

# ------------------------------------------------------------------ killing by pid

BG_PIDS=()   # background helpers to kill at exit
CGROUPS=()   # cgroups we made
CLEANUP_HOOKS=() # functions to call at exit (stop servers)
RUN=""

kill_pid() { # kill_pid PID: TERM, wait up to 5 s, then KILL; only this pid
    local pid=$1 i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

bg_forget() { # bg_forget PID: a reaped helper's pid must not be killed at exit (pid reuse)
    local p keep=()
    for p in "${BG_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    BG_PIDS=("${keep[@]}")
}

cg_kill_all() { # every process left in a cgroup we made (they are all ours)
    local cg=$1 p
    [ -f "$cg/cgroup.procs" ] || return 0
    # shellcheck disable=SC2013 # one pid a line
    for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill_pid "$p"; done
}

lib_cleanup() {
    local rc=$? p cg h
    trap - EXIT INT TERM
    for p in "${BG_PIDS[@]}"; do kill_pid "$p"; done
    for h in "${CLEANUP_HOOKS[@]}"; do "$h"; done
    for cg in "${CGROUPS[@]}"; do
        cg_kill_all "$cg"
        rmdir "$cg" 2>/dev/null || log "warning: could not remove cgroup $cg"
    done
    if [ "${POLICY_RC_MADE:-0}" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ -n "$RUN" ] && [ -d "$RUN" ]; then
        if [ "$KEEP" = 1 ]; then log "kept run directory $RUN"; else rm -rf "$RUN"; fi
    fi
    exit "$rc"
}
trap lib_cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ------------------------------------------------------------------ cgroups

# A per-server cgroup counts the CPU of every process the server ever runs, including
# children that exit before we look (Dovecot's login and pop3 processes, Postfix's smtpd).
CG_BASE=""
CPU_METHOD="proc-tree"
if [ "${BENCH_NO_CGROUP:-0}" = 1 ]; then
    :
elif [ -f /sys/fs/cgroup/cpuacct/cpuacct.usage ] && [ -w /sys/fs/cgroup/cpuacct ]; then
    CG_BASE=/sys/fs/cgroup/cpuacct
    CPU_METHOD="cgroup-v1 cpuacct.usage"
elif [ -f /sys/fs/cgroup/cgroup.controllers ] && [ -w /sys/fs/cgroup ]; then
    CG_BASE=/sys/fs/cgroup
    CPU_METHOD="cgroup-v2 cpu.stat"
elif [ -f /sys/fs/cgroup/unified/cgroup.controllers ] && [ -w /sys/fs/cgroup/unified ]; then
    CG_BASE=/sys/fs/cgroup/unified
    CPU_METHOD="cgroup-v2 cpu.stat"
fi

cg_make() { # cg_make NAME: sets CG to a new cgroup dir, or "" (not in $(...): CGROUPS must grow)
    CG=""
    [ -n "$CG_BASE" ] || return 0
    local d=$CG_BASE/poshta-bench-$$-$1
    mkdir "$d" 2>/dev/null || return 0
    CGROUPS+=("$d")
    CG=$d
}

# in_cg CGDIR CMD...: exec CMD inside the cgroup (joining first, so children inherit it).
# Call it in a subshell, `(in_cg ...) &`: it replaces that subshell, so $! is CMD's pid.
in_cg() {
    local cg=$1
    shift
    if [ -n "$cg" ]; then
        exec sh -c 'echo $$ > "$1" 2>/dev/null; shift; exec "$@"' in_cg "$cg/cgroup.procs" "$@"
    else
        exec "$@"
    fi
}

sel_args() { # sel_args CG PID: the process-set selector for benchtool
    if [ -n "$1" ]; then echo "--cgroup $1"; else echo "--tree $2"; fi
}

cpu_ns_of() { # cpu_ns_of CG PID [CG2]: CPU ns of the set (plus a second cgroup, if given)
    local a b=0
    # shellcheck disable=SC2046
    a=$(tool cpu-ns $(sel_args "$1" "$2"))
    [ -n "${3:-}" ] && b=$(tool cpu-ns --cgroup "$3")
    echo $((a + b))
}

# ------------------------------------------------------------------ memory sampler

# sampler_start CG PID OUT [TIMEOUT [MARK]]: PSS/RSS sampled every MEM_SAMPLE_MS until
# sampler_stop; with MARK, samples taken before the file MARK exists are the login's (kept
# apart, see benchtool mem-sample --after).
SAMPLER=""
sampler_start() {
    local after=()
    [ -n "${5:-}" ] && after=(--after "$5")
    # shellcheck disable=SC2046
    "$PY" "$HERE/benchtool.py" mem-sample $(sel_args "$1" "$2") --main "$2" --out "$3" \
        --interval "$(awk "BEGIN{print $MEM_SAMPLE_MS/1000}")" --timeout "${4:-900}" "${after[@]}" &
    SAMPLER=$!
    BG_PIDS+=("$SAMPLER")
}
sampler_stop() {
    [ -n "$SAMPLER" ] || return 0
    kill -TERM "$SAMPLER" 2>/dev/null
    wait "$SAMPLER" 2>/dev/null
    bg_forget "$SAMPLER"
    SAMPLER=""
}

# run_waited OUT CMD...: run CMD in the background with stdout to OUT and wait for it.
# Called in the main shell (not in $(...)), so an interrupt runs the EXIT trap at once:
# bash defers traps while a foreground child runs, and a client phase can take minutes.
# The trap kills CMD by pid.
run_waited() {
    local out=$1
    shift
    "$@" >"$out" &
    local p=$!
    BG_PIDS+=("$p")
    wait "$p"
    local rc=$?
    bg_forget "$p"
    return "$rc"
}

hwm_of() { # VmHWM of one pid, KiB (empty if gone)
    awk '/^VmHWM:/{print $2}' "/proc/$1/status" 2>/dev/null
}

# ------------------------------------------------------------------ packages

POLICY_RC_MADE=0

# install_pkg_no_start PKG SERVICE: install a Debian package whose service must never
# start on its own: invoke-rc.d asks policy-rc.d (101 = forbidden) during the install,
# and the service is disabled afterwards so a reboot does not start it either.
install_pkg_no_start() {
    local pkg=$1 svc=$2
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC_MADE=1
    fi
    log "installing Debian's $pkg (service $svc not started, disabled)"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y --no-install-recommends "$pkg" \
        >"$RUN/apt-$pkg.log" 2>&1
    local rc=$?
    if [ "$POLICY_RC_MADE" = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
        POLICY_RC_MADE=0
    fi
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable "$svc.service" >/dev/null 2>&1
        systemctl disable "$svc.socket" >/dev/null 2>&1
    fi
    command -v update-rc.d >/dev/null 2>&1 && [ -e "/etc/init.d/$svc" ] && update-rc.d "$svc" disable >/dev/null 2>&1
    [ "$rc" = 0 ] || tail -5 "$RUN/apt-$pkg.log" >&2
    return "$rc"
}

ensure_dovecot() { # dovecot-core (+ dovecot-pop3d when $1 = pop3)
    local pkg=dovecot-core
    [ "${1:-}" = pop3 ] && pkg=dovecot-pop3d
    if [ -x /usr/sbin/dovecot ] && { [ "$pkg" = dovecot-core ] || [ -x /usr/lib/dovecot/pop3 ]; }; then
        return 0
    fi
    install_pkg_no_start "$pkg" dovecot
}

# system_dovecot_pids: dovecot masters not started by us (the system's), to warn about.
system_dovecot_pids() {
    local p
    for p in $(pgrep -x dovecot 2>/dev/null); do
        grep -q "poshta-bench-$$" "/proc/$p/cgroup" 2>/dev/null || echo "$p"
    done
}

# ------------------------------------------------------------------ poshta

# build_poshta: sets POSHTA_BIN (POSHTA or the first argument wins; else the static build that
# ships, see shipped_build).
build_poshta() {
    POSHTA_BIN=${POSHTA:-}
    if [ -z "$POSHTA_BIN" ]; then
        # In the background and waited for, so an interrupt runs the trap at once (bash
        # defers traps until a foreground child ends); the trap TERMs timeout, which
        # passes it on to cargo.
        shipped_build "$RUN/cargo.log" &
        local b=$!
        BG_PIDS+=("$b")
        wait "$b"
        local rc=$?
        bg_forget "$b"
        [ "$rc" = 0 ] ||
            {
                tail -5 "$RUN/cargo.log" >&2
                return 1
            }
        POSHTA_BIN=$(shipped_binary)
    fi
    [ -x "$POSHTA_BIN" ]
}

# shipped_binary / shipped_build (the static build that ships): bench/shipped.sh.
# shellcheck source=bench/shipped.sh
. "$HERE/shipped.sh"

# poshta_start DIR CG PORT: `poshta serve -c DIR/main.cf` in CG; sets POSHTA_PID.
POSHTA_PID=""
poshta_start() {
    local d=$1 cg=$2 port=$3
    (in_cg "$cg" "$POSHTA_BIN" serve -c "$d/main.cf") >"$d/serve.log" 2>&1 &
    POSHTA_PID=$!
    if ! tool wait-port "$port" "$START_TIMEOUT" "$POSHTA_PID"; then
        log "poshta did not start: $(tail -c 300 "$d/serve.log")"
        kill_pid "$POSHTA_PID"
        POSHTA_PID=""
        return 1
    fi
}
poshta_stop() {
    kill_pid "$POSHTA_PID"
    POSHTA_PID=""
}
CLEANUP_HOOKS+=(poshta_stop)

# ------------------------------------------------------------------ Dovecot

# dovecot_start CONF NSDIR CG PIDFILE: `dovecot -F -c CONF` in the DNS namespace and CG.
# -F keeps the master in the foreground, so $! is the master and it stays our child.
DOVECOT_PIDS=()
DOVECOT_CONFS=()
dovecot_start() {
    local conf=$1 ns=$2 cg=$3 logf=$4
    (in_cg "$cg" bash "$SELF" --in-dns-namespace "$ns" dovecot -F -c "$conf") >"$logf" 2>&1 &
    DOVECOT_PID=$!
    DOVECOT_PIDS+=("$DOVECOT_PID")
    DOVECOT_CONFS+=("$conf")
}
# dovecot_stop_all: TERM each master we started (it stops its children), then anything
# left in the cgroups is killed by lib_cleanup.
dovecot_stop_all() {
    local p
    for p in "${DOVECOT_PIDS[@]}"; do kill_pid "$p"; done
    DOVECOT_PIDS=()
}
CLEANUP_HOOKS+=(dovecot_stop_all)

# dovecot_common_conf DIR NAME: the part of a private Dovecot config every instance shares.
dovecot_common_conf() {
    local d=$1 name=$2
    cat <<EOF
# Written by bench/$(basename "$SELF") for one run. A private instance: its own base_dir,
# state_dir and log; nothing from /etc/dovecot is read.
instance_name = $name
base_dir = $d/run
state_dir = $d/state
log_path = $d/dovecot.log
info_log_path = $d/dovecot-info.log
listen = 127.0.0.1
ssl = no
# The same conditions as poshta: no authentication cache (every login verifies the
# password hash), plaintext logins allowed (loopback only).
auth_cache_size = 0
disable_plaintext_auth = no
login_trusted_networks = 127.0.0.0/8
auth_mechanisms = plain
EOF
}
