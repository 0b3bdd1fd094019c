#!/usr/bin/env bash
# Authenticated TLS submission benchmark: Postfix (+ Dovecot's auth service for SASL) and
# poshta in one run. One connection per message: TLS handshake, EHLO, AUTH PLAIN, one
# message, QUIT; timed until every message is in the Maildir.
#
# usage: bench/tls-submit.sh [POSHTA_BINARY]
#
# Environment (defaults in brackets):
#   N [1000]  SIZE [1024]        submissions per run, bytes per message
#   CONCURRENCY ["1 50"]         client threads (one session each at a time)
#   PORTS ["465 587"]            465: implicit TLS (SMTP_SSL); 587: STARTTLS
#   HOLD_SESSIONS [50]           sessions held open at once for the memory snapshot (0: skip)
#   AUTH_N [50]                  sequential AUTH-only sessions (argon2id cost; 0: skip)
#   ARGON2_N [20]                argon2-cffi verifications (0: skip; pip-installed into
#                                bench/.cache/pylib if missing)
#   PF_SCHEME [argon2id]         Postfix's password hash in Dovecot's passwd-file: argon2id
#                                (poshta's own hash string) or plain ({PLAIN}, no hashing)
#   SERVERS ["postfix poshta"]   PHASE_TIMEOUT [300] s per run   START_TIMEOUT [30]
#   POSHTA [dist/x86_64-unknown-linux-musl/poshta, built by images/build-binaries.sh:
#           the static build that ships; BENCH_BUILD=native: target/release/poshta, glibc]
#   MEM_SAMPLE_MS [100]  SETTLE_SECS [1]  KEEP [0]  BENCH_TMPDIR [bench/.cache]  BENCH_NO_CGROUP [0]
#
# Everything listens on 127.0.0.1 only. Every wait is bounded; an EXIT trap stops Postfix,
# Dovecot and poshta (by pid) and removes the run directory. See bench/README.md.

set -uo pipefail
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
# shellcheck source=bench/lib.sh
. "$(dirname "$SELF")/lib.sh"
lib_dns_namespace_hook "$@"

N=${N:-1000}
SIZE=${SIZE:-1024}
CONCURRENCY=${CONCURRENCY:-"1 50"}
PORTS=${PORTS:-"465 587"}
HOLD_SESSIONS=${HOLD_SESSIONS:-50}
AUTH_N=${AUTH_N:-50}
ARGON2_N=${ARGON2_N:-20}
PF_SCHEME=${PF_SCHEME:-argon2id}
SERVERS=${SERVERS:-"postfix poshta"}
PHASE_TIMEOUT=${PHASE_TIMEOUT:-300}
POSHTA=${1:-${POSHTA:-}}
USER_NAME=alice
PASSWORD=bench-password
ADDR=alice@bench.example

for v in N SIZE HOLD_SESSIONS AUTH_N ARGON2_N PHASE_TIMEOUT START_TIMEOUT MEM_SAMPLE_MS SETTLE_SECS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer (got '${!v}')"
done
for c in $CONCURRENCY; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "bad concurrency '$c'"; done
for p in $PORTS; do [[ $p = 465 || $p = 587 ]] || die "bad port kind '$p' (465, 587)"; done
[[ $PF_SCHEME = argon2id || $PF_SCHEME = plain ]] || die "PF_SCHEME must be argon2id or plain"

mkdir -p "$BENCH_TMPDIR" "$OUTDIR"
RUN=$(mktemp -d "$BENCH_TMPDIR/run.XXXXXX") || die "cannot make a run directory in $BENCH_TMPDIR"
# Started as root, poshta runs as mail_owner: it must reach its files in the run directory.
chmod 755 "$RUN"
chmod 755 "$RUN"
RESULTS=$RUN/results.jsonl
: >"$RESULTS"
WARNINGS=""
warn() {
    log "warning: $*"
    WARNINGS="$WARNINGS|$*"
}
stamp=$(date +%Y%m%d-%H%M%S)

# ------------------------------------------------------------------ shared setup

# `poshta init` makes the certificate both servers use (ECDSA P-256, self-signed for
# mail.bench.example) and `poshta user add` the argon2id hash (m=19456 KiB, t=2, p=1).
PD=$RUN/poshta
mkdir -p "$PD/spool" "$PD/mail"
if ! build_poshta; then
    tool emit "$RESULTS" kind=skip server=poshta reason="no poshta binary (build failed?)"
    mb report-tls "$RESULTS" "$OUTDIR/tls-submit-$stamp.json"
    exit 1
