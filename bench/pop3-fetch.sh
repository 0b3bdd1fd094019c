#!/usr/bin/env bash
# POP3 download-and-delete benchmark: Dovecot's POP3 server and poshta in one run.
#
# usage: bench/pop3-fetch.sh [POSHTA_BINARY]
#
# Environment (defaults in brackets):
#   N [5000]  SIZE [2048]     messages in the mailbox and bytes per message (LF line ends)
#   LIST_N [50000]            messages for the LIST timing (0: skip it)
#   MODES ["plain tls"]       plain: POP3 on a plain port (USER/PASS from 127.0.0.1);
#                             tls: implicit TLS (POP3S, poplib.POP3_SSL)
#   PIPELINE ["1 32 mpop"]    client windows, each a phase: 1 is poplib, one command at a
#                             time; W > 1 keeps W RETR/DELE in flight (RFC 2449 PIPELINING,
#                             which both servers announce), so the servers' costs show
#                             rather than poplib's per-line work (mode label "plain+p32");
#                             mpop is Debian's mpop, a real client that pipelines, writing
#                             to an mbox on tmpfs (/dev/shm when writable; "plain+mpop";
#                             installed with apt-get when missing, else skipped)
#   AUTH_CACHE_TTL [0]        poshta's auth_cache_ttl: 0 verifies every login like Dovecot here;
#                             its default (1h) would skip argon2 after the first phase
#   SERVERS ["dovecot poshta"]  PHASE_TIMEOUT [300] s per phase   START_TIMEOUT [30]
#   STORE [maildir]           maildir: a mailbox user's Maildir; mbox: a system user's mbox
#                             (the passwd user `nobody`, marked `system` in poshta's users
#                             file; Dovecot: mail_location = mbox:, INBOX the same file)
#   POSHTA [dist/x86_64-unknown-linux-musl/poshta, built by images/build-binaries.sh:
#           the static build that ships; BENCH_BUILD=native: target/release/poshta, glibc]
#   MEM_SAMPLE_MS [100]  SETTLE_SECS [1]  KEEP [0]  BENCH_TMPDIR [bench/.cache]  BENCH_NO_CGROUP [0]
#
# Everything listens on 127.0.0.1 only. Every wait is bounded; an EXIT trap stops Dovecot
# and poshta (by pid) and removes the run directory. See bench/README.md.

set -uo pipefail
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
# shellcheck source=bench/lib.sh
. "$(dirname "$SELF")/lib.sh"
lib_dns_namespace_hook "$@"

N=${N:-5000}
SIZE=${SIZE:-2048}
LIST_N=${LIST_N:-50000}
MODES=${MODES:-"plain tls"}
PIPELINE=${PIPELINE:-"1 32 mpop"}
AUTH_CACHE_TTL=${AUTH_CACHE_TTL:-0}
SERVERS=${SERVERS:-"dovecot poshta"}
PHASE_TIMEOUT=${PHASE_TIMEOUT:-300}
POSHTA=${1:-${POSHTA:-}}
STORE=${STORE:-maildir}
USER_NAME=alice
[[ $STORE = maildir || $STORE = mbox ]] || die "bad STORE '$STORE' (maildir, mbox)"
# An mbox belongs to a system user: one that exists everywhere.
[ "$STORE" = mbox ] && USER_NAME=nobody
PASSWORD=bench-password

for v in N SIZE LIST_N PHASE_TIMEOUT START_TIMEOUT MEM_SAMPLE_MS SETTLE_SECS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
[ "$N" -ge 1 ] || die "N must be at least 1"
[ "$SIZE" -ge 400 ] || die "SIZE must be at least 400 (the headers)"
for m in $MODES; do [[ $m = plain || $m = tls ]] || die "bad mode '$m' (plain, tls)"; done
for w in $PIPELINE; do [[ $w =~ ^[1-9][0-9]*$ || $w = mpop ]] || die "bad PIPELINE window '$w'"; done

mkdir -p "$BENCH_TMPDIR" "$OUTDIR"
RUN=$(mktemp -d "$BENCH_TMPDIR/run.XXXXXX") || die "cannot make a run directory in $BENCH_TMPDIR"
# Started as root, poshta runs as mail_owner: it must reach its files in the run directory.
chmod 755 "$RUN"
chmod 755 "$RUN" # Dovecot's unprivileged processes must reach the Maildir and passwd file
RESULTS=$RUN/results.jsonl
: >"$RESULTS"
WARNINGS=""
warn() {
    log "warning: $*"
    WARNINGS="$WARNINGS|$*"
}

