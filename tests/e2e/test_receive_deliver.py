"""Receive and deliver, end to end, with real clients (Python smtplib, swaks)."""
import email
import email.policy
import os
import random
import signal
import smtplib
import subprocess
import threading
import time

import pytest

from conftest import wait_for


def send(p, to, body="Subject: hello\r\n\r\nHi there.\r\n", sender="carol@remote.example", source=None):
    kw = {"source_address": (source, 0)} if source else {}
    with smtplib.SMTP("127.0.0.1", p.port, timeout=20, **kw) as c:
        return c.sendmail(sender, to, body)


def parse(p, path):
    return email.message_from_bytes(p.read(path), policy=email.policy.default)


def test_smtplib_delivers_to_maildir_with_trace_headers(poshta):
    send(poshta, ["alice@example.org"], "Subject: first\r\nFrom: carol@remote.example\r\n\r\nline one\r\n.dot line\r\n")
    [path] = poshta.wait_messages("alice", 1)
    raw = poshta.read(path)
    assert b"\r\n" not in raw, "Maildir files use LF line ends"
    m = parse(poshta, path)
    assert m["Subject"] == "first"
    assert m["Return-Path"] == "<carol@remote.example>"
    assert m["Delivered-To"] == "alice@example.org"
    assert "by mx.example.org (poshta) with ESMTP id" in m["Received"]
    assert "for <alice@example.org>" in m["Received"]
    # RFC 5322 §3.6: Date and Message-ID were missing, so poshta added them.
    assert m["Date"] and m["Message-ID"].endswith("@mx.example.org>")
    assert m.get_content() == "line one\n.dot line\n"
    name = os.path.basename(path)
    assert ",S=%d" % len(raw) in name
    assert os.listdir(os.path.join(poshta.maildir("alice"), "tmp")) == []


def test_existing_date_and_message_id_are_kept(poshta):
    send(poshta, ["bob@example.org"],
         "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <keep@me>\r\nSubject: x\r\n\r\nbody\r\n")
    [path] = poshta.wait_messages("bob", 1)
    m = parse(poshta, path)
    assert m["Message-ID"] == "<keep@me>"
    assert len(m.get_all("Date")) == 1
    assert b"\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n" in poshta.read(path)


def test_one_copy_per_recipient_and_case_insensitive(poshta):
    send(poshta, ["alice@example.org", "BOB@EXAMPLE.ORG"])
    poshta.wait_messages("alice", 1)
    poshta.wait_messages("bob", 1)
    time.sleep(0.3)
    assert len(poshta.new_messages("alice")) == 1


def test_a_recipient_named_again_gets_one_copy(poshta):
    """The same mailbox named 200 times in one transaction (as sent, and in other cases,
    which poshta resolves to the same user) is accepted and delivered once: otherwise one
    message of message_size_limit becomes smtpd_recipient_limit copies on the disk. A
    different user in the same transaction still gets hers."""
    names = ["alice@example.org"] * 150 + ["ALICE@example.org", "Alice@EXAMPLE.ORG"] * 25 + ["bob@example.org"]
    with smtplib.SMTP("127.0.0.1", poshta.port, timeout=20) as c:
        c.ehlo("client.example")
        c.mail("carol@remote.example")
        for n in names:
            code, _ = c.rcpt(n)
            assert code == 250, n
        code, _ = c.data(b"Subject: once\r\n\r\nonce\r\n")
        assert code == 250
    poshta.wait_messages("alice", 1)
    poshta.wait_messages("bob", 1)
    wait_for(lambda: "status=sent" in poshta.logtext() and poshta.logtext().count("status=sent") >= 2, p=poshta)
    time.sleep(0.5)
    assert len(poshta.new_messages("alice")) == 1
    assert len(poshta.new_messages("bob")) == 1
    assert "nrcpt=2" in poshta.logtext(), poshta.logtext()[-2000:]


def test_unknown_local_user_is_refused_550_511(poshta):
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        send(poshta, ["no-such-user@example.org"])
    code, text = e.value.recipients["no-such-user@example.org"]
    assert code == 550 and text.startswith(b"5.1.1")
    assert "NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 550 5.1.1" in poshta.logtext()


def test_relay_denied_outside_mynetworks(poshta):
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        send(poshta, ["someone@elsewhere.example"], source="127.0.0.2")
    code, text = e.value.recipients["someone@elsewhere.example"]
    assert (code, text) == (554, b"5.7.1 <someone@elsewhere.example>: Relay access denied")
    assert "Mail queue is empty" in poshta.cli("queue").stdout


