"""POP3 and POP3S (issue 5) with real clients: Python poplib, fetchmail, getmail6, curl."""
import email
import email.policy
import os
import poplib
import pwd
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from test_receive_deliver import send


def ctx_for(p):
    c = ssl.create_default_context(cafile=p.ca)
    c.check_hostname = False
    return c


def deliver(p, user, n, prefix="m"):
    """Send n messages and wait until all n are in new/ (on top of what is there already:
    messages a POP3 session has not yet moved to cur/ stay in new/)."""
    before = len(p.new_messages(user))
    for i in range(n):
        send(p, [f"{user}@example.org"], f"Subject: {prefix}{i}\r\n\r\nbody {i}\r\n.leading dot\r\n")
    return p.wait_messages(user, before + n)


def subjects_of(lines):
    m = email.message_from_bytes(b"\r\n".join(lines), policy=email.policy.default)
    return m["Subject"]


def pipelined_retr(c, numbers):
    """Send a RETR for each of `numbers` in one write (RFC 2449 PIPELINING) and return the
    multi-line replies in order, each without its terminating CRLF.CRLF (bounded wait)."""
    numbers = list(numbers)
    c.sock.sendall(b"".join(b"RETR %d\r\n" % n for n in numbers))
    data = b""
    deadline = time.time() + 30
    while data.count(b"\r\n.\r\n") < len(numbers) and time.time() < deadline:
        chunk = c.sock.recv(1 << 16)
        assert chunk
        data += chunk
    replies = data.split(b"\r\n.\r\n")[: len(numbers)]
    assert len(replies) == len(numbers), f"{len(replies)} of {len(numbers)} replies"
    return replies


def test_poplib_plain_list_retr_dele_quit(poshta):
    deliver(poshta, "alice", 3)
    c = poplib.POP3("127.0.0.1", poshta.pop3_port, timeout=20)
    assert c.getwelcome().startswith(b"+OK")
    c.user("alice")
    c.pass_("secret-alice")
    count, size = c.stat()
    assert count == 3
    resp, listing, _ = c.list()
    sizes = [int(l.split()[1]) for l in listing]
    assert sum(sizes) == size
    resp, lines, octets = c.retr(1)
    # RFC 1939 §5: the listed size is the message as sent, CR LF line ends, before stuffing.
    assert octets >= sizes[0]
    assert b".leading dot" in lines
    assert subjects_of(lines) == "m0"
    resp, uidl, _ = c.uidl()
    uids = [l.split()[1] for l in uidl]
    assert len(set(uids)) == 3 and all(1 <= len(u) <= 70 for u in uids)
    resp, top, _ = c.top(2, 0)
    assert b"" in top and not any(b"body" in l for l in top)
    c.dele(1)
    assert c.stat()[0] == 2
    c.quit()
    time.sleep(0.2)
    assert len(poshta.new_messages("alice")) + len(os.listdir(os.path.join(poshta.maildir("alice"), "cur"))) == 2
    assert "retr=1/" in poshta.logtext() and "del=1/" in poshta.logtext()


def test_dropped_connection_deletes_nothing(poshta):
    deliver(poshta, "alice", 2)
    c = poplib.POP3("127.0.0.1", poshta.pop3_port, timeout=20)
    c.user("alice")
    c.pass_("secret-alice")
    c.dele(1)
    c.dele(2)
    c.sock.close()  # no QUIT: RFC 1939 §6, nothing is deleted
    time.sleep(0.5)
    c = poplib.POP3("127.0.0.1", poshta.pop3_port, timeout=20)
    c.user("alice")
    c.pass_("secret-alice")
    assert c.stat()[0] == 2
    c.quit()


