"""MX delivery (RFC 5321 §5.1, RFC 7505) against a real DNS server: dnsmasq from Debian's
dnsmasq-base, started here on 127.0.0.1 and a free port with no upstream (--no-resolv) and
no /etc/hosts, serving the records each test needs. poshta is pointed at it with
dns_resolver; every MX host resolves to a 127.0.0.x address, so nothing leaves loopback.

Most tests route a domain with `transport_maps: dom smtp:dom:PORT` (an unbracketed next
hop: MX lookup of dom, then port PORT on each MX host), so peers need no port 25. One test
uses plain MX delivery on port 25 when it may bind it (root).

dnsmasq answers: names under `test` from its records (--local=/test/: NODATA for a known
name without the asked type, NXDOMAIN for unknown names); other names REFUSED (no
upstream), which poshta must treat like SERVFAIL: defer, never bounce.
"""
import email
import os
import shutil
import smtplib
import socket
import socketserver
import subprocess
import threading
import time

import pytest

from conftest import free_port, wait_for


def dnsmasq_path():
    for p in (shutil.which("dnsmasq"), "/usr/sbin/dnsmasq"):
        if p and os.access(p, os.X_OK):
            return p
    return None


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dns_answers(port, name="probe.test"):
    """True once the server answers a query (any rcode)."""
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        try:
            s.sendto(q, ("127.0.0.1", port))
            return s.recv(512)[:2] == b"\x12\x34"
        except OSError:
            return False


@pytest.fixture
def dnsmasq():
    path = dnsmasq_path()
    if not path:
        pytest.skip("dnsmasq not found (tests/run.sh installs dnsmasq-base)")
    procs = []

    def start(*records, _attempts=3):
        port = free_udp_port()
        args = [path, "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={port}", "--pid-file=",
                "--local=/test/", *records]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        deadline = time.time() + 10
        while time.time() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")
                # The port was free for UDP when chosen; dnsmasq also listens on TCP, and
                # either may be taken meanwhile (an ephemeral port of another socket):
                # another port, at most three tries.
                if _attempts > 1 and "Address already in use" in err:
                    return start(*records, _attempts=_attempts - 1)
                raise AssertionError("dnsmasq exited: " + err)
            if dns_answers(port):
                return port
            time.sleep(0.05)
        raise AssertionError("dnsmasq did not answer")

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()