def test_relay_from_mynetworks_is_queued_and_listed(poshta):
    send(poshta, ["someone@elsewhere.example"], sender="scanner@lan.example")
    deadline = time.time() + 10
    out = ""
    while time.time() < deadline:
        out = poshta.cli("queue").stdout
        if "try again" in out:
            break
        time.sleep(0.1)
    lines = out.splitlines()
    assert lines[0] == "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
    assert "scanner@lan.example" in lines[1]
    # The MX lookup goes to the tests' resolver, where nothing answers (conftest.py): deferred.
    assert "(Host or domain name not found. Name service error for name=elsewhere.example type=MX" in out
    assert " " * 41 + "someone@elsewhere.example" in lines
    assert lines[-1] == "-- 0 Kbytes in 1 Request."


def test_swaks_delivers(poshta):
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{poshta.port}", "--to", "alice@example.org",
                        "--from", "dave@remote.example", "--header", "Subject: via swaks",
                        "--body", "sent by swaks"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    [path] = poshta.wait_messages("alice", 1)
    m = parse(poshta, path)
    assert m["Subject"] == "via swaks"
    assert "sent by swaks" in m.get_content()


def test_swaks_pipelining_and_chunking(poshta):
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{poshta.port}", "--to", "alice@example.org,bob@example.org",
                        "--pipeline", "--body", "pipelined"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PIPELINING" in r.stdout and "CHUNKING" in r.stdout
    poshta.wait_messages("alice", 1)
    poshta.wait_messages("bob", 1)


def test_swaks_unknown_user_fails(poshta):
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{poshta.port}", "--to", "zed@example.org"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "550 5.1.1" in r.stdout


def test_bdat_via_smtplib(poshta):
    with smtplib.SMTP("127.0.0.1", poshta.port, timeout=20) as c:
        c.ehlo("client.example")
        assert c.has_extn("chunking")
        c.mail("carol@remote.example")
        c.rcpt("alice@example.org")
        body = b"Subject: chunked\r\n\r\npart one\r\npart two\r\n"
        c.send(b"BDAT %d\r\n" % 20 + body[:20])
        assert c.getreply()[0] == 250
        rest = body[20:]
        c.send(b"BDAT %d LAST\r\n" % len(rest) + rest)
        code, text = c.getreply()
        assert code == 250 and b"queued as" in text
    [path] = poshta.wait_messages("alice", 1)
    assert parse(poshta, path).get_content() == "part one\npart two\n"


def test_message_over_size_limit_is_refused_and_not_kept(make_poshta):
    p = make_poshta("message_size_limit = 20000")
    big = "Subject: big\r\n\r\n" + ("x" * 998 + "\r\n") * 40
    with smtplib.SMTP("127.0.0.1", p.port, timeout=20) as c:
        c.ehlo()
        c.mail("carol@remote.example")  # no SIZE=: the limit is found during DATA
        c.rcpt("alice@example.org")
        code, text = c.data(big)
        assert (code, text) == (552, b"5.3.4 Error: message file too big")
        # The session survives and the next message goes through.
        assert c.sendmail("carol@remote.example", ["alice@example.org"], "Subject: small\r\n\r\nok\r\n") == {}
    [path] = p.wait_messages("alice", 1)
    assert parse(p, path)["Subject"] == "small"


def test_size_parameter_over_limit_refused_at_mail(make_poshta):
    p = make_poshta("message_size_limit = 20000")
    with smtplib.SMTP("127.0.0.1", p.port, timeout=20) as c:
        c.ehlo()
        assert c.esmtp_features["size"] == "20000"
        code, _ = c.mail("carol@remote.example", ["SIZE=50000"])
        assert code == 552


def test_smuggling_bare_lf_outside_mynetworks_gets_521(poshta, raw):
    r = raw(poshta.port, source="127.0.0.2")
    assert r.reply()[0] == 220
    assert r.cmd("EHLO evil.example")[0] == 250
    assert r.cmd("MAIL FROM:<a@evil.example>")[0] == 250
    assert r.cmd("RCPT TO:<alice@example.org>")[0] == 250
    assert r.cmd("DATA")[0] == 354
    r.send("Subject: x\r\n\r\nhello\n.\nMAIL FROM:<b@evil.example>\r\n.\r\n")
    code, lines = r.reply()
    assert code == 521 and "bare <LF>" in lines[0]
    assert r.closed()
    time.sleep(0.5)
    assert poshta.new_messages("alice") == []


