"""Local mail for system users (issue 3): privilege separation, mbox in mail_spool_directory,
aliases (groups, :include:, chains and loops, remote targets, |command), bounces, locking.

These need root: they create throwaway Linux users (unique names with the pid, removed
afterwards) and check that the daemon itself does not run as root. The mail spool is a
directory of the test (mail_spool_directory in the test's main.cf), never /var/mail.
"""
import email
import fcntl
import grp
import mailbox
import os
import pwd
import shutil
import smtplib
import subprocess
import tempfile
import time

import pytest

from conftest import BIN, wait_for
from test_relay import dumps, sink, smtp_sink_path  # noqa: F401  (sink is a fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates Linux users; needs root")


@pytest.fixture
def users():
    """Two throwaway system users; removed afterwards."""
    tag = os.getpid() % 100000
    names = [f"pl{tag}a", f"pl{tag}b"]
    for n in names:
        subprocess.run(["userdel", n], capture_output=True)
        subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", n], check=True,
                       capture_output=True)
    try:
        yield names
    finally:
        for n in names:
            subprocess.run(["userdel", n], capture_output=True)


def local_poshta(make_poshta, aliases="", extra="", files=None):
    p = make_poshta(start=False)
    for name, text in (files or {}).items():
        with open(os.path.join(p.dir, name), "w") as f:
            f.write(text)
    spool = os.path.join(p.dir, "mailspool")
    os.mkdir(spool)
    mail_gid = grp.getgrnam("mail").gr_gid
    os.chown(spool, 0, mail_gid)
    os.chmod(spool, 0o2775)
    with open(os.path.join(p.dir, "aliases"), "w") as f:
        f.write(aliases.replace("@DIR@", p.dir))
    p.spool = spool
    p.write_config(f"mail_spool_directory = {spool}\nalias_maps = hash:{p.dir}/aliases\n"
                   + extra.replace("@DIR@", p.dir))
    return p.start()


def send(p, rcpts, body="Subject: local test\n\nhello\n", sender="alice@example.org"):
    with smtplib.SMTP("127.0.0.1", p.port, timeout=20) as s:
        s.sendmail(sender, rcpts, body)


def mbox_messages(path):
    if not os.path.exists(path):
        return []
    box = mailbox.mbox(path, create=False)
    try:
        return list(box)
    finally:
        box.close()


def wait_mbox(p, user, count, timeout=20):
    path = os.path.join(p.spool, user)
    return wait_for(lambda: len(mbox_messages(path)) >= count and mbox_messages(path), timeout,
                    f"{count} message(s) in {path}", p)


def proc_uid(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])  # real uid
    raise AssertionError("no Uid line")


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/status") as f:
                    st = f.read()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in st:
                out.append(int(d))
    return out


def test_listener_drops_root_and_the_helper_keeps_it(make_poshta):
    p = make_poshta()
    owner = pwd.getpwnam("poshta")
    assert proc_uid(p.proc.pid) == owner.pw_uid != 0
    with open(f"/proc/{p.proc.pid}/status") as f:
        st = f.read()
    # Effective and saved uids too: there is no way back to root.
    uids = [l for l in st.splitlines() if l.startswith("Uid:")][0].split()[1:]
    assert set(int(u) for u in uids) == {owner.pw_uid}, uids
    helpers = [c for c in children(p.proc.pid) if proc_uid(c) == 0]
    assert len(helpers) == 1, "one privileged delivery helper"
    assert "running as mail_owner poshta" in p.logtext()
    # The queue and the Maildirs belong to mail_owner.
    assert os.stat(os.path.join(p.dir, "spool")).st_uid == owner.pw_uid
    assert os.stat(os.path.join(p.dir, "mail")).st_uid == owner.pw_uid
    # The helper ends with the daemon.
    p.stop()
    wait_for(lambda: not os.path.exists(f"/proc/{helpers[0]}"), what="the helper to exit")


