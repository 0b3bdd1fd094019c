"""Submission with TLS and authentication (issue 4), with real clients: swaks, msmtp,
s-nail, Python smtplib, openssl s_client; fail2ban-regex on the log."""
import base64
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from test_receive_deliver import parse, send


def ctx_for(p):
    """Verify the self-signed certificate from `poshta init` (it names mx.example.org,
    example.org and localhost; clients connect to 127.0.0.1, so the name check is off here
    and done by msmtp's test below)."""
    c = ssl.create_default_context(cafile=p.ca)
    c.check_hostname = False
    return c


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def test_ehlo_offers_starttls_and_auth_only_after_tls(poshta):
    with smtplib.SMTP("127.0.0.1", poshta.port, timeout=20) as c:
        c.ehlo()
        assert c.has_extn("starttls")
        assert not c.has_extn("auth"), "no AUTH on port 25 by default (smtpd_sasl_auth_enable = no)"
    with smtplib.SMTP("127.0.0.1", poshta.sub_port, timeout=20) as c:
        c.ehlo()
        assert c.has_extn("starttls") and not c.has_extn("auth")
        c.starttls(context=ctx_for(poshta))
        c.ehlo()
        assert c.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert not c.has_extn("starttls")


def test_smtplib_starttls_login_and_send(poshta):
    with smtplib.SMTP("127.0.0.1", poshta.sub_port, timeout=20) as c:
        c.starttls(context=ctx_for(poshta))
        c.login("alice", "secret-alice")
        c.sendmail("alice@example.org", ["bob@example.org"], "Subject: via 587\r\n\r\nhello bob\r\n")
    [path] = poshta.wait_messages("bob", 1)
    m = parse(poshta, path)
    assert m["Subject"] == "via 587"
    assert "with ESMTPSA id" in m["Received"]
    assert "sasl_method=PLAIN, sasl_username=alice" in poshta.logtext()
    assert "Anonymous TLS connection established from unknown[127.0.0.1]: TLSv1.3 with cipher" in poshta.logtext()


def test_smtp_ssl_465_and_full_address_login(poshta):
    with smtplib.SMTP_SSL("127.0.0.1", poshta.subs_port, timeout=20, context=ctx_for(poshta)) as c:
        c.login("alice@example.org", "secret-alice")
        c.sendmail("alice@example.org", ["bob@example.org"], "Subject: via 465\r\n\r\nx\r\n")
    [path] = poshta.wait_messages("bob", 1)
    assert parse(poshta, path)["Subject"] == "via 465"


def test_authenticated_user_may_relay(poshta):
    with smtplib.SMTP_SSL("127.0.0.1", poshta.subs_port, timeout=20, context=ctx_for(poshta)) as c:
        c.login("alice", "secret-alice")
        assert c.sendmail("alice@example.org", ["friend@elsewhere.example"], "Subject: out\r\n\r\nx\r\n") == {}
    deadline = time.time() + 10
    while "friend@elsewhere.example" not in poshta.cli("queue").stdout and time.time() < deadline:
        time.sleep(0.1)
    assert "friend@elsewhere.example" in poshta.cli("queue").stdout


def test_submission_requires_auth_before_mail(poshta):
    with smtplib.SMTP("127.0.0.1", poshta.sub_port, timeout=20) as c:
        c.starttls(context=ctx_for(poshta))
        c.ehlo()
        code, text = c.mail("alice@example.org")
        assert (code, text) == (530, b"5.7.0 Authentication required")


def test_auth_before_tls_on_587_is_refused(poshta, raw):
    r = raw(poshta.sub_port)
    r.reply()
    r.cmd("EHLO client.example")
    code, lines = r.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldC1hbGljZQ==")
    assert code == 530 and lines[0] == "530 5.7.0 Must issue a STARTTLS command first"


