#!/usr/bin/env python3
"""Small measuring helpers for bench/smtp-deliver.sh (stdlib only).

Every loop here is bounded in time. A "process set" is named either by a cgroup
directory (all processes in it: the server and every child it forks, including
children that come and go, as Postfix's do) or by a root pid (that process and
its live descendants).

Subcommands (each prints one line; JSON where it says so):
  freeport                       a free TCP port on 127.0.0.1
  wait-port PORT SECS [PID]      wait until 127.0.0.1:PORT accepts; exit 2 if PID died, 1 on timeout
  wait-files DIR N SECS          wait until DIR holds >= N entries; prints "EPOCH COUNT"; exit 1 on timeout
  dir-sizes DIR                  JSON: count, smallest and largest file size in DIR
  cpu-ns (--cgroup D | --tree PID)   CPU time (user+system) of the set, in ns
  pids (--cgroup D | --tree PID)     the pids of the set, one a line
  mem-now (--cgroup D | --tree PID) [--main PID]   JSON memory snapshot
  mem-sample (--cgroup D | --tree PID) [--main PID] --out F --interval S --timeout S
                                 sample until SIGTERM/timeout; JSON peaks to F
  fsync-rate DIR SECS            JSON: append 100 bytes + fdatasync in a loop
  emit FILE key=value... [key:=JSON...]   append one JSON object line to FILE
                                 (values that parse as numbers become numbers)
  report RESULTS.jsonl OUT.json  print the table and write the JSON document
"""

import json
import os
import signal
import socket
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


# ---------------------------------------------------------------- process sets


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _stat_fields(pid):
    """Fields of /proc/PID/stat after the comm field (which may contain spaces)."""
    s = _read(f"/proc/{pid}/stat")
    if s is None:
        return None
    return s[s.rindex(")") + 2 :].split()


