"""The README's first command: `poshta serve` with no configuration at all. As a normal user
it listens on 127.0.0.1:2525 (and the other services on 25xx/2xxx ports) and keeps everything
under ./poshta/. POSHTA_CONFIG names the main.cf for every subcommand."""
import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import BIN


def port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_non_root_embedded_defaults():
    if os.geteuid() != 0:
        pytest.skip("runs the binary as nobody; needs root to switch user")
    if not all(port_free(p) for p in (2525, 2587, 2465, 2110, 2995)):
        pytest.skip("a default port is in use here")
    work = tempfile.mkdtemp(prefix="poshta-defaults-")
    os.chmod(work, 0o777)
    binary = os.path.join(work, "poshta-bin")  # not ./poshta: that is the data directory
    shutil.copy(BIN, binary)
    os.chmod(binary, 0o755)
    as_nobody = ["runuser", "-u", "nobody", "--"]
    env = {k: v for k, v in os.environ.items() if k != "POSHTA_CONFIG"}
    proc = None
    try:
        r = subprocess.run(as_nobody + [binary, "user", "add", "alice", "--password-stdin"], cwd=work,
                           input="pw\n", capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        proc = subprocess.Popen(as_nobody + [binary, "serve"], cwd=work, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", 2525), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        with smtplib.SMTP("127.0.0.1", 2525, timeout=20) as c:
            c.sendmail("someone@example.net", ["alice@localhost"], "Subject: defaults\r\n\r\nhi\r\n")
        new = os.path.join(work, "poshta", "mail", "alice", "new")
        deadline = time.time() + 15
        while time.time() < deadline and not (os.path.isdir(new) and os.listdir(new)):
            time.sleep(0.1)
        assert len(os.listdir(new)) == 1
        assert os.path.isdir(os.path.join(work, "poshta", "spool"))
        out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        assert "127.0.0.1:2525" in out and "0.0.0.0:2525" not in out, "loopback only as a normal user"
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)


def test_poshta_config_environment_variable(tmp_path):
    cf = tmp_path / "main.cf"
    cf.write_text("myhostname = env.example.org\nmessage_size_limit = 12345\n")
    env = dict(os.environ, POSHTA_CONFIG=str(cf))
    r = subprocess.run([BIN, "postconf", "-n"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "myhostname = env.example.org" in r.stdout
    assert "message_size_limit = 12345" in r.stdout
    # -c wins over the environment.
    other = tmp_path / "other.cf"
    other.write_text("myhostname = flag.example.org\n")
    r = subprocess.run([BIN, "postconf", "-c", str(other), "myhostname"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.stdout.strip() == "myhostname = flag.example.org"
