"""reject_unknown_sender_domain (issue 7) against a real DNS server: dnsmasq on loopback
(the fixture from test_mx.py), poshta pointed at it with dns_resolver. A client outside
mynetworks (127.0.0.2) sends from domains that have an MX, only an address, a null MX, no
records, or that do not exist; a DNS server that cannot answer never causes a rejection."""
import smtplib


from test_mx import dnsmasq  # noqa: F401  (the fixture)

RECORDS = ["--mx-host=good.test,mail.good.test,10", "--host-record=mail.good.test,127.0.0.9",
           "--host-record=aonly.test,127.0.0.8",
           "--mx-host=nullmx.test,.,0",
           "--txt-record=empty.test,nothing here"]


def try_sender(p, sender):
    """(code, text) of RCPT for alice from `sender`, from a client outside mynetworks."""
    with smtplib.SMTP("127.0.0.1", p.port, source_address=("127.0.0.2", 0), timeout=30) as s:
        s.ehlo("client.example.net")
        code, _ = s.mail(sender)
        assert code == 250
        return s.rcpt("alice@example.org")


def test_unknown_sender_domains_are_refused_450(make_poshta, dnsmasq):  # noqa: F811
    dns = dnsmasq(*RECORDS)
    p = make_poshta(start=False)
    p.write_config(f"dns_resolver = 127.0.0.1:{dns}\n"
                   "smtpd_sender_restrictions = reject_unknown_sender_domain\n")
    p.start()
    assert try_sender(p, "someone@good.test")[0] == 250, "an MX"
    assert try_sender(p, "someone@aonly.test")[0] == 250, "no MX, but an address (RFC 5321 §5.1)"
    for sender in ("someone@nowhere.test", "someone@nullmx.test", "someone@empty.test"):
        code, text = try_sender(p, sender)
        assert code == 450, (sender, code, text)
        assert f"<{sender}>: Sender address rejected: Domain not found".encode() in text
    assert "NOQUEUE: reject: RCPT from unknown[127.0.0.2]: 450 4.1.8 <someone@nowhere.test>" in p.logtext()
    # The null sender and local domains are never looked up.
    assert try_sender(p, "")[0] == 250
    assert try_sender(p, "bob@example.org")[0] == 250


def test_unknown_sender_domain_refused_at_mail_without_delay_reject(make_poshta, dnsmasq):  # noqa: F811
    # smtpd_delay_reject = no: the sender restrictions run at MAIL, the look-up with them.
    dns = dnsmasq(*RECORDS)
    p = make_poshta(start=False)
    p.write_config(f"dns_resolver = 127.0.0.1:{dns}\n"
                   "smtpd_delay_reject = no\n"
                   "smtpd_sender_restrictions = reject_unknown_sender_domain\n")
    p.start()
    for sender, want in (("someone@good.test", 250), ("someone@aonly.test", 250),
                         ("someone@nowhere.test", 450), ("", 250), ("bob@example.org", 250)):
        with smtplib.SMTP("127.0.0.1", p.port, source_address=("127.0.0.2", 0), timeout=30) as s:
            s.ehlo("client.example.net")
            code, text = s.mail(sender)
            assert code == want, (sender, code, text)


def test_dns_failure_does_not_reject(make_poshta, dnsmasq):  # noqa: F811
    # broken.example is outside dnsmasq's zone and it has no upstream: REFUSED.
    dns = dnsmasq(*RECORDS)
    p = make_poshta(start=False)
    p.write_config(f"dns_resolver = 127.0.0.1:{dns}\n"
                   "smtpd_recipient_restrictions = reject_unknown_sender_domain\n")
    p.start()
    assert try_sender(p, "someone@broken.example")[0] == 250
    assert "sender domain broken.example: DNS lookup failed" in p.logtext()
    # Without DNS (disable_dns_lookups) the restriction does nothing.
    p.stop()
    p.write_config("disable_dns_lookups = yes\nsmtpd_recipient_restrictions = reject_unknown_sender_domain\n")
    p.start()
    assert try_sender(p, "someone@nowhere.test")[0] == 250
