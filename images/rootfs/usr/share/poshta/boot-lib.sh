# shellcheck shell=sh
# Sourced by the image's boot scripts: log to the console and to /var/log/boot.log (on the
# data partition once it is mounted; /run/boot.log before that), bounded to 64 KiB.
log() {
    echo "${0##*/}: $*" >/dev/console 2>/dev/null || echo "${0##*/}: $*" >&2
    f=/run/boot.log
    [ -d /data/log ] && f=/data/log/boot.log
    if [ -f "$f" ] && [ "$(wc -c <"$f")" -gt 65536 ]; then
        tail -c 32768 "$f" >"$f.tmp" && mv "$f.tmp" "$f"
    fi
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) [$(cut -d' ' -f1 /proc/uptime)] ${0##*/}: $*" >>"$f" 2>/dev/null
}