def test_maildir_new_moves_to_cur_at_quit_not_at_login(poshta):
    """Issue 5: messages stay in new/ until UPDATE. A dropped session (no QUIT) leaves them
    there; LIST+RETR+QUIT without DELE moves the kept ones to cur/ with ":2,"; the UIDs are
    the same from new/ and from cur/."""
    deliver(poshta, "alice", 2)
    md = poshta.maildir("alice")

    def on_disk():
        return sorted(os.listdir(os.path.join(md, "new"))), sorted(os.listdir(os.path.join(md, "cur")))

    def session():
        c = poplib.POP3("127.0.0.1", poshta.pop3_port, timeout=20)
        for _ in range(50):  # a dropped session's lock goes once the server sees the close
            try:
                c.user("alice")
                c.pass_("secret-alice")
                break
            except poplib.error_proto as e:
                assert b"[IN-USE]" in e.args[0], e
                time.sleep(0.1)
        assert len(c.list()[1]) == 2
        uids = [l.split()[1].decode() for l in c.uidl()[1]]
        assert [subjects_of(c.retr(n)[1]) for n in (1, 2)] == ["m0", "m1"]
        return c, uids

    before = on_disk()
    assert len(before[0]) == 2 and before[1] == []
    c, uids = session()
    assert on_disk() == before, "nothing moves at login or RETR"
    c.file.close()  # poplib's reader holds the socket open too
    c.sock.close()  # dropped: RFC 1939 §6, no UPDATE
    del c
    time.sleep(0.5)
    assert on_disk() == before, "a dropped session leaves them in new/"
    c, again = session()
    assert again == uids
    c.quit()
    new, cur = on_disk()
    assert new == [] and cur == sorted(u + ":2," for u in uids), (new, cur)
    c, again = session()
    assert again == uids, "same UIDs from cur/"
    c.quit()
    assert on_disk() == ([], cur)


def test_second_session_gets_in_use(poshta):
    a = poplib.POP3("127.0.0.1", poshta.pop3_port, timeout=20)
    a.user("alice")
    a.pass_("secret-alice")
    b = poplib.POP3("127.0.0.1", poshta.pop3_port, timeout=20)
    b.user("alice")
    with pytest.raises(poplib.error_proto) as e:
        b.pass_("secret-alice")
    assert b"[IN-USE]" in e.value.args[0]
    a.quit()
    b.user("alice")
    b.pass_("secret-alice")
    b.quit()


def test_delivery_during_a_session_appears_in_the_next(poshta):
    deliver(poshta, "alice", 1)
    a = poplib.POP3("127.0.0.1", poshta.pop3_port, timeout=20)
    a.user("alice")
    a.pass_("secret-alice")
    assert a.stat()[0] == 1
    deliver(poshta, "alice", 1, prefix="late")
    assert a.stat()[0] == 1
    a.quit()
    b = poplib.POP3("127.0.0.1", poshta.pop3_port, timeout=20)
    b.user("alice")
    b.pass_("secret-alice")
    assert b.stat()[0] == 2
    b.quit()


def test_stls_and_pop3_ssl(poshta):
    deliver(poshta, "bob", 1)
    c = poplib.POP3("127.0.0.1", poshta.pop3_port, timeout=20)
    assert "STLS" in c.capa()
    c.stls(context=ctx_for(poshta))
    c.user("bob")
    c.pass_("secret-bob")
    assert c.stat()[0] == 1
    c.quit()
    s = poplib.POP3_SSL("127.0.0.1", poshta.pop3s_port, timeout=20, context=ctx_for(poshta))
    s.user("bob")
    s.pass_("secret-bob")
    assert subjects_of(s.retr(1)[1]) == "m0"
    s.quit()


def test_bad_password_and_plaintext_refused_off_host(poshta):
    c = poplib.POP3("127.0.0.1", poshta.pop3_port, timeout=20)
    c.user("alice")
    with pytest.raises(poplib.error_proto) as e:
        c.pass_("wrong")
    assert b"[AUTH]" in e.value.args[0]
    c.quit()
    # From another address than the server's, passwords need TLS first (Dovecot's rule).
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    s.connect(("127.0.0.1", poshta.pop3_port))
    f = s.makefile("rwb")
    assert f.readline().startswith(b"+OK")
    f.write(b"USER alice\r\n")
    f.flush()
    line = f.readline()
    assert line.startswith(b"-ERR [AUTH]"), line
    s.close()


