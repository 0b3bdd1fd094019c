"""Postfix itself as a peer (Debian's postfix package; Dovecot's auth service from
dovecot-core as its SASL server), both directions, loopback only:

- poshta relays to a Postfix whose smtpd on a loopback port demands STARTTLS and AUTH
  (smtpd_tls_security_level = encrypt, smtpd_tls_auth_only, only SASL-authenticated clients
  may send); poshta uses smtp_tls_security_level = encrypt with the peer's certificate as
  smtp_tls_CAfile and a sasl_passwd entry. Postfix delivers into a virtual Maildir.
- Postfix relays into poshta (relayhost = [127.0.0.1]:poshta's port, opportunistic TLS).

Each Postfix instance is private (its own config_directory, queue_directory and log; nothing
from /etc/postfix) and runs, with its Dovecot, in a mount namespace where /etc/resolv.conf,
/etc/hosts and /etc/nsswitch.conf are loopback-only files, so no peer asks the machine's
resolver. Needs root (Postfix's master and chroot) and unshare; skipped otherwise.
"""
import os
import pwd
import shutil
import smtplib
import subprocess
import tempfile
import time

import pytest

from conftest import free_port, wait_for

NS_SCRIPT = ('mount --bind "$1/resolv.conf" /etc/resolv.conf && mount --bind "$1/hosts" /etc/hosts && '
             'mount --bind "$1/nsswitch.conf" /etc/nsswitch.conf && shift && exec "$@"')

MASTER_SERVICES = """\
pickup    unix  n       -       y       60      1       pickup
cleanup   unix  n       -       y       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       y       1000?   1       tlsmgr
rewrite   unix  -       -       y       -       -       trivial-rewrite
bounce    unix  -       -       y       -       0       bounce
defer     unix  -       -       y       -       0       bounce
trace     unix  -       -       y       -       0       bounce
verify    unix  -       -       y       -       1       verify
flush     unix  n       -       y       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       y       -       -       smtp
relay     unix  -       -       y       -       -       smtp
showq     unix  n       -       y       -       -       showq
error     unix  -       -       y       -       -       error
retry     unix  -       -       y       -       -       error
discard   unix  -       -       y       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       y       -       1       anvil
scache    unix  -       -       y       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def usable():
    if os.getuid() != 0:
        return "needs root (Postfix's master, chroot and users)"
    for b in ("postfix", "postconf", "dovecot", "openssl", "unshare"):
        if not shutil.which(b) and not os.access(f"/usr/sbin/{b}", os.X_OK):
            return f"{b} not installed (tests/run.sh installs postfix and dovecot-core)"
    try:
        pwd.getpwnam("postfix")
        pwd.getpwnam("dovecot")
    except KeyError:
        return "the postfix/dovecot users are missing"
    if subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode:
        return "unshare -m is not permitted: cannot keep Postfix off the machine's resolver"
    return None


def in_ns(ns, *cmd, **kw):
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", NS_SCRIPT, "ns", ns, *cmd]


class PostfixPeer:
    def __init__(self, main_extra, master_smtpd, sasl_user=None):
        self.dovecot = None
        self.base = tempfile.mkdtemp(prefix="poshta-pf-")
        os.chmod(self.base, 0o755)
        b = self.base
        self.conf, self.queue, self.data, self.mail, self.ns = (
            f"{b}/conf", f"{b}/queue", f"{b}/data", f"{b}/mail", f"{b}/ns")
        for d in (self.conf, self.queue + "/etc", self.data, self.mail, self.ns):
            os.makedirs(d)
        self.maillog = f"{self.data}/maillog"
        open(self.maillog, "w").close()
        shutil.chown(self.data, "postfix")
        shutil.chown(self.maillog, "postfix")
        nobody = pwd.getpwnam("nobody")
        os.chown(self.mail, nobody.pw_uid, nobody.pw_gid)
        for name, text in (("hosts", "127.0.0.1 localhost\n"),
                           ("resolv.conf", "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"),
                           ("nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\nhosts: files\nservices: files\n")):
            for d in (self.ns, self.queue + "/etc"):
                with open(f"{d}/{name}", "w") as f:
                    f.write(text)
        for f in ("/etc/services", "/etc/localtime"):
            if os.path.exists(f):
                shutil.copy(f, self.queue + "/etc/")
        # A test CA and a server certificate it signs for 127.0.0.1 and localhost. (A
        # self-signed certificate as its own trust anchor is refused by webpki:
        # CaUsedAsEndEntity.)
        self.ca, self.cert, self.key = f"{self.conf}/ca.pem", f"{self.conf}/cert.pem", f"{self.conf}/key.pem"
        with open(f"{self.conf}/ext.cnf", "w") as f:
            f.write("basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
                    "extendedKeyUsage=serverAuth\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        for cmd in (["req", "-x509", *ec, "-keyout", f"{self.conf}/ca.key", "-out", self.ca, "-days", "2",
                     "-subj", "/CN=poshta test CA"],
                    ["req", *ec, "-keyout", self.key, "-out", f"{self.conf}/leaf.csr", "-subj", "/CN=localhost"],
                    ["x509", "-req", "-in", f"{self.conf}/leaf.csr", "-CA", self.ca, "-CAkey", f"{self.conf}/ca.key",
                     "-CAcreateserial", "-out", self.cert, "-days", "2", "-extfile", f"{self.conf}/ext.cnf"]):
            subprocess.run(["openssl", *cmd], check=True, capture_output=True, timeout=60)
        with open(f"{self.conf}/vmailbox", "w") as f:
            f.write("bob@peer.test bob/\n")
        self.port = free_port()
        with open(f"{self.conf}/main.cf", "w") as f:
            f.write(f"""compatibility_level = 3.6
