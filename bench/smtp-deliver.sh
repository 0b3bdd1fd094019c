#!/usr/bin/env bash
# SMTP receive-and-deliver benchmark: smtp-sink (ceiling), Postfix and poshta in one run.
#
# usage: bench/smtp-deliver.sh [POSHTA_BINARY]
#
# Environment (defaults in brackets):
#   N [5000]                  messages per run          SIZE [1024]   bytes per message
#   CONCURRENCY ["1 10 50"]   smtp-source sessions      SERVERS ["smtp-sink postfix poshta"]
#   POSHTA [dist/x86_64-unknown-linux-musl/poshta, built by images/build-binaries.sh:
#           the static build that ships; BENCH_BUILD=native: target/release/poshta, glibc]
#   POSHTA_EXTRA_CF: lines appended to poshta's main.cf       PHASE_TIMEOUT [300] s per run
#   LARGE_MIB [50]  LARGE_SERVERS ["poshta"]  large-message memory check (LARGE_MIB=0: off)
#   FSYNC_SECS [2]  MEM_SAMPLE_MS [250]  SETTLE_SECS [1]  KEEP [0]: keep the run directory
#   BENCH_TMPDIR [bench/.cache]: where the run directory (queues, Maildirs) is made
#   BENCH_NO_CGROUP [0]: 1 = count CPU from /proc/PID/stat of the process tree, not a cgroup
#
# Everything listens on 127.0.0.1 only. Every wait is bounded; an EXIT trap stops Postfix,
# smtp-sink and poshta (by pid) and removes the run directory. See bench/README.md.

set -uo pipefail

# Internal: `smtp-deliver.sh --in-dns-namespace DIR CMD...` runs CMD in a new mount namespace
# where /etc/resolv.conf, /etc/hosts and /etc/nsswitch.conf are DIR's loopback-only files.
if [ "${1:-}" = --in-dns-namespace ]; then
    shift
    # shellcheck disable=SC2016 # $1 and $@ are the inner sh's
    exec unshare -m --propagation private sh -c '
        mount --bind "$1/resolv.conf" /etc/resolv.conf &&
        mount --bind "$1/hosts" /etc/hosts &&
        mount --bind "$1/nsswitch.conf" /etc/nsswitch.conf &&
        shift && exec "$@"' in-dns-namespace "$@"
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")
CACHE=$HERE/.cache
OUTDIR=$HERE/out

N=${N:-5000}
SIZE=${SIZE:-1024}
CONCURRENCY=${CONCURRENCY:-"1 10 50"}
SERVERS=${SERVERS:-"smtp-sink postfix poshta"}
PHASE_TIMEOUT=${PHASE_TIMEOUT:-300}
START_TIMEOUT=${START_TIMEOUT:-30}
LARGE_MIB=${LARGE_MIB:-50}
LARGE_SERVERS=${LARGE_SERVERS:-poshta}
FSYNC_SECS=${FSYNC_SECS:-2}
MEM_SAMPLE_MS=${MEM_SAMPLE_MS:-250}
SETTLE_SECS=${SETTLE_SECS:-1}
KEEP=${KEEP:-0}
BENCH_TMPDIR=${BENCH_TMPDIR:-$CACHE}
POSHTA=${1:-${POSHTA:-}}

RCPT=alice@bench.example
SENDER=sender@client.bench.example
HELO=client.bench.example