def test_smuggling_in_normalize_mode_cannot_end_data_early(poshta, raw):
    """From mynetworks bare LF is normalised, but only CR LF . CR LF ends the data: the
    smuggled second transaction is part of the first message's body."""
    r = raw(poshta.port)
    r.reply()
    r.cmd("EHLO lan.example")
    r.cmd("MAIL FROM:<a@lan.example>")
    r.cmd("RCPT TO:<alice@example.org>")
    assert r.cmd("DATA")[0] == 354
    r.send("Subject: one\r\n\r\nbody\n.\nMAIL FROM:<x@lan.example>\nRCPT TO:<bob@example.org>\nDATA\nSubject: two\n\r\n.\r\n")
    code, lines = r.reply()
    assert code == 250
    assert r.cmd("QUIT")[0] == 221
    [path] = poshta.wait_messages("alice", 1)
    content = poshta.read(path)
    assert b"RCPT TO:<bob@example.org>" in content
    time.sleep(0.5)
    assert poshta.new_messages("bob") == []


def test_long_command_line_500_and_session_continues(poshta, raw):
    r = raw(poshta.port)
    r.reply()
    r.cmd("EHLO x.example")
    code, lines = r.cmd("MAIL FROM:<" + "a" * 600 + "@x.example>")
    assert code == 500 and lines[0].startswith("500 5.5.2")
    assert r.cmd("NOOP")[0] == 250


def test_nul_and_8bit_in_command_are_refused(poshta, raw):
    r = raw(poshta.port)
    r.reply()
    r.cmd("EHLO x.example")
    assert r.cmd("MAIL FROM:<a\x00b@x.example>")[0] == 500
    r.send(b"MAIL FROM:<\xff\xfe@x.example>\r\n")
    assert r.reply()[0] in (500, 501, 553)
    assert r.cmd("MAIL FROM:<ok@x.example>")[0] == 250


def test_sequence_errors(poshta, raw):
    r = raw(poshta.port)
    r.reply()
    assert r.cmd("MAIL FROM:<a@x.example>")[1][0].startswith("503 5.5.1")
    r.cmd("EHLO x.example")
    assert r.cmd("RCPT TO:<alice@example.org>")[0] == 503
    assert r.cmd("DATA")[0] == 503
    r.cmd("MAIL FROM:<a@x.example>")
    assert r.cmd("RCPT TO:<no-such-user@example.org>")[0] == 550
    assert r.cmd("DATA")[1][0].startswith("554 5.5.1")


def test_disconnect_mid_data_queues_nothing(poshta, raw):
    r = raw(poshta.port)
    r.reply()
    r.cmd("EHLO x.example")
    r.cmd("MAIL FROM:<a@x.example>")
    r.cmd("RCPT TO:<alice@example.org>")
    r.cmd("DATA")
    r.send("Subject: half\r\n\r\nhalf a messa")
    r.close()
    time.sleep(0.5)
    send(poshta, ["bob@example.org"])
    poshta.wait_messages("bob", 1)
    assert poshta.new_messages("alice") == []
    assert "Mail queue is empty" in poshta.cli("queue").stdout


def test_idle_timeout_421(make_poshta, raw):
    p = make_poshta("smtpd_timeout = 1s")
    r = raw(p.port)
    r.reply()
    start = time.time()
    code, lines = r.reply()
    assert code == 421 and lines[0].startswith("421 4.4.2")
    assert time.time() - start < 10
    assert r.closed()


def test_session_cap_answers_421(make_poshta, raw):
    p = make_poshta("smtpd_sessions_max = 2")
    a, b = raw(p.port), raw(p.port)
    assert a.reply()[0] == 220 and b.reply()[0] == 220
    c = raw(p.port)
    code, lines = c.reply()
    assert code == 421 and lines[0].startswith("421 4.7.0")
    a.cmd("QUIT")
    time.sleep(0.3)
    d = raw(p.port)
    assert d.reply()[0] == 220


