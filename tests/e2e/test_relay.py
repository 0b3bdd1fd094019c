"""Relaying to a smarthost (relayhost = [127.0.0.1]:port), loopback only.

Peers: Postfix's smtp-sink (a real, fast SMTP receiver that dumps what it gets), and a tiny
scripted peer written here whose replies each test chooses (451 then 250, 550).
"""
import email
import os
import shutil
import smtplib
import socket
import socketserver
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import free_port, wait_for

HERE = os.path.dirname(__file__)
CACHE_SINK = os.path.join(HERE, "..", ".cache", "postfix", "usr", "sbin", "smtp-sink")


def smtp_sink_path():
    for p in (os.environ.get("SMTP_SINK"), CACHE_SINK, "/usr/sbin/smtp-sink"):
        if p and os.access(p, os.X_OK):
            return os.path.abspath(p)
    return None


def send(p, rcpts, sender="scanner@lan.example", body="Subject: relay test\n\nhello relay\n"):
    with smtplib.SMTP("127.0.0.1", p.port, timeout=10) as s:
        s.sendmail(sender, rcpts, body)


class Scripted:
    """A one-thread SMTP peer on 127.0.0.1. `verdicts` is a list of final replies to the
    end of data, one per transaction (the last repeats); `rcpt_reply` answers RCPT TO."""

    def __init__(self, verdicts=("250 2.0.0 Ok: queued as X1",), rcpt_reply="250 2.1.5 Ok"):
        self.verdicts = list(verdicts)
        self.rcpt_reply = rcpt_reply
        self.messages = []  # (mail from, [rcpt], data)
        self.transactions = 0
        self.connections = 0
        peer = self

        class H(socketserver.StreamRequestHandler):
            timeout = 10

            def handle(self):
                w = lambda t: self.wfile.write((t + "\r\n").encode())
                peer.connections += 1
                w("220 peer.test ESMTP scripted")
                mail, rcpts = None, []
                for _ in range(1000):
                    line = self.rfile.readline(2000)
                    if not line:
                        return
                    cmd = line.decode("latin-1").strip()
                    up = cmd.upper()
                    if up.startswith("EHLO"):
                        w("250-peer.test\r\n250-PIPELINING\r\n250 8BITMIME")
                    elif up.startswith("MAIL FROM:"):
                        mail, rcpts = cmd[10:].split()[0].strip("<>"), []
                        w("250 2.1.0 Ok")
                    elif up.startswith("RCPT TO:"):
                        rcpts.append(cmd[8:].split()[0].strip("<>"))
                        w(peer.rcpt_reply)
                    elif up == "DATA":
                        if not rcpts or not peer.rcpt_reply.startswith("2"):
                            w("554 5.5.1 no valid recipients")
                            continue
                        w("354 go ahead")
                        data = b""
                        while True:
                            l = self.rfile.readline(10000)
                            if not l or l == b".\r\n":
                                break
                            data += l
                        i = min(peer.transactions, len(peer.verdicts) - 1)
                        peer.transactions += 1
                        v = peer.verdicts[i]
                        if v.startswith("2"):
                            peer.messages.append((mail, rcpts, data))
                        w(v)
                    elif up == "RSET":
                        w("250 2.0.0 Ok")
                    elif up == "QUIT":
                        w("221 2.0.0 Bye")
                        return
                    else:
                        w("502 5.5.2 unknown")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    made = []

    def make(*a, **kw):
        s = Scripted(*a, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


RETRY = "minimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n"


@pytest.fixture
def sink():
    path = smtp_sink_path()
    if not path:
        pytest.skip("smtp-sink not found (tests/run.sh unpacks Debian's postfix into tests/.cache/postfix)")
    d = tempfile.mkdtemp(prefix="poshta-sink-")
    os.chmod(d, 0o777)
    port = free_port()
    args = [path]
    if os.getuid() == 0:
        args += ["-u", "nobody"]
    args += ["-d", os.path.join(d, "%H%M%S."), f"127.0.0.1:{port}", "10"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port, d
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(d, ignore_errors=True)


def dumps(d):
    return [os.path.join(d, n) for n in os.listdir(d)] if os.path.isdir(d) else []


def test_relay_to_smtp_sink(make_poshta, sink):
    port, d = sink
    p = make_poshta(extra=f"relayhost = [127.0.0.1]:{port}\n")
    send(p, ["someone@elsewhere.example", "other@elsewhere.example"])
    files = wait_for(lambda: dumps(d), what="a message at smtp-sink")
    time.sleep(0.3)
    assert len(dumps(d)) == 1, "both recipients go in one transaction"
    raw = open(files[0], "rb").read()
    assert b"hello relay" in raw
    assert b"Subject: relay test" in raw
    # smtp-sink's dump records the envelope as named attributes.
    assert b"scanner@lan.example" in raw
    assert b"someone@elsewhere.example" in raw and b"other@elsewhere.example" in raw
    wait_for(lambda: "Mail queue is empty" in p.cli("queue").stdout, what="an empty queue")
    log = p.logtext()
    assert f"to=<someone@elsewhere.example>, relay=127.0.0.1[127.0.0.1]:{port}" in log
    assert "status=sent (250" in log


def test_relay_body_is_intact_dot_stuffed(make_poshta, scripted):
    peer = scripted()
    p = make_poshta(extra=f"relayhost = [127.0.0.1]:{peer.port}\n")
    body = "Subject: dots\n\n.leading dot\n..two\nplain\n" + "x" * 5000 + "\n"
    send(p, ["a@elsewhere.example"], body=body)
    wait_for(lambda: peer.messages, what="delivery")
    data = peer.messages[0][2]
    # RFC 5321 §4.5.2: transparency; CR LF line ends on the wire.
    assert b"\r\n..leading dot\r\n...two\r\nplain\r\n" in data
    assert b"x" * 5000 + b"\r\n" in data


def test_451_defers_then_delivers(make_poshta, scripted):
    peer = scripted(verdicts=["451 4.3.0 try again later", "250 2.0.0 Ok: queued as Y"])
    p = make_poshta(extra=f"relayhost = [127.0.0.1]:{peer.port}\n" + RETRY)
    send(p, ["later@elsewhere.example"])
    wait_for(lambda: "status=deferred" in p.logtext(), what="deferral")
    log = p.logtext()
    assert "status=deferred (host 127.0.0.1[127.0.0.1]" in log and "451 4.3.0 try again later" in log
    # The queue shows the reason until the retry (or the retry already happened).
    out = p.cli("queue").stdout
    assert "451 4.3.0 try again later" in out or peer.messages
    wait_for(lambda: peer.messages, timeout=20, what="retry")
    assert peer.messages[0][1] == ["later@elsewhere.example"]
    wait_for(lambda: "Mail queue is empty" in p.cli("queue").stdout, what="an empty queue")


def test_550_bounces(make_poshta, scripted):
    peer = scripted(rcpt_reply="550 5.1.1 <nobody@elsewhere.example>: Recipient address rejected")
    p = make_poshta(extra=f"relayhost = [127.0.0.1]:{peer.port}\n" + RETRY)
    send(p, ["nobody@elsewhere.example"], sender="")
    wait_for(lambda: "status=bounced" in p.logtext(), what="bounce")
    assert "550 5.1.1 <nobody@elsewhere.example>: Recipient address rejected" in p.logtext()
    assert "(in reply to RCPT TO command)" in p.logtext()
    wait_for(lambda: "Mail queue is empty" in p.cli("queue").stdout, what="an empty queue")
    assert not peer.messages


def test_connection_refused_defers_with_reason(make_poshta):
    port = free_port()  # nobody listens
    p = make_poshta(extra=f"relayhost = [127.0.0.1]:{port}\n")
    send(p, ["x@elsewhere.example"])
    out = wait_for(lambda: (lambda o: o if "Connection refused" in o else None)(p.cli("queue").stdout),
                   what="deferral")
    assert f"connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused" in out


def test_unknown_host_defers(make_poshta):
    p = make_poshta(extra="relayhost = [no-such-host.invalid]:25\n")
    send(p, ["x@elsewhere.example"])
    out = wait_for(lambda: (lambda o: o if "Host or domain name not found" in o else None)(p.cli("queue").stdout),
                   what="deferral")
    assert "no-such-host.invalid" in out


def test_no_relayhost_needs_mx(make_poshta):
    """Without a relayhost the MX lookup goes to DNS; a resolver that does not answer defers
    (tests/e2e/test_mx.py has the DNS server)."""
    p = make_poshta()
    send(p, ["x@elsewhere.example"])
    wait_for(lambda: "type=MX: Host not found, try again" in p.cli("queue").stdout, what="deferral")


def test_hosts_file_name_and_transport_maps(make_poshta, scripted):
    """transport_maps routes one domain to a peer by a name from /etc/hosts (localhost)."""
    peer = scripted()
    p = make_poshta(start=False)
    with open(os.path.join(p.dir, "transport"), "w") as f:
        f.write(f"lan.test smtp:[localhost]:{peer.port}\n")
    p.extra = f"transport_maps = hash:{p.dir}/transport\ndisable_dns_lookups = yes\n"
    p.write_config(p.extra)
    p.start()
    send(p, ["box@lan.test"])
    wait_for(lambda: peer.messages, what="delivery")
    assert peer.messages[0][1] == ["box@lan.test"]


def test_expired_message_bounces(make_poshta, scripted):
    peer = scripted(verdicts=["451 4.3.0 busy"])
    p = make_poshta(extra=f"relayhost = [127.0.0.1]:{peer.port}\nmaximal_queue_lifetime = 0\n")
    send(p, ["x@elsewhere.example"], sender="")
    wait_for(lambda: "status=bounced" in p.logtext(), what="bounce")
    assert "message expired" in p.logtext()


def parse_dsn(raw):
    msg = email.message_from_bytes(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    status = [p for p in parts if p.get_content_type() == "message/delivery-status"]
    assert status, "no message/delivery-status part"
    # email parses message/delivery-status as a list of header blocks.
    blocks = status[0].get_payload()
    return msg, blocks


def test_550_from_local_sender_gives_dsn_in_mailbox(make_poshta, scripted):
    peer = scripted(rcpt_reply="550 5.1.1 <gone@elsewhere.example>: Recipient address rejected: unknown")
    p = make_poshta(extra=f"relayhost = [127.0.0.1]:{peer.port}\n")
    send(p, ["gone@elsewhere.example"], sender="alice@example.org",
         body="Subject: will bounce\nMessage-ID: <orig-1@example.org>\n\noriginal text\n")
    msgs = p.wait_messages("alice", 1)
    raw = p.read(msgs[0])
    assert b"Return-Path: <>" in raw
    msg, blocks = parse_dsn(raw)
    per_rcpt = blocks[-1]
    assert per_rcpt["Status"].startswith("5.1.1")
    assert per_rcpt["Action"] == "failed"
    assert "gone@elsewhere.example" in per_rcpt["Final-Recipient"]
    diag = " ".join(per_rcpt["Diagnostic-Code"].split())
    assert diag.startswith("smtp;") and "550 5.1.1 <gone@elsewhere.example>: Recipient address rejected" in diag
    assert b"original text" in raw  # the original is returned
    assert "sender non-delivery notification" in p.logtext()
    wait_for(lambda: "Mail queue is empty" in p.cli("queue").stdout, what="an empty queue")


def test_unknown_local_recipient_bounce_gives_dsn(make_poshta):
    """A mailbox user removed after the message was accepted: the sender gets a DSN."""
    p = make_poshta(extra="delivery_paused = yes\n")
    send(p, ["bob@example.org"], sender="alice@example.org")
    p.cli("user", "del", "bob", check=False)
    p.write_config("")
    p.stop()
    p.start()
    msgs = p.wait_messages("alice", 1)
    msg, blocks = parse_dsn(p.read(msgs[0]))
    assert blocks[-1]["Status"].startswith("5.1.1")
    assert "bob@example.org" in blocks[-1]["Final-Recipient"]


def test_null_sender_never_gets_dsn(make_poshta, scripted):
    peer = scripted(rcpt_reply="550 5.1.1 no")
    p = make_poshta(extra=f"relayhost = [127.0.0.1]:{peer.port}\n")
    send(p, ["gone@elsewhere.example"], sender="")
    wait_for(lambda: "status=bounced" in p.logtext(), what="bounce")
    wait_for(lambda: "Mail queue is empty" in p.cli("queue").stdout, what="an empty queue")
    assert "non-delivery notification" not in p.logtext()


def relay_pair(make_poshta, level="encrypt", ca=True, password="secret-alice"):
    """Instance B: the smarthost (submission with STARTTLS and AUTH, mailboxes for b.example).
    Instance A: relays everything non-local to B's submission port as B's user alice."""
    b = make_poshta(extra="mydestination = b.example, $myhostname\n")
    a = make_poshta(start=False)
    pw = os.path.join(a.dir, "sasl_passwd")
    with open(pw, "w") as f:
        f.write(f"[localhost]:{b.sub_port} alice:{password}\n")
    a.extra = (f"relayhost = [localhost]:{b.sub_port}\nsmtp_sasl_auth_enable = yes\n"
               f"smtp_sasl_password_maps = hash:{pw}\nsmtp_tls_security_level = {level}\n"
               + (f"smtp_tls_CAfile = {b.ca}\n" if ca else f"smtp_tls_CAfile = {a.ca}\n") + RETRY)
    a.write_config(a.extra)
    a.start()
    return a, b


def test_starttls_auth_relay_to_poshta(make_poshta):
    a, b = relay_pair(make_poshta)
    send(a, ["bob@b.example"], sender="alice@b.example", body="Subject: via smarthost\n\nover TLS\n")
    msgs = b.wait_messages("bob", 1)
    raw = b.read(msgs[0])
    assert b"over TLS" in raw
    # B's Received: line records the authenticated, encrypted submission.
    assert b"ESMTPSA" in raw or b"TLS" in raw
    assert f"relay=localhost[127.0.0.1]:{b.sub_port}" in a.logtext()
    wait_for(lambda: "Mail queue is empty" in a.cli("queue").stdout, what="an empty queue")


def test_untrusted_certificate_defers_never_plaintext(make_poshta):
    # A trusts its own certificate, not B's: the handshake fails, nothing is sent.
    a, b = relay_pair(make_poshta, ca=False)
    send(a, ["bob@b.example"], sender="alice@b.example")
    out = wait_for(lambda: (lambda o: o if "TLS handshake" in o else None)(a.cli("queue").stdout),
                   what="deferral")
    assert "failed" in out
    time.sleep(0.5)
    assert not b.new_messages("bob")


def test_wrong_password_defers(make_poshta):
    a, b = relay_pair(make_poshta, password="wrong")
    send(a, ["bob@b.example"], sender="alice@b.example")
    wait_for(lambda: "status=deferred" in a.logtext(), what="deferral")
    assert "535" in a.logtext()
    assert not b.new_messages("bob")


def test_wrappermode_465(make_poshta):
    b = make_poshta(extra="mydestination = b.example, $myhostname\n")
    a = make_poshta(start=False)
    pw = os.path.join(a.dir, "sasl_passwd")
    with open(pw, "w") as f:
        f.write(f"[localhost]:{b.subs_port} alice:secret-alice\n")
    a.extra = (f"relayhost = [localhost]:{b.subs_port}\nsmtp_sasl_auth_enable = yes\n"
               f"smtp_sasl_password_maps = {pw}\nsmtp_tls_security_level = encrypt\n"
               f"smtp_tls_wrappermode = yes\nsmtp_tls_CAfile = {b.ca}\n")
    a.write_config(a.extra)
    a.start()
    send(a, ["bob@b.example"], sender="alice@b.example")
    b.wait_messages("bob", 1)


def test_encrypt_without_starttls_offer_defers(make_poshta, scripted):
    peer = scripted()  # offers no STARTTLS
    p = make_poshta(extra=f"relayhost = [127.0.0.1]:{peer.port}\nsmtp_tls_security_level = encrypt\n"
                          f"smtp_tls_CAfile = /dev/null\n")
    send(p, ["x@elsewhere.example"])
    wait_for(lambda: "status=deferred" in p.logtext(), what="deferral")
    assert "TLS is required" in p.logtext()
    assert not peer.messages


def test_silent_peer_times_out(make_poshta):
    """A peer that accepts the connection and never greets: smtp_helo_timeout defers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    try:
        port = srv.getsockname()[1]
        p = make_poshta(extra=f"relayhost = [127.0.0.1]:{port}\nsmtp_helo_timeout = 1s\n")
        send(p, ["x@elsewhere.example"])
        wait_for(lambda: "status=deferred" in p.logtext(), timeout=15, what="deferral")
        assert "timed out while receiving the initial server greeting" in p.logtext()
    finally:
        srv.close()


def test_garbage_peer_defers(make_poshta):
    """A peer answering nonsense: malformed reply, deferred, the message stays queued."""
    srv = socketserver.TCPServer(("127.0.0.1", 0), type("G", (socketserver.BaseRequestHandler,), {
        "handle": lambda self: self.request.sendall(b"\x00\xffHELLO garbage\r\n" * 3)}))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        p = make_poshta(extra=f"relayhost = [127.0.0.1]:{srv.server_address[1]}\n")
        send(p, ["x@elsewhere.example"])
        wait_for(lambda: "status=deferred" in p.logtext(), what="deferral")
        assert "malformed reply" in p.logtext()
        assert "x@elsewhere.example" in p.cli("queue").stdout
    finally:
        srv.shutdown()
        srv.server_close()


def test_recipient_limit_splits_transactions_in_one_session(make_poshta, scripted):
    peer = scripted()
    p = make_poshta(extra=f"relayhost = [127.0.0.1]:{peer.port}\nsmtp_destination_recipient_limit = 2\n")
    send(p, ["r1@elsewhere.example", "r2@elsewhere.example", "r3@elsewhere.example"])
    wait_for(lambda: len(peer.messages) >= 2, what="two transactions")
    wait_for(lambda: "Mail queue is empty" in p.cli("queue").stdout, what="an empty queue")
    assert sorted(len(m[1]) for m in peer.messages) == [1, 2]
    assert peer.connections == 1, "the second transaction reuses the connection (RSET)"