# mpop phases: the client, and a tmpfs directory for its mbox (on disk, mpop's own
# fsync per message set the pace: 1.1 s for 5000 messages against 0.2 s on tmpfs).
MPOP_DIR=""
mpop_cleanup() {
    case $MPOP_DIR in /dev/shm/poshta-bench-mpop.*) rm -rf "$MPOP_DIR" ;; esac
}
if [[ " $PIPELINE " == *" mpop "* ]]; then
    if ! command -v mpop >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        log "installing Debian's mpop"
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y --no-install-recommends mpop \
            >"$RUN/apt-mpop.log" 2>&1
    fi
    if command -v mpop >/dev/null 2>&1; then
        if [ -d /dev/shm ] && [ -w /dev/shm ]; then
            MPOP_DIR=$(mktemp -d /dev/shm/poshta-bench-mpop.XXXXXX) || MPOP_DIR=$RUN/mpop
        else
            MPOP_DIR=$RUN/mpop
        fi
        CLEANUP_HOOKS+=(mpop_cleanup)
    else
        warn "mpop is not installed (apt-get install mpop): its phases are skipped"
        PIPELINE=$(echo " $PIPELINE " | sed 's/ mpop / /')
    fi
fi

# ------------------------------------------------------------------ shared setup

# poshta is needed even for a Dovecot-only run: `poshta init` makes the certificate
# (ECDSA P-256, self-signed) and `poshta user add` the argon2id hash both servers use.
PD=$RUN/poshta
mkdir -p "$PD/spool" "$PD/mail"
if ! build_poshta; then
    tool emit "$RESULTS" kind=skip server=poshta reason="no poshta binary (build failed?)"
    tool emit "$RESULTS" kind=meta n="$N"
    mb report-pop3 "$RESULTS" "$OUTDIR/pop3-fetch-$(date +%Y%m%d-%H%M%S).json"
    exit 1
fi
P_POP3=$(tool freeport)
P_POP3S=$(tool freeport)
cat >"$PD/main.cf" <<EOF
# Written by bench/pop3-fetch.sh for one run. Every listener is set: as root the
# defaults would be the real ports on all interfaces.
smtpd_listen =
submission_listen =
submissions_listen =
pop3d_listen = 127.0.0.1:$P_POP3
pop3s_listen = 127.0.0.1:$P_POP3S
queue_directory = $PD/spool
virtual_mailbox_base = $PD/mail
mailbox_users_file = $PD/users
mydestination = bench.example
myhostname = mail.bench.example
mynetworks = 127.0.0.0/8
smtpd_tls_cert_file = $PD/tls/cert.pem
smtpd_tls_key_file = $PD/tls/key.pem
mail_spool_directory = $PD/spoolmail
# Every login verifies the argon2id hash, as Dovecot does here (auth_cache_size = 0; its
# cache would still verify the password against a cached hash): same cost per login.
auth_cache_ttl = $AUTH_CACHE_TTL
EOF
mkdir -p "$PD/spoolmail"
timeout 60 "$POSHTA_BIN" init --domain bench.example -c "$PD/main.cf" >"$PD/init.log" 2>&1 ||
    die "poshta init failed: $(tail -c 300 "$PD/init.log")"
SYSTEM_FLAG=()
[ "$STORE" = mbox ] && SYSTEM_FLAG=(--system)
echo "$PASSWORD" | timeout 30 "$POSHTA_BIN" user add "$USER_NAME" "${SYSTEM_FLAG[@]}" --password-stdin -c "$PD/main.cf" \
    >"$PD/user-add.log" 2>&1 || die "poshta user add failed: $(tail -c 300 "$PD/user-add.log")"
HASH=$(awk -F: -v u="$USER_NAME" '$1 == u {print $2}' "$PD/users")
[[ $HASH == \$argon2id\$* ]] || die "no argon2id hash for $USER_NAME in $PD/users"
CERT=$PD/tls/cert.pem
KEY=$PD/tls/key.pem

