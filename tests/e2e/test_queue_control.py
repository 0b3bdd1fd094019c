"""Queue control over the daemon's control socket: poshta queue list / flush / hold /
release / delete / show, and the listing and show from disk when the daemon is down.

The message is relayed to 127.0.0.1:1, where nobody listens: every attempt defers
(minimal_backoff_time stays at its default, so only a flush makes a new attempt)."""
import os
import time

import pytest
from conftest import wait_for

RELAY = "relayhost = [127.0.0.1]:1\ndisable_dns_lookups = yes\ndelivery_paused = no\n"


def send(p, rcpts, sender="scanner@lan.example", body="Subject: queue control\n\nthe body line\n"):
    import smtplib
    with smtplib.SMTP("127.0.0.1", p.port, timeout=10) as s:
        s.sendmail(sender, rcpts, body)


def attempts(p):
    return p.logtext().count("status=deferred")


def queue_id(p):
    """The id of the one queued message, from the listing (mark stripped)."""
    out = p.cli("queue").stdout
    lines = out.splitlines()
    assert lines[0].startswith("-Queue ID-"), out
    return lines[1].split()[0].rstrip("!*")


@pytest.fixture
def deferred(make_poshta):
    p = make_poshta(extra=RELAY)
    send(p, ["x@elsewhere.example"])
    wait_for(lambda: attempts(p) >= 1, what="the first deferral")
    wait_for(lambda: "Connection refused" in p.cli("queue").stdout, what="the deferral in the listing")
    return p


def test_flush_retries_now(deferred):
    p = deferred
    n = attempts(p)
    r = p.cli("queue", "flush")
    assert r.returncode == 0
    wait_for(lambda: attempts(p) > n, what="a new attempt after flush")


def test_hold_release_and_restart(deferred):
    p = deferred
    qid = queue_id(p)
    r = p.cli("queue", "hold", qid)
    assert f"poshta: {qid}: held" in r.stderr
    assert "Placed on hold: 1 message" in r.stderr
    out = p.cli("queue").stdout
    assert f"{qid}!" in out.splitlines()[1], out
    # Held: a flush does not make it try again.
    n = attempts(p)
    p.cli("queue", "flush")
    time.sleep(1.5)
    assert attempts(p) == n
    # Held survives a restart, and the listing from disk marks it too.
    p.stop()
    out = p.cli("queue").stdout
    assert f"{qid}!" in out, out
    p.start()
    assert f"{qid}!" in p.cli("queue").stdout
    r = p.cli("queue", "release", "ALL")
    assert f"poshta: {qid}: released" in r.stderr
    out = p.cli("queue").stdout
    assert f"{qid}!" not in out and qid in out
    p.cli("queue", "flush")
    wait_for(lambda: attempts(p) > n, what="an attempt after release and flush")


def test_delete_stays_deleted(deferred):
    p = deferred
    qid = queue_id(p)
    r = p.cli("queue", "delete", qid)
    assert f"poshta: {qid}: deleted" in r.stderr, r.stderr
    assert "Deleted: 1 message" in r.stderr
    assert "Mail queue is empty" in p.cli("queue").stdout
    # Gone for good: deleting again is an unknown id.
    r = p.cli("queue", "delete", qid, check=False)
    assert r.returncode == 1 and f"poshta: {qid}: no such message" in r.stderr
    p.stop()
    assert "Mail queue is empty" in p.cli("queue").stdout
    p.start()
    assert "Mail queue is empty" in p.cli("queue").stdout


def test_show_prints_envelope_and_body(deferred):
    p = deferred
    qid = queue_id(p)
    out = p.cli("queue", "show", qid).stdout
    assert out.startswith(f"*** ENVELOPE RECORDS {qid} ***\n"), out
    assert "sender: scanner@lan.example\n" in out
    assert "recipient: x@elsewhere.example (deferred: " in out
    head, body = out.split(f"*** MESSAGE CONTENTS {qid} ***\n", 1)
    assert "the body line" in body and "Subject: queue control" in body
    assert body.endswith(f"\n*** MESSAGE FILE END {qid} ***\n")


def test_unknown_and_bad_ids(deferred):
    p = deferred
    for action in ("hold", "release", "delete"):
        r = p.cli("queue", action, "ABCDEF", check=False)
        assert r.returncode == 1, r
        assert "poshta: ABCDEF: no such message" in r.stderr
    r = p.cli("queue", "show", "ABCDEF", check=False)
    assert r.returncode == 1 and "ABCDEF: no such message" in r.stderr
    r = p.cli("queue", "hold", "not-hex", check=False)
    assert r.returncode == 1 and "not-hex: no such message" in r.stderr
    r = p.cli("queue", "frobnicate", check=False)
    assert r.returncode == 64 and "usage" in r.stderr
    r = p.cli("queue", "hold", check=False)
    assert r.returncode == 64
    r = p.cli("queue", "hold", "A" * 5000, check=False)
    assert r.returncode == 64
    # One known and one unknown id: the known one is done, the exit status says the other.
    qid = queue_id(p)
    r = p.cli("queue", "hold", qid, "0", check=False)
    assert r.returncode == 1 and f"{qid}: held" in r.stderr and "0: no such message" in r.stderr


def test_hostile_requests_on_the_socket(deferred):
    import socket
    p = deferred
    path = os.path.join(p.dir, "spool", "control")
    # Anyone may connect (mailq); what a caller may do is decided by its uid (SO_PEERCRED).
    assert oct(os.stat(path).st_mode & 0o777) == "0o666"

    def ask(data):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(15)
            s.connect(path)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            out = b""
            while len(out) < 100000:
                chunk = s.recv(4096)
                if not chunk:
                    break
                out += chunk
            return out

    assert ask(b"X" * 4096).startswith(b"ERR request too long")
    # Far over the limit: the daemon stops reading; the unread rest may reset the connection.
    try:
        assert ask(b"X" * 100000).startswith(b"ERR request too long")
    except (ConnectionResetError, BrokenPipeError):
        pass
    assert ask(b"LIST").startswith(b"ERR request incomplete")
    assert ask(b"\xff\xfe\n").startswith(b"ERR request is not UTF-8")
    assert ask(b"DELETE\n").startswith(b"ERR bad request")
    assert ask(b"list\n").startswith(b"OK ")
    # The daemon still answers, and the message is still there.
    assert "Connection refused" in p.cli("queue").stdout


def test_daemon_down(deferred):
    p = deferred
    qid = queue_id(p)
    shown = p.cli("queue", "show", qid).stdout
    p.stop()
    out = p.cli("queue").stdout
    assert qid in out and "Connection refused" in out
    # show reads the log itself when the daemon is down, with the daemon's output.
    assert p.cli("queue", "show", qid).stdout == shown
    r = p.cli("queue", "show", "ABCDEF", check=False)
    assert r.returncode == 1 and "ABCDEF: no such message" in r.stderr
    sock = os.path.join(p.dir, "spool", "control")
    for args in (("flush",), ("hold", qid)):
        r = p.cli("queue", *args, check=False)
        assert r.returncode == 69, r
        assert r.stderr.strip() == f"poshta: fatal: the mail system is down (no control socket at {sock})"


def test_mailq_by_its_own_name(poshta, tmp_path):
    import subprocess
    from conftest import BIN
    link = tmp_path / "mailq"
    link.symlink_to(BIN)
    r = subprocess.run([str(link)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, POSHTA_CONFIG=poshta.cf))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Mail queue is empty\n"