def test_wrong_password_and_unknown_user_get_the_same_answer(poshta):
    replies = []
    for user, pw in [("alice", "wrong"), ("nosuchuser", "wrong")]:
        with smtplib.SMTP("127.0.0.1", poshta.sub_port, timeout=20) as c:
            c.starttls(context=ctx_for(poshta))
            with pytest.raises(smtplib.SMTPAuthenticationError) as e:
                c.login(user, pw)
            replies.append((e.value.smtp_code, e.value.smtp_error))
    assert replies[0] == replies[1] == (535, b"5.7.8 Error: authentication failed: authentication failure")


def test_sender_login_mismatch_is_refused(poshta):
    with smtplib.SMTP_SSL("127.0.0.1", poshta.subs_port, timeout=20, context=ctx_for(poshta)) as c:
        c.login("alice", "secret-alice")
        code, text = c.mail("bob@example.org")
        assert code == 553 and b"not owned by user alice" in text
        c.rset()
        assert c.mail("alice+lists@example.org")[0] in (250, 553)
        c.rset()
        assert c.mail("")[0] == 250, "the null sender (bounces) is allowed"


def test_starttls_command_injection_is_discarded(poshta, raw):
    """CVE-2011-0411: commands pipelined after STARTTLS in plaintext must not run inside TLS."""
    r = raw(poshta.port)
    r.reply()
    r.cmd("EHLO client.example")
    r.send("STARTTLS\r\nMAIL FROM:<evil@attacker.example>\r\n")
    code, _ = r.reply()
    assert code == 220
    tls = ctx_for(poshta).wrap_socket(r.s, server_hostname="mx.example.org")
    tls.sendall(b"EHLO client.example\r\n")
    data = b""
    while not data.endswith(b"CHUNKING\r\n"):
        data += tls.recv(4096)
    tls.sendall(b"RCPT TO:<alice@example.org>\r\n")
    reply = tls.recv(4096)
    assert reply.startswith(b"503 5.5.1"), reply  # no MAIL happened: the injected one was dropped
    tls.close()


def test_lockout_after_repeated_failures(make_poshta):
    p = make_poshta("auth_failure_limit = 3\nauth_failure_penalty = 1h")
    bad = base64.b64encode(b"\0alice\0wrong").decode()
    good = base64.b64encode(b"\0alice\0secret-alice").decode()
    replies = []
    with smtplib.SMTP_SSL("127.0.0.1", p.subs_port, timeout=20, context=ctx_for(p)) as c:
        c.ehlo()
        for _ in range(3):
            replies.append(c.docmd("AUTH", "PLAIN " + bad))
    assert [r[0] for r in replies] == [535, 535, 421]
    assert replies[2][1] == b"4.7.0 mx.example.org Error: too many failed authentication attempts"
    # Locked out now, even with the right password: refused at connect on the submission ports.
    with pytest.raises(smtplib.SMTPConnectError) as e:
        smtplib.SMTP_SSL("127.0.0.1", p.subs_port, timeout=20, context=ctx_for(p))
    assert e.value.smtp_code == 421
    with pytest.raises(smtplib.SMTPConnectError):
        smtplib.SMTP("127.0.0.1", p.sub_port, timeout=20)
    # An AUTH on port 25 (when enabled) is refused too; port 25 keeps taking mail from other
    # servers.
    send(p, ["bob@example.org"])
    p.wait_messages("bob", 1)
    assert "too many failed logins; locked out" in p.logtext()
    del good