# The messages: written once, then hard-linked into each server's fresh Maildir before
# every phase (neither server changes a message file: they rename and unlink names).
# Dovecot-style names carry ,S= and ,W=, so neither server needs to read a file to size it.
log "writing $N messages of $SIZE B (and $LIST_N for the LIST timing)"
TPL=$RUN/tpl
mb fill "$TPL" "$N" "$SIZE" >"$RUN/fill.json" || die "fill failed"
if [ "$LIST_N" -gt 0 ]; then
    mb fill "$RUN/tpl-list" "$LIST_N" "$SIZE" >"$RUN/fill-list.json" || die "fill (LIST) failed"
fi
chown -R nobody:nogroup "$TPL" "$RUN/tpl-list" 2>/dev/null
# For STORE=mbox the same messages, in name order, as one mbox each (From_ line, message,
# blank line); copied (not linked: both servers rewrite an mbox in place) before each phase.
to_mbox() { # to_mbox MAILDIR_TEMPLATE MBOX
    "$PY" - "$1/new" "$2" <<'PYEOF'
import os, sys
src, dst = sys.argv[1], sys.argv[2]
with open(dst, "wb") as out:
    for n in sorted(os.listdir(src), key=lambda n: int(n.split(".")[0])):
        with open(os.path.join(src, n), "rb") as f:
            out.write(b"From bench@bench.example Sat Nov 28 01:59:01 2026\n" + f.read() + b"\n")
PYEOF
}
if [ "$STORE" = mbox ]; then
    to_mbox "$TPL" "$TPL.mbox" || die "cannot make the mbox template"
    if [ "$LIST_N" -gt 0 ]; then
        to_mbox "$RUN/tpl-list" "$RUN/tpl-list.mbox" || die "cannot make the LIST mbox"
    fi
fi

# fresh_maildir TEMPLATE MAILDIR OWNER: an empty MAILDIR, then the template's files linked in.
fresh_maildir() {
    local tpl=$1 md=$2 owner=$3
    rm -rf "$md"
    mkdir -p "$md"
    cp -al "$tpl/cur" "$tpl/new" "$tpl/tmp" "$md/" || return 1
    [ -z "$owner" ] || chown -R "$owner" "$md"
}

# fresh_store TEMPLATE MAILBOX OWNER: fresh_maildir, or for STORE=mbox a copy of TEMPLATE.mbox
# as the file MAILBOX (mode 0600, OWNER's), as local delivery leaves a system mailbox.
fresh_store() {
    local tpl=$1 md=$2 owner=$3
    if [ "$STORE" != mbox ]; then
        fresh_maildir "$tpl" "$md" "$owner"
        return
    fi
    rm -f "$md" "$md.lock"
    cp "$tpl.mbox" "$md" || return 1
    chmod 600 "$md"
    chown "${owner:-nobody:nogroup}" "$md"
}

# left_in MAILBOX: JSON {"new": n, "cur": 0} for an mbox (messages left; Dovecot's internal
# pseudo-message not counted), mb count-maildir for a Maildir.
left_in() {
    if [ "$STORE" = mbox ]; then
        "$PY" - "$1" <<'PYEOF'
import json, sys
try:
    data = open(sys.argv[1], "rb").read()
except OSError:
    data = b""
n = sum(1 for l in data.split(b"\n") if l.startswith(b"Subject: ") and b"FOLDER INTERNAL DATA" not in l)
print(json.dumps({"new": n, "cur": 0}))
PYEOF
    else
        mb count-maildir "$1"
    fi
}

stamp=$(date +%Y%m%d-%H%M%S)
log "run directory $RUN; N=$N SIZE=$SIZE LIST_N=$LIST_N MODES='$MODES' SERVERS='$SERVERS'; CPU via $CPU_METHOD"
tool emit "$RESULTS" kind=meta date="$(date -Is)" store="$STORE" n="$N" size_bytes="$SIZE" list_n="$LIST_N" modes="$MODES" \
    cpu_method="$CPU_METHOD" cpus="$(nproc)" kernel="$(uname -r)" loadavg_start="$(cut -d' ' -f1-3 /proc/loadavg)" \
    poshta_git="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" poshta_binary="$POSHTA_BIN" \
    mem_sample_ms="$MEM_SAMPLE_MS" fill:="$(cat "$RUN/fill.json")"

# ------------------------------------------------------------------ one server's phases