config_directory = {self.conf}
queue_directory = {self.queue}
data_directory = {self.data}
maillog_file = {self.maillog}
maillog_file_prefixes = {self.base}
myhostname = peer.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = peer.test
virtual_mailbox_base = {self.mail}
virtual_mailbox_maps = texthash:{self.conf}/vmailbox
virtual_uid_maps = static:{nobody.pw_uid}
virtual_gid_maps = static:{nobody.pw_gid}
alias_maps =
alias_database =
local_recipient_maps =
biff = no
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_tls_chain_files = {self.key}, {self.cert}
smtpd_tls_session_cache_database =
smtpd_tls_loglevel = 1
smtp_tls_loglevel = 1
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_sasl_auth_enable = no
{main_extra}
""")
        with open(f"{self.conf}/master.cf", "w") as f:
            f.write(f"127.0.0.1:{self.port} inet n - y - - smtpd\n{master_smtpd}" + MASTER_SERVICES)
        r = subprocess.run(in_ns(self.ns, "postfix", "-c", self.conf, "check"), capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, f"postfix check: {r.stderr}\n{self.log()}"
        if sasl_user:
            self.start_dovecot(*sasl_user)
        self.started = True
        r = subprocess.run(in_ns(self.ns, "postfix", "-c", self.conf, "start"), capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, f"postfix start: {r.stderr}\n{self.log()}"
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                smtplib.SMTP("127.0.0.1", self.port, timeout=5).quit()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("Postfix did not listen:\n" + self.log())
        pid = open(f"{self.queue}/pid/master.pid").read().strip()
        with open(f"/proc/{pid}/root/etc/resolv.conf") as f:
            assert "nameserver 127.0.0.1" in f.read(), "Postfix must not see the machine's resolver"

    def start_dovecot(self, user, password):
        d = f"{self.base}/dovecot"
        os.makedirs(f"{d}/run")
        os.makedirs(f"{d}/state")
        with open(f"{d}/passwd", "w") as f:
            f.write(f"{user}:{{PLAIN}}{password}\n")
        shutil.chown(f"{d}/passwd", "root", "dovecot")
        os.chmod(f"{d}/passwd", 0o640)
        with open(f"{d}/dovecot.conf", "w") as f:
            f.write(f"""instance_name = poshta-test-{os.getpid()}-{self.port}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
