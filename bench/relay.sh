#!/usr/bin/env bash
# Relay benchmark (issue 6): N messages of SIZE bytes at CONCURRENCY, injected with Postfix's
# smtp-source into a relay that sends them on to Postfix's smtp-sink, for Postfix and poshta
# (each configured with relayhost = [127.0.0.1]:SINK) in the same run, REPS rounds each,
# alternating. A round is timed from the first injected message until the relay's queue is
# empty (every message accepted by the sink): delivered msgs/s. CPU per message is the
# relay's CPU (its cgroup: every process Postfix forks) over the round; memory is poshta's
# peak RSS (VmHWM) and Postfix's peak PSS summed over its processes (sampled).
#
# usage: bench/relay.sh            (as root: Postfix runs as its own user, in a cgroup)
# Environment: N [5000] SIZE [1024] CONCURRENCY [10] REPS [3] POSHTA [built binary]
#              PHASE_TIMEOUT [600] KEEP [0]
# Prints a table with the medians and writes bench/out/relay.json.
#
# Everything listens on 127.0.0.1. Postfix runs in a mount namespace whose resolv.conf,
# hosts and nsswitch.conf are loopback-only (lib.sh); poshta has DNS disabled.
set -uo pipefail
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
lib_dns_namespace_hook "$@"

N=${N:-5000}
SIZE=${SIZE:-1024}
CONCURRENCY=${CONCURRENCY:-10}
REPS=${REPS:-3}
PHASE_TIMEOUT=${PHASE_TIMEOUT:-600}
for v in N SIZE CONCURRENCY REPS PHASE_TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[ "$(id -u)" = 0 ] || die "run as root (Postfix needs its users and a chroot)"

mkdir -p "$BENCH_TMPDIR" "$OUTDIR"
RUN=$(mktemp -d "$BENCH_TMPDIR/relay.XXXXXX")
# Started as root, poshta runs as mail_owner: it must reach its files in the run directory.
chmod 755 "$RUN"
chmod 755 "$RUN"
RESULTS=$RUN/results.jsonl
: >"$RESULTS"

# ------------------------------------------------------------------ tools

SOURCE="" SINK=""
for d in "$ROOT/tests/.cache/postfix/usr/sbin" /usr/sbin; do
    [ -x "$d/smtp-source" ] && [ -x "$d/smtp-sink" ] && { SOURCE=$d/smtp-source SINK=$d/smtp-sink; break; }
done
[ -n "$SOURCE" ] || die "smtp-source/smtp-sink not found (tests/run.sh unpacks Debian's postfix into tests/.cache/postfix)"
command -v postfix >/dev/null 2>&1 || die "Postfix is not installed (bench/smtp-deliver.sh installs it without starting it)"
build_poshta || die "poshta build failed"

SINK_PORT=$(tool freeport)
"$SINK" -u nobody -c "127.0.0.1:$SINK_PORT" 1000 >"$RUN/sink.out" 2>&1 &
SINK_PID=$!
BG_PIDS+=("$SINK_PID")
tool wait-port "$SINK_PORT" 10 "$SINK_PID" || die "smtp-sink did not start"

# ------------------------------------------------------------------ Postfix