SRV=""     # name
SRV_PID="" # main process (VmHWM; tree root without a cgroup)
SRV_CG=""
SRV_MULTI=0
SRV_MD=""    # the user's Maildir
SRV_OWNER="" # owner of the Maildir files ("" = as they are)
SRV_PORT_PLAIN=""
SRV_PORT_TLS=""

record_idle() {
    sleep "$SETTLE_SECS"
    local idle
    # shellcheck disable=SC2046
    idle=$(tool mem-now $(sel_args "$SRV_CG" "$SRV_PID") --main "$SRV_PID")
    log "$SRV: up (pid $SRV_PID), idle $idle"
    tool emit "$RESULTS" kind=server server="$SRV" pid="$SRV_PID" multi_process="$SRV_MULTI" \
        cgroup="${SRV_CG:-none}" idle:="$idle"
}

phase_fetch() { # phase_fetch MODE WINDOW
    local mode=$1 window=$2 port tlsopt=() hwmopt=() cpu0 cpu1 client status mem left hwm label=$1
    if [ "$window" = mpop ]; then
        label="$mode+mpop"
    elif [ "$window" -gt 1 ]; then
        label="$mode+p$window"
    fi
    if [ "$mode" = tls ]; then
        port=$SRV_PORT_TLS
        tlsopt=(--tls 1 --cafile "$CERT")
    else
        port=$SRV_PORT_PLAIN
    fi
    [ "$SRV_MULTI" = 1 ] || hwmopt=(--hwm-pid "$SRV_PID") # VmHWM of the transfer, after the login
    fresh_store "$TPL" "$SRV_MD" "$SRV_OWNER" || die "cannot fill $SRV_MD"
    echo 5 >"/proc/$SRV_PID/clear_refs" 2>/dev/null # reset VmHWM: this phase's peak
    # The peak is the transfer's: samples before the client's login mark are the login's
    # (one argon2id check, 19 MiB for ~20 ms, in poshta's password thread or Dovecot's auth
    # process), kept apart for both servers alike (login_* in the JSON).
    rm -f "$RUN/login.mark"
    sampler_start "$SRV_CG" "$SRV_PID" "$RUN/mem.json" $((PHASE_TIMEOUT + 60)) "$RUN/login.mark"
    cpu0=$(cpu_ns_of "$SRV_CG" "$SRV_PID")
    if [ "$window" = mpop ]; then
        run_waited "$RUN/client.json" timeout -k 5 $((PHASE_TIMEOUT + 10)) "$PY" "$HERE/mailbench.py" pop3-mpop --port "$port" \
            --user "$USER_NAME" --password "$PASSWORD" --expect "$N" --timeout "$PHASE_TIMEOUT" --dir "$MPOP_DIR" \
            --login-mark "$RUN/login.mark" "${tlsopt[@]}"
        rm -f "$MPOP_DIR/mbox"
    else
        run_waited "$RUN/client.json" timeout -k 5 $((PHASE_TIMEOUT + 10)) "$PY" "$HERE/mailbench.py" pop3-fetch --port "$port" \
            --user "$USER_NAME" --password "$PASSWORD" --expect "$N" --timeout "$PHASE_TIMEOUT" --pipeline "$window" \
            --login-mark "$RUN/login.mark" "${tlsopt[@]}" "${hwmopt[@]}"
    fi
    client=$(cat "$RUN/client.json" 2>/dev/null)
    [ -n "$client" ] || client='{"status": "client failed or timed out"}'
    sleep 0.2 # a server may finish its UPDATE state just after the +OK to QUIT
    cpu1=$(cpu_ns_of "$SRV_CG" "$SRV_PID")
    sampler_stop
    mem=$(cat "$RUN/mem.json" 2>/dev/null || echo '{}')
    hwm=$(hwm_of "$SRV_PID")
    left=$(left_in "$SRV_MD")
    status=$(echo "$client" | "$PY" -c 'import json,sys; print(json.load(sys.stdin).get("status","?"))')
    # The mailbox must be empty afterwards: every DELE took effect at QUIT.
    if [ "$status" = ok ] && [ "$(echo "$left" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print((d["new"] or 0)+(d["cur"] or 0))')" != 0 ]; then
        status="mailbox not empty after QUIT: $left"
    fi
    tool emit "$RESULTS" kind=fetch server="$SRV" mode="$label" pipeline="$window" n="$N" cpu_ns=$((cpu1 - cpu0)) \
        peak_hwm_kib="$hwm" mem:="$mem" left:="$left" client:="$client" status="$status"
    log "$SRV $label: $status, $(echo "$client" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(d.get("secs_total"), "s")'), " \
        "$(awk "BEGIN{printf \"%.3f s CPU\", ($cpu1-$cpu0)/1e9}"), left $left"
}