fi
P_SUB=$(tool freeport)  # poshta 587-style
P_SUBS=$(tool freeport) # poshta 465-style
cat >"$PD/main.cf" <<EOF
# Written by bench/tls-submit.sh for one run. Every listener is set: as root the
# defaults would be the real ports on all interfaces.
smtpd_listen =
submission_listen = 127.0.0.1:$P_SUB
submissions_listen = 127.0.0.1:$P_SUBS
pop3d_listen =
pop3s_listen =
queue_directory = $PD/spool
virtual_mailbox_base = $PD/mail
mailbox_users_file = $PD/users
mydestination = bench.example
myhostname = mail.bench.example
mynetworks = 127.0.0.0/8
smtpd_tls_cert_file = $PD/tls/cert.pem
smtpd_tls_key_file = $PD/tls/key.pem
EOF
timeout 60 "$POSHTA_BIN" init --domain bench.example -c "$PD/main.cf" >"$PD/init.log" 2>&1 ||
    die "poshta init failed: $(tail -c 300 "$PD/init.log")"
echo "$PASSWORD" | timeout 30 "$POSHTA_BIN" user add "$USER_NAME" --password-stdin -c "$PD/main.cf" \
    >"$PD/user-add.log" 2>&1 || die "poshta user add failed: $(tail -c 300 "$PD/user-add.log")"
HASH=$(awk -F: -v u="$USER_NAME" '$1 == u {print $2}' "$PD/users")
[[ $HASH == \$argon2id\$* ]] || die "no argon2id hash for $USER_NAME in $PD/users"
CERT=$PD/tls/cert.pem
KEY=$PD/tls/key.pem

log "run directory $RUN; N=$N SIZE=$SIZE CONCURRENCY='$CONCURRENCY' PORTS='$PORTS' SERVERS='$SERVERS'; CPU via $CPU_METHOD"
tool emit "$RESULTS" kind=meta date="$(date -Is)" n="$N" size_bytes="$SIZE" concurrency="$CONCURRENCY" ports="$PORTS" \
    cpu_method="$CPU_METHOD" cpus="$(nproc)" kernel="$(uname -r)" loadavg_start="$(cut -d' ' -f1-3 /proc/loadavg)" \
    poshta_git="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" poshta_binary="$POSHTA_BIN" \
    cert="$(openssl x509 -in "$CERT" -noout -text 2>/dev/null | grep -m1 -oE 'ASN1 OID: [a-z0-9]+|Public-Key: \([0-9]+ bit\)' | head -1)" \
    pf_scheme="$PF_SCHEME" mem_sample_ms="$MEM_SAMPLE_MS" hash_params="$(echo "$HASH" | cut -d'$' -f4)"

# ------------------------------------------------------------------ argon2id alone

argon2_measure() {
    [ "$ARGON2_N" -gt 0 ] || return 0
    local pp=""
    if ! "$PY" -c 'import argon2' 2>/dev/null; then
        pp=$CACHE/pylib
        if ! PYTHONPATH=$pp "$PY" -c 'import argon2' 2>/dev/null; then
            log "installing argon2-cffi into $pp (pip)"
            mkdir -p "$pp"
            timeout 180 "$PY" -m pip install --quiet --target "$pp" argon2-cffi >"$RUN/pip.log" 2>&1 ||
                timeout 180 python3 -m pip install --quiet --target "$pp" argon2-cffi >>"$RUN/pip.log" 2>&1
        fi
    fi
    local out
    out=$(PYTHONPATH=$pp timeout 120 "$PY" "$HERE/mailbench.py" argon2 --hash "$HASH" --password "$PASSWORD" --n "$ARGON2_N")
    [ -n "$out" ] || out='{"status": "argon2 measurement failed"}'
    tool emit "$RESULTS" kind=meta argon2:="$out"
    log "argon2-cffi: $out"
}

# ------------------------------------------------------------------ phases

SRV="" SRV_PID="" SRV_CG="" SRV_MULTI=0 SRV_NEW="" SRV_AUTH_PID=""
declare -A SRV_PORT # 465/587 -> port

