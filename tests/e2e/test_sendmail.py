"""Local submission (issue 3): the poshta binary called through a `sendmail` link made by
`poshta install --links --root DIR`, as root and as a throwaway unprivileged user, handing
messages to the daemon over public/pickup or, with the daemon stopped, into maildrop/.
Real programs: s-nail (-S mta=LINK) and Debian's bsd-mailx (always /usr/sbin/sendmail: a
private mount namespace puts the link there when another MTA owns that path).

Users created here are removed afterwards; names carry the pid."""
import email
import email.policy
import os
import pwd
import shutil
import stat
import subprocess
import time

import pytest

from conftest import BIN, wait_for

MAILX_ROOT = os.environ.get("BSD_MAILX_ROOT") or os.path.join(
    os.path.dirname(__file__), "..", ".cache", "bsd-mailx")


def parse(data):
    return email.message_from_bytes(data, policy=email.policy.compat32)


class Local:
    """A daemon plus the sendmail/mailq/newaliases links and a copy of the binary that any
    user may run."""

    def __init__(self, make_poshta, extra="", start=True):
        self.p = make_poshta(extra=extra, start=False)
        # Other users must reach the config, the queue directory and the binary.
        os.chmod(self.p.dir, 0o755)
        self.bin = os.path.join(self.p.dir, "bin", "poshta")
        os.makedirs(os.path.dirname(self.bin))
        shutil.copy2(BIN, self.bin)
        os.chmod(self.bin, 0o755)
        self.root = os.path.join(self.p.dir, "root")
        r = subprocess.run([self.bin, "install", "--links", "--root", self.root],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        self.sendmail = os.path.join(self.root, "usr/sbin/sendmail")
        self.mailq = os.path.join(self.root, "usr/bin/mailq")
        self.newaliases = os.path.join(self.root, "usr/bin/newaliases")
        if start:
            self.p.start()

    def env(self, **kw):
        return dict(os.environ, POSHTA_CONFIG=self.p.cf, **kw)

    def run(self, args, input=b"", user=None, prog=None, env=None):
        if isinstance(input, str):
            input = input.encode()
        kw = {}
        if user is not None:
            kw = dict(user=user.pw_uid, group=user.pw_gid, extra_groups=[], cwd="/")
            env = dict(env or self.env(), HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
        return subprocess.run([prog or self.sendmail, *args], input=input, capture_output=True,
                              env=env or self.env(), timeout=60, **kw)

    def messages(self, user, count):
        return [parse(self.p.read(m)) for m in self.p.wait_messages(user, count)]


@pytest.fixture
def local(make_poshta):
    return Local(make_poshta)


@pytest.fixture
def unprivileged():
    """A throwaway Linux user (removed afterwards)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user")
    name = f"psm{os.getpid() % 100000}"
    subprocess.run(["userdel", "-r", name], capture_output=True)
    r = subprocess.run(["useradd", "-m", "-c", "Nick Two,,,", "-s", "/bin/sh", name], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True)


def test_root_submission_adds_headers(local):
    r = local.run(["alice"], b"Subject: plain\n\nhello from root\n")
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""
    m = local.messages("alice", 1)[0]
    assert m["Subject"] == "plain"
    # Missing From:, Date:, Message-ID: are added; bare names get myorigin.
    assert m["From"] == "root@mx.example.org (root)"
    assert m["Date"] and m["Message-ID"].endswith("@mx.example.org>")
    assert m["Return-Path"] == "<root@mx.example.org>"
    assert "(poshta, from userid 0)" in m["Received"]
    assert m.get_payload() == "hello from root\n"
    assert "uid=0 from=<root@mx.example.org> (socket)" in local.p.logtext()


def test_unprivileged_user_and_minus_f(local, unprivileged):
    u = unprivileged
    r = local.run(["-v", "alice"], "Subject: from a user\n\nhi\n", user=u)
    assert r.returncode == 0, r.stderr
    assert b"queued as" in r.stderr
    m = local.messages("alice", 1)[0]
    assert m["From"] == f"{u.pw_name}@mx.example.org (Nick Two)"
    assert f"(poshta, from userid {u.pw_uid})" in m["Received"]
    # -f is allowed (Postfix's default); the log and the trace header still name the uid.
    r = local.run(["-f", "boss@example.org", "-F", "The Boss", "alice"], "Subject: chosen sender\n\nx\n", user=u)
    assert r.returncode == 0, r.stderr
    m = local.messages("alice", 2)[1]
    assert m["Return-Path"] == "<boss@example.org>"
    assert m["From"] == "boss@example.org (The Boss)"
    assert f"from userid {u.pw_uid}" in m["Received"]
    assert f"uid={u.pw_uid} from=<boss@example.org>" in local.p.logtext()


def test_t_with_bcc_each_gets_a_copy(local):
    msg = ("From: root\nTo: alice\nCc: Bob <bob@example.org>\nBcc: alice, hidden\n"
           "Subject: dash t\n\nbody\n")
    r = local.run(["-t", "-oi"], msg)
    assert r.returncode == 0, r.stderr
    a = local.messages("alice", 1)[0]
    b = local.messages("bob", 1)[0]
    for m in (a, b):
        assert m["Bcc"] is None
        assert m["To"] == "alice@mx.example.org"
        assert m["From"] == "root@mx.example.org"
    time.sleep(0.5)
    assert len(local.p.new_messages("alice")) == 1, "alice named twice gets one copy"
    # The unknown "hidden" recipient does not stop the others (it is the daemon's to bounce).
    assert "nrcpt=3" in local.p.logtext()


def test_t_plus_command_line_recipients(local):
    r = local.run(["-t", "bob"], "To: alice\nSubject: both\n\nx\n")
    assert r.returncode == 0, r.stderr
    local.messages("alice", 1)
    local.messages("bob", 1)


def test_lone_dot_and_minus_i(local):
    r = local.run(["alice"], "Subject: dot\n\nline 1\n.\nnot sent\n")
    assert r.returncode == 0, r.stderr
    assert local.messages("alice", 1)[0].get_payload() == "line 1\n"
    r = local.run(["-i", "alice"], "Subject: dot -i\n\nline 1\n.\nsent\n")
    assert r.returncode == 0, r.stderr
    assert local.messages("alice", 2)[1].get_payload() == "line 1\n.\nsent\n"


def test_usage_errors(local):
    r = local.run([], "Subject: nobody\n\nx\n")
    assert r.returncode == 64
    assert b"Recipient addresses must be specified" in r.stderr
    assert r.stderr.count(b"\n") == 1
    r = local.run(["-t"], "Subject: nobody\n\nx\n")
    assert r.returncode == 64
    assert b"No recipient addresses found in message header" in r.stderr
    r = local.run(["-Z", "alice"])
    assert r.returncode == 64
    r = local.run(["a b@c"], "x\n")
    assert r.returncode == 67, r.stderr
    # Unknown -o options are ignored with a warning; the message still goes.
    r = local.run(["-oZ", "-odi", "-oem", "alice"], "Subject: o\n\nx\n")
    assert r.returncode == 0
    assert r.stderr == b"sendmail: warning: -oZ option ignored\n"
    local.messages("alice", 1)


def test_unknown_local_user_bounces_on_the_sendmail_path(local):
    # Over SMTP an unknown local recipient is refused at RCPT; sendmail has no dialogue to
    # refuse in, so the message is queued and bounces (RFC 3464, 5.1.1) to the sender.
    r = local.run(["-f", "alice@example.org", "nosuchuser"], "Subject: lost\n\nto nobody\n")
    assert r.returncode == 0, r.stderr
    dsn = local.messages("alice", 1)[0]
    assert dsn.get_content_type() == "multipart/report"
    status = [p for p in dsn.walk() if p.get_content_type() == "message/delivery-status"][0].as_string()
    assert "Status: 5.1.1" in status, status
    assert "nosuchuser@mx.example.org" in status
    assert "status=bounced" in local.p.logtext()


def test_minus_bs_dialogue(local, unprivileged):
    script = ("EHLO me\r\nMAIL FROM:<nick>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\n"
              "DATA\r\nSubject: bs\r\n\r\n..dot-stuffed\r\n.\r\n"
              # Bare LF works too from a local pipe.
              "MAIL FROM:<>\nRCPT TO:<alice@example.org>\nDATA\nSubject: bs2\n\nlf\n.\nQUIT\n")
    r = local.run(["-bs"], script, user=unprivileged)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert out.startswith("220 mx.example.org")
    assert out.count("250 2.0.0 Ok: queued as") == 2, out
    assert out.rstrip().endswith("221 2.0.0 Bye")
    a = local.messages("alice", 2)
    subjects = sorted(m["Subject"] for m in a)
    assert subjects == ["bs", "bs2"]
    first = [m for m in a if m["Subject"] == "bs"][0]
    assert first.get_payload() == ".dot-stuffed\n"
    assert first["Return-Path"] == "<nick@mx.example.org>"
    assert f"from userid {unprivileged.pw_uid}" in first["Received"]
    assert local.messages("bob", 1)[0]["Subject"] == "bs"


def test_minus_bs_bare_recipient_is_qualified(local, unprivileged):
    # Postfix's sendmail -bs qualifies a bare RCPT TO (its cleanup's append_at_myorigin), as
    # poshta's command-line path does: <alice> is alice@myorigin, delivered to the local
    # user; <postmaster> gets the same treatment (then the postmaster alias).
    script = ("HELO me\r\nMAIL FROM:<nick>\r\nRCPT TO:<alice>\r\nDATA\r\nSubject: bare\r\n\r\nhi\r\n.\r\n"
              "QUIT\r\n")
    r = local.run(["-bs"], script, user=unprivileged)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "250 2.1.5" in out and out.count("250 2.0.0 Ok: queued as") == 1, out
    m = local.messages("alice", 1)[0]
    assert m["Subject"] == "bare"
    assert m["Delivered-To"] == "alice@mx.example.org", m["Delivered-To"]
    assert m["Return-Path"] == "<nick@mx.example.org>"
    # Still refused: the null path and an empty domain as recipients.
    r = local.run(["-bs"], "HELO me\r\nMAIL FROM:<>\r\nRCPT TO:<>\r\nRCPT TO:<x@>\r\nQUIT\r\n")
    assert r.stdout.decode().count("501 5.1.3") == 2, r.stdout


def test_mailq_and_bp(local):
    r = local.run([], prog=local.mailq)
    assert r.returncode == 0 and b"Mail queue is empty" in r.stdout
    r = local.run(["-bp"])
    assert r.returncode == 0 and b"Mail queue is empty" in r.stdout


def test_any_user_may_list_and_flush_but_only_root_may_delete(local, unprivileged):
    # Postfix's defaults: mailq and postqueue -f for anyone, postsuper for root. The daemon
    # tells callers apart by their uid from the kernel (SO_PEERCRED), not by anything sent.
    r = local.run(["someone@elsewhere.example"], "Subject: waits\n\nfor the relay\n")
    assert r.returncode == 0, r.stderr
    listed = wait_for(lambda: (lambda o: o if "someone@elsewhere.example" in o else None)(
        local.run([], prog=local.mailq, user=unprivileged).stdout.decode()), what="the message in mailq")
    assert "Requests" in listed or "Kbytes" in listed, listed
    r = local.run(["queue", "flush"], prog=local.bin, user=unprivileged)
    assert r.returncode == 0, r.stderr
    r = local.run(["queue", "delete", "ALL"], prog=local.bin, user=unprivileged)
    assert r.returncode != 0 and b"permission denied" in r.stderr, r.stdout + r.stderr
    assert "someone@elsewhere.example" in local.run([], prog=local.mailq).stdout.decode()
    assert "DELETE refused" in local.p.logtext()
    r = local.run(["queue", "delete", "ALL"], prog=local.bin)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "Mail queue is empty" in local.run([], prog=local.mailq).stdout.decode(), what="empty queue")


def test_daemon_stopped_maildrop_then_import(make_poshta, unprivileged):
    local = Local(make_poshta)
    local.p.stop()
    maildrop = os.path.join(local.p.dir, "spool", "maildrop")
    assert stat.S_IMODE(os.stat(maildrop).st_mode) == 0o1733
    r = local.run(["-v", "alice"], "Subject: while down (root)\n\nx\n")
    assert r.returncode == 0, r.stderr
    assert b"not running" in r.stderr
    r = local.run(["bob"], "Subject: while down (user)\n\ny\n", user=unprivileged)
    assert r.returncode == 0, r.stderr
    files = [f for f in os.listdir(maildrop) if not f.startswith(".")]
    assert len(files) == 2
    owners = sorted(os.stat(os.path.join(maildrop, f)).st_uid for f in files)
    assert owners == sorted([0, unprivileged.pw_uid])
    # The user cannot list the directory (nor so find the other file).
    r = subprocess.run(["ls", maildrop], user=unprivileged.pw_uid, capture_output=True, timeout=10)
    assert r.returncode != 0
    local.p.start()
    a = local.messages("alice", 1)[0]
    b = local.messages("bob", 1)[0]
    assert a["Subject"] == "while down (root)" and "from userid 0" in a["Received"]
    assert b["Subject"] == "while down (user)" and f"from userid {unprivileged.pw_uid}" in b["Received"]
    wait_for(lambda: not [f for f in os.listdir(maildrop) if not f.startswith(".")], what="maildrop emptied")
    assert "(maildrop)" in local.p.logtext()


def test_mailq_shows_maildrop_while_down(make_poshta, unprivileged):
    # A message sent while the daemon is down waits in maildrop/: mailq must show it (as
    # Postfix's showq lists maildrop), not "Mail queue is empty".
    local = Local(make_poshta)
    local.p.stop()
    r = local.run(["-f", "nick@example.org", "alice"], "Subject: waiting\n\nx\n")
    assert r.returncode == 0, r.stderr
    maildrop = os.path.join(local.p.dir, "spool", "maildrop")
    # A damaged file is listed by name too, and does not stop the listing.
    with open(os.path.join(maildrop, "zz-garbage"), "wb") as f:
        f.write(b"GET / HTTP/1.0\r\n\r\n" + b"\xff" * 100000)
    r = local.run([], prog=local.mailq)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "nick@example.org" in out and "alice@mx.example.org" in out, out
    assert "(waiting for pickup: the mail system is not running)" in out, out
    assert "zz-garbage" in out and "(damaged: not a poshta submission)" in out, out
    assert "in 2 Requests." in out, out
    r = local.run(["-bp"])
    assert r.returncode == 0 and "nick@example.org" in r.stdout.decode()
    # A user cannot list maildrop/ (1733). The queue log is no more readable to a user
    # (0711 directory, 0600 segments: "fatal", as Postfix's postqueue -p with the system
    # down); where an admin opened it up, the user gets the queue and a one-line note.
    r = local.run([], prog=local.mailq, user=unprivileged)
    assert r.returncode == 1 and b"Permission denied" in r.stderr, r.stderr
    spool = os.path.join(local.p.dir, "spool")
    os.chmod(spool, 0o755)
    for f in os.listdir(spool):
        if f.endswith(".log"):
            os.chmod(os.path.join(spool, f), 0o644)
    r = local.run([], prog=local.mailq, user=unprivileged)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"Mail queue is empty\n"
    assert r.stderr.startswith(b"poshta: warning: cannot read ") and b"maildrop" in r.stderr, r.stderr
    assert r.stderr.count(b"\n") == 1, r.stderr
    os.unlink(os.path.join(maildrop, "zz-garbage"))
    local.p.start()
    m = [parse(local.p.read(f)) for f in local.p.wait_messages("alice", 1, timeout=10)][0]
    assert m["Subject"] == "waiting"
    wait_for(lambda: "Mail queue is empty" in local.run([], prog=local.mailq).stdout.decode(),
             timeout=10, what="empty queue after pickup")
    # The running daemon's LIST shows a file it has not picked up yet. It scans every 5 s,
    # so a file may be taken between the write and mailq: a few tries, each delivered.
    body = b"Subject: between scans\n\nx\n"
    head = b"POSHTA-PICKUP 1\nsender nick@example.org\nrcpt alice@mx.example.org\nsize %d\n\n" % len(body)
    seen = None
    for i in range(5):
        name = f"{os.getpid():x}{i:x}" + "0" * 8
        tmp = os.path.join(maildrop, ".tmp-" + name)
        with open(tmp, "wb") as f:
            f.write(head + body)
        os.rename(tmp, os.path.join(maildrop, name))
        out = local.run([], prog=local.mailq).stdout.decode()
        if name in out:
            seen = out
            break
    assert seen, out
    assert "(waiting for pickup)" in seen and "not running" not in seen, seen
    assert "nick@example.org" in seen and "in 1 Request." in seen, seen
    local.p.wait_messages("alice", 2 + i, timeout=10)
    wait_for(lambda: "Mail queue is empty" in local.run([], prog=local.mailq).stdout.decode(),
             timeout=10, what="empty queue after the second pickup")


def test_never_started_is_tempfail(make_poshta):
    local = Local(make_poshta, start=False)
    r = local.run(["alice"], "Subject: x\n\nx\n")
    assert r.returncode == 75, r.stderr
    assert r.stderr.startswith(b"sendmail: fatal: cannot queue the message")


def test_maildrop_imported_while_running(local):
    # A file dropped while the daemon runs (e.g. it was busy) is found by the periodic scan.
    local.p.stop()
    r = local.run(["alice"], "Subject: dropped\n\nx\n")
    assert r.returncode == 0
    local.p.start()
    assert local.messages("alice", 1)[0]["Subject"] == "dropped"


def test_hostile_input(local):
    # NUL bytes: removed from headers, kept in the body.
    r = local.run(["alice"], b"Subject: nul\x00here\n\nbody\x00byte\n")
    assert r.returncode == 0, r.stderr
    data = local.p.read(local.p.wait_messages("alice", 1)[0])
    assert b"Subject: nulhere\n" in data and b"body\x00byte\n" in data
    # No header/body separator: an empty line is put before the first non-header line.
    r = local.run(["alice"], b"Subject: nosep\nthis is text\n")
    assert r.returncode == 0
    data = local.p.read(local.p.wait_messages("alice", 2)[1])
    head, _, body = data.partition(b"\n\n")
    assert b"Subject: nosep" in head and b"From: root@mx.example.org" in head
    assert body == b"this is text\n"
    # A 2 MB line is delivered whole.
    line = b"x" * (2 * 1024 * 1024)
    r = local.run(["alice"], b"Subject: long\n\n" + line + b"\nend\n")
    assert r.returncode == 0, r.stderr
    data = local.p.read(local.p.wait_messages("alice", 3)[2])
    assert data.endswith(b"\n\n" + line + b"\nend\n")
    # A 2 MB header line is cut at header_size_limit; with -t that is an error.
    r = local.run(["-t"], b"To: alice\nX-Long: " + line + b"\n\nx\n")
    assert r.returncode == 65 and b"unable to extract recipients" in r.stderr


def test_over_message_size_limit(make_poshta):
    local = Local(make_poshta, extra="message_size_limit = 100000\n")
    big = b"Subject: big\n\n" + (b"y" * 999 + b"\n") * 200
    r = local.run(["alice"], big)
    assert r.returncode == 65, r.stderr
    assert r.stderr == b"sendmail: fatal: message file too big\n"
    # (The daemon checks it again: test_pickup_socket_refuses_hostile_clients.)
    time.sleep(0.3)
    assert local.p.new_messages("alice") == []


def test_s_nail_through_the_link(local, tmp_path):
    env = local.env(HOME=str(tmp_path), MAILRC="/dev/null")
    r = subprocess.run(["s-nail", "-n", "-#", "-S", "v15-compat", "-S", "sendwait", "-S", f"mta={local.sendmail}",
                        "-s", "via s-nail", "alice"], input=b"sent by s-nail\n", capture_output=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    m = local.messages("alice", 1)[0]
    assert m["Subject"] == "via s-nail"
    assert m["To"] == "alice@mx.example.org"
    assert m.get_payload().strip() == "sent by s-nail"


def mailx_bin():
    b = os.path.join(MAILX_ROOT, "usr", "bin", "bsd-mailx")
    return b if os.access(b, os.X_OK) else None


def test_bsd_mailx_through_usr_sbin_sendmail(local, tmp_path):
    mailx = mailx_bin()
    if not mailx:
        pytest.skip("bsd-mailx not unpacked (tests/run.sh downloads it)")
    libdirs = [os.path.join(MAILX_ROOT, "usr", "lib", d) for d in os.listdir(os.path.join(MAILX_ROOT, "usr", "lib"))]
    env = local.env(HOME=str(tmp_path), MAILRC="/dev/null",
                    LD_LIBRARY_PATH=":".join(d for d in libdirs if os.path.isdir(d)))
    target = "/usr/sbin/sendmail"
    cmd = f"{mailx} -s 'This is a local test' alice"
    if os.path.lexists(target):
        if os.path.realpath(target) == os.path.realpath(BIN):
            pass
        elif os.geteuid() == 0 and shutil.which("unshare"):
            # Another MTA owns /usr/sbin/sendmail: bind our binary over it in a private
            # mount namespace only (nothing outside this process tree sees it).
            cmd = (f"mount --make-rprivate / && mount --bind {local.bin} {target} && "
                   f"exec {cmd}")
            cmd = ["unshare", "-m", "sh", "-c", cmd]
        else:
            pytest.skip(f"{target} belongs to another MTA and no mount namespace is available")
    else:
        if os.geteuid() != 0:
            pytest.skip(f"cannot create {target}")
        os.symlink(local.bin, target)
    try:
        r = subprocess.run(cmd if isinstance(cmd, list) else ["sh", "-c", cmd], input=b"date output here\n",
                           capture_output=True, env=env, timeout=60)
    finally:
        if os.path.islink(target) and os.readlink(target) == local.bin:
            os.unlink(target)
    assert r.returncode == 0, r.stdout + r.stderr
    m = local.messages("alice", 1)[0]
    assert m["Subject"] == "This is a local test"
    assert "date output here" in m.get_payload()


def test_install_refuses_foreign_files(tmp_path):
    root = tmp_path / "root"
    (root / "usr" / "sbin").mkdir(parents=True)
    (root / "usr" / "sbin" / "sendmail").write_bytes(b"#!/bin/sh\necho other MTA\n")
    r = subprocess.run([BIN, "install", "--links", "--root", str(root)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "update-alternatives" in r.stderr and "dpkg-divert" in r.stderr
    assert not (root / "usr" / "bin" / "mailq").exists()
    r = subprocess.run([BIN, "install", "--links", "--force", "--root", str(root)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    for l in ("usr/sbin/sendmail", "usr/bin/mailq", "usr/bin/newaliases"):
        assert os.path.realpath(root / l) == os.path.realpath(BIN)
    assert (root / "usr" / "sbin" / "sendmail.poshta-orig").read_bytes().startswith(b"#!/bin/sh")
    r = subprocess.run([BIN, "install", "--links", "--root", str(root)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "already" in r.stdout


def test_newaliases(make_poshta):
    aliases_extra = "alias_maps = hash:{dir}/aliases\n"
    local = Local(make_poshta, start=False)
    aliases = os.path.join(local.p.dir, "aliases")
    with open(local.p.cf, "a") as f:
        f.write(aliases_extra.format(dir=local.p.dir))
    with open(aliases, "w") as f:
        f.write("postmaster: alice\nsupport: alice, bob\n")
    # Daemon down: the file is checked, the reload is not possible, and that is fine.
    r = local.run([], prog=local.newaliases)
    assert r.returncode == 0, r.stderr
    assert b"not running" in r.stderr
    local.p.start()
    r = local.run(["-bi"])
    assert r.returncode == 0, r.stderr
    wait_for(lambda: "reload --" in local.p.logtext(), what="reload logged")
    with open(aliases, "w") as f:
        f.write("postmaster: alice\nbroken line without colon\nalso: |\"unterminated\n")
    r = local.run([], prog=local.newaliases)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert f"{aliases}:2:" in err, err
    assert "newaliases: error:" in err


def test_pickup_socket_refuses_hostile_clients(make_poshta):
    """Clients that skip sendmail's checks: the daemon checks again."""
    import socket
    local = Local(make_poshta, extra="message_size_limit = 1000\n")
    sock = os.path.join(local.p.dir, "spool", "public", "pickup")

    def talk(data, shut=True):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(40)
            s.connect(sock)
            try:
                s.sendall(data)
                if shut:
                    s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return s.recv(1000).decode()

    head = "POSHTA-PICKUP 1\nsender x@example.org\nrcpt alice@example.org\nsize {}\n\n"
    assert talk(head.format(5000).encode() + b"x" * 5000).startswith("ERR 65 message file too big")
    assert talk(b"GET / HTTP/1.0\r\n\r\n").startswith("ERR 64")
    assert talk(b"POSHTA-PICKUP 1\nsender x@example.org\nrcpt bare\nsize 1\n\nx").startswith("ERR 67")
    # Announced 100 bytes, sent 10, then gone: nothing is queued.
    assert talk(head.format(100).encode() + b"0123456789").startswith("ERR 75")
    # More bytes than announced.
    assert talk(head.format(3).encode() + b"Subject: x\n\n").startswith("ERR")
    r = talk(head.format(12).encode() + b"Subject: y\n\n")
    assert r.startswith("OK "), r
    assert local.messages("alice", 1)[0]["Subject"] == "y"
    time.sleep(0.3)
    assert len(local.p.new_messages("alice")) == 1