phase_list() {
    [ "$LIST_N" -gt 0 ] || return 0
    local cpu0 cpu1 client status
    fresh_store "$RUN/tpl-list" "$SRV_MD" "$SRV_OWNER" || die "cannot fill $SRV_MD"
    echo 5 >"/proc/$SRV_PID/clear_refs" 2>/dev/null
    sampler_start "$SRV_CG" "$SRV_PID" "$RUN/mem.json" $((PHASE_TIMEOUT + 60))
    cpu0=$(cpu_ns_of "$SRV_CG" "$SRV_PID")
    run_waited "$RUN/client.json" timeout -k 5 $((PHASE_TIMEOUT + 10)) "$PY" "$HERE/mailbench.py" pop3-list --port "$SRV_PORT_PLAIN" \
        --user "$USER_NAME" --password "$PASSWORD" --expect "$LIST_N" --sessions 2 --timeout "$PHASE_TIMEOUT"
    client=$(cat "$RUN/client.json" 2>/dev/null)
    [ -n "$client" ] || client='{"sessions": [], "status": "client failed or timed out"}'
    cpu1=$(cpu_ns_of "$SRV_CG" "$SRV_PID")
    sampler_stop
    status=$(echo "$client" | "$PY" -c 'import json,sys; s=json.load(sys.stdin).get("sessions") or [{"status":"no sessions"}]; print(next((x["status"] for x in s if x["status"]!="ok"),"ok"))')
    tool emit "$RESULTS" kind=list server="$SRV" n="$LIST_N" cpu_ns=$((cpu1 - cpu0)) peak_hwm_kib="$(hwm_of "$SRV_PID")" \
        mem:="$(cat "$RUN/mem.json" 2>/dev/null || echo '{}')" client:="$client" status="$status"
    log "$SRV LIST $LIST_N: $status $(echo "$client" | "$PY" -c 'import json,sys; print([(s.get("login_s"), s.get("list_s")) for s in json.load(sys.stdin)["sessions"]])') (login s, LIST s)"
    rm -rf "$SRV_MD"
}

run_phases() {
    local m
    record_idle
    for m in $MODES; do
        for w in $PIPELINE; do phase_fetch "$m" "$w"; done
    done
    phase_list
}

# ------------------------------------------------------------------ Dovecot