def _descendants(root):
    """root and its live descendants, by walking ppid links once."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        f = _stat_fields(name)
        if f is None:
            continue
        children.setdefault(int(f[1]), []).append(int(name))
    out, todo = [], [root]
    while todo and len(out) < 100000:
        p = todo.pop()
        if os.path.exists(f"/proc/{p}"):
            out.append(p)
            todo.extend(children.get(p, []))
    return out


def _pids(args):
    if args.get("cgroup"):
        s = _read(os.path.join(args["cgroup"], "cgroup.procs")) or ""
        return [int(x) for x in s.split()]
    return _descendants(int(args["tree"]))


def cpu_ns(args):
    if args.get("cgroup"):
        d = args["cgroup"]
        v1 = _read(os.path.join(d, "cpuacct.usage"))
        if v1 is not None:
            return int(v1)
        for line in (_read(os.path.join(d, "cpu.stat")) or "").splitlines():
            k, _, v = line.partition(" ")
            if k == "usage_usec":
                return int(v) * 1000
        raise SystemExit(f"no CPU accounting in {d}")
    # Tree mode: live processes' own time, plus the root's reaped children
    # (cutime/cstime). Postfix's master reaps its children, so processes that
    # exited during the run are counted through it; a child's time is in its
    # own stat while alive and in the parent's cutime once reaped, never both.
    root = int(args["tree"])
    ticks = 0
    for p in _descendants(root):
        f = _stat_fields(p)
        if f is None:
            continue
        # utime, stime, cutime, cstime are fields 14-17 (index 11-14 here).
        ticks += int(f[11]) + int(f[12])
        if p == root:
            ticks += int(f[13]) + int(f[14])
    return ticks * 1_000_000_000 // CLK_TCK


def _status_kib(pid, key):
    for line in (_read(f"/proc/{pid}/status") or "").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def _pss_kib(pid):
    for line in (_read(f"/proc/{pid}/smaps_rollup") or "").splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _rss_kib(pid):
    s = _read(f"/proc/{pid}/statm")
    return int(s.split()[1]) * PAGE_KIB if s else 0


def mem_now(args):
    pids = _pids(args)
    snap = {
        "procs": len(pids),
        "pss_kib": sum(_pss_kib(p) for p in pids),
        "rss_sum_kib": sum(_rss_kib(p) for p in pids),
    }
    if args.get("main"):
        m = int(args["main"])
        snap["main_rss_kib"] = _status_kib(m, "VmRSS")
        snap["main_hwm_kib"] = _status_kib(m, "VmHWM")
    return snap


def mem_sample(args):
    stop = {"flag": False}

    def on_term(_sig, _frm):
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    interval = float(args.get("interval", "0.25"))
    deadline = time.monotonic() + float(args.get("timeout", "600"))
    peak = {"pss_kib": 0, "rss_sum_kib": 0, "procs": 0, "samples": 0}
    seen = {"pss_kib": [], "rss_sum_kib": []}
    # --after FILE: samples taken before FILE exists (a POP3 client's login: the password
    # check's argon2 block, 19 MiB for ~20 ms, in whichever process checks it) are kept
    # apart as the login's peak, for every server alike; the peak is the transfer's.
    after = args.get("after")
    login = {"login_pss_kib": 0, "login_rss_sum_kib": 0, "login_samples": 0}
    while not stop["flag"] and time.monotonic() < deadline:
        s = mem_now(args)
        if after and not os.path.exists(after):
            login["login_pss_kib"] = max(login["login_pss_kib"], s["pss_kib"])
            login["login_rss_sum_kib"] = max(login["login_rss_sum_kib"], s["rss_sum_kib"])
            login["login_samples"] += 1
            time.sleep(min(interval, 0.005))  # the login is short: sample it densely
            continue
        for k in ("pss_kib", "rss_sum_kib", "procs"):
            peak[k] = max(peak[k], s[k])
        for k in seen:
            seen[k].append(s[k])
        peak["samples"] += 1
        time.sleep(interval)
    if after:
        peak.update(login)
    # The median too: a login's argon2 block (19 MiB for ~20 ms) lands in a sample or not
    # by chance, for any server; the median is the phase's steady state.
    for k, v in seen.items():
        if v:
            v.sort()
            peak[k.replace("_kib", "_median_kib")] = v[len(v) // 2]
    with open(args["out"], "w") as f:
        json.dump(peak, f)


# ---------------------------------------------------------------- waiting


def wait_port(port, secs, pid=None):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        if pid is not None and not os.path.exists(f"/proc/{pid}"):
            return 2
        if pid is not None:
            f = _stat_fields(pid)
            if f is None or f[0] == "Z":
                return 2
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return 0
        except OSError:
            time.sleep(0.05)
    return 1


def _count(d):
    try:
        with os.scandir(d) as it:
            return sum(1 for _ in it)
    except OSError:
        return 0


def wait_files(d, n, secs):
    # 10 ms polls: scandir of a few thousand names costs well under 1 ms, and
    # the error this adds to a multi-second run is at most one interval.
    deadline = time.monotonic() + secs
    c = _count(d)
    while c < n and time.monotonic() < deadline:
        time.sleep(0.01)
        c = _count(d)
    print(f"{time.time():.6f} {c}")
    return 0 if c >= n else 1


def dir_sizes(d):
    sizes = []
    try:
        with os.scandir(d) as it:
            for e in it:
                if len(sizes) >= 1_000_000:
                    break
                try:
                    sizes.append(e.stat(follow_symlinks=False).st_size)
                except OSError:
                    pass
    except OSError:
        pass
    return {"count": len(sizes), "min_bytes": min(sizes, default=None), "max_bytes": max(sizes, default=None)}


# ---------------------------------------------------------------- fsync


def fsync_rate(d, secs):
    path = os.path.join(d, f".fsync-probe-{os.getpid()}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    rec = b"x" * 99 + b"\n"
    n = 0
    try:
        # Untimed warm-up: the first fdatasync also writes the new inode.
        os.write(fd, rec)
        os.fdatasync(fd)
        t0 = time.monotonic()
        end = t0 + secs
        while True:
            os.write(fd, rec)
            os.fdatasync(fd)
            n += 1
            now = time.monotonic()
            if now >= end:
                break
        elapsed = now - t0
    finally:
        os.close(fd)
        os.unlink(path)
    st = os.statvfs(d)
    return {
        "fsync_per_s": round(n / elapsed, 1),
        "ops": n,
        "secs": round(elapsed, 3),
        "dir": d,
        "fs_block_size": st.f_bsize,
    }


# ---------------------------------------------------------------- report


def _mib(kib):
    return "-" if kib is None else f"{kib / 1024:.1f}"


def _derive(r):
    """Rates and per-message figures from the raw times and counters bash recorded."""
    n = r.get("n") or 0
    t0 = r.get("t_start")
    if t0 is not None:
        r["secs_accept"] = round(r["t_accepted"] - t0, 4)
        r["secs_total"] = round(r["t_delivered"] - t0, 4)
    ok = r.get("status") == "ok"
    r["msgs_per_s"] = round(n / r["secs_total"], 1) if ok and r.get("secs_total") else None
    r["accept_msgs_per_s"] = (
        round(r.get("sent", 0) / r["secs_accept"], 1) if ok and r.get("secs_accept") else None
    )
    per = r.get("delivered") or n  # a run cut short: CPU per message it did deliver
    r["cpu_ms_per_msg"] = round(r["cpu_ns"] / 1e6 / per, 4) if per and r.get("cpu_ns") is not None else None
    mem = r.pop("mem", None) or {}
    r["peak_pss_kib"] = mem.get("pss_kib")
    r["peak_rss_sum_kib"] = mem.get("rss_sum_kib")
    r["peak_procs"] = mem.get("procs")
    r["mem_samples"] = mem.get("samples")
    if r.get("peak_hwm_kib") == "":
        r["peak_hwm_kib"] = None


def _peak(r, multi):
    """The peak memory figure compared across runs: PSS sum for multi-process servers,
    the main process's VmHWM otherwise."""
    return r.get("peak_pss_kib") if multi else r.get("peak_hwm_kib")