def test_swaks_starttls_and_tls_on_connect(poshta):
    r = run(["swaks", "--server", f"127.0.0.1:{poshta.port}", "--tls", "--to", "alice@example.org",
             "--header", "Subject: swaks starttls"])
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(["swaks", "--server", f"127.0.0.1:{poshta.subs_port}", "--tls-on-connect", "--auth", "PLAIN",
             "--auth-user", "alice", "--auth-password", "secret-alice", "--from", "alice@example.org",
             "--to", "bob@example.org", "--header", "Subject: swaks 465"])
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(["swaks", "--server", f"127.0.0.1:{poshta.sub_port}", "--tls", "--auth", "LOGIN",
             "--auth-user", "bob", "--auth-password", "secret-bob", "--from", "bob@example.org",
             "--to", "alice@example.org", "--header", "Subject: swaks 587 login"])
    assert r.returncode == 0, r.stdout + r.stderr
    subjects = sorted(parse(poshta, m)["Subject"] for m in poshta.wait_messages("alice", 2))
    assert subjects == ["swaks 587 login", "swaks starttls"]
    assert parse(poshta, poshta.wait_messages("bob", 1)[0])["Subject"] == "swaks 465"


def test_swaks_bad_password_fails(poshta):
    r = run(["swaks", "--server", f"127.0.0.1:{poshta.sub_port}", "--tls", "--auth", "PLAIN",
             "--auth-user", "alice", "--auth-password", "nope", "--to", "bob@example.org"])
    assert r.returncode != 0
    assert "535 5.7.8" in r.stdout


def test_msmtp_verifies_certificate_and_sends(poshta, tmp_path):
    conf = tmp_path / "msmtprc"
    conf.write_text(f"""account poshta
host 127.0.0.1
port {poshta.sub_port}
tls on
tls_starttls on
tls_trust_file {poshta.ca}
tls_host_override mx.example.org
auth plain
user alice
password secret-alice
from alice@example.org
account default : poshta
""")
    conf.chmod(0o600)
    r = run(["msmtp", "-C", str(conf), "bob@example.org"],
            input="From: alice@example.org\nTo: bob@example.org\nSubject: via msmtp\n\nhi\n")
    assert r.returncode == 0, r.stdout + r.stderr
    assert parse(poshta, poshta.wait_messages("bob", 1)[0])["Subject"] == "via msmtp"
    # The same client refuses a certificate for another name.
    conf.write_text(conf.read_text().replace("tls_host_override mx.example.org", "tls_host_override other.example"))
    r = run(["msmtp", "-C", str(conf), "bob@example.org"], input="Subject: x\n\nx\n")
    assert r.returncode != 0


