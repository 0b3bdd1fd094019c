#!/usr/bin/env python3
"""Clients and reports for bench/pop3-fetch.sh and bench/tls-submit.sh (stdlib only,
except the optional `argon2` subcommand, which needs argon2-cffi).

The same client code talks to poshta and to the peer server (Dovecot, Postfix), so
differences in the figures are the servers'. Every socket has a timeout and every
loop is bounded by a count and a deadline. Results are one JSON object on stdout.

Subcommands:
  fill DIR COUNT SIZE            write COUNT messages of SIZE bytes (LF line ends) into
                                 DIR/new with Dovecot-style names (...,S=size,W=crlf_size);
                                 makes DIR/{cur,new,tmp}
  count-maildir DIR              JSON: files in DIR/new and DIR/cur
  pop3-fetch --port P --user U --password W [--tls 1 --cafile F] --expect N --timeout S [--hwm-pid PID]
             [--pipeline W]      one session: login, LIST, UIDL, RETR all, DELE all, QUIT (poplib;
                                 with W > 1, RETR and DELE go W at a time on the raw socket);
                                 with --hwm-pid, PID's VmHWM is read and reset after the login
  pop3-mpop --port P --user U --password W [--tls 1 --cafile F] --expect N --timeout S
             --dir D [--login-mark F]
                                 one session of mpop (Debian's mpop: a real POP3 client that
                                 pipelines, RFC 2449): every message into the mbox D/mbox and
                                 deleted; the login mark is written when the first message lands
  pop3-list --port P --user U --password W --expect N --sessions K --timeout S
                                 K sessions: login, LIST timed from the command to the final
                                 ".", QUIT without deleting (raw socket)
  submit --port P --mode ssl|starttls --user U --password W --cafile F --n N
         --concurrency C --size B --from A --to A --timeout S [--auth-only 1]
                                 N submissions, one connection each: TLS, EHLO, AUTH PLAIN,
                                 MAIL/RCPT/DATA (not with --auth-only), QUIT
  hold --port P --mode ... --sessions C --timeout S (--cgroup D | --tree PID) [--main PID]
                                 open C sessions up to AUTH, snapshot the server's memory
                                 while all are open, then send one message each and QUIT
  argon2 --hash PHC --password W --n N
                                 argon2-cffi verify time and the process's peak RSS growth
  report-pop3 RESULTS.jsonl OUT.json / report-tls RESULTS.jsonl OUT.json
"""

import base64
import hashlib
import json
import os
import poplib
import resource
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchtool  # noqa: E402  (same directory: mem_now, emit)

HOST = "127.0.0.1"

_create_connection = socket.create_connection


def _nodelay_connection(*args, **kwargs):
    # Every client socket gets TCP_NODELAY: the clients write each command whole, and
    # Nagle's wait for an ACK (delayed by the server up to 40 ms) must not be counted as
    # server time. (A server's own Nagle delays still show: they are the server's.)
    s = _create_connection(*args, **kwargs)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


socket.create_connection = _nodelay_connection  # smtplib and poplib call it at connect time

# ---------------------------------------------------------------- Maildir


def _message(i, size):
    """Message i: LF line ends, exactly `size` bytes (at least the headers' length)."""
    head = (
        f"Return-Path: <sender@client.bench.example>\n"
        f"Delivered-To: alice@bench.example\n"
        f"From: Sender <sender@client.bench.example>\n"
        f"To: Alice <alice@bench.example>\n"
        f"Subject: bench message {i}\n"
        f"Date: Tue, 14 Nov 2023 22:13:20 +0000\n"
        f"Message-ID: <bench-{i}@client.bench.example>\n"
        f"\n"
    ).encode()
    body = bytearray()
    line = 0
    room = size - len(head)
    while len(body) < room:
        text = f"{i:06d}-{line:04d} " + "abcdefghijklmnopqrstuvwxyz0123456789" * 2
        piece = (text[:75] + "\n").encode()
        if len(body) + len(piece) > room:
            rest = room - len(body)
            piece = b"x" * (rest - 1) + b"\n" if rest > 1 else b"\n"
        body += piece
        line += 1
    return head + bytes(body)


def fill(d, count, size):
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    new = os.path.join(d, "new")
    total = crlf_total = 0
    for i in range(count):
        data = _message(i, size)
        crlf = len(data) + data.count(b"\n")
        # Dovecot's own name form: time.M<usec>P<pid>Q<n>.host,S=<size>,W=<crlf size>
        # (S: bytes on disk; W: RFC 822 size, CR LF line ends). Times increase with i,
        # so both servers number the messages in the same order.
        name = f"{1700000000 + i}.M{i % 1000000}P4242Q{i}.bench.example,S={len(data)},W={crlf}"
        with open(os.path.join(new, name), "wb") as f:
            f.write(data)
        total += len(data)
        crlf_total += crlf
    return {"count": count, "bytes": total, "crlf_bytes": crlf_total}


def count_maildir(d):
    out = {}
    for sub in ("new", "cur"):
        try:
            with os.scandir(os.path.join(d, sub)) as it:
                out[sub] = sum(1 for e in it if e.is_file(follow_symlinks=False))
        except OSError:
            out[sub] = None
    return out