def report(results_path, out_path):
    meta, rows, large = {}, [], []
    with open(results_path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            kind = r.pop("kind")
            if kind == "meta":
                meta.update(r)
            elif kind == "phase":
                _derive(r)
                rows.append(r)
            elif kind == "large":
                _derive(r)
                large.append(r)
            elif kind == "skip":
                meta.setdefault("skipped", []).append(r)
            elif kind == "server":
                meta.setdefault("servers", {})[r["server"]] = r
    servers = meta.get("servers", {})
    sink = {r["concurrency"]: r.get("msgs_per_s") for r in rows if r["server"] == "smtp-sink"}
    for r in rows:
        base = sink.get(r["concurrency"])
        mps = r.get("msgs_per_s")
        r["ratio_to_sink"] = round(mps / base, 3) if mps and base else None
    for lg in large:
        multi = bool(servers.get(lg["server"], {}).get("multi_process"))
        refs = [_peak(r, multi) for r in rows if r["server"] == lg["server"]]
        refs = [x for x in refs if x]
        lg["ref_peak_kib"] = max(refs) if refs else None
        lg["peak_kib"] = _peak(lg, multi)
        lg["peak_figure"] = "PSS sum" if multi else "VmHWM"
        files = lg.get("files") or {}
        if lg.get("status") != "ok":
            lg["verdict"] = "FAIL (not delivered)"
        # Maildir files have LF line ends: the stored message is smaller than the CR LF
        # stream by one byte per line (smtp-source writes ~80-byte lines), so allow 5%.
        elif files.get("max_bytes") is not None and files["max_bytes"] < 0.95 * lg.get("size_bytes", 0):
            lg["verdict"] = f"FAIL (delivered file has {files['max_bytes']} bytes)"
        elif lg["peak_kib"] is None or lg["ref_peak_kib"] is None:
            lg["verdict"] = "unknown (no peak figure)"
        elif lg["peak_kib"] <= lg["ref_peak_kib"] + 1024:
            # Within 1 MiB of the 1 KiB runs' peak (allocator noise; the figures are printed).
            lg["verdict"] = "PASS"
        else:
            lg["verdict"] = "FAIL (memory grows with message size)"

    hdr = ("server", "conc", "msgs/s", "x sink", "CPU ms/msg", "idle MiB", "peak MiB", "memory figure", "status")
    table = []
    for r in rows:
        s = servers.get(r["server"], {})
        multi = bool(s.get("multi_process"))
        if multi:
            idle = s.get("idle", {}).get("pss_kib")
            memk = f"PSS sum of {r.get('peak_procs', '?')} procs, sampled"
        else:
            idle = s.get("idle", {}).get("main_rss_kib")
            memk = "RSS; peak = VmHWM"
            if (r.get("peak_procs") or 0) > 1:
                memk += f" of main pid ({r['peak_procs']} procs: PSS sum {_mib(r.get('peak_pss_kib'))})"
        table.append(
            (
                r["server"],
                str(r["concurrency"]),
                "-" if r.get("msgs_per_s") is None else f"{r['msgs_per_s']:.0f}",
                "-" if r.get("ratio_to_sink") is None else f"{r['ratio_to_sink']:.2f}",
                "-" if r.get("cpu_ms_per_msg") is None else f"{r['cpu_ms_per_msg']:.3f}",
                _mib(idle),
                _mib(_peak(r, multi)),
                memk,
                r.get("status", "?"),
            )
        )
    widths = [max([len(h)] + [len(t[i]) for t in table]) for i, h in enumerate(hdr)]
    print()
    print(
        f"SMTP receive-and-deliver: {meta.get('n')} messages of {meta.get('size_bytes')} B per run, "
        "one message per connection, timed until all are in Maildir new/ "
        f"(smtp-sink: until sent); CPU via {meta.get('cpu_method')}"
    )
    print("  ".join(h.ljust(w) for h, w in zip(hdr, widths)))
    print("  ".join("-" * w for w in widths))
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths)).rstrip())
    fs = meta.get("fsync", {})
    print()
    print(
        f"disk: {fs.get('fsync_per_s', '?')} appends+fdatasync per second over {fs.get('secs', '?')} s "
        f"({fs.get('fs_type', '?')} on {fs.get('fs_source', '?')})"
    )
    for lg in large:
        print(
            f"large message ({lg['server']}): {lg.get('size_bytes', 0) / 1048576:.0f} MiB, {lg.get('status')}, "
            f"peak {lg['peak_figure']} {_mib(lg.get('peak_kib'))} MiB vs {_mib(lg.get('ref_peak_kib'))} MiB "
            f"in the {meta.get('size_bytes')} B runs: {lg['verdict']}"
        )
    for s in meta.get("skipped", []):
        print(f"skipped {s.get('server')}: {s.get('reason')}")
    if meta.get("loadavg_start"):
        print(f"load average at start: {meta['loadavg_start']} on {meta.get('cpus')} CPUs")
    doc = {"meta": meta, "results": rows, "large_message": large}
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"JSON: {out_path}")