PF_CONF=$RUN/postfix-conf
PF_QUEUE=$RUN/postfix/queue
PF_PORT=$(tool freeport)
PF_STARTED=0
postfix_configure() {
    local base=$RUN/postfix
    rm -rf "$base" "$PF_CONF"
    mkdir -p "$PF_CONF" "$PF_QUEUE/etc" "$base/data"
    chmod 755 "$base"
    : >"$base/data/maillog"
    chown postfix "$base/data" "$base/data/maillog"
    make_ns_files "$base/ns"
    cp "$base/ns/hosts" "$base/ns/resolv.conf" "$base/ns/nsswitch.conf" "$PF_QUEUE/etc/"
    cp /etc/services /etc/localtime "$PF_QUEUE/etc/" 2>/dev/null
    cat >"$PF_CONF/main.cf" <<EOF
# Written by bench/relay.sh for one round.
compatibility_level = 3.6
config_directory = $PF_CONF
queue_directory = $PF_QUEUE
data_directory = $base/data
maillog_file = $base/data/maillog
maillog_file_prefixes = $base
myhostname = relay.bench.example
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$SINK_PORT
alias_maps =
alias_database =
local_recipient_maps =
biff = no
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtp_host_lookup = native
# Reuse connections to the sink, as poshta does within a batch.
smtp_connection_cache_on_demand = yes
EOF
    cat >"$PF_CONF/master.cf" <<EOF
127.0.0.1:$PF_PORT inet n - y - - smtpd
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
anvil     unix  -       -       y       -       1       anvil
scache    unix  -       -       y       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
}
postfix_stop() {
    [ "$PF_STARTED" = 1 ] || return 0
    local master=""
    [ -f "$PF_QUEUE/pid/master.pid" ] && master=$(tr -d ' \n' <"$PF_QUEUE/pid/master.pid")
    timeout 30 postfix -c "$PF_CONF" stop >/dev/null 2>&1
    [ -n "$master" ] && kill_pid "$master"
    [ -n "${PF_CG:-}" ] && cg_kill_all "$PF_CG"
    PF_STARTED=0
}
CLEANUP_HOOKS+=(postfix_stop)

# ------------------------------------------------------------------ one round

# round NAME PORT CG MAINPID QUEUE_EMPTY_CMD...: inject, wait for the empty queue, emit.
round() {
    local name=$1 port=$2 cg=$3 pid=$4 cpu0 cpu1 t0 t1 i empty=0 mem hwm
    shift 4
    echo 5 >"/proc/$pid/clear_refs" 2>/dev/null
    sampler_start "$cg" "$pid" "$RUN/mem.json" $((PHASE_TIMEOUT + 60))
    cpu0=$(cpu_ns_of "$cg" "$pid")
    t0=$(date +%s.%N)
    run_waited "$RUN/source.out" timeout $((PHASE_TIMEOUT)) "$SOURCE" -c -s "$CONCURRENCY" -m "$N" -l "$SIZE" \
        -f sender@lan.bench.example -t rcpt@remote.bench.example "127.0.0.1:$port" ||
        log "$name: smtp-source exited with an error"
    # The queue empties when the sink has taken every message; bounded by PHASE_TIMEOUT.
    for ((i = 0; i < PHASE_TIMEOUT * 20; i++)); do
        if "$@" 2>/dev/null | grep -q "Mail queue is empty"; then
            empty=1
            break
        fi
        sleep 0.05
    done
    t1=$(date +%s.%N)
    cpu1=$(cpu_ns_of "$cg" "$pid")
    sampler_stop
    mem=$(cat "$RUN/mem.json" 2>/dev/null || echo '{}')
    hwm=$(hwm_of "$pid")
    local secs
    secs=$(awk "BEGIN{print $t1 - $t0}")
    tool emit "$RESULTS" kind=relay server="$name" n="$N" secs="$secs" cpu_ns=$((cpu1 - cpu0)) \
        peak_hwm_kib="${hwm:-0}" mem:="$mem" complete="$empty"
    log "$name: $N in $secs s ($(awk "BEGIN{printf \"%.0f\", $N/$secs}") msg/s), $(awk "BEGIN{printf \"%.3f\", ($cpu1-$cpu0)/1e6/$N}") ms CPU/msg, complete=$empty"
}

round_postfix() {
    postfix_configure
    cg_make "postfix-$1"
    PF_CG=$CG
    PF_STARTED=1
    (in_cg "$PF_CG" bash "$SELF" --in-dns-namespace "$RUN/postfix/ns" postfix -c "$PF_CONF" start) \
        >"$RUN/postfix-start.log" 2>&1
    local i master=""
    for ((i = 0; i < START_TIMEOUT * 10; i++)); do
        [ -s "$PF_QUEUE/pid/master.pid" ] && master=$(tr -d ' \n' <"$PF_QUEUE/pid/master.pid") &&
            kill -0 "$master" 2>/dev/null && break
        master=""
        sleep 0.1
    done
    [ -n "$master" ] && tool wait-port "$PF_PORT" "$START_TIMEOUT" "$master" ||
        die "Postfix did not start: $(tail -c 300 "$RUN/postfix/data/maillog")"
    cmp -s "/proc/$master/root/etc/resolv.conf" "$RUN/postfix/ns/resolv.conf" ||
        die "the Postfix master does not see the loopback resolv.conf"
    round postfix "$PF_PORT" "$PF_CG" "$master" postqueue -c "$PF_CONF" -p
    postfix_stop
}