def test_s_nail_starttls(poshta, tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), MAILRC="/dev/null")
    r = run(["s-nail", "-n", "-#", "-S", "v15-compat", "-S", "sendwait",
             "-S", f"mta=smtp://alice:secret-alice@localhost:{poshta.sub_port}",
             "-S", "smtp-use-starttls", "-S", "smtp-auth=plain",
             "-S", f"tls-ca-file={poshta.ca}", "-S", "tls-ca-no-defaults",
             "-r", "alice@example.org", "-s", "via s-nail", "bob@example.org"],
            input="sent by s-nail\n", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert parse(poshta, poshta.wait_messages("bob", 1)[0])["Subject"] == "via s-nail"


def test_openssl_s_client_starttls(poshta):
    r = run(["openssl", "s_client", "-crlf", "-ign_eof", "-starttls", "smtp", "-connect", f"127.0.0.1:{poshta.port}",
             "-CAfile", poshta.ca, "-verify_return_error", "-servername", "mx.example.org"],
            input="QUIT\n")
    assert "Verify return code: 0 (ok)" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert "221 2.0.0 Bye" in r.stdout


def test_tls_garbage_and_stalled_handshakes_do_not_hurt_others(make_poshta):
    p = make_poshta("smtpd_starttls_timeout = 1s")
    g = socket.create_connection(("127.0.0.1", p.subs_port), timeout=10)
    g.sendall(b"this is not a TLS ClientHello\r\n" * 10)
    stalled = socket.create_connection(("127.0.0.1", p.subs_port), timeout=10)
    half = socket.create_connection(("127.0.0.1", p.subs_port), timeout=10)
    half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello cut short
    half.close()
    with smtplib.SMTP_SSL("127.0.0.1", p.subs_port, timeout=20, context=ctx_for(p)) as c:
        c.login("alice", "secret-alice")
        c.sendmail("alice@example.org", ["bob@example.org"], "Subject: still fine\r\n\r\nx\r\n")
    p.wait_messages("bob", 1)
    stalled.settimeout(10)
    start = time.time()
    assert stalled.recv(100) == b""  # closed by the handshake timeout
    assert time.time() - start < 8
    g.close()


def test_certificate_replaced_is_used_by_new_sessions_without_dropping_old(poshta, tmp_path):
    def fingerprint(port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            c = ssl.create_default_context()
            c.check_hostname = False
            c.verify_mode = ssl.CERT_NONE
            with c.wrap_socket(s) as t:
                return t.getpeercert(binary_form=True)

    before = fingerprint(poshta.subs_port)
    old = smtplib.SMTP_SSL("127.0.0.1", poshta.subs_port, timeout=20, context=ctx_for(poshta))
    old.login("alice", "secret-alice")
    # A new certificate from a second `poshta init` elsewhere, copied over the old files.
    other = tmp_path / "other"
    other.mkdir()
    (other / "main.cf").write_text(f"myhostname = mx.example.org\nqueue_directory = {other}/spool\n"
                                   f"virtual_mailbox_base = {other}/mail\n")
    r = run([os.environ.get("POSHTA_BIN", "poshta"), "init", "--domain", "example.org", "-c", str(other / "main.cf")])
    assert r.returncode == 0, r.stderr
    for name in ("cert.pem", "key.pem"):
        shutil.copy(other / "tls" / name, os.path.join(poshta.dir, "tls", name + ".new"))
        os.replace(os.path.join(poshta.dir, "tls", name + ".new"), os.path.join(poshta.dir, "tls", name))
    deadline = time.time() + 10
    after = before
    while after == before and time.time() < deadline:
        time.sleep(0.5)
        after = fingerprint(poshta.subs_port)
    assert after != before, "new sessions should get the replaced certificate"
    # The session that started before still works.
    old.sendmail("alice@example.org", ["bob@example.org"], "Subject: old session\r\n\r\nx\r\n")
    old.quit()
    assert parse(poshta, poshta.wait_messages("bob", 1)[0])["Subject"] == "old session"


def test_fail2ban_stock_filters_match_the_log(poshta, raw):
    root = os.environ.get("FAIL2BAN_ROOT", "")
    regex = os.path.join(root, "usr", "bin", "fail2ban-regex")
    if not os.path.exists(regex):
        pytest.skip("fail2ban not unpacked (tests/run.sh does it)")
    for _ in range(2):
        with smtplib.SMTP("127.0.0.1", poshta.sub_port, timeout=20) as c:
            c.starttls(context=ctx_for(poshta))
            with pytest.raises(smtplib.SMTPAuthenticationError):
                c.login("alice", "wrong")
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(poshta, ["someone@elsewhere.example"], source="127.0.0.2")
    maillog = os.path.join(poshta.dir, "maillog")
    time.sleep(0.3)
    filt = os.path.join(root, "etc", "fail2ban", "filter.d", "postfix.conf")
    env = dict(os.environ, PYTHONPATH=os.path.join(root, "usr", "lib", "python3", "dist-packages"))
    failures = sum(1 for l in open(maillog) if "authentication failed" in l)
    assert failures >= 2  # smtplib tries PLAIN, then LOGIN
    sasl = run(["/usr/bin/python3", regex, "--print-all-matched", maillog, filt + "[mode=auth]"], env=env)
    assert f"{failures} matched" in sasl.stdout, sasl.stdout[-3000:]
    assert "127.0.0.1" in sasl.stdout
    normal = run(["/usr/bin/python3", regex, "--print-all-matched", maillog, filt], env=env)
    assert "1 matched" in normal.stdout, normal.stdout[-3000:]
    assert "127.0.0.2" in normal.stdout