listen = 127.0.0.1
ssl = no
protocols = none
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener {self.queue}/private/auth {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
""")
        self.dovecot = subprocess.Popen(in_ns(self.ns, "dovecot", "-F", "-c", f"{d}/dovecot.conf"),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 20
        while not os.path.exists(f"{self.queue}/private/auth"):
            if time.time() > deadline or self.dovecot.poll() is not None:
                raise AssertionError("Dovecot auth did not start: " + self.dovecot.stderr.read().decode()
                                     if self.dovecot.poll() is not None else "Dovecot auth did not start")
            time.sleep(0.1)

    def log(self):
        try:
            return open(self.maillog, errors="replace").read()
        except OSError:
            return ""

    def messages(self, user="bob"):
        d = f"{self.mail}/{user}/new"
        return [os.path.join(d, n) for n in os.listdir(d)] if os.path.isdir(d) else []

    def close(self):
        if not hasattr(self, "base"):
            return
        if getattr(self, "started", False):
            subprocess.run(["postfix", "-c", self.conf, "stop"], capture_output=True, timeout=60)
        if self.dovecot is not None:
            self.dovecot.terminate()
            try:
                self.dovecot.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.dovecot.kill()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def postfix_peer():
    why = usable()
    if why:
        pytest.skip(why)
    made = []

    def make(*a, **kw):
        p = PostfixPeer.__new__(PostfixPeer)
        made.append(p)
        p.__init__(*a, **kw)
        return p

    yield make
    for p in made:
        p.close()


def test_poshta_relays_to_postfix_with_starttls_and_auth(make_poshta, postfix_peer):
    pf = postfix_peer(
        "smtpd_tls_auth_only = yes\n",
        "  -o smtpd_tls_security_level=encrypt\n  -o smtpd_sasl_auth_enable=yes\n"
        "  -o smtpd_client_restrictions=permit_sasl_authenticated,reject\n"
        "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n",
        sasl_user=("relayuser", "s3cret-pw.9"),
    )
    p = make_poshta(start=False)
    with open(os.path.join(p.dir, "sasl_passwd"), "w") as f:
        f.write(f"[127.0.0.1]:{pf.port} relayuser:s3cret-pw.9\n")
    p.extra = (f"relayhost = [127.0.0.1]:{pf.port}\nsmtp_sasl_auth_enable = yes\n"
               f"smtp_sasl_password_maps = hash:{p.dir}/sasl_passwd\n"
               f"smtp_tls_security_level = encrypt\nsmtp_tls_CAfile = {pf.ca}\n")
    p.write_config(p.extra)
    p.start()
    with smtplib.SMTP("127.0.0.1", p.port, timeout=10) as s:
        s.sendmail("alice@example.org", ["bob@peer.test"], "Subject: to postfix\n\nvia TLS and AUTH\n")
    try:
        msgs = wait_for(lambda: pf.messages(), timeout=30, what="delivery into Postfix's Maildir")
    except AssertionError:
        raise AssertionError(f"no delivery\n--- postfix:\n{pf.log()}\n--- poshta:\n{p.logtext()[-3000:]}")
    body = open(msgs[0], "rb").read()
    assert b"via TLS and AUTH" in body
    log = pf.log()
    assert "sasl_method=PLAIN, sasl_username=relayuser" in log or "sasl_username=relayuser" in log, log
    assert "TLS connection established from" in log, log
    assert f"relay=127.0.0.1[127.0.0.1]:{pf.port}" in p.logtext() and "status=sent" in p.logtext()


def test_postfix_refuses_poshta_without_the_right_password(make_poshta, postfix_peer):
    pf = postfix_peer(
        "smtpd_tls_auth_only = yes\n",
        "  -o smtpd_tls_security_level=encrypt\n  -o smtpd_sasl_auth_enable=yes\n"
        "  -o smtpd_client_restrictions=permit_sasl_authenticated,reject\n",
        sasl_user=("relayuser", "right"),
    )
    p = make_poshta(start=False)
    with open(os.path.join(p.dir, "sasl_passwd"), "w") as f:
        f.write(f"[127.0.0.1]:{pf.port} relayuser:wrong\n")
    p.extra = (f"relayhost = [127.0.0.1]:{pf.port}\nsmtp_sasl_auth_enable = yes\n"
               f"smtp_sasl_password_maps = hash:{p.dir}/sasl_passwd\n"
               f"smtp_tls_security_level = encrypt\nsmtp_tls_CAfile = {pf.ca}\n")
    p.write_config(p.extra)
    p.start()
    with smtplib.SMTP("127.0.0.1", p.port, timeout=10) as s:
        s.sendmail("alice@example.org", ["bob@peer.test"], "Subject: x\n\nx\n")
    # smtp_sasl_auth_soft_bounce = yes (Postfix's default): deferred, never lost.
    wait_for(lambda: "status=deferred" in p.logtext(), timeout=30, what="deferral")
    assert not pf.messages()
    assert "bob@peer.test" in p.cli("queue").stdout


def test_postfix_relays_into_poshta(make_poshta, postfix_peer):
    p = make_poshta()
    pf = postfix_peer(f"relayhost = [127.0.0.1]:{p.port}\nsmtp_tls_security_level = may\n", "")
    with smtplib.SMTP("127.0.0.1", pf.port, timeout=10) as s:
        s.sendmail("someone@peer.test", ["bob@example.org"], "Subject: from postfix\n\nthrough postfix\n")
    msgs = p.wait_messages("bob", 1, timeout=30)
    data = p.read(msgs[0])
    assert b"through postfix" in data
    assert b"by peer.test (Postfix)" in data, data[:600]
    wait_for(lambda: "status=sent" in pf.log(), timeout=30, what="Postfix's log line")
    assert "TLS connection established to 127.0.0.1" in pf.log(), pf.log()