# ---------------------------------------------------------------- TLS


def _client_ctx(cafile):
    # The certificate is poshta init's self-signed one: trust exactly it. Its names are
    # the mail host names, not 127.0.0.1, so the chain is checked but not the host name.
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# ---------------------------------------------------------------- POP3


def pop3_fetch(o):
    deadline = time.monotonic() + float(o["timeout"])
    expect = int(o["expect"])
    res = {"expect": expect, "retrieved": 0, "deleted": 0, "octets": 0, "status": "ok", "error": ""}
    t = {}
    t["start"] = time.perf_counter()
    cpu0 = time.process_time()
    try:
        if o.get("tls") == "1":
            p = poplib.POP3_SSL(HOST, int(o["port"]), timeout=30, context=_client_ctx(o["cafile"]))
            res["tls"] = [p.sock.version(), p.sock.cipher()[0]]
        else:
            p = poplib.POP3(HOST, int(o["port"]), timeout=30)
        p.user(o["user"])
        p.pass_(o["password"])
        t["login"] = time.perf_counter()
        if o.get("login-mark"):
            # The memory sampler counts what follows as the transfer (benchtool mem-sample --after).
            open(o["login-mark"], "w").close()
        if o.get("hwm-pid"):
            # The login's peak (poshta: one argon2id verify, m=19456 KiB) is kept apart
            # from the transfer's: read VmHWM now, then reset it ("5" to clear_refs).
            res["login_hwm_kib"] = benchtool._status_kib(o["hwm-pid"], "VmHWM")
            try:
                with open(f"/proc/{o['hwm-pid']}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                res["login_hwm_kib"] = None
        _, listing, _ = p.list()
        sizes = {}
        for line in listing[: expect + 1000]:
            num, size = line.split()
            sizes[int(num)] = int(size)
        t["list"] = time.perf_counter()
        _, uidls, _ = p.uidl()
        t["uidl"] = time.perf_counter()
        res["listed"] = len(sizes)
        res["uidls"] = len(uidls)
        window = int(o.get("pipeline") or 1)
        res["pipeline"] = window
        if window > 1:
            _pipelined(p, sorted(sizes), sizes, window, deadline, res, t)
        else:
            bad = 0
            for num in sorted(sizes):
                if time.monotonic() > deadline:
                    raise TimeoutError("phase timeout during RETR")
                _, lines, octets = p.retr(num)
                res["retrieved"] += 1
                res["octets"] += octets
                if octets != sizes[num]:
                    bad += 1
            t["retr"] = time.perf_counter()
            res["size_mismatches"] = bad
            for num in sorted(sizes):
                if time.monotonic() > deadline:
                    raise TimeoutError("phase timeout during DELE")
                p.dele(num)
                res["deleted"] += 1
            t["dele"] = time.perf_counter()
        p.quit()  # RFC 1939 §6: the UPDATE state removes the messages here
        t["quit"] = time.perf_counter()
    except (OSError, poplib.error_proto, ssl.SSLError, ValueError, TimeoutError) as e:
        res["status"] = "error"
        res["error"] = f"{type(e).__name__}: {e}"[:300]
        t["quit"] = time.perf_counter()
    if res["status"] == "ok" and (res["listed"] != expect or res["retrieved"] != expect):
        res["status"] = f"listed {res['listed']}, retrieved {res['retrieved']} of {expect}"
    if res["status"] == "ok" and res["size_mismatches"]:
        res["status"] = f"{res['size_mismatches']} RETR sizes differ from LIST"
    keys = ["login", "list", "uidl", "retr", "dele", "quit"]
    prev = t["start"]
    res["secs"] = {}
    for k in keys:
        if k in t:
            res["secs"][k] = round(t[k] - prev, 4)
            prev = t[k]
    res["secs_total"] = round(t["quit"] - t["start"], 4)
    # The client's own CPU time for the session: near secs_total means the client, not
    # the server, set the pace.
    res["client_cpu_s"] = round(time.process_time() - cpu0, 4)
    return res


def _pipelined(p, nums, sizes, window, deadline, res, t):
    """RETR then DELE every message with up to `window` commands in flight (RFC 2449 §6.6:
    the server announced PIPELINING in CAPA, checked first). poplib's per-line work
    (a readline and a list append for every line of every message) caps it near 5,000
    messages/s of 2 KiB on this machine, about what both servers reach: with a window the
    client reads whole chunks and finds each reply's end with one search, so the servers'
    own costs show."""
    caps = p.capa()
    if "PIPELINING" not in caps:
        raise ValueError("the server does not announce PIPELINING")
    sock = p.sock
    # Read on the socket itself: poplib's buffered file holds nothing now (CAPA's final
    # "." was the last thing the server sent).
    buf = bytearray()
    pos = 0

    def fill():
        nonlocal buf, pos
        if time.monotonic() > deadline:
            raise TimeoutError("phase timeout")
        chunk = sock.recv(1 << 18)
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk

    def reply(multi):
        # One reply from `pos`: a status line, and for RETR the lines up to CRLF "." CRLF
        # (RFC 1939 §3), which is searched for from the end of the status line on.
        nonlocal buf, pos
        if pos > 1 << 20:  # drop what was parsed (here, before any offset is taken)
            del buf[:pos]
            pos = 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol >= 0:
                break
            fill()
        if not buf.startswith(b"+OK", pos):
            raise ValueError(f"reply {bytes(buf[pos:eol])[:100]!r}")
        if not multi:
            pos = eol + 2
            return 0
        start = eol  # the status line's CRLF starts the search (an empty message)
        while True:
            end = buf.find(b"\r\n.\r\n", start)
            if end >= 0:
                break
            start = max(eol, len(buf) - 4)
            fill()
        pos = end + 5
        # Octets as poplib counts them: each line with its CRLF, dot-stuffing undone. Counted
        # in place (no copy of the message).
        body_len = end + 2 - (eol + 2)
        return body_len - buf.count(b"\r\n..", eol + 2, end + 2) - (1 if buf.startswith(b"..", eol + 2) else 0)

    def run(cmd, multi, count_key):
        # The window is refilled in one send once half of it has been answered, so the
        # client makes one send per window/2 replies rather than one per reply: its own
        # per-command cost stays below the servers'.
        bad = 0
        sent = 0
        done = 0
        low = max(1, window // 2)
        while done < len(nums):
            if sent < len(nums) and sent - done <= window - low:
                end = min(len(nums), done + window)
                sock.sendall("".join(f"{cmd} {n}\r\n" for n in nums[sent:end]).encode())
                sent = end
            octets = reply(multi)
            if multi:
                res["octets"] += octets
                if octets != sizes[nums[done]]:
                    bad += 1
            res[count_key] += 1
            done += 1
        return bad

    res["size_mismatches"] = run("RETR", True, "retrieved")
    t["retr"] = time.perf_counter()
    run("DELE", False, "deleted")
    t["dele"] = time.perf_counter()
    if pos != len(buf):
        raise ValueError(f"{len(buf) - pos} unexpected bytes after the last reply")


class _Lines:
    """A bounded line reader over a socket for the raw LIST timing."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
            if len(self.buf) > 1 << 20:
                raise ValueError("line too long")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line


def _pop3_ok(r, what):
    line = r.line()
    if not line.startswith(b"+OK"):
        raise ValueError(f"{what}: {line[:100]!r}")
    return line


def pop3_mpop(o):
    """One mpop session: LIST/UIDL, RETR and DELE every message with pipelining (mpop's
    default when the server announces PIPELINING; forced on here), deliver each to an mbox
    (on tmpfs when the bench puts --dir there: the client's own writes stay cheap), QUIT."""
    expect = int(o["expect"])
    d = o["dir"]
    os.makedirs(d, exist_ok=True)
    mbox, uidls, pw = (os.path.join(d, n) for n in ("mbox", "uidls", "password"))
    for f in (mbox, uidls):
        if os.path.exists(f):
            os.unlink(f)
    open(mbox, "wb").close()
    fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, o["password"].encode())
    os.close(fd)
    args = ["mpop", "--quiet", f"--host={HOST}", f"--port={o['port']}", "--auth=user", f"--user={o['user']}",
            f"--passwordeval=cat {pw}", f"--delivery=mbox,{mbox}", "--keep=off", "--only-new=off",
            f"--uidls-file={uidls}", "--received-header=off", "--pipelining=on", "--timeout=30"]
    res = {"client": "mpop", "expect": expect, "retrieved": 0, "deleted": 0, "octets": 0, "status": "ok",
           "error": "", "pipeline": "mpop"}
    if o.get("tls") == "1":
        # Trust exactly poshta init's self-signed certificate, by its SHA-256 fingerprint:
        # like _client_ctx, the certificate is checked, not the host name (127.0.0.1).
        with open(o["cafile"]) as f:
            der = ssl.PEM_cert_to_DER_cert(f.read())
        fp = hashlib.sha256(der).hexdigest().upper()
        args += ["--tls=on", "--tls-starttls=off", "--tls-fingerprint=" + ":".join(fp[i:i + 2] for i in range(0, 64, 2))]
    else:
        args += ["--tls=off"]
    timeout = float(o["timeout"])
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as e:
        return {**res, "status": "error", "error": f"mpop: {e}"[:300], "secs_total": 0, "client_cpu_s": 0}
    login_s = None
    if o.get("login-mark"):
        # The memory sampler counts what follows as the transfer: mpop says nothing about
        # its login, so the first delivered byte marks it (polled every millisecond).
        while proc.poll() is None and time.perf_counter() - t0 < timeout:
            if os.path.getsize(mbox) > 0:
                login_s = time.perf_counter() - t0
                open(o["login-mark"], "w").close()
                break
            time.sleep(0.001)
    try:
        _, err = proc.communicate(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        res["status"] = "error"
        res["error"] = "mpop: phase timeout"
    t1 = time.perf_counter()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    count = 0
    with open(mbox, "rb") as f:
        prev_blank = True
        for line in f:
            if prev_blank and line.startswith(b"From "):
                count += 1
            prev_blank = line in (b"\n", b"\r\n")
    res["retrieved"] = count
    res["octets"] = os.path.getsize(mbox)
    res["mpop_rc"] = proc.returncode
    if res["status"] == "ok" and proc.returncode != 0:
        res["status"] = "error"
        res["error"] = f"mpop exit {proc.returncode}: {err.decode(errors='replace')[-300:]}"
    if res["status"] == "ok":
        # --keep=off: mpop sent DELE for each (the bench checks the mailbox is empty after QUIT).
        res["deleted"] = count
    if res["status"] == "ok" and count != expect:
        res["status"] = f"retrieved {count} of {expect}"
    res["secs_total"] = round(t1 - t0, 4)
    res["secs"] = {"login": round(login_s, 4)} if login_s is not None else {}
    res["client_cpu_s"] = round((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), 4)
    return res


def pop3_list(o):
    expect = int(o["expect"])
    out = []
    deadline = time.monotonic() + float(o["timeout"])
    for k in range(int(o.get("sessions", "2"))):
        rec = {"session": k + 1, "status": "ok", "error": ""}
        try:
            with socket.create_connection((HOST, int(o["port"])), timeout=60) as s:
                r = _Lines(s)
                _pop3_ok(r, "greeting")
                s.sendall(f"USER {o['user']}\r\n".encode())
                _pop3_ok(r, "USER")
                t0 = time.perf_counter()
                s.sendall(f"PASS {o['password']}\r\n".encode())
                _pop3_ok(r, "PASS")
                t1 = time.perf_counter()
                s.sendall(b"LIST\r\n")
                _pop3_ok(r, "LIST")
                # RFC 1939 §5: a multi-line reply ends with a line holding only ".".
                # Scan whole chunks for the terminator: per-line Python work would be
                # a noticeable part of a 50,000-line reply.
                data = bytearray(r.buf)
                while not (data.endswith(b"\r\n.\r\n") or data == b".\r\n"):
                    if time.monotonic() > deadline:
                        raise TimeoutError("phase timeout during LIST")
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        raise ConnectionError("connection closed during LIST")
                    data += chunk
                t2 = time.perf_counter()
                rec["lines"] = data.count(b"\r\n") - 1
                rec["login_s"] = round(t1 - t0, 4)
                rec["list_s"] = round(t2 - t1, 4)
                rec["list_bytes"] = len(data)
                s.sendall(b"QUIT\r\n")
                r.buf = b""
                try:
                    r.line()
                except OSError:
                    pass
            if rec["lines"] != expect:
                rec["status"] = f"LIST gave {rec['lines']} lines, expected {expect}"
        except (OSError, ValueError, TimeoutError) as e:
            rec["status"] = "error"
            rec["error"] = f"{type(e).__name__}: {e}"[:300]
        out.append(rec)
        time.sleep(0.2)  # let the server finish the session (Dovecot writes its index at QUIT)
    return {"expect": expect, "sessions": out}


# ---------------------------------------------------------------- SMTP submission


def _message_1k(i, size, sender, rcpt):
    head = (
        f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: submission {i}\r\n"
        f"Message-ID: <sub-{i}-{os.getpid()}@client.bench.example>\r\n\r\n"
    )
    body = ""
    line = 0
    while len(head) + len(body) < size:
        body += f"{i:06d}-{line:03d} " + "0123456789abcdef" * 4 + "\r\n"
        line += 1
    return (head + body)[: max(size, len(head) + 2)]


def _connect(o, ctx):
    port = int(o["port"])
    if o["mode"] == "ssl":
        s = smtplib.SMTP_SSL(HOST, port, local_hostname="client.bench.example", timeout=60, context=ctx)
        s.ehlo()
    else:
        s = smtplib.SMTP(HOST, port, local_hostname="client.bench.example", timeout=60)
        s.ehlo()
        s.starttls(context=ctx)  # RFC 3207 §4
        s.ehlo()  # RFC 3207 §4.2: forget what was said before TLS
    return s


def _auth_plain(s, user, password):
    # AUTH PLAIN with an initial response (RFC 4954 §4, RFC 4616), on every server:
    # smtplib's login() would pick CRAM-MD5 first where it is offered.
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    code, resp = s.docmd("AUTH", "PLAIN " + token)
    if code != 235:
        raise smtplib.SMTPAuthenticationError(code, resp)


def submit(o):
    n, conc = int(o["n"]), int(o["concurrency"])
    size = int(o.get("size", "1024"))
    auth_only = o.get("auth-only") == "1"
    ctx = _client_ctx(o["cafile"])
    deadline = time.monotonic() + float(o["timeout"])
    lock = threading.Lock()
    state = {"next": 0, "ok": 0, "errors": 0, "first_errors": [], "lat": [], "tls": None}

    def one(i):
        t0 = time.perf_counter()
        s = _connect(o, ctx)
        try:
            if state["tls"] is None:
                state["tls"] = [s.sock.version(), s.sock.cipher()[0]]
            _auth_plain(s, o["user"], o["password"])
            if not auth_only:
                s.sendmail(o["from"], [o["to"]], _message_1k(i, size, o["from"], o["to"]))
            s.quit()
        finally:
            s.close()
        return time.perf_counter() - t0

    def worker():
        while True:
            with lock:
                i = state["next"]
                if i >= n or time.monotonic() > deadline:
                    return
                state["next"] += 1
            try:
                dt = one(i)
                with lock:
                    state["ok"] += 1
                    state["lat"].append(dt)
            except (OSError, smtplib.SMTPException, ssl.SSLError) as e:
                with lock:
                    state["errors"] += 1
                    if len(state["first_errors"]) < 3:
                        state["first_errors"].append(f"{type(e).__name__}: {e}"[:200])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(conc)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(max(1.0, deadline - time.monotonic() + 5))
    wall = time.perf_counter() - t0
    lat = sorted(state["lat"])
    status = "ok"
    if state["ok"] < n:
        status = f"{state['ok']} of {n} ok" + (" (timeout)" if time.monotonic() > deadline else "")
    return {
        "n": n,
        "concurrency": conc,
        "ok": state["ok"],
        "errors": state["errors"],
        "first_errors": state["first_errors"],
        "secs_total": round(wall, 4),
        "latency_ms_p50": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
        "latency_ms_p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 2) if lat else None,
        "tls": state["tls"],
        "auth_only": auth_only,
        "status": status,
    }


def hold(o):
    """Open C sessions to the point after AUTH, all at once; snapshot memory while they
    are all open; then each sends one message and quits."""
    c = int(o["sessions"])
    ctx = _client_ctx(o["cafile"])
    timeout = float(o["timeout"])
    ready = threading.Barrier(c + 1, timeout=timeout)
    release = threading.Barrier(c + 1, timeout=timeout)
    errors = []

    def worker(i):
        s = None
        try:
            s = _connect(o, ctx)
            _auth_plain(s, o["user"], o["password"])
        except (OSError, smtplib.SMTPException, ssl.SSLError) as e:
            errors.append(f"{type(e).__name__}: {e}"[:200])
            s = None
        try:
            ready.wait()
            release.wait()
        except threading.BrokenBarrierError:
            pass
        if s is not None:
            try:
                s.sendmail(o["from"], [o["to"]], _message_1k(100000 + i, 1024, o["from"], o["to"]))
                s.quit()
            except (OSError, smtplib.SMTPException, ssl.SSLError) as e:
                errors.append(f"{type(e).__name__}: {e}"[:200])
            finally:
                s.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(c)]
    for th in threads:
        th.start()
    snap, status = {}, "ok"
    try:
        ready.wait()
        time.sleep(0.3)  # let the server settle with all sessions open
        sel = {"cgroup": o.get("cgroup"), "tree": o.get("tree"), "main": o.get("main")}
        snap = benchtool.mem_now({k: v for k, v in sel.items() if v})
        for extra in (o.get("cgroup2") or "").split(","):
            if extra:  # a second process set (Dovecot's auth service next to Postfix)
                e = benchtool.mem_now({"cgroup": extra})
                snap["pss_kib"] += e["pss_kib"]
                snap["rss_sum_kib"] += e["rss_sum_kib"]
                snap["procs"] += e["procs"]
        release.wait()
    except threading.BrokenBarrierError:
        status = "barrier broken (sessions did not all open in time)"
    for th in threads:
        th.join(timeout)
    if errors and status == "ok":
        status = f"{len(errors)} session errors"
    return {"sessions": c, "mem": snap, "errors": errors[:3], "status": status}


def argon2_bench(o):
    import resource

    try:
        from argon2 import PasswordHasher
    except ImportError:
        return {"status": "argon2-cffi not available"}
    ph = PasswordHasher()
    n = int(o.get("n", "20"))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        ok = ph.verify(o["hash"], o["password"])
        times.append(time.perf_counter() - t0)
        if not ok:
            return {"status": "verify failed"}
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times.sort()
    try:
        from importlib.metadata import version

        cffi_version = version("argon2-cffi")
    except Exception:  # noqa: BLE001 (only a label)
        cffi_version = "?"
    return {
        "status": "ok",
        "method": "argon2-cffi (libargon2) PasswordHasher.verify in one process",
        "argon2_cffi_version": cffi_version,
        "n": n,
        "ms_median": round(times[n // 2] * 1000, 2),
        "ms_min": round(times[0] * 1000, 2),
        "peak_rss_growth_kib": rss1 - rss0,
        "params": o["hash"].split("$")[3] if o["hash"].count("$") >= 4 else "?",
    }


# ---------------------------------------------------------------- reports


def _load(path):
    meta, rows = {}, []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            kind = r.get("kind")
            if kind == "meta":
                r.pop("kind")
                meta.update(r)
            elif kind == "skip":
                meta.setdefault("skipped", []).append(r)
            elif kind == "server":
                meta.setdefault("servers", {})[r["server"]] = r
            else:
                rows.append(r)
    return meta, rows


def _mib(kib):
    return "-" if kib in (None, "") else f"{kib / 1024:.1f}"


def _table(hdr, rows):
    widths = [max([len(h)] + [len(str(t[i])) for t in rows]) for i, h in enumerate(hdr)]
    print("  ".join(h.ljust(w) for h, w in zip(hdr, widths)))
    print("  ".join("-" * w for w in widths))
    for t in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(t, widths)).rstrip())


def _peak_mem(r, multi):
    """(peak KiB, how it was measured): the same figure for every server, the peak of the
    RSS summed over all the server's processes (poshta: the daemon and its root helper;
    Dovecot: master, auth, login, pop3, ...), sampled every MEM_SAMPLE_MS during the
    transfer (from the client's login mark on: the login's password check, one argon2id
    block of 19 MiB for ~20 ms in either server, is sampled apart as "login RSS"; before,
    a sample landed in it or not by chance). The issue's target is stated in RSS; the PSS
    sum (shared pages divided among the processes that map them) is kept beside it."""
    mem = r.get("mem") or {}
    return mem.get("rss_sum_kib"), f"RSS sum of {mem.get('procs', '?')} procs, sampled after login"


def _verdict(ok):
    return "PASS" if ok else "FAIL"


def report_pop3(path, out):
    meta, rows = _load(path)
    servers = meta.get("servers", {})
    fetch = [r for r in rows if r["kind"] == "fetch"]
    lists = [r for r in rows if r["kind"] == "list"]
    base = {}
    for r in fetch:
        c = r.get("client", {})
        n = c.get("retrieved") or 0
        r["msgs_per_s"] = round(n / c["secs_total"], 1) if c.get("status") == "ok" and c.get("secs_total") else None
        r["cpu_ms_per_msg"] = round(r["cpu_ns"] / 1e6 / n, 4) if n else None
        multi = bool(servers.get(r["server"], {}).get("multi_process"))
        r["peak_kib"], r["peak_figure"] = _peak_mem(r, multi)
        r["peak_pss_kib"] = (r.get("mem") or {}).get("pss_kib")
        r["median_rss_kib"] = (r.get("mem") or {}).get("rss_sum_median_kib")
        if r["server"] == "dovecot":
            base[r["mode"]] = r
    hdr = ("server", "mode", "msgs", "secs", "client CPU s", "msgs/s", "x dovecot", "CPU s", "CPU ms/msg", "x dovecot CPU",
           "idle RSS MiB", "peak RSS MiB", "login RSS MiB", "peak PSS MiB", "x dovecot RSS", "median RSS MiB",
           "x dovecot median",
           "memory figure", "left", "status")
    table = []
    for r in fetch:
        c = r.get("client", {})
        b = base.get(r["mode"])
        s = servers.get(r["server"], {})
        multi = bool(s.get("multi_process"))
        idle = (s.get("idle") or {}).get("rss_sum_kib")
        r["ratio_msgs_per_s"] = (
            round(r["msgs_per_s"] / b["msgs_per_s"], 2) if b and r.get("msgs_per_s") and b.get("msgs_per_s") else None
        )
        r["ratio_cpu"] = round(r["cpu_ns"] / b["cpu_ns"], 3) if b and b.get("cpu_ns") else None
        r["ratio_peak_mem"] = round(r["peak_kib"] / b["peak_kib"], 3) if b and b.get("peak_kib") and r.get("peak_kib") else None
        r["ratio_median_mem"] = (round(r["median_rss_kib"] / b["median_rss_kib"], 3)
                                 if b and b.get("median_rss_kib") and r.get("median_rss_kib") else None)
        left = r.get("left") or {}
        table.append((
            r["server"], r["mode"], c.get("retrieved", 0), c.get("secs_total", "-"), c.get("client_cpu_s", "-"),
            "-" if r["msgs_per_s"] is None else f"{r['msgs_per_s']:.0f}",
            "-" if r["ratio_msgs_per_s"] is None else f"{r['ratio_msgs_per_s']:.2f}",
            f"{r['cpu_ns'] / 1e9:.3f}", "-" if r["cpu_ms_per_msg"] is None else f"{r['cpu_ms_per_msg']:.3f}",
            "-" if r["ratio_cpu"] is None else f"{r['ratio_cpu']:.2f}",
            _mib(idle), _mib(r["peak_kib"]), _mib((r.get("mem") or {}).get("login_rss_sum_kib")),
            _mib(r.get("peak_pss_kib")),
            "-" if r["ratio_peak_mem"] is None else f"{r['ratio_peak_mem']:.2f}",
            _mib(r.get("median_rss_kib")), "-" if r.get("ratio_median_mem") is None else f"{r['ratio_median_mem']:.2f}",
            r["peak_figure"],
            f"{(left.get('new') or 0) + (left.get('cur') or 0)}", r["status"],
        ))
    print()
    print(f"POP3 download-and-delete: {meta.get('n')} messages of {meta.get('size_bytes')} B in one session "
          f"(login, LIST, UIDL, RETR all, DELE all, QUIT), Python poplib (mode+pW: W commands in flight; "
          f"mode+mpop: Debian's mpop, pipelining, into an mbox); "
          f"CPU via {meta.get('cpu_method')}")
    _table(hdr, table)
    phases = [(r["server"], r["mode"], *[(r.get("client", {}).get("secs") or {}).get(k, "-")
              for k in ("login", "list", "uidl", "retr", "dele", "quit")]) for r in fetch]
    print()
    print("seconds per step:")
    _table(("server", "mode", "login", "LIST", "UIDL", "RETR all", "DELE all", "QUIT"), phases)
    if lists:
        print()
        print(f"LIST on a {meta.get('list_n')}-message mailbox (raw socket; LIST timed from the command to the "
              "final '.'; session 1 is the first login on the freshly filled Maildir):")
        lt = []
        for r in lists:
            for s in r.get("client", {}).get("sessions", []):
                lt.append((r["server"], s["session"], s.get("login_s", "-"), s.get("list_s", "-"),
                           s.get("lines", "-"), f"{r['cpu_ns'] / 1e9:.3f}" if s["session"] == 1 else "", s["status"]))
        _table(("server", "session", "login s", "LIST s", "lines", "CPU s (all)", "status"), lt)
    # Targets.
    print()
    verdicts = []
    for mode, b in base.items():
        p = next((r for r in fetch if r["server"] == "poshta" and r["mode"] == mode), None)
        if not p or p.get("ratio_msgs_per_s") is None or p.get("ratio_peak_mem") is None:
            continue
        ok = p["ratio_msgs_per_s"] >= 2 and p["ratio_peak_mem"] < 0.2
        pss = (f"; PSS {_mib(p.get('peak_pss_kib'))} vs {_mib(b.get('peak_pss_kib'))} MiB"
               if p.get("peak_pss_kib") and b.get("peak_pss_kib") else "")
        med = (f"; median RSS {_mib(p.get('median_rss_kib'))} vs {_mib(b.get('median_rss_kib'))} MiB = "
               f"{p['ratio_median_mem']:.2f}x" if p.get("ratio_median_mem") is not None else "")
        v = (f"target ({mode}): poshta >= 2x Dovecot's msgs/s at < 1/5 of its RSS: "
             f"{p['ratio_msgs_per_s']:.2f}x msgs/s, {p['ratio_peak_mem']:.2f}x peak RSS "
             f"({_mib(p['peak_kib'])} vs {_mib(b['peak_kib'])} MiB, summed over processes, sampled{pss}{med}): "
             f"{_verdict(ok)}")
        verdicts.append(v)
    for r in lists:
        if r["server"] != "poshta":
            continue
        ss = [s for s in r.get("client", {}).get("sessions", []) if s.get("list_s") is not None]
        if ss:
            worst = max(s["list_s"] for s in ss)
            verdicts.append(f"target: LIST on {meta.get('list_n')} under 0.5 s: poshta {worst:.3f} s (slowest session): "
                            f"{_verdict(worst < 0.5 and all(s['status'] == 'ok' for s in ss))}")
    for v in verdicts:
        print(v)
    meta["verdicts"] = verdicts
    _footer(meta)
    _write(out, {"meta": meta, "fetch": fetch, "list": lists})


def report_tls(path, out):
    meta, rows = _load(path)
    servers = meta.get("servers", {})
    runs = [r for r in rows if r["kind"] == "submit"]
    holds = [r for r in rows if r["kind"] == "hold"]
    auths = [r for r in rows if r["kind"] == "auth-only"]
    base = {}
    for r in runs:
        c = r.get("client", {})
        ok = c.get("ok") or 0
        r["msgs_per_s"] = round(ok / c["secs_total"], 1) if ok and c.get("secs_total") else None
        r["cpu_ms_per_msg"] = round(r["cpu_ns"] / 1e6 / ok, 3) if ok else None
        multi = bool(servers.get(r["server"], {}).get("multi_process"))
        r["peak_kib"], r["peak_figure"] = _peak_mem(r, multi)
        if r["server"].startswith("postfix"):
            base.setdefault((r["mode"], r["concurrency"]), r)
    hdr = ("server", "port", "conc", "ok", "secs", "msgs/s", "CPU ms/sub", "x postfix CPU", "p50 ms", "peak MiB",
           "memory figure", "status")
    table = []
    for r in runs:
        c = r.get("client", {})
        b = base.get((r["mode"], r["concurrency"]))
        r["ratio_cpu"] = (round(r["cpu_ms_per_msg"] / b["cpu_ms_per_msg"], 3)
                          if b and r.get("cpu_ms_per_msg") and b.get("cpu_ms_per_msg") else None)
        table.append((
            r["server"], "465" if r["mode"] == "ssl" else "587", r["concurrency"], c.get("ok", 0),
            c.get("secs_total", "-"), "-" if r["msgs_per_s"] is None else f"{r['msgs_per_s']:.0f}",
            "-" if r["cpu_ms_per_msg"] is None else f"{r['cpu_ms_per_msg']:.2f}",
            "-" if r["ratio_cpu"] is None else f"{r['ratio_cpu']:.2f}",
            c.get("latency_ms_p50", "-"), _mib(r["peak_kib"]), r["peak_figure"], r["status"],
        ))
    print()
    print(f"Authenticated TLS submission: one connection per message (TLS, EHLO, AUTH PLAIN, one {meta.get('size_bytes')} B "
          f"message, QUIT), timed until delivered to the Maildir; CPU = server only, via {meta.get('cpu_method')}")
    tls = sorted({f"{r['server']} {' '.join((r.get('client') or {}).get('tls') or ['?'])}" for r in runs})
    if tls:
        print(f"TLS negotiated: {'; '.join(tls)}")
    _table(hdr, table)
    if holds:
        print()
        print("memory with all sessions open at once (after AUTH, before MAIL):")
        ht = []
        for r in holds:
            m = r.get("client", {}).get("mem") or {}
            multi = bool(servers.get(r["server"], {}).get("multi_process"))
            fig = (f"PSS sum of {m.get('procs')} procs" if multi
                   else f"RSS {_mib(m.get('main_rss_kib'))}, VmHWM")
            val = m.get("pss_kib") if multi else m.get("main_hwm_kib")
            r["peak_kib"] = val
            ht.append((r["server"], "465" if r["mode"] == "ssl" else "587", r.get("client", {}).get("sessions"),
                       _mib(val), fig, r["status"]))
        _table(("server", "port", "sessions", "MiB", "memory figure", "status"), ht)
    print()
    print("argon2id verify (users file: m=19456 KiB, t=2, p=1):")
    a = meta.get("argon2") or {}
    if a.get("status") == "ok":
        print(f"  {a['method']}: {a['ms_median']:.1f} ms median of {a['n']} (min {a['ms_min']:.1f}), "
              f"peak RSS growth {_mib(a['peak_rss_growth_kib'])} MiB")
    else:
        print(f"  argon2-cffi: {a.get('status', 'not run')}")
    for r in auths:
        c = r.get("client", {})
        ok = c.get("ok") or 0
        print(f"  {r['server']} AUTH-only sessions (TLS + EHLO + AUTH PLAIN + QUIT) x{ok}, sequential: "
              f"{r['cpu_ns'] / 1e6 / max(ok, 1):.1f} ms server CPU and "
              f"{c.get('latency_ms_p50', '-')} ms wall (p50) per session; VmHWM {_mib(r.get('peak_hwm_kib'))} MiB "
              f"[{r['status']}]")
    # Targets.
    print()
    verdicts = []
    for r in runs:
        if r["server"] != "poshta" or r.get("ratio_cpu") is None:
            continue
        verdicts.append(f"target (port {'465' if r['mode'] == 'ssl' else '587'}, c={r['concurrency']}): poshta CPU per "
                        f"submission <= 1/2 Postfix's: {r['ratio_cpu']:.2f}x: {_verdict(r['ratio_cpu'] <= 0.5)}")
    pk = [r for r in runs + holds if r["server"] == "poshta" and r.get("peak_kib")]
    if pk:
        worst = max(r["peak_kib"] for r in pk)
        verdicts.append(f"target: poshta peak RSS under 32 MiB (VmHWM, all runs): {_mib(worst)} MiB: "
                        f"{_verdict(worst < 32 * 1024)}")
    for v in verdicts:
        print(v)
    meta["verdicts"] = verdicts
    _footer(meta)
    _write(out, {"meta": meta, "submit": runs, "hold": holds, "auth_only": auths})


def _footer(meta):
    for s in meta.get("skipped", []):
        print(f"skipped {s.get('server')}: {s.get('reason')}")
    for w in meta.get("warnings", "").split("|"):
        if w:
            print(f"warning: {w}")
    if meta.get("loadavg_start"):
        print(f"load average at start: {meta['loadavg_start']} on {meta.get('cpus')} CPUs")


def _write(out, doc):
    with open(out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"JSON: {out}")


# ---------------------------------------------------------------- main


def _opts(argv):
    out = {}
    it = iter(argv)
    for a in it:
        if not a.startswith("--"):
            raise SystemExit(f"unexpected argument {a}")
        out[a[2:]] = next(it, "")
    return out


def main(argv):
    if not argv:
        raise SystemExit(__doc__)
    cmd, rest = argv[0], argv[1:]
    if cmd == "fill":
        print(json.dumps(fill(rest[0], int(rest[1]), int(rest[2]))))
    elif cmd == "count-maildir":
        print(json.dumps(count_maildir(rest[0])))
    elif cmd == "pop3-fetch":
        print(json.dumps(pop3_fetch(_opts(rest))))
    elif cmd == "pop3-mpop":
        print(json.dumps(pop3_mpop(_opts(rest))))
    elif cmd == "pop3-list":
        print(json.dumps(pop3_list(_opts(rest))))
    elif cmd == "submit":
        print(json.dumps(submit(_opts(rest))))
    elif cmd == "hold":
        print(json.dumps(hold(_opts(rest))))
    elif cmd == "argon2":
        print(json.dumps(argon2_bench(_opts(rest))))
    elif cmd == "report-pop3":
        report_pop3(rest[0], rest[1])
    elif cmd == "report-tls":
        report_tls(rest[0], rest[1])
    else:
        raise SystemExit(f"unknown subcommand {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
