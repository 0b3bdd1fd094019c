"""Client limits like Postfix's anvil (issue 7): concurrent connections, connection rate,
message rate and recipient rate per client, mynetworks exempt by default, memory bounded
under a flood. 127.0.0.x addresses stand for separate clients."""
import smtplib
import socket
import time


from test_receive_deliver import send


def test_connection_count_limit_and_exemption(make_poshta, raw):
    p = make_poshta("smtpd_client_connection_count_limit = 2")
    a, b = raw(p.port, "127.0.0.2"), raw(p.port, "127.0.0.2")
    assert a.reply()[0] == 220 and b.reply()[0] == 220
    c = raw(p.port, "127.0.0.2")
    code, lines = c.reply()
    assert code == 421 and lines[0] == "421 4.7.0 mx.example.org Error: too many connections from 127.0.0.2"
    assert "Connection concurrency limit exceeded: 3 from unknown[127.0.0.2] for service smtp" in p.logtext()
    # Another client is served meanwhile; mynetworks (127.0.0.1) is exempt by default.
    assert raw(p.port, "127.0.0.3").reply()[0] == 220
    extra = [raw(p.port, "127.0.0.1") for _ in range(4)]
    assert all(r.reply()[0] == 220 for r in extra)
    a.cmd("QUIT")
    time.sleep(0.3)
    assert raw(p.port, "127.0.0.2").reply()[0] == 220


def test_message_and_recipient_rates(make_poshta):
    p = make_poshta("smtpd_client_message_rate_limit = 2\nsmtpd_client_recipient_rate_limit = 3\n"
                    "anvil_rate_time_unit = 1h")
    for _ in range(2):
        send(p, ["alice@example.org"], source="127.0.0.2")
    with smtplib.SMTP("127.0.0.1", p.port, timeout=20, source_address=("127.0.0.2", 0)) as c:
        c.ehlo()
        code, text = c.mail("x@remote.example")
        assert (code, text) == (450, b"4.7.1 Error: too much mail from 127.0.0.2")
    with smtplib.SMTP("127.0.0.1", p.port, timeout=20, source_address=("127.0.0.3", 0)) as c:
        c.ehlo()
        assert c.mail("x@remote.example")[0] == 250
        codes = [c.rcpt(r)[0] for r in ["alice@example.org", "bob@example.org", "alice@example.org",
                                        "bob@example.org"]]
        assert codes == [250, 250, 250, 450]
    # Exempt: mynetworks.
    for _ in range(4):
        send(p, ["bob@example.org"])


def test_connection_flood_is_cut_and_memory_stays_bounded(make_poshta):
    p = make_poshta("smtpd_client_connection_rate_limit = 20\nanvil_rate_time_unit = 1h")
    refused = accepted = 0
    deadline = time.time() + 60
    for i in range(10_000):
        if time.time() > deadline:
            break
        s = socket.socket()
        s.settimeout(5)
        # Many distinct client addresses (the anvil table is bounded) and one busy one.
        src = "127.0.0.9" if i % 2 else f"127.8.{(i // 256) % 256}.{i % 256}"
        s.bind((src, 0))
        s.connect(("127.0.0.1", p.port))
        line = s.recv(200)
        if src == "127.0.0.9":
            if line.startswith(b"421"):
                refused += 1
            else:
                accepted += 1
        s.close()
    assert accepted == 20 and refused > 4900
    # Everyone else is still served.
    send(p, ["alice@example.org"], source="127.0.0.4")
    p.wait_messages("alice", 1)
    assert p.rss_kib() < 32 * 1024
