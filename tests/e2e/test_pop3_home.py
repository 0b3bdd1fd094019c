"""POP3 for a system user's home_mailbox (issue 5) when poshta runs as root: the daemon runs as
mail_owner and never enters the home; the privileged helper starts a maildrop agent as the
user for each session (src/mailbox/agent.rs) and the session talks to it.

Each test makes a throwaway Linux user with a home (useradd, unique name, removed afterwards),
delivers mail by SMTP (smtplib; the delivery agent writes the home mailbox as the user) and
fetches it with poplib (fetchmail for leave-on-server), for `home_mailbox = Maildir/` and for
`home_mailbox = Mailbox` (an mbox in the home). Hostile homes (a Maildir symlinked to another
user's directory, an mbox that is a symlink or a hard link) are refused with -ERR, logged,
and the daemon keeps serving.
"""
import mailbox
import os
import poplib
import pwd
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates Linux users; needs root")

_seq = [0]

KINDS = ["Maildir/", "Mailbox"]


@pytest.fixture
def homeuser():
    """A throwaway system user with a home of its own; removed afterwards."""
    _seq[0] += 1
    name = "phm%d%d" % (os.getpid() % 100000, _seq[0])
    base = tempfile.mkdtemp(prefix="poshta-home-")
    os.chmod(base, 0o755)
    home = os.path.join(base, name)
    os.mkdir(home, 0o700)
    subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["useradd", "-M", "-d", home, "-s", "/bin/sh", name], check=True, capture_output=True)
    try:
        pw = pwd.getpwnam(name)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        yield {"name": name, "uid": pw.pw_uid, "gid": pw.pw_gid, "home": home, "password": "pw-" + name,
               "base": base}
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def serve(make_poshta, u, home_mailbox, extra=""):
    p = make_poshta(extra=f"home_mailbox = {home_mailbox}\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n"
                    + extra, users=(), start=False)
    r = p.cli("user", "add", u["name"], "--system", "--password-stdin", input=u["password"] + "\n")
    assert "system user" in r.stdout
    p.home_mailbox = home_mailbox
    return p.start()


def send(p, u, subject, body="hello\n"):
    with smtplib.SMTP("127.0.0.1", p.port, timeout=20) as s:
        s.sendmail("alice@example.org", [f"{u['name']}@example.org"], f"Subject: {subject}\n\n{body}")


def maildir(u):
    return os.path.join(u["home"], "Maildir")


