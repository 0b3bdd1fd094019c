"""POP3 for system users (issue 5): a passwd user's mbox in mail_spool_directory, written by
Python's mailbox module, served to poplib (plain and STLS), fetchmail and getmail6.

Each test makes a throwaway Linux user (useradd, unique name, removed afterwards) and a
spool directory of its own (mode 1777 with the sticky bit, as some systems keep
/var/mail, so that a dot-lock can be made whichever user poshta or its helper runs as). The
mbox belongs to the user, mode 0600, as local delivery makes it. The tests hold when poshta
runs as root and reaches the mbox itself (today) and when it runs as mail_owner and the
privileged helper opens the mbox for it: they only look at what clients and the file see.
"""
import fcntl
import mailbox
import os
import poplib
import pwd
import re
import shutil
import ssl
import subprocess
import tempfile
import threading
import time

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a throwaway system user")

_seq = [0]


@pytest.fixture
def sysuser():
    """A throwaway system user with a home directory; removed afterwards."""
    _seq[0] += 1
    name = "pmb%d%d" % (os.getpid() % 100000, _seq[0])
    base = tempfile.mkdtemp(prefix="poshta-mbox-")
    os.chmod(base, 0o755)
    home = os.path.join(base, "home")
    spool = os.path.join(base, "spool")
    os.mkdir(home)
    os.mkdir(spool)
    os.chmod(spool, 0o1777)
    subprocess.run(["useradd", "-M", "-d", home, "-s", "/bin/sh", name], check=True)
    try:
        pw = pwd.getpwnam(name)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        yield {"name": name, "uid": pw.pw_uid, "gid": pw.pw_gid, "home": home, "spool": spool,
               "mbox": os.path.join(spool, name), "password": "pw-" + name}
    finally:
        subprocess.run(["userdel", name])
        shutil.rmtree(base, ignore_errors=True)


def message(i, extra=b""):
    return (b"From: sender%d@example.org\nTo: someone@example.org\nSubject: mbox %d\n"
            b"Message-ID: <%d.mbox@example.org>\n\nbody %d\nFrom the start of a line\n"
            b".leading dot\n\n  indented\n%s" % (i, i, i, i, extra))


def write_mbox(u, msgs):
    """Append with Python's mailbox (it quotes `From ` lines and locks the mbox)."""
    mb = mailbox.mbox(u["mbox"])
    mb.lock()
    try:
        for m in msgs:
            mb.add(m)
        mb.flush()
    finally:
        mb.unlock()
        mb.close()
    os.chown(u["mbox"], u["uid"], u["gid"])
    os.chmod(u["mbox"], 0o600)