bench_dovecot() {
    SRV=dovecot SRV_MULTI=1
    if ! ensure_dovecot pop3; then
        tool emit "$RESULTS" kind=skip server=dovecot reason="apt-get install dovecot-pop3d failed"
        return
    fi
    if ! unshare -m --propagation private true 2>/dev/null; then
        tool emit "$RESULTS" kind=skip server=dovecot reason="unshare -m not permitted: cannot isolate DNS"
        return
    fi
    tool emit "$RESULTS" kind=meta dovecot_version="$(dovecot --version 2>/dev/null)"
    local d=$RUN/dovecot ssl=no
    mkdir -p "$d/run" "$d/state" "$d/mail"
    make_ns_files "$d/ns"
    chown nobody:nogroup "$d/mail"
    SRV_MD=$d/mail/$USER_NAME
    SRV_OWNER=nobody:nogroup
    local location="maildir:~" home="$d/mail/%u"
    if [ "$STORE" = mbox ]; then
        # The home holds Dovecot's mbox folder root and indexes; INBOX is the spool file.
        mkdir -p "$d/mail/$USER_NAME.home"
        chown nobody:nogroup "$d/mail/$USER_NAME.home"
        location="mbox:~:INBOX=$d/mail/%u"
        home="$d/mail/%u.home"
    fi
    SRV_PORT_PLAIN=$(tool freeport)
    SRV_PORT_TLS=$(tool freeport)
    # The same argon2id hash as poshta's users file: one login costs the same here.
    echo "$USER_NAME:{ARGON2ID}$HASH" >"$d/passwd"
    chown root:dovecot "$d/passwd"
    chmod 640 "$d/passwd"
    [[ " $MODES " == *" tls "* ]] && ssl=yes
    {
        dovecot_common_conf "$d" "poshta-bench-pop3-$$"
        cat <<EOF
protocols = pop3
ssl = $ssl
ssl_cert = <$CERT
ssl_key = <$KEY
passdb {
  driver = passwd-file
  args = $d/passwd
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=$home
}
# The Maildir is the home directory itself: $d/mail/%u/{cur,new,tmp} (Dovecot's index
# files go there too), the layout poshta uses.
mail_location = $location
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $SRV_PORT_PLAIN
  }
  inet_listener pop3s {
    address = 127.0.0.1
    port = $SRV_PORT_TLS
    ssl = yes
  }
}
EOF
    } >"$d/dovecot.conf"
    if ! doveconf -c "$d/dovecot.conf" -n >"$d/doveconf.out" 2>&1; then
        tool emit "$RESULTS" kind=skip server=dovecot reason="doveconf: $(head -c 300 "$d/doveconf.out" | tr '\n' ' ')"
        return
    fi
    cg_make dovecot
    SRV_CG=$CG
    dovecot_start "$d/dovecot.conf" "$d/ns" "$SRV_CG" "$d/stderr.log"
    SRV_PID=$DOVECOT_PID
    if ! tool wait-port "$SRV_PORT_PLAIN" "$START_TIMEOUT" "$SRV_PID"; then
        tool emit "$RESULTS" kind=skip server=dovecot reason="did not start: $(tail -c 300 "$d/stderr.log" "$d/dovecot.log" 2>/dev/null | tr '\n' ' ')"
        dovecot_stop_all
        return
    fi
    # Guard: the running master sees the loopback-only resolver (its mount namespace).
    if ! cmp -s "/proc/$SRV_PID/root/etc/resolv.conf" "$d/ns/resolv.conf"; then
        tool emit "$RESULTS" kind=skip server=dovecot reason="master does not see the loopback resolv.conf"
        dovecot_stop_all
        return
    fi
    run_phases
    local errs
    errs=$(grep -hiE 'error|fatal|panic' "$d/dovecot.log" 2>/dev/null | head -3)
    [ -z "$errs" ] || warn "dovecot logged: $(echo "$errs" | tr '\n' ' ' | head -c 300)"
    dovecot_stop_all
    # No Dovecot may be left running: neither ours (cgroup) nor a system one.
    local left=0 sys
    [ -n "$SRV_CG" ] && left=$(grep -c . "$SRV_CG/cgroup.procs" 2>/dev/null)
    sys=$(system_dovecot_pids | tr '\n' ' ')
    tool emit "$RESULTS" kind=meta dovecot_procs_left_after_stop="${left:-0}" system_dovecot_pids="$sys"
    [ "${left:-0}" = 0 ] || warn "$left Dovecot processes left in its cgroup after stop (killed at exit)"
    [ -z "$sys" ] || warn "a Dovecot not started by this script is running: pids $sys"
}

# ------------------------------------------------------------------ poshta

bench_poshta() {
    SRV=poshta SRV_MULTI=0
    SRV_MD=$PD/mail/$USER_NAME
    SRV_OWNER=""
    # Started as root, poshta serves Maildirs as its mail_owner (`poshta`): the mailbox
    # the benchmark fills must be that user's, as local delivery leaves it.
    [ "$STORE" != mbox ] && [ "$(id -u)" = 0 ] && id poshta >/dev/null 2>&1 && SRV_OWNER=poshta:poshta
    [ "$STORE" = mbox ] && SRV_MD=$PD/spoolmail/$USER_NAME
    SRV_PORT_PLAIN=$P_POP3
    SRV_PORT_TLS=$P_POP3S
    cg_make poshta
    SRV_CG=$CG
    if ! poshta_start "$PD" "$SRV_CG" "$P_POP3"; then
        tool emit "$RESULTS" kind=skip server=poshta reason="serve did not start: $(tail -c 200 "$PD/serve.log" | tr '\n' ' ')"
        return
    fi
    SRV_PID=$POSHTA_PID
    run_phases
    poshta_stop
}

for s in $SERVERS; do
    case $s in
    dovecot) bench_dovecot ;;
    poshta) bench_poshta ;;
    *) log "unknown server '$s' (dovecot, poshta)" ;;
    esac
done

tool emit "$RESULTS" kind=meta warnings="$WARNINGS"
mb report-pop3 "$RESULTS" "$OUTDIR/pop3-fetch-$stamp.json"
