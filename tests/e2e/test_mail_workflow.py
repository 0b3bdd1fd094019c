"""The classic Postfix workflow of issue 3, end to end with Debian's own programs: a Linux
user is created, `date | mail -s "This is a local test" NICK` (bsd-mailx, which always runs
/usr/sbin/sendmail) hands the message to poshta's sendmail link, the daemon (started as
root, so it runs as mail_owner and writes through its privileged helper) delivers it to the
user's mbox in mail_spool_directory, the user reads it with s-nail, marks it read and quits
(s-nail rewrites the mbox under its dot-lock and fcntl lock) while poshta keeps delivering
more: nothing is lost or corrupted.
Then the same user reads the mailbox over POP3 with a password from `poshta user add
--system`.

The spool directory is a test directory (root:mail 2775, like /var/mail); the user is
removed afterwards."""
import grp
import os
import poplib
import pwd
import shutil
import subprocess
import threading
import time

import pytest

from conftest import BIN, wait_for
from test_local_mail import mbox_messages
from test_sendmail import Local, mailx_bin, MAILX_ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates a Linux user; needs root")


@pytest.fixture
def nick():
    name = f"nick{os.getpid() % 100000}"
    subprocess.run(["userdel", "-r", name], capture_output=True)
    r = subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True)


def mailx_cmd(local, args):
    """bsd-mailx with poshta at /usr/sbin/sendmail (a private mount namespace when another
    MTA owns that path)."""
    mailx = mailx_bin()
    if not mailx:
        pytest.skip("bsd-mailx not unpacked (tests/run.sh downloads it)")
    target = "/usr/sbin/sendmail"
    cmd = " ".join([mailx, *args])
    if os.path.lexists(target) and os.path.realpath(target) != os.path.realpath(BIN):
        if not shutil.which("unshare"):
            pytest.skip(f"{target} belongs to another MTA and no mount namespace is available")
        return ["unshare", "-m", "sh", "-c",
                f"mount --make-rprivate / && mount --bind {local.bin} {target} && exec {cmd}"]
    if not os.path.lexists(target):
        pytest.skip(f"{target} does not exist; the bsd-mailx test in test_sendmail.py covers creating it")
    return ["sh", "-c", cmd]


def test_date_pipe_mail_then_read_mark_and_keep_delivering(make_poshta, nick, tmp_path):
    local = Local(make_poshta, start=False)
    spool = os.path.join(local.p.dir, "mailspool")
    os.mkdir(spool)
    os.chown(spool, 0, grp.getgrnam("mail").gr_gid)
    os.chmod(spool, 0o2775)
    # A delivery that meets the reader's dot-lock is deferred: retried within a second or two.
    local.p.write_config(f"mail_spool_directory = {spool}\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n")
    local.p.start()
    box = os.path.join(spool, nick.pw_name)

    # 1. date | mail -s "This is a local test" nick (bsd-mailx through /usr/sbin/sendmail).
    libdirs = [os.path.join(MAILX_ROOT, "usr", "lib", d) for d in os.listdir(os.path.join(MAILX_ROOT, "usr", "lib"))
               ] if os.path.isdir(os.path.join(MAILX_ROOT, "usr", "lib")) else []
    env = local.env(HOME=str(tmp_path), MAILRC="/dev/null",
                    LD_LIBRARY_PATH=":".join(d for d in libdirs if os.path.isdir(d)))
    date = subprocess.run(["date"], capture_output=True, check=True).stdout
    r = subprocess.run(mailx_cmd(local, ["-s", "'This is a local test'", nick.pw_name]), input=date,
                       capture_output=True, env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    msgs = wait_for(lambda: mbox_messages(box), what=f"the message in {box}")
    assert msgs[0]["Subject"] == "This is a local test"
    assert date.decode().strip() in msgs[0].get_payload()
    st = os.stat(box)
    assert (st.st_uid, st.st_mode & 0o7777) == (nick.pw_uid, 0o600), "owned by the user, mode 0600"
    assert st.st_gid == grp.getgrnam("mail").gr_gid

    # 2. The user lists it with mail(1) (s-nail: -H prints the header summary).
    as_nick = ["runuser", "-u", nick.pw_name, "--"]
    nick_env = dict(os.environ, HOME=nick.pw_dir, USER=nick.pw_name, LOGNAME=nick.pw_name, MAILRC="/dev/null")
    r = subprocess.run(as_nick + ["s-nail", "-n", "-N", "-H", "-f", box], capture_output=True, env=nick_env,
                       timeout=30)
    assert b"This is a local test" in r.stdout, r.stdout + r.stderr

    # 3. The user reads it and quits (s-nail marks it read and rewrites the mbox, holding
    #    its locks) while poshta delivers 20 more through sendmail.
    extra = 20
    errors = []

    def deliver_more():
        for i in range(extra):
            rr = local.run([nick.pw_name], f"Subject: more {i}\n\nmessage {i}\n".encode())
            if rr.returncode != 0:
                errors.append(rr.stderr)

    # s-nail opens the mailbox as its inbox (the system mailbox: `-S inbox=BOX -f %`), as a
    # user's plain `mail` does with /var/mail/USER: then it takes a dot-lock through
    # s-nail-dotlock (setgid mail) besides its fcntl lock, and looks again after locking.
    # Not with `-f BOX`: s-nail then checks the mailbox's size before it waits for its fcntl
    # lock, truncates and rewrites, so a message appended while it waits is lost whatever
    # the MDA does (seen here: 8 of 20 lost, 1 run in 8; the experiment is in
    # docs/decisions.md, "s-nail's quit and the mbox").
    def read_and_quit():
        subprocess.run(as_nick + ["s-nail", "-n", "-#", "-S", "hold", "-S", f"inbox={box}", "-f", "%"],
                       input=b"print 1\nquit\n", capture_output=True, env=nick_env, timeout=30)

    t = threading.Thread(target=deliver_more)
    t.start()
    for _ in range(5):
        read_and_quit()
        time.sleep(0.05)
    t.join(timeout=120)
    assert not errors, errors
    msgs = wait_for(lambda: (lambda m: m if len(m) >= 1 + extra else None)(mbox_messages(box)), timeout=60,
                    what=f"{1 + extra} messages in the mbox", p=local.p)
    subjects = [m["Subject"] for m in msgs]
    assert len(msgs) == 1 + extra, subjects
    assert subjects.count("This is a local test") == 1
    assert sorted(s for s in subjects if s.startswith("more ")) == sorted(f"more {i}" for i in range(extra))
    first = next(m for m in msgs if m["Subject"] == "This is a local test")
    assert "R" in (first["Status"] or ""), "s-nail marked it read"

    # 4. The same mailbox over POP3 (the user's POP3 password in poshta's users file).
    local.p.cli("user", "add", nick.pw_name, "--system", "--password-stdin", input="nick-pw\n")
    c = poplib.POP3("127.0.0.1", local.p.pop3_port, timeout=20)
    c.user(nick.pw_name)
    c.pass_("nick-pw")
    assert c.stat()[0] == 1 + extra
    c.dele(1)
    c.quit()
    assert len(mbox_messages(box)) == extra
    assert os.stat(box).st_uid == nick.pw_uid