round_poshta() {
    local d=$RUN/poshta port
    rm -rf "$d"
    mkdir -p "$d"
    port=$(tool freeport)
    cat >"$d/main.cf" <<EOF
# Written by bench/relay.sh for one round.
myhostname = relay.bench.example
mydestination =
mynetworks = 127.0.0.0/8
smtpd_listen = 127.0.0.1:$port
submission_listen =
submissions_listen =
pop3d_listen =
pop3s_listen =
queue_directory = $d/spool
virtual_mailbox_base = $d/mail
mailbox_users_file = $d/users
maillog_file = $d/maillog
relayhost = [127.0.0.1]:$SINK_PORT
disable_dns_lookups = yes
EOF
    cg_make "poshta-$1"
    poshta_start "$d" "$CG" "$port" || die "poshta did not start"
    round poshta "$port" "$CG" "$POSHTA_PID" "$POSHTA_BIN" queue -c "$d/main.cf"
    poshta_stop
}

log "relaying $N x $SIZE bytes at concurrency $CONCURRENCY, $REPS rounds each; CPU: $CPU_METHOD"
for ((r = 1; r <= REPS; r++)); do
    round_postfix "$r"
    round_poshta "$r"
done

"$PY" - "$RESULTS" "$OUTDIR/relay.json" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out = {}
for srv in ("postfix", "poshta"):
    rs = [r for r in rows if r.get("server") == srv]
    if not rs:
        continue
    rate = [r["n"] / r["secs"] for r in rs]
    cpu = [r["cpu_ns"] / 1e6 / r["n"] for r in rs]
    mem = [max(r["peak_hwm_kib"], 0) / 1024 if srv == "poshta" else r["mem"].get("pss_kib", 0) / 1024 for r in rs]
    out[srv] = {"rounds": len(rs), "complete": all(r["complete"] == 1 for r in rs),
                "msgs_per_s": rate, "msgs_per_s_median": statistics.median(rate),
                "cpu_ms_per_msg": cpu, "cpu_ms_per_msg_median": statistics.median(cpu),
                "peak_mib": mem, "peak_mib_median": statistics.median(mem),
                "memory": "peak RSS (VmHWM)" if srv == "poshta" else "peak PSS, all processes"}
if "postfix" in out and "poshta" in out:
    out["ratio_msgs_per_s"] = out["poshta"]["msgs_per_s_median"] / out["postfix"]["msgs_per_s_median"]
    out["ratio_cpu_per_msg"] = out["poshta"]["cpu_ms_per_msg_median"] / out["postfix"]["cpu_ms_per_msg_median"]
json.dump(out, open(sys.argv[2], "w"), indent=1)
print(f"{'':10} {'msg/s (median)':>15} {'CPU ms/msg':>11} {'peak MiB':>9}  rounds")
for srv in ("postfix", "poshta"):
    if srv in out:
        o = out[srv]
        print(f"{srv:10} {o['msgs_per_s_median']:15.0f} {o['cpu_ms_per_msg_median']:11.3f} {o['peak_mib_median']:9.1f}  "
              + " ".join(f"{x:.0f}" for x in o["msgs_per_s"]) + ("" if o["complete"] else "  (INCOMPLETE)"))
if "ratio_msgs_per_s" in out:
    print(f"poshta / Postfix: {out['ratio_msgs_per_s']:.2f}x msg/s (target >= 3x), {out['ratio_cpu_per_msg']:.2f}x CPU per message")
EOF