def test_curl_pop3_and_pop3s(poshta):
    deliver(poshta, "alice", 2)
    r = subprocess.run(["curl", "-sS", f"pop3://alice:secret-alice@127.0.0.1:{poshta.pop3_port}/2"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert b"Subject: m1" in r.stdout
    r = subprocess.run(["curl", "-sS", "--cacert", poshta.ca, "--resolve", f"mx.example.org:{poshta.pop3s_port}:127.0.0.1",
                        f"pop3s://alice:secret-alice@mx.example.org:{poshta.pop3s_port}/1"],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert b"Subject: m0" in r.stdout


def fetchmail(p, tmp_path, port, ssl_opts, keep, name):
    out = tmp_path / f"{name}.mbox"
    rc = tmp_path / f"{name}.rc"
    rc.write_text(f"""set no bouncemail
set no syslog
poll 127.0.0.1 service {port} protocol pop3 uidl
    username "alice" password "secret-alice" is "root" here
    {ssl_opts}
    {"keep" if keep else "nokeep"}
    mda "/bin/sh -c 'cat >> {out}'"
""")
    rc.chmod(0o600)
    env = dict(os.environ, FETCHMAILHOME=str(tmp_path), HOME=str(tmp_path))
    r = subprocess.run(["fetchmail", "-f", str(rc), "--idfile", str(tmp_path / f"{name}.ids"), "-v"],
                       capture_output=True, text=True, timeout=120, env=env)
    data = out.read_text() if out.exists() else ""
    return r, data


def test_fetchmail_keep_twice_gets_each_message_once_then_nokeep(poshta, tmp_path):
    deliver(poshta, "alice", 3)
    r, data = fetchmail(poshta, tmp_path, poshta.pop3_port, "sslproto ''", True, "plain")
    assert r.returncode == 0, r.stdout + r.stderr
    assert data.count("Subject: m") == 3
    # Leave on server: the second run sees the same UIDs and fetches nothing new.
    r, data = fetchmail(poshta, tmp_path, poshta.pop3_port, "sslproto ''", True, "plain")
    assert r.returncode in (0, 1), r.stdout + r.stderr  # 1 = no new mail
    assert data.count("Subject: m") == 3
    # POP3S with certificate checking, not keeping: the mailbox ends empty.
    r, data = fetchmail(poshta, tmp_path, poshta.pop3s_port,
                        f"ssl sslcertck sslcertfile {poshta.ca} sslcommonname mx.example.org", False, "tls")
    assert r.returncode == 0, r.stdout + r.stderr
    assert data.count("Subject: m") == 3
    c = poplib.POP3("127.0.0.1", poshta.pop3_port, timeout=20)
    c.user("alice")
    c.pass_("secret-alice")
    assert c.stat()[0] == 0
    c.quit()


def test_getmail6_leave_on_server(poshta, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to make a throwaway user (getmail6 refuses to run as root)")
    deliver(poshta, "bob", 2)
    user = "poshtagm%d" % os.getpid()
    import pathlib
    import tempfile
    home = pathlib.Path(tempfile.mkdtemp(prefix="poshta-getmail-", dir="/tmp"))
    subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/bin/sh", user], check=True)
    try:
        pw = pwd.getpwnam(user)
        maildir = home / "Maildir"
        for d in ("cur", "new", "tmp"):
            (maildir / d).mkdir(parents=True)
        (home / "getmailrc").write_text(f"""[retriever]
type = SimplePOP3Retriever
server = 127.0.0.1
port = {poshta.pop3_port}
username = bob
password = secret-bob

[destination]
type = Maildir
path = {maildir}/

[options]
delete = false
read_all = false
""")
        for root, dirs, files in os.walk(home):
            for n in dirs + files:
                os.chown(os.path.join(root, n), pw.pw_uid, pw.pw_gid)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        cmd = ["runuser", "-u", user, "--", "getmail", "--getmaildir", str(home), "--rcfile", "getmailrc"]
        for _ in range(2):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stdout + r.stderr
        assert len(os.listdir(maildir / "new")) == 2, "each message once, though fetched twice"
    finally:
        subprocess.run(["userdel", user])
        shutil.rmtree(home, ignore_errors=True)


def test_large_mailbox_list_is_fast(poshta):
    """LIST/UIDL answer from file names (,S= and ,W=), not by reading messages."""
    new = os.path.join(poshta.maildir("alice"), "new")
    os.makedirs(new, exist_ok=True)
    body = b"Subject: x\n\nshort\n"
    for i in range(5000):
        name = f"{1700000000 + i}.M{i}P1Q{i}.mx,S={len(body)},W={len(body) + 3}"
        with open(os.path.join(new, name), "wb") as f:
            f.write(body)
    c = poplib.POP3("127.0.0.1", poshta.pop3_port, timeout=60)
    c.user("alice")
    c.pass_("secret-alice")
    start = time.time()
    resp, listing, _ = c.list()
    resp, uidl, _ = c.uidl()
    elapsed = time.time() - start
    assert len(listing) == 5000 and len(uidl) == 5000
    assert elapsed < 5, elapsed
    c.quit()


def test_read_ahead_serves_every_message_exactly(poshta):
    """RETR reads small messages ahead of the client (net::pop3 ReadAhead: batches of 32 KiB
    and 32 messages, the next one read while the client takes this one): every message must still come out exactly as stored, whatever the
    order the client asks in, with large ones (past the budget, past one 64 KiB chunk)
    between small ones, repeated RETRs, TOP, and all RETRs pipelined in one write."""
    new = os.path.join(poshta.maildir("alice"), "new")
    os.makedirs(new, exist_ok=True)
    bodies = []
    for i in range(80):
        if i in (10, 45):
            body = b"Subject: big %d\n\n" % i + b"".join(b"line %06d .x\n" % k for k in range(15000))  # ~210 KiB
        elif i == 20:
            body = b"Subject: chunk\n\n" + b"y" * 63 + b"\n" + (b"z" * 63 + b"\n") * 1021 + b"w" * 111 + b"\n"
            assert len(body) == 65536  # exactly one chunk
        elif i % 3 == 0:
            body = b"Subject: crlf %d\r\n\r\n.dot first\r\nmid\r\n..two dots\r\n" % i
        else:
            body = b"Subject: lf %d\n\n.dot\nno final newline %d" % (i, i)
        bodies.append(body)
        with open(os.path.join(new, f"{1700000000 + i}.M{i}P1Q{i}.mx"), "wb") as f:
            f.write(body)

    def expect(i):
        # What poplib hands back: lines without their ends, dot-stuffing undone.
        return bodies[i].replace(b"\r\n", b"\n").split(b"\n") if not bodies[i].endswith(b"\n") else \
            bodies[i].replace(b"\r\n", b"\n")[:-1].split(b"\n")

    c = poplib.POP3("127.0.0.1", poshta.pop3_port, timeout=60)
    c.user("alice")
    c.pass_("secret-alice")
    assert c.stat()[0] == 80
    for n in range(1, 81):
        assert c.retr(n)[1] == expect(n - 1), n
    assert c.retr(5)[1] == expect(4)  # again, after the read-ahead passed it
    top = c.top(7, 1)[1]
    assert top[0] == expect(6)[0] and len(top) == 3
    for n in (60, 59, 12, 11, 46, 45, 80):
        assert c.retr(n)[1] == expect(n - 1), n
    # Every RETR in one write (RFC 2449 PIPELINING): 80 replies, in order.
    replies = pipelined_retr(c, range(1, 81))
    for n, r in enumerate(replies, 1):
        status, _, text = r.partition(b"\r\n")
        assert status.startswith(b"+OK"), (n, status)
        lines = [l[1:] if l.startswith(b"..") else l for l in text.split(b"\r\n")] if text else []
        assert lines == expect(n - 1), n
    c.sock.sendall(b"QUIT\r\n")
    c.sock.close()


def test_read_ahead_under_way_at_quit_and_at_a_drop(poshta):
    """A RETR served from a read-ahead batch starts reading the next batch on the thread pool.
    The session must not end with that read still holding the maildrop: QUIT right after it
    deletes what was marked and answers +OK, and a dropped connection right after it leaves
    the maildrop free for the next login at once (RFC 1939 §6: nothing deleted)."""
    new = os.path.join(poshta.maildir("alice"), "new")
    os.makedirs(new, exist_ok=True)
    for i in range(200):
        with open(os.path.join(new, f"{1700000000 + i}.M{i}P1Q{i}.mx"), "wb") as f:
            f.write(b"Subject: m %d\n\n" % i + b"x" * 900 + b"\n")

    def login():
        c = poplib.POP3("127.0.0.1", poshta.pop3_port, timeout=30)
        c.user("alice")
        c.pass_("secret-alice")
        return c

    # Dropped: RETR 1 (read from disk, batch 2..), RETR 2 (from memory: the next batch
    # starts), then the connection goes away without QUIT.
    c = login()
    assert c.retr(1)[1][0] == b"Subject: m 0"
    assert c.retr(2)[1][0] == b"Subject: m 1"
    c.close()  # the socket and poplib's file on it: the server reads end of file
    deadline = time.time() + 10
    while True:
        try:
            c = login()  # not -ERR [IN-USE]
            break
        except poplib.error_proto as e:
            assert b"IN-USE" in e.args[0] and time.time() < deadline, e
            time.sleep(0.05)
    assert c.stat()[0] == 200, "a dropped session deletes nothing"
    # QUIT with the next batch under way: the marked messages go, +OK comes.
    assert c.retr(1)[1][0] == b"Subject: m 0"
    assert c.retr(2)[1][0] == b"Subject: m 1"
    c.dele(1)
    c.dele(2)
    assert c.quit().startswith(b"+OK")
    c = login()
    assert c.stat()[0] == 198
    # Pipelined: every RETR, then a jump back and a jump past the batches read so far.
    order = list(range(1, 199)) + [3, 150, 198, 1]
    replies = pipelined_retr(c, order)
    for n, r in zip(order, replies):
        status, _, text = r.partition(b"\r\n")
        assert status.startswith(b"+OK"), (n, status)
        assert text.split(b"\r\n")[0] == b"Subject: m %d" % (n + 1), n
    c.sock.sendall(b"QUIT\r\n")
    c.sock.close()


def test_autologout_counts_from_the_last_wait_not_from_the_first(make_poshta):
    """RFC 1939 §3: a session idle for pop3d_autologout is closed with -ERR and no UPDATE. The
    timer runs from each wait for the client, not from the login: a client that keeps
    talking is never cut off, one that goes quiet is, on time."""
    p = make_poshta(extra="pop3d_autologout = 2s\n")
    new = os.path.join(p.maildir("alice"), "new")
    os.makedirs(new, exist_ok=True)
    with open(os.path.join(new, "1700000000.M1P1Q1.mx"), "wb") as f:
        f.write(b"Subject: x\n\nbody\n")
    c = poplib.POP3("127.0.0.1", p.pop3_port, timeout=30)
    c.user("alice")
    c.pass_("secret-alice")
    c.dele(1)
    # Busy for 4 s, twice the timeout, with a command every 0.5 s: still served.
    start = time.time()
    while time.time() - start < 4:
        assert c.noop().startswith(b"+OK")
        time.sleep(0.5)
    # Quiet: closed after about 2 s, with -ERR, and nothing deleted.
    quiet = time.time()
    line = c.file.readline()
    waited = time.time() - quiet
    assert line.startswith(b"-ERR"), line
    assert 1.5 < waited < 6, waited
    assert c.file.readline() == b""
    c.close()
    assert os.listdir(new) == ["1700000000.M1P1Q1.mx"], "no UPDATE after an autologout"