def listdir(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def subjects_on_disk(p, u):
    """The subjects in the home mailbox, read as root (the test, not poshta)."""
    if p.home_mailbox == "Maildir/":
        out = []
        for sub in ("new", "cur"):
            for n in listdir(os.path.join(maildir(u), sub)):
                with open(os.path.join(maildir(u), sub, n), "rb") as f:
                    out += [l[9:].strip().decode() for l in f.read().splitlines() if l.startswith(b"Subject: ")]
        return sorted(out)
    path = os.path.join(u["home"], "Mailbox")
    if not os.path.exists(path):
        return []
    box = mailbox.mbox(path, create=False)
    try:
        return sorted(m["Subject"] for m in box)
    finally:
        box.close()


def wait_delivered(p, u, count):
    return wait_for(lambda: len(subjects_on_disk(p, u)) >= count, what=f"{count} messages in the home", p=p)


def login(p, u):
    c = poplib.POP3("127.0.0.1", p.pop3_port, timeout=30)
    c.user(u["name"])
    c.pass_(u["password"])
    return c


def refused(p, u):
    c = poplib.POP3("127.0.0.1", p.pop3_port, timeout=30)
    c.user(u["name"])
    with pytest.raises(poplib.error_proto) as e:
        c.pass_(u["password"])
    try:
        c.quit()
    except (poplib.error_proto, OSError):
        pass
    return e.value.args[0]


def uidl(c):
    return [l.split()[1] for l in c.uidl()[1]]


def retr(c, n):
    return b"\r\n".join(c.retr(n)[1]) + b"\r\n"


def processes():
    """(pid, command line words, status text, uids) of every process readable in /proc."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{d}/status") as f:
                st = f.read()
        except OSError:
            continue
        uids = [l for l in st.splitlines() if l.startswith("Uid:")]
        ids = [int(x) for x in uids[0].split()[1:]] if uids else []
        yield int(d), cmd, st, ids


def agents(uid):
    """Live maildrop agents running as `uid`."""
    return [(pid, ids) for pid, cmd, st, ids in processes()
            if b"maildrop-agent" in cmd and "\nState:\tZ" not in st and uid in ids]


def zombies(uid):
    """Exited, unreaped processes of `uid` (an agent the helper has not waited for)."""
    return [pid for pid, _, st, ids in processes() if "\nState:\tZ" in st and ids[:1] == [uid]]


@pytest.mark.parametrize("kind", KINDS)
def test_list_uidl_retr_dele_quit_and_leave_on_server(make_poshta, homeuser, kind):
    u = homeuser
    p = serve(make_poshta, u, kind)
    for i in range(3):
        send(p, u, f"home {i}", body=f"body {i}\nFrom the start of a line\n.leading dot\n")
    wait_delivered(p, u, 3)
    c = login(p, u)
    # The agent runs as the user (real, effective, saved uid), never as root or mail_owner.
    ags = agents(u["uid"])
    assert ags and all(ids[:3] == [u["uid"]] * 3 for _, ids in ags), ags
    count, total = c.stat()
    assert count == 3
    sizes = [int(l.split()[1]) for l in c.list()[1]]
    bodies = [retr(c, i + 1) for i in range(3)]
    # RFC 1939 §11: LIST gives the size as sent (CR LF line ends, before dot-stuffing).
    assert sizes == [len(b) for b in bodies] and total == sum(sizes)
    for i, b in enumerate(bodies):
        assert f"Subject: home {i}".encode() in b and b"\r\nFrom the start of a line\r\n" in b
        assert b"\r\n.leading dot\r\n" in b
    _, top, _ = c.top(2, 0)
    assert b"Subject: home 1" in top and b"body 1" not in top
    uids = uidl(c)
    assert len(set(uids)) == 3 and all(1 <= len(x) <= 70 for x in uids)
    c.dele(2)
    c.quit()
    assert subjects_on_disk(p, u) == ["home 0", "home 2"]
    if kind == "Maildir/":
        assert listdir(os.path.join(maildir(u), "new")) == []
        cur = listdir(os.path.join(maildir(u), "cur"))
        assert len(cur) == 2 and all(n.endswith(":2,") for n in cur), cur
        for n in cur:
            assert os.stat(os.path.join(maildir(u), "cur", n)).st_uid == u["uid"]
    else:
        st = os.stat(os.path.join(u["home"], "Mailbox"))
        assert (st.st_uid, st.st_mode & 0o777) == (u["uid"], 0o600)
        assert not os.path.exists(os.path.join(u["home"], "Mailbox.lock"))
    # Leave on server: the next sessions see the same ids for the kept messages.
    for _ in range(2):
        c = login(p, u)
        assert uidl(c) == [uids[0], uids[2]]
        assert b"Subject: home 2" in retr(c, 2)
        c.quit()
    wait_for(lambda: not agents(u["uid"]), what="the agents to end", p=p)
    # The helper reaps an ended agent within about a second, without waiting for its next
    # request (no zombie left behind).
    wait_for(lambda: not zombies(u["uid"]), what="the ended agents to be reaped", p=p)
    log = p.logtext()
    assert f"user=<{u['name']}>" in log and "del=1/" in log


@pytest.mark.parametrize("kind", KINDS)
def test_in_use_then_a_dropped_connection_deletes_nothing(make_poshta, homeuser, kind):
    u = homeuser
    p = serve(make_poshta, u, kind)
    send(p, u, "one")
    send(p, u, "two")
    wait_delivered(p, u, 2)
    c = login(p, u)
    assert c.stat()[0] == 2
    # RFC 1939 §8 / RFC 2449 §8.1.1: the first session holds the maildrop.
    assert b"[IN-USE]" in refused(p, u)
    c.dele(1)
    c.dele(2)
    # RFC 1939 §6: no QUIT, no UPDATE.
    c.file.close()
    c.sock.close()
    wait_for(lambda: p.logtext().count("disconnect from") >= 2, what="the dropped session to end", p=p)
    assert subjects_on_disk(p, u) == ["one", "two"]
    c = wait_for(lambda: try_login(p, u), what="the mailbox to be free", p=p)
    assert c.stat()[0] == 2
    c.quit()


def try_login(p, u):
    try:
        return login(p, u)
    except poplib.error_proto as e:
        assert b"[IN-USE]" in e.args[0], e
        return None


@pytest.mark.parametrize("kind", KINDS)
def test_mail_delivered_during_a_session_comes_in_the_next(make_poshta, homeuser, kind):
    u = homeuser
    p = serve(make_poshta, u, kind)
    send(p, u, "before")
    wait_delivered(p, u, 1)
    c = login(p, u)
    assert c.stat()[0] == 1
    send(p, u, "during")
    if kind == "Maildir/":
        # Maildir delivery needs no lock: it lands in new/ at once, outside this session.
        wait_delivered(p, u, 2)
        assert c.stat()[0] == 1
    else:
        # The mbox is locked by the session: the delivery waits (and is retried).
        time.sleep(1.0)
        assert c.stat()[0] == 1
    c.dele(1)
    c.quit()
    wait_for(lambda: subjects_on_disk(p, u) == ["during"], what="the second delivery", p=p)
    c = wait_for(lambda: try_login(p, u), what="the mailbox to be free", p=p)
    assert c.stat()[0] == 1 and b"Subject: during" in retr(c, 1)
    c.quit()


def test_maildir_symlinked_to_another_users_directory_is_refused(make_poshta, homeuser):
    u = homeuser
    p = serve(make_poshta, u, "Maildir/")
    other = os.path.join(u["base"], "other-maildir")
    nobody = pwd.getpwnam("nobody")
    for d in ("", "cur", "new", "tmp"):
        os.makedirs(os.path.join(other, d), exist_ok=True)
        os.chmod(os.path.join(other, d), 0o777)
        os.chown(os.path.join(other, d), nobody.pw_uid, nobody.pw_gid)
    secret = os.path.join(other, "new", "1700000000.M1P1Q1.mx")
    with open(secret, "w") as f:
        f.write("Subject: not yours\n\nsecret\n")
    os.chown(secret, nobody.pw_uid, nobody.pw_gid)
    os.chmod(secret, 0o666)
    os.symlink(other, maildir(u))
    reply = refused(p, u)
    assert reply.startswith(b"-ERR [SYS/TEMP]"), reply
    log = wait_for(lambda: "belongs to uid" in p.logtext() and p.logtext(), what="the logged refusal", p=p)
    assert f"not to the user (uid {u['uid']})" in log
    assert os.listdir(os.path.join(other, "new")) == ["1700000000.M1P1Q1.mx"], "nothing moved"
    # The daemon keeps serving: fixed by the admin, the user gets their own mail.
    os.unlink(maildir(u))
    send(p, u, "mine")
    wait_delivered(p, u, 1)
    c = login(p, u)
    assert c.stat()[0] == 1 and b"Subject: mine" in retr(c, 1)
    c.quit()


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_home_mbox_that_is_a_link_is_refused(make_poshta, homeuser, link):
    u = homeuser
    p = serve(make_poshta, u, "Mailbox")
    target = os.path.join(u["home"], "other-file")
    with open(target, "w") as f:
        f.write("From x@example.org Sat Nov 28 01:59:01 2026\nSubject: other file\n\nsecret\n")
    os.chown(target, u["uid"], u["gid"])
    os.chmod(target, 0o600)
    box = os.path.join(u["home"], "Mailbox")
    if link == "symlink":
        os.symlink(target, box)
    else:
        os.link(target, box)
    reply = refused(p, u)
    assert reply.startswith(b"-ERR [SYS/TEMP]"), reply
    why = "is a symbolic link" if link == "symlink" else "more than one hard link"
    wait_for(lambda: why in p.logtext(), what="the logged refusal", p=p)
    # The daemon keeps serving: the link removed, the mailbox is served.
    os.unlink(box)
    send(p, u, "mine")
    wait_delivered(p, u, 1)
    c = login(p, u)
    assert c.stat()[0] == 1 and b"Subject: mine" in retr(c, 1)
    c.quit()
    assert "secret" in open(target).read()


def test_hostile_answers_from_a_replaced_agent_do_not_hurt_the_daemon(make_poshta, homeuser):
    """A session whose agent dies (here: killed by the user, as a user may) gets -ERR on
    its next command; the daemon goes on serving other sessions."""
    u = homeuser
    p = serve(make_poshta, u, "Maildir/")
    send(p, u, "one")
    wait_delivered(p, u, 1)
    c = login(p, u)
    [(pid, _)] = agents(u["uid"])
    os.kill(pid, 9)
    with pytest.raises(poplib.error_proto):
        c.retr(1)
    c.dele(1)
    try:
        c.quit()
    except poplib.error_proto:
        pass
    assert subjects_on_disk(p, u) == ["one"], "nothing deleted without the agent"
    c = wait_for(lambda: try_login(p, u), what="the mailbox to be free", p=p)
    assert b"Subject: one" in retr(c, 1)
    c.quit()


def run_fetchmail(p, u, tmp_path, keep, name, ids="ids"):
    out = tmp_path / f"{name}.mbox"
    rc = tmp_path / f"{name}.rc"
    rc.write_text(f"""set no bouncemail
set no syslog
poll 127.0.0.1 service {p.pop3_port} protocol pop3 uidl
    username "{u['name']}" password "{u['password']}" is "root" here
    sslproto ''
    {"keep" if keep else "nokeep"}
    mda "/bin/sh -c 'cat >> {out}'"
""")
    rc.chmod(0o600)
    env = dict(os.environ, FETCHMAILHOME=str(tmp_path), HOME=str(tmp_path))
    r = subprocess.run(["fetchmail", "-f", str(rc), "--idfile", str(tmp_path / ids), "-v"],
                       capture_output=True, text=True, timeout=120, env=env)
    return r, (out.read_text() if out.exists() else "")


@pytest.mark.skipif(not shutil.which("fetchmail"), reason="fetchmail is not installed")
@pytest.mark.parametrize("kind", KINDS)
def test_fetchmail_keep_twice_then_nokeep(make_poshta, homeuser, kind, tmp_path):
    u = homeuser
    p = serve(make_poshta, u, kind)
    for i in range(3):
        send(p, u, f"fm {i}")
    wait_delivered(p, u, 3)
    r, data = run_fetchmail(p, u, tmp_path, True, "a")
    assert r.returncode == 0, r.stdout + r.stderr
    assert data.count("Subject: fm") == 3
    # Leave on server: the UIDs are stable, the second run fetches nothing new.
    r, data = run_fetchmail(p, u, tmp_path, True, "b")
    assert r.returncode in (0, 1), r.stdout + r.stderr
    assert data.count("Subject: fm") == 0
    send(p, u, "fm 3")
    wait_delivered(p, u, 4)
    # A fresh id file: everything is new, fetched and deleted.
    r, data = run_fetchmail(p, u, tmp_path, False, "c", ids="ids2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert data.count("Subject: fm") == 4
    assert subjects_on_disk(p, u) == []
