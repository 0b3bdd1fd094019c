#!/usr/bin/env python3
"""Where an SMTP session's time goes under load: one probe client, step by step.

Run it while smtp-source (or any load) keeps a server busy on the same port; it opens
sessions one after another and times each step from its request to the reply's last line:
connect-to-banner, EHLO, MAIL, RCPT, DATA, the message body to its 250, and QUIT. Run it
against smtp-sink and against the server under test in the same conditions and compare:
the step that grows is where the server's time goes (docs/decisions.md, "Where a session's
time goes").

    smtp_probe.py PORT [SESSIONS] [RCPT_DOMAIN]

Only 127.0.0.1. At most SESSIONS sessions (default 300) and 60 seconds; every socket
operation has a 10 s timeout.
"""
import socket
import statistics
import sys
import time

STEPS = ["banner", "ehlo", "mail", "rcpt", "data", "body", "quit"]


def read_reply(f):
    """The last line of one (possibly multi-line) reply; raises on EOF."""
    for _ in range(1000):  # bounded: no reply has this many lines
        line = f.readline()
        if not line:
            raise EOFError("connection closed")
        if line[3:4] != b"-":
            return line
    raise ValueError("reply too long")


def session(port, domain, body, lat):
    t = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    try:
        read_reply(f)
        now = time.perf_counter()
        lat["banner"].append(now - t)
        t = now
        for name, cmd in [
            ("ehlo", b"EHLO probe.example\r\n"),
            ("mail", b"MAIL FROM:<probe@" + domain + b">\r\n"),
            ("rcpt", b"RCPT TO:<alice@" + domain + b">\r\n"),
            ("data", b"DATA\r\n"),
            ("body", body),
            ("quit", b"QUIT\r\n"),
        ]:
            s.sendall(cmd)
            read_reply(f)
            now = time.perf_counter()
            lat[name].append(now - t)
            t = now
    finally:
        f.close()
        s.close()


def main():
    port = int(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    domain = (sys.argv[3] if len(sys.argv) > 3 else "bench.example").encode()
    body = b"Subject: probe\r\n\r\n" + b"x" * 1000 + b"\r\n.\r\n"
    lat = {k: [] for k in STEPS}
    end = time.time() + 60
    for _ in range(n):
        if time.time() > end:
            break
        session(port, domain, body, lat)
    total = 0.0
    for k in STEPS:
        v = sorted(lat[k])
        mean = statistics.mean(v) * 1e3
        total += mean
        print(f"{k:7s} median {statistics.median(v) * 1e3:6.3f} ms  mean {mean:6.3f}  p90 {v[int(len(v) * 0.9)] * 1e3:6.3f}")
    print(f"sum of means {total:.3f} ms over {len(lat['quit'])} sessions")


if __name__ == "__main__":
    main()