def test_slow_client_does_not_block_others(poshta, raw):
    slow = raw(poshta.port)
    slow.reply()
    slow.cmd("EHLO slow.example")
    slow.cmd("MAIL FROM:<a@x.example>")
    slow.cmd("RCPT TO:<alice@example.org>")
    slow.cmd("DATA")
    slow.send("Subject: slow\r\n\r\nstill typing")
    errors = []

    def worker(i):
        try:
            send(poshta, ["bob@example.org"], f"Subject: n{i}\r\n\r\nx\r\n")
        except Exception as e:  # noqa
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert errors == []
    poshta.wait_messages("bob", 20)
    slow.send("\r\n.\r\n")
    assert slow.reply()[0] == 250
    poshta.wait_messages("alice", 1)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_acknowledged_mail_survives_restart(make_poshta, how):
    """Delivery paused: 20 acknowledged messages sit in the queue; after a stop (clean, or
    kill -9) and a start with delivery on, every one is delivered exactly once."""
    p = make_poshta("delivery_paused = yes")
    for i in range(20):
        send(p, ["alice@example.org"], f"Subject: m{i}\r\n\r\nbody {i}\r\n")
    out = p.cli("queue").stdout
    assert out.rstrip().endswith("in 20 Requests."), out
    assert p.new_messages("alice") == []
    p.stop(how)
    # The daemon is down: the queue is read from the segments. After kill -9 the live one
    # still ends in the zeros written ahead of its records (queue::log::FileSink); after a
    # clean stop it was cut to its records. Either way all 20 are listed.
    out = p.cli("queue").stdout
    assert out.rstrip().endswith("in 20 Requests."), out
    p.write_config("delivery_paused = no")
    p.start()
    msgs = p.wait_messages("alice", 20)
    time.sleep(0.5)
    assert len(p.new_messages("alice")) == 20
    subjects = sorted(parse(p, m)["Subject"] for m in msgs)
    assert subjects == sorted(f"m{i}" for i in range(20))
    deadline = time.time() + 10
    while "Mail queue is empty" not in p.cli("queue").stdout and time.time() < deadline:
        time.sleep(0.1)
    assert "Mail queue is empty" in p.cli("queue").stdout


def test_kill_9_under_load_loses_no_acknowledged_message(make_poshta):
    """kill -9 while eight clients send and delivery runs (group commits, delivery batches
    and Delivered records all in flight): after a restart every message that got its 250 is
    in the Maildir, and every file in new/ is whole. What was in flight may come twice
    (delivered, its Delivered record not yet durable) or arrive without its 250 having been
    read: at least once, never lost, never torn."""
    p = make_poshta()
    acked, lock, stop = set(), threading.Lock(), threading.Event()
    line = "x" * 70 + "\r\n"

    def client(k):
        for i in range(500):  # bounded; the kill ends it long before
            if stop.is_set():
                return
            mid = f"k{k}-{i}"
            try:
                with smtplib.SMTP("127.0.0.1", p.port, timeout=10) as c:
                    c.sendmail("carol@remote.example", ["alice@example.org"],
                               f"Subject: {mid}\r\n\r\n{line * 20}end {mid}\r\n")
            except (smtplib.SMTPException, OSError):
                return  # the server is gone
            # sendmail returned: the 250 after the data was read.
            with lock:
                acked.add(mid)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    # A different moment each run: the kill lands in a commit, a delivery batch, a segment's
    # Delivered records or between them.
    kill_at = random.randint(100, 300)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(acked) < kill_at and any(t.is_alive() for t in threads):
            time.sleep(0.002)
        assert len(acked) >= kill_at, f"only {len(acked)} acknowledged before the kill\n" + p.logtext()[-3000:]
        p.stop(signal.SIGKILL)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    with lock:
        acknowledged = set(acked)
    p.start()
    deadline = time.time() + 60
    while "Mail queue is empty" not in p.cli("queue").stdout and time.time() < deadline:
        time.sleep(0.1)
    assert "Mail queue is empty" in p.cli("queue").stdout, p.logtext()[-3000:]
    delivered = {}
    for path in p.new_messages("alice"):
        raw = p.read(path)
        m = email.message_from_bytes(raw, policy=email.policy.default)
        mid = m["Subject"]
        # Whole: the last line of what the client sent is there (Maildir: tmp/, fsync, rename).
        assert raw.endswith(f"end {mid}\r\n".encode()) or raw.endswith(f"end {mid}\n".encode()), path
        delivered[mid] = delivered.get(mid, 0) + 1
    missing = sorted(acknowledged - set(delivered))
    assert not missing, f"{len(missing)} acknowledged messages lost: {missing[:10]}"
    # Not acknowledged yet delivered: committed, but the kill came before the client read
    # its 250: at most one per client.
    assert len(set(delivered) - acknowledged) <= len(threads)
    # Twice: delivered before the kill, its Delivered record not yet written. At most what
    # delivery had in flight (a few batches of up to 32).
    twice = [m for m, n in delivered.items() if n > 1]
    assert all(n <= 2 for n in delivered.values()) and len(twice) <= 128, twice
    assert "corrupt" not in p.logtext().lower()
    print(f"acknowledged {len(acknowledged)}, delivered {len(delivered)}, twice {len(twice)}")


