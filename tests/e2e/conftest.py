"""End-to-end harness: runs the built poshta binary on loopback with a throwaway
configuration, and talks to it with real clients (smtplib, swaks).

Every instance lives in its own temp directory (config, queue, mailboxes, log) and listens
on a free 127.0.0.1 port. Every wait is bounded.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

BIN = os.environ.get("POSHTA_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "..", "target", "debug", "poshta")
BIN = os.path.abspath(BIN)


def wait_for(pred, timeout=20, what="condition", p=None):
    """Poll `pred` (bounded by `timeout` seconds) until it returns something true; return
    that. On timeout fail, with the tail of poshta's log when `p` is given."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n" + (p.logtext()[-4000:] if p else ""))


# Ports handed out in this run: the kernel may give the same free port to two bind(0)
# calls in a row (the first socket is closed by then), and an instance's listeners would
# then collide with each other ("Address already in use" on every retry).
_PORTS_GIVEN = set()


def free_port():
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port
    raise RuntimeError("no port that was not already handed out in 100 tries")


# The discard port: nothing listens on UDP 9 on loopback, so a query gets ICMP "port
# unreachable", which the resolver takes as a failure at once.
DEAD_DNS_PORT = 9


class Poshta:
    def __init__(self, extra="", users=("alice", "bob")):
        self.dir = tempfile.mkdtemp(prefix="poshta-e2e-")
        if os.geteuid() == 0:
            # Started as root, poshta runs as mail_owner after binding: it must reach its
            # config, users file and certificate in here (docs/privileges.md).
            os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.sub_port = free_port()
        self.subs_port = free_port()
        self.pop3_port = free_port()
        self.pop3s_port = free_port()
        self.cf = os.path.join(self.dir, "main.cf")
        self.log_path = os.path.join(self.dir, "poshta.log")
        self.proc = None
        self.extra = extra
        self.write_config(extra)
        # A self-signed certificate for STARTTLS and the implicit-TLS ports.
        self.cli("init", "--domain", "example.org")
        self.ca = os.path.join(self.dir, "tls", "cert.pem")
        for u in users:
            self.add_user(u, "secret-" + u)

    def write_config(self, extra=""):
        # Never the machine's resolver: unless a test names one, DNS goes to a loopback port
        # where nothing answers (lookups fail at once and mail is deferred).
        dns = "" if "dns_resolver" in extra else f"dns_resolver = 127.0.0.1:{DEAD_DNS_PORT}\n"
        with open(self.cf, "w") as f:
            f.write(f"""# written by tests/e2e/conftest.py
myhostname = mx.example.org
mydomain = example.org
mydestination = example.org, $myhostname
mynetworks = 127.0.0.1/32
smtpd_listen = 127.0.0.1:{self.port}
submission_listen = 127.0.0.1:{self.sub_port}
submissions_listen = 127.0.0.1:{self.subs_port}
pop3d_listen = 127.0.0.1:{self.pop3_port}
pop3s_listen = 127.0.0.1:{self.pop3s_port}
smtpd_tls_cert_file = {self.dir}/tls/cert.pem
smtpd_tls_key_file = {self.dir}/tls/key.pem
queue_directory = {self.dir}/spool
virtual_mailbox_base = {self.dir}/mail
mailbox_users_file = {self.dir}/users
maillog_file = {self.dir}/maillog
{dns}{extra}
""")

    def cli(self, *args, input=None, check=True):
        r = subprocess.run([BIN, *args, "-c", self.cf], input=input, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"poshta {' '.join(args)} failed: {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def add_user(self, name, password):
        return self.cli("user", "add", name, "--password-stdin", input=password + "\n")

    def _fresh_ports(self):
        """New free ports for poshta's own listeners, changed in main.cf in place (a test may
        have added lines to it)."""
        with open(self.cf) as f:
            text = f.read()
        for attr in ("port", "sub_port", "subs_port", "pop3_port", "pop3s_port"):
            old, new = getattr(self, attr), free_port()
            setattr(self, attr, new)
            text = text.replace(f"_listen = 127.0.0.1:{old}\n", f"_listen = 127.0.0.1:{new}\n")
        with open(self.cf, "w") as f:
            f.write(text)

    def start(self, _attempts=3):
        assert self.proc is None
        self.log = open(self.log_path, "ab")
        since = self.log.tell()  # this start's part of the log
        self.proc = subprocess.Popen([BIN, "serve", "-c", self.cf], stdout=self.log, stderr=self.log)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                # free_port() only finds a port free at that moment: another program may
                # take it before poshta binds. Then try again with fresh ports (bounded).
                if _attempts > 1 and b"Address already in use" in self._log_since(since):
                    self.proc = None
                    self.log.close()
                    self._fresh_ports()
                    return self.start(_attempts - 1)
                raise AssertionError(f"poshta exited with {self.proc.returncode}:\n{self.logtext()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.recv(100)
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("poshta did not start listening:\n" + self.logtext())

    def stop(self, sig=signal.SIGTERM):
        if self.proc is None:
            return None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout=10)
        self.proc = None
        self.log.close()
        return rc

    def hup(self):
        self.proc.send_signal(signal.SIGHUP)

    def _log_since(self, offset):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return b""

    def logtext(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def maildir(self, user):
        return os.path.join(self.dir, "mail", user)

    def new_messages(self, user):
        d = os.path.join(self.maildir(user), "new")
        if not os.path.isdir(d):
            return []
        # Delivery order: Maildir names start `SECS.MMICROS` (a plain sort would put
        # M100000 before M99999 within one second).
        def order(n):
            m = re.match(r"(\d+)\.M(\d+)P\d+Q(\d+)", n)
            return (int(m.group(1)), int(m.group(2)), int(m.group(3)), n) if m else (0, 0, 0, n)
        return [os.path.join(d, n) for n in sorted(os.listdir(d), key=order)]

    def wait_messages(self, user, count, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            msgs = self.new_messages(user)
            if len(msgs) >= count:
                return msgs
            time.sleep(0.05)
        raise AssertionError(f"{user}: {len(self.new_messages(user))} of {count} messages after {timeout}s\n"
                             + self.logtext()[-3000:])

    def read(self, path):
        with open(path, "rb") as f:
            return f.read()

    def rss_kib(self, field="VmHWM"):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def cleanup(self):
        self.stop(signal.SIGKILL) if self.proc else None
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def tmp_path(tmp_path):
    """pytest's tmp_path, traversable by poshta's mail_owner when the tests run as root
    (pytest makes /tmp/pytest-of-root 0700)."""
    if os.geteuid() == 0:
        p = tmp_path
        while str(p).startswith(tempfile.gettempdir() + "/pytest-of-"):
            os.chmod(p, os.stat(p).st_mode | 0o111)
            p = p.parent
    return tmp_path


@pytest.fixture
def make_poshta():
    made = []

    def make(extra="", users=("alice", "bob"), start=True):
        p = Poshta(extra=extra, users=users)
        made.append(p)
        return p.start() if start else p

    yield make
    for p in made:
        p.cleanup()


@pytest.fixture
def poshta(make_poshta):
    return make_poshta()


class Raw:
    """A raw SMTP client for what real clients refuse to send (bare LF, NUL, long lines)."""

    def __init__(self, port, source="127.0.0.1", timeout=10):
        self.s = socket.socket()
        self.s.settimeout(timeout)
        self.s.bind((source, 0))
        self.s.connect(("127.0.0.1", port))
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.s.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("closed; have %r" % self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def reply(self):
        """One complete (possibly multi-line) reply: returns (code, [lines])."""
        lines = []
        while True:
            l = self.line()
            lines.append(l)
            if len(l) < 4 or l[3] != "-":
                return int(l[:3]), lines

    def cmd(self, text):
        self.send(text + "\r\n")
        return self.reply()

    def closed(self, timeout=5):
        self.s.settimeout(timeout)
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


@pytest.fixture
def raw():
    made = []

    def connect(port, source="127.0.0.1"):
        r = Raw(port, source)
        made.append(r)
        return r

    yield connect
    for r in made:
        r.close()