def on_wire(m):
    """What RETR must give back: the message with CR LF line ends (bare LFs converted)."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", m)


@pytest.fixture
def served(make_poshta, sysuser):
    p = make_poshta(extra=f"mail_spool_directory = {sysuser['spool']}\n", users=(), start=False)
    r = p.cli("user", "add", sysuser["name"], "--system", "--password-stdin", input=sysuser["password"] + "\n")
    assert "system user" in r.stdout
    with open(os.path.join(p.dir, "users")) as f:
        assert f.read().strip().endswith(":system")
    p.start()
    return p, sysuser


def login(p, u, tls=False):
    c = poplib.POP3("127.0.0.1", p.pop3_port, timeout=20)
    if tls:
        ctx = ssl.create_default_context(cafile=p.ca)
        ctx.check_hostname = False
        c.stls(context=ctx)
    c.user(u["name"])
    c.pass_(u["password"])
    return c


def retr(c, n):
    _, lines, _ = c.retr(n)
    return b"".join(l + b"\r\n" for l in lines)


def uidl(c):
    return [l.split()[1] for l in c.uidl()[1]]


def test_add_system_user_needs_a_passwd_entry(make_poshta):
    p = make_poshta(users=(), start=False)
    r = p.cli("user", "add", "nosuchuser%d" % os.getpid(), "--system", "--password-stdin", input="pw\n", check=False)
    assert r.returncode == 1 and "no passwd entry" in r.stderr


def test_list_retr_dele_across_sessions_plain_and_stls(served):
    p, u = served
    msgs = [message(i) for i in range(3)]
    msgs.append(message(3, extra=b"last line\r\nwith a CRLF line end\r\n"))
    write_mbox(u, msgs)
    c = login(p, u)
    count, total = c.stat()
    assert count == 4
    sizes = [int(l.split()[1]) for l in c.list()[1]]
    # RFC 1939 §11: exact sizes, as sent with CR LF line ends.
    assert sizes == [len(on_wire(m)) for m in msgs]
    assert total == sum(sizes)
    for i, m in enumerate(msgs):
        assert retr(c, i + 1) == on_wire(m)
    _, top, _ = c.top(1, 1)
    assert top[-1] == b"body 0" and b"Subject: mbox 0" in top
    uids = uidl(c)
    assert len(set(uids)) == 4 and all(1 <= len(x) <= 70 for x in uids)
    c.dele(2)
    c.quit()
    st = os.stat(u["mbox"])
    assert (st.st_uid, st.st_mode & 0o777) == (u["uid"], 0o600), "owner and mode kept by the rewrite"
    assert not os.path.exists(u["mbox"] + ".lock")
    # A second session (over STLS) sees the deletion; the other ids stay the same.
    c = login(p, u, tls=True)
    assert c.stat()[0] == 3
    assert uidl(c) == [uids[0], uids[2], uids[3]]
    assert retr(c, 2) == on_wire(msgs[2])
    c.quit()
    # The file itself: an mbox Python reads back, without message 2.
    subjects = [m["Subject"] for m in mailbox.mbox(u["mbox"])]
    assert subjects == ["mbox 0", "mbox 2", "mbox 3"]
    log = p.logtext()
    assert "del=1/" in log and f"user=<{u['name']}>" in log


def test_dropped_connection_deletes_nothing(served):
    p, u = served
    write_mbox(u, [message(0), message(1)])
    before = open(u["mbox"], "rb").read()
    c = login(p, u)
    c.dele(1)
    # RFC 1939 §6: no QUIT, no UPDATE. (poplib's file object holds the socket open too.)
    c.file.close()
    c.sock.close()
    deadline = time.time() + 10
    while "disconnect from" not in p.logtext() and time.time() < deadline:
        time.sleep(0.05)
    assert open(u["mbox"], "rb").read() == before
    c = login(p, u)
    assert c.stat()[0] == 2
    c.quit()


def test_in_use_while_another_program_holds_a_lock(served):
    p, u = served
    write_mbox(u, [message(0)])
    # mail(1) style dot-lock.
    with open(u["mbox"] + ".lock", "w") as f:
        f.write("%d\n" % os.getpid())
    c = poplib.POP3("127.0.0.1", p.pop3_port, timeout=20)
    c.user(u["name"])
    with pytest.raises(poplib.error_proto) as e:
        c.pass_(u["password"])
    assert b"[IN-USE]" in e.value.args[0]
    c.quit()
    os.unlink(u["mbox"] + ".lock")
    # An fcntl lock (this test process is another process than poshta).
    with open(u["mbox"], "rb+") as f:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        c = poplib.POP3("127.0.0.1", p.pop3_port, timeout=20)
        c.user(u["name"])
        with pytest.raises(poplib.error_proto) as e:
            c.pass_(u["password"])
        assert b"[IN-USE]" in e.value.args[0]
        c.quit()
        fcntl.lockf(f, fcntl.LOCK_UN)
    c = login(p, u)
    assert c.stat()[0] == 1
    # While a session has the mailbox, a second one is refused, and Python cannot lock it.
    c2 = poplib.POP3("127.0.0.1", p.pop3_port, timeout=20)
    c2.user(u["name"])
    with pytest.raises(poplib.error_proto) as e:
        c2.pass_(u["password"])
    assert b"[IN-USE]" in e.value.args[0]
    c2.quit()
    with pytest.raises(mailbox.ExternalClashError):
        mailbox.mbox(u["mbox"]).lock()
    c.quit()


def test_mail_appended_during_a_session_is_kept_and_served_next(served):
    p, u = served
    write_mbox(u, [message(0), message(1)])
    c = login(p, u)
    assert c.stat()[0] == 2
    # A writer that honours the locks waits for the session to end, then appends.
    done = threading.Event()
    errors = []

    def locked_append():
        deadline = time.time() + 20
        while time.time() < deadline:
            mb = mailbox.mbox(u["mbox"])
            try:
                mb.lock()
            except mailbox.ExternalClashError:
                mb.close()
                time.sleep(0.05)
                continue
            try:
                mb.add(message(10))
                mb.flush()
            finally:
                mb.unlock()
                mb.close()
            done.set()
            return
        errors.append("never got the lock")

    t = threading.Thread(target=locked_append)
    t.start()
    time.sleep(0.3)
    assert not done.is_set(), "the session holds the mailbox"
    # A writer that ignores the locks appends right now: the rewrite must keep it.
    with open(u["mbox"], "ab") as f:
        f.write(b"From rogue@example.org Sat Nov 28 01:59:01 2026\n" + message(20) + b"\n")
    c.dele(1)
    c.quit()
    t.join(timeout=30)
    assert done.is_set(), errors
    c = login(p, u)
    subjects = []
    for i in range(c.stat()[0]):
        subjects += [l for l in c.retr(i + 1)[1] if l.startswith(b"Subject:")]
    assert subjects == [b"Subject: mbox 1", b"Subject: mbox 20", b"Subject: mbox 10"]
    c.quit()


def run_fetchmail(p, u, tmp_path, port, ssl_opts, keep, name):
    out = tmp_path / f"{name}.mbox"
    rc = tmp_path / f"{name}.rc"
    rc.write_text(f"""set no bouncemail