def test_sighup_reloads_users(poshta):
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(poshta, ["erin@example.org"])
    poshta.add_user("erin", "pw-erin")
    poshta.hup()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            send(poshta, ["erin@example.org"])
            break
        except smtplib.SMTPRecipientsRefused:
            time.sleep(0.1)
    poshta.wait_messages("erin", 1)
    assert "reload" in poshta.logtext()


def test_user_add_counts_as_soon_as_it_returns(poshta):
    """`poshta user add` asks the daemon to reload over the control socket and returns only
    once the daemon uses the new users file: mail to the new user is accepted at once, with no
    retry loop (before, the reply came before the reload and an immediate login could fail)."""
    for i in range(5):
        name = f"fresh{i}"
        r = poshta.add_user(name, f"pw-{name}")
        assert "warning" not in r.stdout + r.stderr, r.stdout + r.stderr
        send(poshta, [f"{name}@example.org"], f"Subject: for {name}\r\n\r\nhi\r\n")
    for i in range(5):
        poshta.wait_messages(f"fresh{i}", 1)


def test_sigterm_exits_cleanly(poshta):
    send(poshta, ["alice@example.org"])
    poshta.wait_messages("alice", 1)
    assert poshta.stop(signal.SIGTERM) == 0


def test_sigterm_tells_a_waiting_session_421_and_later_waits_see_it_too(poshta, raw):
    """RFC 5321 §3.8: a session waiting for its next command when the server shuts down
    gets 421 and is closed; the daemon still exits cleanly. The session has waited for
    input several times before (its one idle timer and shutdown listener are reused)."""
    r = raw(poshta.port)
    assert r.reply()[0] == 220
    for _ in range(3):
        assert r.cmd("NOOP")[0] == 250
    assert poshta.stop(signal.SIGTERM) == 0
    code, lines = r.reply()
    assert code == 421 and lines[0].startswith("421 4.3.2"), lines
    assert r.closed()