record_idle() {
    sleep "$SETTLE_SECS"
    local idle
    # shellcheck disable=SC2046
    idle=$(tool mem-now $(sel_args "$SRV_CG" "$SRV_PID") --main "$SRV_PID")
    log "$SRV: up (pid $SRV_PID), idle $idle"
    tool emit "$RESULTS" kind=server server="$SRV" pid="$SRV_PID" multi_process="$SRV_MULTI" \
        cgroup="${SRV_CG:-none}" idle:="$idle"
}

mode_of() { if [ "$1" = 465 ]; then echo ssl; else echo starttls; fi; }

clear_new() { [ -d "$SRV_NEW" ] && find "$SRV_NEW" -mindepth 1 -maxdepth 1 -type f -delete; }

# wait_delivered COUNT SECS: until COUNT files are in new/; prints "EPOCH COUNT"
wait_delivered() { tool wait-files "$SRV_NEW" "$1" "$2"; }

# phase KIND PORTKIND CONC COUNT [extra client args...]
phase() {
    local kind=$1 pk=$2 conc=$3 count=$4
    shift 4
    local mode cpu0 cpu1 auth0=0 auth1=0 client ok status wf delivered=0 mem hwm
    mode=$(mode_of "$pk")
    clear_new
    echo 5 >"/proc/$SRV_PID/clear_refs" 2>/dev/null # VmHWM of this phase only
    sampler_start "$SRV_CG" "$SRV_PID" "$RUN/mem.json" $((PHASE_TIMEOUT + 60))
    cpu0=$(cpu_ns_of "$SRV_CG" "$SRV_PID")
    [ -n "$SRV_AUTH_PID" ] && auth0=$(tool cpu-ns --tree "$SRV_AUTH_PID")
    run_waited "$RUN/client.json" timeout -k 5 $((PHASE_TIMEOUT + 10)) "$PY" "$HERE/mailbench.py" submit --port "${SRV_PORT[$pk]}" \
        --mode "$mode" --user "$USER_NAME" --password "$PASSWORD" --cafile "$CERT" --n "$count" \
        --concurrency "$conc" --size "$SIZE" --from "$ADDR" --to "$ADDR" --timeout "$PHASE_TIMEOUT" "$@"
    client=$(cat "$RUN/client.json" 2>/dev/null)
    [ -n "$client" ] || client='{"ok": 0, "status": "client failed or timed out"}'
    ok=$(echo "$client" | "$PY" -c 'import json,sys; print(json.load(sys.stdin).get("ok") or 0)')
    status=$(echo "$client" | "$PY" -c 'import json,sys; print(json.load(sys.stdin).get("status","?"))')
    if [ "$kind" = submit ]; then
        # Until every accepted message is delivered: the CPU of delivery is counted too.
        if ! wf=$(wait_delivered "$ok" 60) && [ "$status" = ok ]; then status="timeout delivering"; fi
        delivered=${wf##* }
    fi
    cpu1=$(cpu_ns_of "$SRV_CG" "$SRV_PID")
    [ -n "$SRV_AUTH_PID" ] && auth1=$(tool cpu-ns --tree "$SRV_AUTH_PID")
    sampler_stop
    mem=$(cat "$RUN/mem.json" 2>/dev/null || echo '{}')
    hwm=$(hwm_of "$SRV_PID")
    tool emit "$RESULTS" kind="$kind" server="$SRV" mode="$mode" concurrency="$conc" n="$count" \
        cpu_ns=$((cpu1 - cpu0)) auth_cpu_ns=$((auth1 - auth0)) delivered="$delivered" peak_hwm_kib="$hwm" \
        mem:="$mem" client:="$client" status="$status"
    log "$SRV $kind port=$pk c=$conc: $status, ok $ok, delivered $delivered," \
        "$(awk "BEGIN{printf \"%.2f ms CPU/session\", ($cpu1-$cpu0)/1e6/($ok>0?$ok:1)}")," \
        "$(echo "$client" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(d.get("secs_total"), "s")')"
}

# hold PORTKIND: HOLD_SESSIONS sessions open at once, memory snapshot, then each sends.
hold() {
    local pk=$1 client status
    [ "$HOLD_SESSIONS" -gt 0 ] || return 0
    clear_new
    echo 5 >"/proc/$SRV_PID/clear_refs" 2>/dev/null
    # shellcheck disable=SC2046
    run_waited "$RUN/client.json" timeout -k 5 $((PHASE_TIMEOUT + 10)) "$PY" "$HERE/mailbench.py" hold --port "${SRV_PORT[$pk]}" \
        --mode "$(mode_of "$pk")" --user "$USER_NAME" --password "$PASSWORD" --cafile "$CERT" \
        --sessions "$HOLD_SESSIONS" --from "$ADDR" --to "$ADDR" --timeout 120 \
        $(sel_args "$SRV_CG" "$SRV_PID") --main "$SRV_PID"
    client=$(cat "$RUN/client.json" 2>/dev/null)
    [ -n "$client" ] || client='{"status": "client failed or timed out"}'
    status=$(echo "$client" | "$PY" -c 'import json,sys; print(json.load(sys.stdin).get("status","?"))')
    wait_delivered "$HOLD_SESSIONS" 60 >/dev/null || [ "$status" != ok ] || status="timeout delivering"
    tool emit "$RESULTS" kind=hold server="$SRV" mode="$(mode_of "$pk")" peak_hwm_kib="$(hwm_of "$SRV_PID")" \
        client:="$client" status="$status"
    log "$SRV hold $HOLD_SESSIONS on port=$pk: $status $(echo "$client" | "$PY" -c 'import json,sys; print(json.load(sys.stdin).get("mem"))')"
}

run_phases() {
    local pk c
    record_idle
    for pk in $PORTS; do
        for c in $CONCURRENCY; do phase submit "$pk" "$c" "$N"; done
        hold "$pk"
    done
    # AUTH then QUIT, sequential: the password check's cost per session (no message).
    [ "$AUTH_N" -gt 0 ] && phase auth-only "$(echo "$PORTS" | awk '{print $1}')" 1 "$AUTH_N" --auth-only 1
    clear_new
}

# ------------------------------------------------------------------ Postfix + Dovecot auth

PF_CONF=$CACHE/postfix-submit-conf
PF_QUEUE=""
PF_STARTED=0

postfix_stop() {
    [ "$PF_STARTED" = 1 ] || return 0
    local master="" i
    [ -n "$PF_QUEUE" ] && [ -f "$PF_QUEUE/pid/master.pid" ] && master=$(tr -d ' \n' <"$PF_QUEUE/pid/master.pid")
    timeout 30 postfix -c "$PF_CONF" stop >/dev/null 2>&1
    if [ -n "$master" ]; then
        for ((i = 0; i < 300; i++)); do
            kill -0 "$master" 2>/dev/null || break
            sleep 0.1
        done
        kill_pid "$master"
    fi
    PF_STARTED=0
}
CLEANUP_HOOKS=(postfix_stop "${CLEANUP_HOOKS[@]}")

install_postfix() {
    command -v postfix >/dev/null 2>&1 || [ -x /usr/sbin/postfix ] && return 0
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    install_pkg_no_start postfix postfix
}

postfix_configure() {
    local base=$RUN/postfix
    PF_QUEUE=$base/queue
    rm -rf "$PF_CONF"
    mkdir -p "$PF_CONF" "$PF_QUEUE/etc" "$base/data" "$base/mail"
    chmod 755 "$base"
    : >"$base/data/maillog"
    chown postfix "$base/data" "$base/data/maillog"
    chown nobody:nogroup "$base/mail"
    SRV_NEW=$base/mail/$USER_NAME/new
    make_ns_files "$base/ns"
    cp "$base/ns/hosts" "$base/ns/resolv.conf" "$base/ns/nsswitch.conf" "$PF_QUEUE/etc/"
    cp /etc/services /etc/localtime "$PF_QUEUE/etc/" 2>/dev/null
    echo "$ADDR $USER_NAME/" >"$PF_CONF/vmailbox"
    cat >"$PF_CONF/main.cf" <<EOF
# Written by bench/tls-submit.sh for one run; regenerated every time.
compatibility_level = 3.6
config_directory = $PF_CONF
queue_directory = $PF_QUEUE
data_directory = $base/data
maillog_file = $base/data/maillog
maillog_file_prefixes = $base
myhostname = mail.bench.example
mydomain = bench.example
myorigin = \$myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination = localhost
virtual_mailbox_domains = bench.example
virtual_mailbox_base = $base/mail
virtual_mailbox_maps = texthash:$PF_CONF/vmailbox
virtual_uid_maps = static:$(id -u nobody)
virtual_gid_maps = static:$(id -g nobody)
virtual_mailbox_limit = 0
alias_maps =
alias_database =
local_recipient_maps =
biff = no
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtp_host_lookup = native
# TLS: poshta init's ECDSA P-256 key and certificate; no session cache (the client does
# not resume sessions), no TLS logging beyond the default.
smtpd_tls_chain_files = $KEY, $CERT
smtpd_tls_security_level = may
smtpd_tls_session_cache_database =
smtpd_tls_loglevel = 0
# SASL through Dovecot's auth service (the benchmark's own instance, passwd-file).
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_sasl_auth_enable = no
smtpd_sasl_security_options = noanonymous
smtpd_tls_auth_only = yes
EOF
    # Debian's master.cf services (tlsmgr included), with the two submission services of
    # Debian's commented examples on loopback ports, chrooted as in Debian's default.
    cat >"$PF_CONF/master.cf" <<EOF
127.0.0.1:${SRV_PORT[465]} inet n - y - - smtpd
  -o syslog_name=postfix/submissions
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
127.0.0.1:${SRV_PORT[587]} inet n - y - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
pickup    unix  n       -       y       60      1       pickup
cleanup   unix  n       -       y       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       y       1000?   1       tlsmgr
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

dovecot_auth_configure() { # Dovecot as Postfix's SASL server: auth service only
    local d=$RUN/dovecot-auth
    mkdir -p "$d/run" "$d/state"
    if [ "$PF_SCHEME" = argon2id ]; then
        echo "$USER_NAME:{ARGON2ID}$HASH" >"$d/passwd" # poshta's own hash string
    else
        echo "$USER_NAME:{PLAIN}$PASSWORD" >"$d/passwd"
    fi
    chown root:dovecot "$d/passwd"
    chmod 640 "$d/passwd"
    {
        dovecot_common_conf "$d" "poshta-bench-auth-$$"
        cat <<EOF
protocols = none
passdb {
  driver = passwd-file
  args = $d/passwd
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}
# Postfix's smtpd (chrooted in the queue directory) connects to private/auth.
service auth {
  unix_listener $PF_QUEUE/private/auth {
    mode = 0660
    user = postfix
    group = postfix
  }
}
EOF
    } >"$d/dovecot.conf"
}

bench_postfix() {
    SRV=postfix SRV_MULTI=1
    if ! install_postfix; then
        tool emit "$RESULTS" kind=skip server=postfix reason="apt-get install postfix failed"
        return
    fi
    if ! ensure_dovecot core; then
        tool emit "$RESULTS" kind=skip server=postfix reason="apt-get install dovecot-core failed (SASL)"
        return
    fi
    if ! unshare -m --propagation private true 2>/dev/null; then
        tool emit "$RESULTS" kind=skip server=postfix reason="unshare -m not permitted: cannot isolate DNS"
        return
    fi
    tool emit "$RESULTS" kind=meta postfix_version="$(postconf -d mail_version 2>/dev/null | sed 's/.*= //')" \
        dovecot_version="$(dovecot --version 2>/dev/null)"
    SRV_PORT[465]=$(tool freeport)
    SRV_PORT[587]=$(tool freeport)
    postfix_configure
    local ns=$RUN/postfix/ns
    # `postfix check` also makes the queue directories (private/ for Dovecot's socket).
    if ! timeout 60 bash "$SELF" --in-dns-namespace "$ns" postfix -c "$PF_CONF" check >"$RUN/postfix-check.log" 2>&1; then
        tool emit "$RESULTS" kind=skip server=postfix reason="postfix check failed: $(tail -c 300 "$RUN/postfix-check.log" "$RUN/postfix/data/maillog" | tr '\n' ' ')"
        return
    fi
    dovecot_auth_configure
    local d=$RUN/dovecot-auth
    if ! doveconf -c "$d/dovecot.conf" -n >"$d/doveconf.out" 2>&1; then
        tool emit "$RESULTS" kind=skip server=postfix reason="doveconf: $(head -c 300 "$d/doveconf.out" | tr '\n' ' ')"
        return
    fi
    # One cgroup for Postfix and its Dovecot auth service: CPU and PSS are the pair's.
    cg_make postfix
    SRV_CG=$CG
    dovecot_start "$d/dovecot.conf" "$ns" "$SRV_CG" "$d/stderr.log"
    SRV_AUTH_PID=$DOVECOT_PID
    local i
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        [ -S "$PF_QUEUE/private/auth" ] && break
        kill -0 "$SRV_AUTH_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ ! -S "$PF_QUEUE/private/auth" ]; then
        tool emit "$RESULTS" kind=skip server=postfix reason="Dovecot auth did not start: $(tail -c 300 "$d/stderr.log" "$d/dovecot.log" 2>/dev/null | tr '\n' ' ')"
        dovecot_stop_all
        return
    fi
    PF_STARTED=1
    (in_cg "$SRV_CG" bash "$SELF" --in-dns-namespace "$ns" postfix -c "$PF_CONF" start) >"$RUN/postfix-start.log" 2>&1
    local master=""
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        [ -s "$PF_QUEUE/pid/master.pid" ] && master=$(tr -d ' \n' <"$PF_QUEUE/pid/master.pid") &&
            kill -0 "$master" 2>/dev/null && break
        master=""
        sleep 0.1
    done
    if [ -z "$master" ] || ! tool wait-port "${SRV_PORT[587]}" "$START_TIMEOUT" "$master"; then
        tool emit "$RESULTS" kind=skip server=postfix reason="did not start: $(tail -c 300 "$RUN/postfix/data/maillog" 2>/dev/null | tr '\n' ' ')"
        postfix_stop
        dovecot_stop_all
        return
    fi
    SRV_PID=$master
    if ! cmp -s "/proc/$master/root/etc/resolv.conf" "$ns/resolv.conf" ||
        ! cmp -s "/proc/$SRV_AUTH_PID/root/etc/resolv.conf" "$ns/resolv.conf"; then
        tool emit "$RESULTS" kind=skip server=postfix reason="Postfix or Dovecot does not see the loopback resolv.conf"
        postfix_stop
        dovecot_stop_all
        return
    fi
    run_phases
    local errs
    errs=$(grep -hE 'warning|fatal|error|panic' "$RUN/postfix/data/maillog" "$d/dovecot.log" 2>/dev/null | head -3)
    [ -z "$errs" ] || warn "postfix/dovecot logged: $(echo "$errs" | tr '\n' ' ' | head -c 400)"
    postfix_stop
    dovecot_stop_all
    SRV_AUTH_PID=""
    local left=0 sys
    [ -n "$SRV_CG" ] && left=$(grep -c . "$SRV_CG/cgroup.procs" 2>/dev/null)
    sys=$(system_dovecot_pids | tr '\n' ' ')
    tool emit "$RESULTS" kind=meta postfix_procs_left_after_stop="${left:-0}" system_dovecot_pids="$sys"
    [ "${left:-0}" = 0 ] || warn "$left Postfix/Dovecot processes left in the cgroup after stop (killed at exit)"
    [ -z "$sys" ] || warn "a Dovecot not started by this script is running: pids $sys"
}

# ------------------------------------------------------------------ poshta

bench_poshta() {
    SRV=poshta SRV_MULTI=0 SRV_AUTH_PID=""
    SRV_PORT[465]=$P_SUBS
    SRV_PORT[587]=$P_SUB
    SRV_NEW=$PD/mail/$USER_NAME/new
    cg_make poshta
    SRV_CG=$CG
    # Waiting on the STARTTLS port: a probe connection to the TLS port would be logged as
    # a failed handshake.
    if ! poshta_start "$PD" "$SRV_CG" "$P_SUB"; then
        tool emit "$RESULTS" kind=skip server=poshta reason="serve did not start: $(tail -c 200 "$PD/serve.log" | tr '\n' ' ')"
        return
    fi
    SRV_PID=$POSHTA_PID
    run_phases
    local errs
    errs=$(grep -hE 'warning|fatal|error|panic' "$PD/serve.log" 2>/dev/null | head -3)
    [ -z "$errs" ] || warn "poshta logged: $(echo "$errs" | tr '\n' ' ' | head -c 400)"
    poshta_stop
}

argon2_measure
for s in $SERVERS; do
    case $s in
    postfix) bench_postfix ;;
    poshta) bench_poshta ;;
    *) log "unknown server '$s' (postfix, poshta)" ;;
    esac
done

tool emit "$RESULTS" kind=meta warnings="$WARNINGS"
mb report-tls "$RESULTS" "$OUTDIR/tls-submit-$stamp.json"