PY=python3
[ -x /usr/bin/python3 ] && PY=/usr/bin/python3 # skip pyenv shims: they cost a fork+exec chain per call
tool() { "$PY" "$HERE/benchtool.py" "$@"; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=bench/shipped.sh
. "$HERE/shipped.sh"
die() {
    log "error: $*"
    exit 1
}

for v in N SIZE PHASE_TIMEOUT START_TIMEOUT LARGE_MIB FSYNC_SECS MEM_SAMPLE_MS SETTLE_SECS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
for c in $CONCURRENCY; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "bad concurrency '$c'"; done

# ------------------------------------------------------------------ state for cleanup

RUN=""              # run directory (queues, Maildirs, logs)
CGROUPS=()          # cgroup directories we made
BG_PIDS=()          # background helpers (sampler, smtp-source) still to reap
SINK_PID=""         # smtp-sink
POSHTA_PID=""       # poshta serve
PF_CONF=$CACHE/postfix-conf
PF_STARTED=0        # Postfix master may be running with $PF_CONF
PF_PIDS_FILE=""     # pids seen in Postfix's process set, for a last-resort kill
POLICY_RC_MADE=0    # we created /usr/sbin/policy-rc.d and must remove it

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

cg_kill_all() { # every process left in a cgroup we made (they are all ours)
    local cg=$1 p
    [ -f "$cg/cgroup.procs" ] || return 0
    # shellcheck disable=SC2013 # one pid a line: words are lines
    for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill_pid "$p"; done
}

postfix_stop() {
    [ "$PF_STARTED" = 1 ] || return 0
    local master="" i p
    [ -n "${PF_QUEUE:-}" ] && [ -f "$PF_QUEUE/pid/master.pid" ] && master=$(tr -d ' \n' <"$PF_QUEUE/pid/master.pid")
    timeout 30 postfix -c "$PF_CONF" stop >/dev/null 2>&1
    if [ -n "$master" ]; then
        for ((i = 0; i < 300; i++)); do
            kill -0 "$master" 2>/dev/null || break
            sleep 0.1
        done
        kill_pid "$master"
    fi
    # Children that outlived the master (none expected): kill them by pid.
    if [ -n "${PF_CG:-}" ]; then
        cg_kill_all "$PF_CG"
    elif [ -n "$PF_PIDS_FILE" ] && [ -f "$PF_PIDS_FILE" ]; then
        # shellcheck disable=SC2013
        for p in $(cat "$PF_PIDS_FILE"); do kill_pid "$p"; done
    fi
    PF_STARTED=0
}

cleanup() {
    local rc=$? p cg
    trap - EXIT INT TERM
    for p in "${BG_PIDS[@]}"; do kill_pid "$p"; done
    kill_pid "$SINK_PID"
    kill_pid "$POSHTA_PID"
    postfix_stop
    for cg in "${CGROUPS[@]}"; do
        cg_kill_all "$cg"
        rmdir "$cg" 2>/dev/null || log "warning: could not remove cgroup $cg"
    done
    if [ "$POLICY_RC_MADE" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ -n "$RUN" ] && [ -d "$RUN" ]; then
        if [ "$KEEP" = 1 ]; then log "kept run directory $RUN"; else rm -rf "$RUN"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ------------------------------------------------------------------ cgroups (CPU accounting)

# A per-server cgroup counts the CPU of every process the server ever runs, including
# children that exit before we look (Postfix's smtpd/cleanup/virtual come and go).
# cgroup v1 cpuacct first (this machine), then cgroup v2; without either we fall back to
# summing /proc/PID/stat over the process tree (see benchtool.py cpu_ns, README).
CG_BASE=""
CPU_METHOD="proc-tree"
if [ "${BENCH_NO_CGROUP:-0}" = 1 ]; then
    : # forced fallback, to test it
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

cg_make() { # cg_make NAME: sets CG to a new cgroup dir, or to "" (not in $(...): CGROUPS must grow)
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

# ------------------------------------------------------------------ tools

PF_DEB_ROOT=$CACHE/postfix-deb/root
SMTP_SOURCE=$PF_DEB_ROOT/usr/sbin/smtp-source
SMTP_SINK=$PF_DEB_ROOT/usr/sbin/smtp-sink
PF_LIB=$PF_DEB_ROOT/usr/lib/postfix

fetch_postfix_tools() {
    [ -x "$SMTP_SOURCE" ] && [ -x "$SMTP_SINK" ] && return 0
    log "fetching smtp-source/smtp-sink from Debian's postfix package into $CACHE/postfix-deb"
    mkdir -p "$CACHE/postfix-deb"
    (cd "$CACHE/postfix-deb" && rm -f postfix_*.deb && timeout 300 apt-get download postfix) >/dev/null 2>&1 ||
        die "apt-get download postfix failed (run apt-get update?)"
    rm -rf "$PF_DEB_ROOT"
    dpkg -x "$CACHE"/postfix-deb/postfix_*.deb "$PF_DEB_ROOT" || die "dpkg -x failed"
    [ -x "$SMTP_SOURCE" ] || die "no smtp-source in the package"
}

install_postfix() {
    command -v postfix >/dev/null 2>&1 || [ -x /usr/sbin/postfix ] && return 0
    log "installing Debian's postfix (no configuration, not started)"
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # invoke-rc.d asks policy-rc.d; 101 = "action forbidden", so the package's init script
    # never starts a system Postfix on port 25.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY_RC_MADE=1
    fi
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y --no-install-recommends postfix >"$RUN/apt.log" 2>&1 ||
        {
            tail -5 "$RUN/apt.log" >&2
            return 1
        }
    if [ "$POLICY_RC_MADE" = 1 ]; then
        rm -f /usr/sbin/policy-rc.d
        POLICY_RC_MADE=0
    fi
    # "No configuration" leaves no /etc/postfix/main.cf, so the system instance cannot run;
    # if it did start anyway, stop it.
    if [ -f /etc/postfix/main.cf ] && timeout 10 postfix status >/dev/null 2>&1; then
        log "a system Postfix was started by the install; stopping it"
        timeout 30 postfix stop >/dev/null 2>&1
    fi
}

# ------------------------------------------------------------------ measuring one run

RESULTS=""
SRV_NAME=""
SRV_PID=""   # main process (VmHWM is read from it)
SRV_CG=""    # its cgroup, or empty
SRV_PORT=""
SRV_NEW=""   # Maildir new/ to count, or empty (smtp-sink discards)
SRV_MULTI=0  # several processes: memory is PSS summed over them

sel() { # the process-set selector for benchtool
    if [ -n "$SRV_CG" ]; then echo "--cgroup $SRV_CG"; else echo "--tree $SRV_PID"; fi
}

record_server() { # after start: idle memory snapshot
    sleep "$SETTLE_SECS"
    local idle
    # shellcheck disable=SC2046
    idle=$(tool mem-now $(sel) --main "$SRV_PID")
    log "$SRV_NAME: up on 127.0.0.1:$SRV_PORT (pid $SRV_PID), idle $idle"
    tool emit "$RESULTS" kind=server server="$SRV_NAME" pid="$SRV_PID" port="$SRV_PORT" \
        multi_process="$SRV_MULTI" cgroup="${SRV_CG:-none}" idle:="$idle"
}

# run_phase KIND CONCURRENCY COUNT SIZE: one smtp-source run, timed until all delivered.
run_phase() {
    local kind=$1 conc=$2 count=$3 size=$4
    local t0 t_acc t_done cpu0 cpu1 src_rc sent delivered=0 status=ok err="" wf rem
    local sampler mem hwm
    if [ -n "$SRV_NEW" ] && [ -d "$SRV_NEW" ]; then
        # Move the last run's messages aside instead of deleting them: ext4's inode allocator
        # skips inodes freed in the last ~30 s (fs/ext4/ialloc.c, recently_deleted(), checked
        # on filesystems without a journal, like this machine's), so deleting thousands of
        # files just before a run made every new file's allocation scan past them. That cost
        # belongs to the benchmark, not to the servers (measured: poshta c=50 2600 -> 5600 msg/s).
        local seen="${SRV_NEW%/new}/bench-seen"
        mkdir -p "$seen"
        find "$SRV_NEW" -mindepth 1 -maxdepth 1 -type f -exec mv -t "$seen" {} +
    fi
    # Reset VmHWM so the peak is this run's (kernel: "5" to clear_refs, Linux >= 4.0).
    echo 5 >"/proc/$SRV_PID/clear_refs" 2>/dev/null
    # Called directly, not through tool(): $! must be python's pid for the kill below.
    # shellcheck disable=SC2046
    "$PY" "$HERE/benchtool.py" mem-sample $(sel) --main "$SRV_PID" --out "$RUN/mem.json" \
        --interval "$(awk "BEGIN{print $MEM_SAMPLE_MS/1000}")" --timeout $((PHASE_TIMEOUT + 60)) &
    sampler=$!
    BG_PIDS+=("$sampler")
    # shellcheck disable=SC2046
    cpu0=$(tool cpu-ns $(sel))
    t0=$EPOCHREALTIME
    # smtp-source's default: one message per connection (no -N/-C reuse), like independent
    # senders. -c prints a running count; its last value is the number of messages sent.
    LD_LIBRARY_PATH=$PF_LIB timeout -k 5 "$PHASE_TIMEOUT" "$SMTP_SOURCE" -c -s "$conc" -m "$count" -l "$size" \
        -M "$HELO" -f "$SENDER" -t "$RCPT" "127.0.0.1:$SRV_PORT" >"$RUN/src.out" 2>"$RUN/src.err" &
    local src=$!
    BG_PIDS+=("$src")
    wait "$src"
    src_rc=$?
    t_acc=$EPOCHREALTIME
    sent=$(tr '\r' '\n' <"$RUN/src.out" | grep -E '^[0-9]+$' | tail -1)
    sent=${sent:-0}
    if [ "$src_rc" != 0 ]; then
        status="smtp-source exit $src_rc"
        [ "$src_rc" = 124 ] && status="timeout sending"
        err=$(head -c 300 "$RUN/src.err" | tr '\n"' ' \047')
    fi
    if [ -n "$SRV_NEW" ]; then
        rem=$(awk "BEGIN{r=$PHASE_TIMEOUT-($t_acc-$t0); print (r<1)?1:r}")
        # After a failed smtp-source, wait only for what it did get accepted.
        local target=$count
        [ "$src_rc" = 0 ] || target=$sent
        if ! wf=$(tool wait-files "$SRV_NEW" "$target" "$rem") && [ "$status" = ok ]; then
            status="timeout delivering"
        fi
        t_done=${wf%% *}
        delivered=${wf##* }
    else
        t_done=$t_acc
        delivered=$sent
    fi
    # shellcheck disable=SC2046
    cpu1=$(tool cpu-ns $(sel))
    kill -TERM "$sampler" 2>/dev/null
    wait "$sampler" 2>/dev/null
    mem=$(cat "$RUN/mem.json" 2>/dev/null || echo '{}')
    rm -f "$RUN/mem.json"
    hwm=$(tool mem-now --tree "$SRV_PID" --main "$SRV_PID" | "$PY" -c 'import json,sys; print(json.load(sys.stdin).get("main_hwm_kib") or "")')
    if [ "$status" = ok ] && [ "$sent" -lt "$count" ]; then status="sent $sent of $count"; fi
    local sizes='{}'
    [ -n "$SRV_NEW" ] && sizes=$(tool dir-sizes "$SRV_NEW")
    tool emit "$RESULTS" kind="$kind" server="$SRV_NAME" concurrency="$conc" n="$count" size_bytes="$size" \
        sent="$sent" delivered="$delivered" t_start="$t0" t_accepted="$t_acc" t_delivered="$t_done" \
        cpu_ns=$((cpu1 - cpu0)) peak_hwm_kib="$hwm" mem:="$mem" files:="$sizes" status="$status" error="$err"
    log "$SRV_NAME c=$conc n=$count size=$size: $status, sent $sent, delivered $delivered," \
        "$(awk "BEGIN{printf \"%.2f s, %.3f ms CPU/msg\", $t_done-$t0, ($cpu1-$cpu0)/1e6/$count}")"
}

run_server() { # all 1 KiB runs, then the large-message check if asked
    local c
    for c in $CONCURRENCY; do run_phase phase "$c" "$N" "$SIZE"; done
    if [ "$LARGE_MIB" -gt 0 ] && [[ " $LARGE_SERVERS " == *" $SRV_NAME "* ]]; then
        run_phase large 1 1 $((LARGE_MIB * 1024 * 1024))
    fi
}

# ------------------------------------------------------------------ smtp-sink

bench_sink() {
    SRV_NAME=smtp-sink SRV_MULTI=0 SRV_NEW=""
    SRV_PORT=$(tool freeport)
    cg_make sink
    SRV_CG=$CG
    local uopt=()
    [ "$(id -u)" = 0 ] && uopt=(-u nobody) # smtp-sink refuses to run as root without -u
    # Backlog 1000: the ceiling must not be limited by the listen queue.
    (in_cg "$SRV_CG" env LD_LIBRARY_PATH="$PF_LIB" "$SMTP_SINK" "${uopt[@]}" "127.0.0.1:$SRV_PORT" 1000) \
        >"$RUN/sink.log" 2>&1 &
    SINK_PID=$!
    SRV_PID=$SINK_PID
    tool wait-port "$SRV_PORT" "$START_TIMEOUT" "$SINK_PID" ||
        {
            tool emit "$RESULTS" kind=skip server=smtp-sink reason="did not start: $(head -c 200 "$RUN/sink.log")"
            return
        }
    record_server
    run_server
    kill_pid "$SINK_PID"
    SINK_PID=""
}

# ------------------------------------------------------------------ Postfix

PF_QUEUE=""
PF_CG=""

postfix_configure() {
    local base=$RUN/postfix nobody_gid
    PF_QUEUE=$base/queue
    nobody_gid=$(id -g nobody)
    rm -rf "$PF_CONF"
    mkdir -p "$PF_CONF" "$PF_QUEUE/etc" "$base/data" "$base/mail" "$base/ns"
    chmod 755 "$RUN" "$base"
    : >"$base/data/maillog"
    chown postfix "$base/data" "$base/data/maillog"
    chown "nobody:$nobody_gid" "$base/mail"
    SRV_NEW=$base/mail/alice/new
    # Name service files: "hosts: files" first and only, a hosts file that maps 127.0.0.1,
    # and a resolver on 127.0.0.1 (nothing listens there; a query would fail at once).
    printf '127.0.0.1 localhost\n' >"$base/ns/hosts"
    printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$base/ns/resolv.conf"
    printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files\nservices: files\n' >"$base/ns/nsswitch.conf"
    # The chroot (smtpd and friends run chrooted in the queue directory) gets the same files;
    # Debian's init script would copy the host's instead (configure-instance.sh).
    cp "$base/ns/hosts" "$base/ns/resolv.conf" "$base/ns/nsswitch.conf" "$PF_QUEUE/etc/"
    cp /etc/services "$PF_QUEUE/etc/" 2>/dev/null
    cp /etc/localtime "$PF_QUEUE/etc/" 2>/dev/null
    echo "$RCPT alice/" >"$PF_CONF/vmailbox"
    cat >"$PF_CONF/main.cf" <<EOF
# Written by bench/smtp-deliver.sh for one run; regenerated every time.
compatibility_level = 3.6
config_directory = $PF_CONF
queue_directory = $PF_QUEUE
data_directory = $base/data
maillog_file = $base/data/maillog
maillog_file_prefixes = $base
myhostname = mx.bench.example
mydomain = bench.example
myorigin = \$myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
# The test domain is a virtual mailbox domain (no system user needed): alice@bench.example
# is delivered by virtual(8) to $base/mail/alice/new/ as nobody.
mydestination = localhost
virtual_mailbox_domains = bench.example
virtual_mailbox_base = $base/mail
virtual_mailbox_maps = texthash:$PF_CONF/vmailbox
virtual_uid_maps = static:$(id -u nobody)
virtual_gid_maps = static:$nobody_gid
virtual_mailbox_limit = 0
message_size_limit = 104857600
alias_maps =
alias_database =
local_recipient_maps =
biff = no
# No DNS, ever.
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtp_host_lookup = native
EOF
    # Debian's master.cf services, minus tlsmgr (no TLS here) and the pipe examples; the
    # SMTP listener is on a loopback port, chrooted as in Debian's default.
    cat >"$PF_CONF/master.cf" <<EOF
127.0.0.1:$SRV_PORT inet n - y - - smtpd
pickup    unix  n       -       y       60      1       pickup
cleanup   unix  n       -       y       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       y       -       -       trivial-rewrite
bounce    unix  -       -       y       -       0       bounce
defer     unix  -       -       y       -       0       bounce
trace     unix  -       -       y       -       0       bounce
verify    unix  -       -       y       -       1       verify
flush     unix  n       -       y       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       y       -       -       smtp
relay     unix  -       -       y       -       -       smtp
showq     unix  n       -       y       -       -       showq
error     unix  -       -       y       -       -       error
retry     unix  -       -       y       -       -       error
discard   unix  -       -       y       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       y       -       -       lmtp
anvil     unix  -       -       y       -       1       anvil
scache    unix  -       -       y       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
}

bench_postfix() {
    SRV_NAME=postfix SRV_MULTI=1
    if ! install_postfix; then
        tool emit "$RESULTS" kind=skip server=postfix reason="apt-get install postfix failed"
        return
    fi
    # The namespace is what keeps the non-chrooted daemons (master, qmgr, virtual, proxymap)
    # off the host's resolver: without it, do not run Postfix at all.
    if ! unshare -m --propagation private true 2>/dev/null; then
        tool emit "$RESULTS" kind=skip server=postfix reason="unshare -m not permitted: cannot isolate DNS"
        return
    fi
    tool emit "$RESULTS" kind=meta postfix_version="$(postconf -d mail_version 2>/dev/null | sed 's/.*= //')"
    SRV_PORT=$(tool freeport)
    postfix_configure
    if ! timeout 60 bash "$SELF" --in-dns-namespace "$RUN/postfix/ns" postfix -c "$PF_CONF" check \
        >"$RUN/postfix-check.log" 2>&1; then
        tool emit "$RESULTS" kind=skip server=postfix reason="postfix check failed: $(tail -c 200 "$RUN/postfix/data/maillog" 2>/dev/null)"
        return
    fi
    cg_make postfix
    SRV_CG=$CG
    PF_CG=$SRV_CG
    PF_STARTED=1
    # `postfix start` daemonizes the master; it stays in this mount namespace (where
    # /etc/resolv.conf, /etc/hosts and /etc/nsswitch.conf are the loopback-only files) and in
    # the cgroup, and so does every process it forks.
    (in_cg "$SRV_CG" bash "$SELF" --in-dns-namespace "$RUN/postfix/ns" postfix -c "$PF_CONF" start) \
        >"$RUN/postfix-start.log" 2>&1
    local i master=""
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        [ -s "$PF_QUEUE/pid/master.pid" ] && master=$(tr -d ' \n' <"$PF_QUEUE/pid/master.pid") &&
            kill -0 "$master" 2>/dev/null && break
        master=""
        sleep 0.1
    done
    if [ -z "$master" ] || ! tool wait-port "$SRV_PORT" "$START_TIMEOUT" "$master"; then
        tool emit "$RESULTS" kind=skip server=postfix reason="did not start: $(tail -c 300 "$RUN/postfix/data/maillog" 2>/dev/null)"
        postfix_stop
        return
    fi
    SRV_PID=$master
    # Guard: the running master must see the loopback-only resolver (its mount namespace,
    # read through /proc/PID/root); otherwise stop before any mail is sent.
    if ! cmp -s "/proc/$master/root/etc/resolv.conf" "$RUN/postfix/ns/resolv.conf"; then
        tool emit "$RESULTS" kind=skip server=postfix reason="master does not see the loopback resolv.conf"
        postfix_stop
        return
    fi
    if [ -n "$SRV_CG" ] && ! grep -qx "$master" "$SRV_CG/cgroup.procs"; then
        log "postfix: master is not in $SRV_CG; using the process tree"
        SRV_CG="" PF_CG=""
    fi
    record_server
    run_server
    if [ -z "$SRV_CG" ]; then # remember the tree, to kill stragglers by pid after stop
        PF_PIDS_FILE=$RUN/postfix-pids
        tool pids --tree "$master" >"$PF_PIDS_FILE"
    fi
    local warn
    warn=$(grep -E 'warning|fatal|error|panic' "$RUN/postfix/data/maillog" | head -5)
    [ -z "$warn" ] || log "postfix logged (first 5): $warn"
    postfix_stop
}

# ------------------------------------------------------------------ poshta

bench_poshta() {
    SRV_NAME=poshta SRV_MULTI=0
    local bin=$POSHTA
    if [ -z "$bin" ]; then
        # Always (re)build: cargo does nothing when the binary is fresh, and a stale binary
        # would be measured silently otherwise. The default is the static build that ships.
        bin=$(shipped_binary)
        shipped_build "$RUN/cargo.log" ||
            {
                tail -5 "$RUN/cargo.log" >&2
                tool emit "$RESULTS" kind=skip server=poshta reason="poshta build failed"
                echo "poshta: not runnable yet (build failed)"
                return
            }
    fi
    [ -x "$bin" ] || {
        tool emit "$RESULTS" kind=skip server=poshta reason="no binary at $bin"
        echo "poshta: not runnable yet (no binary at $bin)"
        return
    }
    tool emit "$RESULTS" kind=meta poshta_binary="$bin"
    local d=$RUN/poshta
    SRV_PORT=$(tool freeport)
    mkdir -p "$d/spool" "$d/mail"
    SRV_NEW=$d/mail/alice/new
    cat >"$d/main.cf" <<EOF
# Written by bench/smtp-deliver.sh for one run.
smtpd_listen = 127.0.0.1:$SRV_PORT
submission_listen =
submissions_listen =
pop3d_listen =
pop3s_listen =
queue_directory = $d/spool
virtual_mailbox_base = $d/mail
mailbox_users_file = $d/users
mydestination = bench.example
myhostname = mx.bench.example
mynetworks = 127.0.0.0/8
message_size_limit = 104857600
${POSHTA_EXTRA_CF:-}
EOF
    if ! echo "bench-password" | timeout 30 "$bin" user add alice --password-stdin -c "$d/main.cf" \
        >"$d/user-add.log" 2>&1; then
        tool emit "$RESULTS" kind=skip server=poshta reason="user add failed: $(head -c 200 "$d/user-add.log" | tr '\n' ' ')"
        echo "poshta: not runnable yet (user add: $(head -c 120 "$d/user-add.log" | tr '\n' ' '))"
        return
    fi
    cg_make poshta
    SRV_CG=$CG
    (in_cg "$SRV_CG" "$bin" serve -c "$d/main.cf") >"$d/serve.log" 2>&1 &
    POSHTA_PID=$!
    SRV_PID=$POSHTA_PID
    tool wait-port "$SRV_PORT" "$START_TIMEOUT" "$POSHTA_PID"
    case $? in
    0) ;;
    2)
        tool emit "$RESULTS" kind=skip server=poshta reason="serve exited: $(tail -c 200 "$d/serve.log" | tr '\n' ' ')"
        echo "poshta: not runnable yet"
        log "poshta serve said: $(tail -c 300 "$d/serve.log")"
        POSHTA_PID=""
        return
        ;;
    *)
        tool emit "$RESULTS" kind=skip server=poshta reason="not listening after ${START_TIMEOUT}s"
        echo "poshta: not runnable yet (not listening after ${START_TIMEOUT}s)"
        kill_pid "$POSHTA_PID"
        POSHTA_PID=""
        return
        ;;
    esac
    record_server
    run_server
    kill_pid "$POSHTA_PID"
    POSHTA_PID=""
}

# ------------------------------------------------------------------ main

mkdir -p "$BENCH_TMPDIR" "$OUTDIR"
RUN=$(mktemp -d "$BENCH_TMPDIR/run.XXXXXX") || die "cannot make a run directory in $BENCH_TMPDIR"
# Started as root, poshta runs as mail_owner: it must reach its files in the run directory.
chmod 755 "$RUN"
RESULTS=$RUN/results.jsonl
: >"$RESULTS"
fetch_postfix_tools

stamp=$(date +%Y%m%d-%H%M%S)
log "run directory $RUN; N=$N SIZE=$SIZE CONCURRENCY='$CONCURRENCY' SERVERS='$SERVERS'; CPU via $CPU_METHOD"

# The disk first, on the filesystem that holds the queues and Maildirs.
fs=$(tool fsync-rate "$RUN" "$FSYNC_SECS")
fs=$(echo "$fs" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); d["fs_type"]=sys.argv[1]; d["fs_source"]=sys.argv[2]; print(json.dumps(d))' \
    "$(findmnt -n -o FSTYPE --target "$RUN")" "$(findmnt -n -o SOURCE --target "$RUN")")
log "fsync: $fs"

tool emit "$RESULTS" kind=meta date="$(date -Is)" n="$N" size_bytes="$SIZE" concurrency="$CONCURRENCY" \
    cpu_method="$CPU_METHOD" cpus="$(nproc)" kernel="$(uname -r)" loadavg_start="$(cut -d' ' -f1-3 /proc/loadavg)" \
    smtp_source="$(basename "$CACHE"/postfix-deb/postfix_*.deb)" \
    poshta_git="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    mem_sample_ms="$MEM_SAMPLE_MS" fsync:="$fs"

for s in $SERVERS; do
    case $s in
    smtp-sink | sink) bench_sink ;;
    postfix) bench_postfix ;;
    poshta) bench_poshta ;;
    *) log "unknown server '$s' (smtp-sink, postfix, poshta)" ;;
    esac
done

tool report "$RESULTS" "$OUTDIR/smtp-deliver-$stamp.json"