def test_large_message_streams_with_bounded_memory(make_poshta):
    """A 30 MiB message: the server's peak RSS stays far below the message size."""
    poshta = make_poshta("message_size_limit = 104857600")
    line = "y" * 998 + "\r\n"
    body = "Subject: large\r\n\r\n" + line * (30 * 1024 * 1024 // len(line))
    send(poshta, ["alice@example.org"], body)
    [path] = poshta.wait_messages("alice", 1, timeout=60)
    assert os.path.getsize(path) > 30 * 1000 * 1000
    assert poshta.rss_kib() < 24 * 1024, f"peak RSS {poshta.rss_kib()} KiB"


def small_tmpfs(tmp_path, name, size="1m"):
    """A small tmpfs under tmp_path (root only); the caller unmounts it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    d = tmp_path / name
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount tmpfs here: " + r.stderr.decode())
    return d


def test_disk_full_gets_452_and_server_keeps_serving(tmp_path, make_poshta):
    """The queue's file system fills up during DATA: 452 4.3.1, nothing half-written stays,
    the next message that fits is taken. message_size_limit = 0 (no limit) turns the
    free-space check at MAIL off, and no SIZE is sent, so the write itself runs out."""
    spool = small_tmpfs(tmp_path, "smallspool")
    try:
        p = make_poshta(f"queue_directory = {spool}\nmessage_size_limit = 0")
        big = "Subject: big\r\n\r\n" + ("z" * 998 + "\r\n") * 2000
        with smtplib.SMTP("127.0.0.1", p.port, timeout=20) as c:
            c.ehlo("client.example")
            assert c.mail("carol@remote.example")[0] == 250
            assert c.rcpt("alice@example.org")[0] == 250
            # smtplib's data() returns the final reply rather than raising.
            code, text = c.data(big)
            assert code == 452 and b"4.3.1" in text, (code, text)
        send(p, ["alice@example.org"], "Subject: small\r\n\r\nfits\r\n")
        [path] = p.wait_messages("alice", 1)
        assert parse(p, path)["Subject"] == "small"
        p.stop()
        p.start()
        time.sleep(1)
        assert len(p.new_messages("alice")) == 1
    finally:
        subprocess.run(["umount", "-l", str(spool)])


def test_full_mailbox_file_system_defers_and_loses_nothing(tmp_path, make_poshta):
    """The Maildirs' file system is full (the queue's is not): the message is acknowledged,
    its delivery fails with ENOSPC and is deferred with the reason in mailq, nothing
    half-written shows in new/ or stays in tmp/, SMTP goes on; once there is room a flush
    delivers it whole."""
    base = small_tmpfs(tmp_path, "smallmail", "1m")
    new = os.path.join(base, "alice", "new")

    def delivered():
        return sorted(os.path.join(new, n) for n in os.listdir(new)) if os.path.isdir(new) else []

    def subject(path):
        with open(path, "rb") as f:
            return email.message_from_bytes(f.read(), policy=email.policy.default)["Subject"]

    try:
        p = make_poshta(f"virtual_mailbox_base = {base}")
        big = "Subject: big\r\n\r\n" + ("z" * 998 + "\r\n") * 700  # ~0.7 MB
        send(p, ["alice@example.org"], big)
        [first] = wait_for(delivered, what="the first message", p=p)
        # The second copy does not fit next to the first.
        send(p, ["alice@example.org"], big.replace("Subject: big", "Subject: second"))
        wait_for(lambda: "No space left on device" in p.cli("queue").stdout, what="a deferral for ENOSPC", p=p)
        assert "status=deferred" in p.logtext()
        assert delivered() == [first]
        assert os.listdir(os.path.join(base, "alice", "tmp")) == []
        # Still serving: a small message is taken and, small enough, delivered.
        send(p, ["alice@example.org"], "Subject: small\r\n\r\nfits\r\n")
        wait_for(lambda: len(delivered()) == 2, what="the small message", p=p)
        # Room again: the deferred message goes out on a flush, whole.
        os.unlink(first)
        p.cli("queue", "flush")
        wait_for(lambda: "Mail queue is empty" in p.cli("queue").stdout, what="the deferred message delivered", p=p)
        assert sorted(subject(m) for m in delivered()) == ["second", "small"]
        [second] = [m for m in delivered() if subject(m) == "second"]
        with open(second, "rb") as f:
            assert f.read().rstrip(b"\r\n").endswith(b"z" * 998)
        p.stop()
    finally:
        subprocess.run(["umount", "-l", str(base)])


def test_mail_is_refused_while_the_queue_file_system_is_short(tmp_path, make_poshta):
    """Postfix's queue_minfree: MAIL gets 452 4.3.1 while the queue's file system has less
    free space than 1.5 x message_size_limit (or queue_minfree, or that plus the SIZE the
    client announced, RFC 1870), before the client sends its message; the server goes on
    answering, and mail flows again with a smaller limit."""
    # 4 MiB: the queue fills 1 MiB ahead of its records (queue::log::FileSink), 3 stay free.
    spool = small_tmpfs(tmp_path, "shortspool", "4m")
    try:
        # The default limit (10240000) asks for 15 MB free: this file system is short.
        p = make_poshta(f"queue_directory = {spool}")
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            send(p, ["alice@example.org"])
        assert e.value.smtp_code == 452 and b"Insufficient system storage" in e.value.smtp_error
        assert "NOQUEUE: reject: MAIL from" in p.logtext()
        # ~3.1 MB free; 1.5 x 1600000 = 2.4 MB fits: a small message goes through, and so
        # does a MAIL announcing 0.5 MB (2.9 MB needed); one announcing 1 MB (3.4 MB) does not.
        p.stop()
        p.write_config(f"queue_directory = {spool}\nmessage_size_limit = 1600000")
        p.start()
        send(p, ["alice@example.org"], "Subject: small\r\n\r\nfits\r\n")
        p.wait_messages("alice", 1)
        with smtplib.SMTP("127.0.0.1", p.port, timeout=20) as c:
            c.ehlo("client.example")
            code, text = c.mail("carol@remote.example", ["SIZE=500000"])
            assert code == 250, text
            c.rset()
            code, text = c.mail("carol@remote.example", ["SIZE=1000000"])
            assert code == 452, text
        # queue_minfree above the free space refuses even a small message.
        p.stop()
        p.write_config(f"queue_directory = {spool}\nmessage_size_limit = 1600000\nqueue_minfree = 8000000")
        p.start()
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            send(p, ["alice@example.org"])
        assert e.value.smtp_code == 452
        p.stop()
    finally:
        subprocess.run(["umount", "-l", str(spool)])