# ---------------------------------------------------------------- main


def _scalar(v):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def emit(path, pairs):
    obj = {}
    for p in pairs:
        if ":=" in p:
            k, _, v = p.partition(":=")
            obj[k] = json.loads(v) if v else None
        else:
            k, _, v = p.partition("=")
            obj[k] = _scalar(v)
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")


def _opts(argv):
    """--key value pairs into a dict (keys without dashes)."""
    out = {}
    it = iter(argv)
    for a in it:
        if a.startswith("--"):
            out[a[2:]] = next(it, None)
        else:
            raise SystemExit(f"unexpected argument {a}")
    return out


def main(argv):
    if not argv:
        raise SystemExit(__doc__)
    cmd, rest = argv[0], argv[1:]
    if cmd == "freeport":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            print(s.getsockname()[1])
        return 0
    if cmd == "wait-port":
        pid = int(rest[2]) if len(rest) > 2 else None
        return wait_port(int(rest[0]), float(rest[1]), pid)
    if cmd == "wait-files":
        return wait_files(rest[0], int(rest[1]), float(rest[2]))
    if cmd == "dir-sizes":
        print(json.dumps(dir_sizes(rest[0])))
        return 0
    if cmd == "cpu-ns":
        print(cpu_ns(_opts(rest)))
        return 0
    if cmd == "pids":
        print("\n".join(str(p) for p in _pids(_opts(rest))))
        return 0
    if cmd == "mem-now":
        print(json.dumps(mem_now(_opts(rest))))
        return 0
    if cmd == "mem-sample":
        mem_sample(_opts(rest))
        return 0
    if cmd == "fsync-rate":
        print(json.dumps(fsync_rate(rest[0], float(rest[1]))))
        return 0
    if cmd == "emit":
        emit(rest[0], rest[1:])
        return 0
    if cmd == "report":
        report(rest[0], rest[1])
        return 0
    raise SystemExit(f"unknown subcommand {cmd}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