set no syslog
poll 127.0.0.1 service {port} protocol pop3 uidl
    username "{u['name']}" password "{u['password']}" is "root" here
    {ssl_opts}
    {"keep" if keep else "nokeep"}
    mda "/bin/sh -c 'cat >> {out}'"
""")
    rc.chmod(0o600)
    env = dict(os.environ, FETCHMAILHOME=str(tmp_path), HOME=str(tmp_path))
    r = subprocess.run(["fetchmail", "-f", str(rc), "--idfile", str(tmp_path / f"{name}.ids"), "-v"],
                       capture_output=True, text=True, timeout=120, env=env)
    return r, (out.read_text() if out.exists() else "")


def test_fetchmail_keep_twice_then_nokeep_over_pop3s(served, tmp_path):
    p, u = served
    write_mbox(u, [message(i) for i in range(3)])
    r, data = run_fetchmail(p, u, tmp_path, p.pop3_port, "sslproto ''", True, "plain")
    assert r.returncode == 0, r.stdout + r.stderr
    assert data.count("Subject: mbox") == 3
    assert "From the start of a line" in data
    # Leave on server: the UIDs are stable, the second run fetches nothing.
    r, data = run_fetchmail(p, u, tmp_path, p.pop3_port, "sslproto ''", True, "plain")
    assert r.returncode in (0, 1), r.stdout + r.stderr
    assert data.count("Subject: mbox") == 3
    r, data = run_fetchmail(p, u, tmp_path, p.pop3s_port,
                            f"ssl sslcertck sslcertfile {p.ca} sslcommonname mx.example.org", False, "tls")
    assert r.returncode == 0, r.stdout + r.stderr
    assert data.count("Subject: mbox") == 3
    assert os.path.getsize(u["mbox"]) == 0
    c = login(p, u)
    assert c.stat()[0] == 0
    c.quit()


def test_getmail6_as_the_system_user(served):
    """The system user fetches their own system mailbox (getmail6 refuses to run as root)."""
    p, u = served
    write_mbox(u, [message(0), message(1)])
    home = u["home"]
    maildir = os.path.join(home, "Maildir")
    for d in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, d))
    with open(os.path.join(home, "getmailrc"), "w") as f:
        f.write(f"""[retriever]
type = SimplePOP3Retriever
server = 127.0.0.1
port = {p.pop3_port}
username = {u['name']}
password = {u['password']}

[destination]
type = Maildir
path = {maildir}/

[options]
delete = false
read_all = false
""")
    for root, dirs, files in os.walk(home):
        for n in dirs + files:
            os.chown(os.path.join(root, n), u["uid"], u["gid"])
    cmd = ["runuser", "-u", u["name"], "--", "getmail", "--getmaildir", home, "--rcfile", "getmailrc"]
    for _ in range(2):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
    got = sorted(os.listdir(os.path.join(maildir, "new")))
    assert len(got) == 2, "each message once, though fetched twice"
    with open(os.path.join(maildir, "new", got[0]), "rb") as f:
        assert b"From the start of a line" in f.read()


def test_home_mailbox_maildir_for_a_system_user(make_poshta, sysuser):
    """A home_mailbox Maildir is served too: started as root, by a maildrop agent running as
    the user (tests/e2e/test_pop3_home.py has the rest); started as the user, in process."""
    u = sysuser
    p = make_poshta(extra="home_mailbox = Maildir/\n", users=(), start=False)
    p.cli("user", "add", u["name"], "--system", "--password-stdin", input=u["password"] + "\n")
    p.start()
    for d in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(u["home"], "Maildir", d))
    with open(os.path.join(u["home"], "Maildir", "new", "1700000000.M1P1Q1.mx"), "wb") as f:
        f.write(message(0))
    for root, dirs, files in os.walk(u["home"]):
        for n in dirs + files:
            os.chown(os.path.join(root, n), u["uid"], u["gid"])
    c = login(p, u)
    assert c.stat()[0] == 1
    assert retr(c, 1) == on_wire(message(0))
    c.quit()