def test_unknown_mail_owner_is_a_clear_error(make_poshta):
    p = make_poshta(start=False)
    p.write_config("mail_owner = no-such-owner-xyz\n")  # after `poshta init`, which would create it
    r = subprocess.run([BIN, "serve", "-c", p.cf],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "mail_owner no-such-owner-xyz does not exist" in (r.stderr + p.logtext())


def test_system_user_gets_mbox_read_by_s_nail(make_poshta, users):
    a, _ = users
    p = local_poshta(make_poshta)
    send(p, [f"{a}@example.org"], "Subject: This is a local test\n\nFrom the start of a line\nbye\n")
    [msg] = wait_mbox(p, a, 1)
    assert msg["Subject"] == "This is a local test"
    assert msg["Delivered-To"] == f"{a}@example.org"
    assert msg["Return-Path"] == "<alice@example.org>"
    # mboxrd quoting (Python's mailbox module leaves it in place).
    assert msg.get_payload() == ">From the start of a line\nbye\n"
    path = os.path.join(p.spool, a)
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (pwd.getpwnam(a).pw_uid, grp.getgrnam("mail").gr_gid, 0o600)
    if shutil.which("s-nail"):
        home = tempfile.mkdtemp()
        try:
            r = subprocess.run(["s-nail", "-N", "-R", "-H", "-f", path], capture_output=True, text=True, timeout=20,
                               env=dict(os.environ, HOME=home, MAILRC="/dev/null"))
            assert "This is a local test" in r.stdout, r.stdout + r.stderr
        finally:
            shutil.rmtree(home)
    assert "status=sent (delivered to mailbox" in p.logtext()
    # Unknown names are still refused at RCPT time.
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(p, ["no-such-user-zz@example.org"])


def test_symlinked_mbox_is_refused_and_the_message_stays_queued(make_poshta, users):
    a, _ = users
    p = local_poshta(make_poshta, extra="minimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n")
    victim = os.path.join(p.dir, "victim")
    with open(victim, "w") as f:
        f.write("precious\n")
    os.symlink(victim, os.path.join(p.spool, a))
    send(p, [f"{a}@example.org"])
    wait_for(lambda: "is a symbolic link" in p.logtext(), what="the refusal", p=p)
    assert "status=deferred" in p.logtext()
    assert open(victim).read() == "precious\n"
    assert "Mail queue is empty" not in p.cli("queue").stdout
    # Fixed by the admin: the next try delivers it.
    os.unlink(os.path.join(p.spool, a))
    wait_mbox(p, a, 1)
    assert open(victim).read() == "precious\n"


def test_group_alias_and_include_give_one_copy_each(make_poshta, users):
    a, b = users
    p = local_poshta(make_poshta, aliases=f"""# test aliases
support: {a}, {b}
staff: :include:@DIR@/staff.list
all: support,
  staff, {a}
""")
    with open(os.path.join(p.dir, "staff.list"), "w") as f:
        f.write(f"# people\n{b}\n")
    send(p, ["support@example.org"], "Subject: to support\n\nx\n")
    wait_mbox(p, a, 1)
    wait_mbox(p, b, 1)
    send(p, ["staff@example.org"], "Subject: to staff\n\nx\n")
    wait_mbox(p, b, 2)
    send(p, ["all@example.org"], "Subject: to all\n\nx\n")
    wait_mbox(p, a, 2)
    wait_mbox(p, b, 3)
    time.sleep(1)
    subj = lambda u: [m["Subject"] for m in mbox_messages(os.path.join(p.spool, u))]
    assert subj(a) == ["to support", "to all"]
    assert subj(b) == ["to support", "to staff", "to all"]


def test_alias_file_is_reloaded_and_a_broken_one_keeps_the_last_good(make_poshta, users):
    a, _ = users
    p = local_poshta(make_poshta, aliases=f"first: {a}\n")
    send(p, ["first@example.org"])
    with open(os.path.join(p.dir, "aliases"), "w") as f:
        f.write(f"first: {a}\nsecond: {a}\n")
    time.sleep(1.2)
    send(p, ["second@example.org"])
    wait_mbox(p, a, 2)
    with open(os.path.join(p.dir, "aliases"), "w") as f:
        f.write("first no colon here\n")
    time.sleep(1.2)
    send(p, ["second@example.org"])  # the last good table still has it
    wait_mbox(p, a, 3)
    assert "aliases:1: need name:value pair" in p.logtext()
    r = p.cli("check", check=False)
    assert r.returncode == 1 and "aliases:1: error: need name:value pair" in r.stderr, r.stderr


def test_check_warns_when_postmaster_does_not_resolve(make_poshta, users):
    a, _ = users
    p = local_poshta(make_poshta, aliases="postmaster: nobody-here-xyz\n")
    r = p.cli("check", check=False)
    assert "postmaster does not resolve" in r.stderr
    with open(os.path.join(p.dir, "aliases"), "w") as f:
        f.write(f"postmaster: {a}\n")
    r = p.cli("check", check=False)
    assert "postmaster does not resolve" not in r.stderr


def test_chain_loop_bounces_once(make_poshta):
    p = local_poshta(make_poshta, aliases="loop1: loop2\nloop2: loop3\nloop3: loop1\n")
    send(p, ["loop1@example.org"], "Subject: loop me\n\nx\n", sender="alice@example.org")
    [path] = p.wait_messages("alice", 1)
    time.sleep(1.5)
    assert len(p.new_messages("alice")) == 1, "one bounce, not a storm"
    msg = email.message_from_bytes(p.read(path))
    assert msg.get_content_type() == "multipart/report"
    report = [part for part in msg.walk() if part.get_content_type() == "message/delivery-status"][0]
    blocks = report.get_payload()
    assert blocks[-1]["Status"] == "5.4.6"
    assert "mail forwarding loop" in blocks[-1]["Diagnostic-Code"]
    assert "Mail queue is empty" in p.cli("queue").stdout


def test_hopcount_limit_bounces_as_a_loop(make_poshta, users):
    a, _ = users
    p = local_poshta(make_poshta, extra="hopcount_limit = 5\n")
    hops = "".join(f"Received: from hop{i}.example by x; Sat, 1 Jan 2022 00:00:00 +0000\n" for i in range(6))
    send(p, [f"{a}@example.org"], hops + "Subject: hops\n\nx\n")
    [path] = p.wait_messages("alice", 1)
    assert "too many hops" in p.read(path).decode()
    assert not mbox_messages(os.path.join(p.spool, a))


def test_delivered_to_loop_is_detected(make_poshta, users):
    a, _ = users
    p = local_poshta(make_poshta)
    send(p, [f"{a}@example.org"], f"Delivered-To: {a}@example.org\nSubject: again\n\nx\n")
    [path] = p.wait_messages("alice", 1)
    assert "mail forwarding loop" in p.read(path).decode()


def test_remote_alias_target_is_queued_for_the_outbound_side(make_poshta, users, sink):
    a, _ = users
    port, d = sink
    p = local_poshta(make_poshta, aliases=f"fwd: {a}, someone@remote.example\n",
                     extra="transport_maps = texthash:@DIR@/transport\n",
                     files={"transport": f"remote.example smtp:[127.0.0.1]:{port}\n"})
    send(p, ["fwd@example.org"], "Subject: forward me\n\nhello\n", sender="carol@sender.example")
    wait_mbox(p, a, 1)
    def forwarded():
        for f in dumps(d):
            raw = open(f, "rb").read()
            if b"forward me" in raw:
                return raw
        return None
    raw = wait_for(forwarded, what="the forwarded copy at smtp-sink", p=p)
    assert b"Delivered-To: fwd@example.org" in raw and b"forward me" in raw
    assert "forwarded:" in p.logtext()


def test_commands_run_as_the_owner_never_root(make_poshta, users):
    a, _ = users
    out = tempfile.mkdtemp(prefix="poshta-cmd-")
    os.chmod(out, 0o777)
    try:
        inc = os.path.join(out, "inc.list")
        with open(inc, "w") as f:
            f.write(f'"|id -u > {out}/inc.uid"\n')
        os.chown(inc, pwd.getpwnam(a).pw_uid, -1)
        aliases = f'cmd: "|id -u > {out}/alias.uid"\nviainc: :include:{inc}\n'
        p = local_poshta(make_poshta, aliases=aliases)
        # An aliases-file command (class alias, allowed by default) runs as the owner of the
        # aliases file; that is root, so as default_privs (nobody).
        send(p, ["cmd@example.org"])
        wait_for(lambda: os.path.exists(f"{out}/alias.uid"), what="the alias command", p=p)
        time.sleep(0.2)
        assert int(open(f"{out}/alias.uid").read()) == pwd.getpwnam("nobody").pw_uid
        # An :include: command is refused by default (allow_mail_to_commands = alias, forward).
        send(p, ["viainc@example.org"])
        [bounce] = p.wait_messages("alice", 1)
        assert "mail to command is restricted" in p.read(bounce).decode()
        assert not os.path.exists(f"{out}/inc.uid")
        # Allowed: it runs as the include file's owner.
        p.stop()
        p.write_config(f"mail_spool_directory = {p.spool}\nalias_maps = hash:{p.dir}/aliases\n"
                       "allow_mail_to_commands = alias, forward, include\n")
        p.start()
        send(p, ["viainc@example.org"])
        wait_for(lambda: os.path.exists(f"{out}/inc.uid") and open(f"{out}/inc.uid").read().strip(),
                 what="the include command", p=p)
        assert int(open(f"{out}/inc.uid").read()) == pwd.getpwnam(a).pw_uid
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_failed_command_output_is_in_the_bounce(make_poshta):
    # Postfix's local(8): a command's output (standard error here) ends the bounce reason,
    # one printable line, so the sender learns why.
    p = local_poshta(make_poshta, aliases='list: "|echo no such list >&2; echo line2; exit 67"\n')
    send(p, ["list@example.org"], "Subject: to a command\n\nx\n")
    [path] = p.wait_messages("alice", 1)
    msg = email.message_from_bytes(p.read(path))
    report = [part for part in msg.walk() if part.get_content_type() == "message/delivery-status"][0]
    diag = " ".join(report.get_payload()[-1]["Diagnostic-Code"].split())
    assert 'Command died with status 67' in diag and "Command output: no such list line2" in diag, diag
    assert "Command output: no such list line2" in p.logtext()


def test_delivery_waits_for_a_reader_holding_the_lock(make_poshta, users):
    a, _ = users
    p = local_poshta(make_poshta)
    send(p, [f"{a}@example.org"], "Subject: first\n\nx\n")
    wait_mbox(p, a, 1)
    path = os.path.join(p.spool, a)
    lock = path + ".lock"
    with open(path, "r+") as f:
        # What mail(1) does: fcntl lock plus the dot-lock.
        fcntl.lockf(f, fcntl.LOCK_EX)
        with open(lock, "x") as lf:
            lf.write(f"{os.getpid()}\n")
        send(p, [f"{a}@example.org"], "Subject: second\n\nFrom me\n")
        time.sleep(1.0)
        assert len(mbox_messages(path)) == 1, "nothing written while the reader holds the locks"
        # The reader rewrites the mailbox (marks it read) and lets go.
        data = f.read()
        f.seek(0)
        f.write(data.replace("Subject: first", "Status: RO\nSubject: first"))
        f.flush()
        os.unlink(lock)
        fcntl.lockf(f, fcntl.LOCK_UN)
    msgs = wait_mbox(p, a, 2)
    assert [m["Subject"] for m in msgs] == ["first", "second"]
    assert msgs[0]["Status"] == "RO"
    assert msgs[1].get_payload() == ">From me\n"