class Peer:
    """An SMTP receiver on (host, port): greets with `greeting`, accepts everything."""

    def __init__(self, host, port, greeting="220 peer ESMTP"):
        self.host, self.port, self.greeting = host, port, greeting
        self.messages = []  # (mail from, [rcpt], data)
        self.connections = 0
        peer = self

        class H(socketserver.StreamRequestHandler):
            timeout = 10

            def handle(self):
                w = lambda t: self.wfile.write((t + "\r\n").encode())
                peer.connections += 1
                w(peer.greeting)
                if not peer.greeting.startswith("2"):
                    # RFC 5321 §3.1: after a refusing greeting the server waits for QUIT.
                    self.rfile.readline(2000)
                    w("221 bye")
                    return
                mail, rcpts = None, []
                for _ in range(1000):
                    line = self.rfile.readline(2000)
                    if not line:
                        return
                    cmd = line.decode("latin-1").strip()
                    up = cmd.upper()
                    if up.startswith("EHLO") or up.startswith("HELO"):
                        w("250-peer\r\n250 8BITMIME")
                    elif up.startswith("MAIL FROM:"):
                        mail, rcpts = cmd[10:].split()[0].strip("<>"), []
                        w("250 2.1.0 Ok")
                    elif up.startswith("RCPT TO:"):
                        rcpts.append(cmd[8:].split()[0].strip("<>"))
                        w("250 2.1.5 Ok")
                    elif up == "DATA":
                        w("354 go ahead")
                        data = b""
                        while True:
                            l = self.rfile.readline(10000)
                            if not l or l == b".\r\n":
                                break
                            data += l
                        peer.messages.append((mail, rcpts, data))
                        w("250 2.0.0 Ok: queued")
                    elif up == "RSET":
                        w("250 2.0.0 Ok")
                    elif up == "QUIT":
                        w("221 2.0.0 Bye")
                        return
                    else:
                        w("502 5.5.2 unknown")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer((host, port), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def peers():
    made = []

    def make(*a, **kw):
        p = Peer(*a, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def send(p, rcpts, sender="alice@example.org"):
    with smtplib.SMTP("127.0.0.1", p.port, timeout=10) as s:
        s.sendmail(sender, rcpts, "Subject: mx test\n\nhello mx\n")


def poshta_for(make_poshta, dns_port, domains, port, extra=""):
    """poshta with the DNS server at dns_port and `domains` routed by MX to `port`."""
    p = make_poshta(start=False)
    with open(os.path.join(p.dir, "transport"), "w") as f:
        for d in domains:
            f.write(f"{d} smtp:{d}:{port}\n")
    p.extra = (f"dns_resolver = 127.0.0.1:{dns_port}\ntransport_maps = hash:{p.dir}/transport\n"
               "minimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n" + extra)
    p.write_config(p.extra)
    return p.start()


PREF = ["--mx-host=pref.test,mx2.pref.test,20", "--mx-host=pref.test,mx1.pref.test,10",
        "--host-record=mx1.pref.test,127.0.0.2", "--host-record=mx2.pref.test,127.0.0.3"]


def test_lowest_preference_first(make_poshta, dnsmasq, peers):
    dns = dnsmasq(*PREF)
    port = free_port()
    mx1, mx2 = peers("127.0.0.2", port), peers("127.0.0.3", port)
    p = poshta_for(make_poshta, dns, ["pref.test"], port)
    send(p, ["bob@pref.test"])
    wait_for(lambda: mx1.messages, what="delivery to the preference-10 MX")
    assert mx1.messages[0][1] == ["bob@pref.test"]
    assert not mx2.messages and mx2.connections == 0
    wait_for(lambda: f"relay=mx1.pref.test[127.0.0.2]:{port}" in p.logtext(), what="log line")


def test_next_mx_when_first_refuses_connection(make_poshta, dnsmasq, peers):
    dns = dnsmasq(*PREF)
    port = free_port()  # nothing listens on 127.0.0.2:port: connection refused
    mx2 = peers("127.0.0.3", port)
    p = poshta_for(make_poshta, dns, ["pref.test"], port)
    send(p, ["bob@pref.test"])
    wait_for(lambda: mx2.messages, what="delivery to the second MX")
    assert "status=sent" in p.logtext() and "mx2.pref.test[127.0.0.3]" in p.logtext()


def test_next_mx_when_first_refuses_greeting(make_poshta, dnsmasq, peers):
    dns = dnsmasq(*PREF)
    port = free_port()
    mx1 = peers("127.0.0.2", port, greeting="421 4.3.2 mx1 busy")
    mx2 = peers("127.0.0.3", port)
    p = poshta_for(make_poshta, dns, ["pref.test"], port)
    send(p, ["bob@pref.test"])
    wait_for(lambda: mx2.messages, what="delivery to the second MX")
    assert mx1.connections >= 1 and not mx1.messages


def test_a_record_when_no_mx(make_poshta, dnsmasq, peers):
    dns = dnsmasq("--host-record=plain.test,127.0.0.4")
    port = free_port()
    host = peers("127.0.0.4", port)
    p = poshta_for(make_poshta, dns, ["plain.test"], port)
    send(p, ["carol@plain.test"])
    wait_for(lambda: host.messages, what="delivery to the implicit MX (the A record)")
    assert f"relay=plain.test[127.0.0.4]:{port}" in p.logtext()


def dsn_of(p, user="alice"):
    msgs = p.wait_messages(user, 1)
    m = email.message_from_bytes(p.read(msgs[0]))
    assert m.get_content_type() == "multipart/report"
    assert m.get_param("report-type") == "delivery-status"
    status = [part for part in m.walk() if part.get_content_type() == "message/delivery-status"]
    assert status, m
    return m, status[0].as_string()


def test_null_mx_bounces_at_once_with_5_1_10(make_poshta, dnsmasq, peers):
    # RFC 7505: one MX, preference 0, exchange "." (rdata: 0x0000 then the root label).
    dns = dnsmasq("--dns-rr=null.test,15,000000")
    port = free_port()
    p = poshta_for(make_poshta, dns, ["null.test"], port)
    send(p, ["dave@null.test"])
    m, status = dsn_of(p)
    assert "Status: 5.1.10" in status, status
    assert "nullMX" in status
    assert "Final-Recipient: rfc822; dave@null.test" in status
    assert "status=bounced" in p.logtext()
    # At once: no retry was scheduled, the message left the queue.
    wait_for(lambda: "Mail queue is empty" in p.cli("queue").stdout, what="empty queue")


def test_unknown_domain_bounces_5_4_4(make_poshta, dnsmasq):
    dns = dnsmasq()
    p = poshta_for(make_poshta, dns, ["nx.test"], free_port())
    send(p, ["erin@nx.test"])
    _, status = dsn_of(p)
    assert "Status: 5.4.4" in status and "Host not found" in status


def test_servfail_defers_and_never_bounces(make_poshta, dnsmasq, peers):
    # fail.example is outside dnsmasq's zone and it has no upstream: REFUSED, like SERVFAIL.
    dns = dnsmasq()
    p = poshta_for(make_poshta, dns, ["fail.example"], free_port())
    send(p, ["frank@fail.example"])
    out = wait_for(lambda: (lambda o: o if "try again" in o else None)(p.cli("queue").stdout),
                   what="deferral")
    assert "name=fail.example type=MX" in out
    time.sleep(2.5)  # a retry or two (backoff 1-2 s) still defers
    assert "frank@fail.example" in p.cli("queue").stdout
    assert not p.new_messages("alice"), "no bounce for a temporary DNS failure"
    assert "status=bounced" not in p.logtext()


def test_dns_timeout_defers(make_poshta):
    # A server that never answers: each query waits the timeout (5 s, 2 attempts).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mute:
        mute.bind(("127.0.0.1", 0))
        p = poshta_for(make_poshta, mute.getsockname()[1], ["slow.test"], free_port())
        send(p, ["gina@slow.test"])
        out = wait_for(lambda: (lambda o: o if "try again" in o else None)(p.cli("queue").stdout),
                       timeout=40, what="deferral after the DNS timeout")
        assert "timed out" in out
        assert not p.new_messages("alice")


def test_plain_mx_delivery_on_port_25(make_poshta, dnsmasq, peers):
    """No relayhost, no transport_maps: the recipient domain's MX on port 25."""
    try:
        mx = peers("127.0.0.5", 25)
    except OSError as e:
        pytest.skip(f"cannot listen on 127.0.0.5:25 ({e})")
    dns = dnsmasq("--mx-host=port25.test,mx.port25.test,5", "--host-record=mx.port25.test,127.0.0.5")
    p = make_poshta(extra=f"dns_resolver = 127.0.0.1:{dns}\n")
    send(p, ["hal@port25.test"])
    wait_for(lambda: mx.messages, what="delivery on port 25")
    assert "relay=mx.port25.test[127.0.0.5]:25" in p.logtext()


def test_disable_dns_lookups_uses_hosts_file_only(make_poshta, dnsmasq, peers):
    """With DNS disabled the MX records are not asked for: the hosts file answers for the
    domain itself (pref.test is not in /etc/hosts, so the mail waits)."""
    dns = dnsmasq(*PREF)
    port = free_port()
    mx1 = peers("127.0.0.2", port)
    p = poshta_for(make_poshta, dns, ["pref.test"], port, extra="smtp_dns_support_level = disabled\n")
    send(p, ["ivan@pref.test"])
    out = wait_for(lambda: (lambda o: o if "DNS lookups are disabled" in o else None)(p.cli("queue").stdout),
                   what="deferral")
    assert "pref.test" in out and not mx1.messages


def test_delay_warning_once_per_message_across_restarts(make_poshta, dnsmasq):
    """delay_warning_time: one RFC 3464 delay notice (Action: delayed) while the mail is
    still retried, never a second one, not even after a restart."""
    dns = dnsmasq()
    p = poshta_for(make_poshta, dns, ["fail.example"], free_port(), extra="delay_warning_time = 2s\n")
    send(p, ["judy@fail.example"])
    msgs = p.wait_messages("alice", 1, timeout=30)
    m = email.message_from_bytes(p.read(msgs[0]))
    assert m.get_content_type() == "multipart/report"
    status = [part.as_string() for part in m.walk() if part.get_content_type() == "message/delivery-status"][0]
    assert "Action: delayed" in status and "Status: 4." in status, status
    assert "Final-Recipient: rfc822; judy@fail.example" in status
    assert "sender delay notification" in p.logtext()
    time.sleep(4)  # more retries (backoff 1-2 s)
    assert len(p.new_messages("alice")) == 1, "one notice per message"
    p.stop()
    p.start()
    p.cli("queue", "flush")
    time.sleep(3)
    assert len(p.new_messages("alice")) == 1, "still one after a restart"
    assert "judy@fail.example" in p.cli("queue").stdout, "the mail itself is still queued"


def test_mx_pointing_back_at_us_bounces_as_a_loop(make_poshta, dnsmasq):
    # RFC 5321 §5.1: the only MX of loop.test is this very server (127.0.0.1 on the port
    # poshta listens on): the record is discarded, nothing is left, and the mail bounces
    # with 5.4.6 instead of circling between poshta and itself.
    dns = dnsmasq("--mx-host=loop.test,mx.loop.test,10", "--host-record=mx.loop.test,127.0.0.1")
    p = make_poshta(start=False)
    with open(os.path.join(p.dir, "transport"), "w") as f:
        f.write(f"loop.test smtp:loop.test:{p.port}\n")
    p.write_config(f"dns_resolver = 127.0.0.1:{dns}\ntransport_maps = hash:{p.dir}/transport\n")
    p.start()
    send(p, ["erin@loop.test"])
    _, status = dsn_of(p)
    assert "Status: 5.4.6" in status, status
    assert "loops back to myself" in status
    assert "mx.loop.test[127.0.0.1]" not in p.logtext(), "poshta never connected to itself"
