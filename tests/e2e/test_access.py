"""Access maps in restriction lists (issue 7), over loopback with smtplib. 127.1.2.x stand
in for a LAN's addresses (a test may use only loopback)."""
import os
import smtplib
import time

import pytest

from test_receive_deliver import send


def write(path, text):
    with open(path + ".new", "w") as f:
        f.write(text)
    os.replace(path + ".new", path)


def test_classic_accept_one_host_reject_its_network(make_poshta):
    p = make_poshta(start=False)
    access = os.path.join(p.dir, "access")
    write(access, "# the postfix tutorial example\n127.1.2.4 OK\n127.1.2.0/24 550 Go away, spammer\n")
    p.write_config(f"smtpd_client_restrictions = check_client_access cidr:{access}")
    p.start()
    send(p, ["alice@example.org"], source="127.1.2.4")
    p.wait_messages("alice", 1)
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        send(p, ["alice@example.org"], source="127.1.2.5")
    code, text = e.value.recipients["alice@example.org"]
    assert code == 550 and b"Go away, spammer" in text
    assert "NOQUEUE: reject: RCPT from unknown[127.1.2.5]: 550" in p.logtext()
    # Outside that network the list has nothing to say: accepted.
    send(p, ["bob@example.org"], source="127.1.3.1")
    p.wait_messages("bob", 1)
    # The map is read again when it changes: no postmap, no restart (Postfix's footgun).
    write(access, "127.1.2.0/24 OK\n")
    time.sleep(1.1)  # a new mtime second
    os.utime(access)
    send(p, ["alice@example.org"], source="127.1.2.5")
    p.wait_messages("alice", 2)


def test_sender_discard_and_reject(make_poshta):
    p = make_poshta(start=False)
    senders = os.path.join(p.dir, "sender_access")
    write(senders, "spam@bad.example DISCARD\nbad.example REJECT no mail from bad.example\n")
    p.write_config(f"smtpd_sender_restrictions = check_sender_access hash:{senders}")
    p.start()
    # DISCARD: the client is told it was accepted; nothing is delivered; the log says so.
    assert send(p, ["alice@example.org"], sender="spam@bad.example") == {}
    with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
        send(p, ["alice@example.org"], sender="other@bad.example")
    assert b"no mail from bad.example" in e.value.recipients["alice@example.org"][1]
    send(p, ["alice@example.org"], sender="friend@good.example")
    p.wait_messages("alice", 1)
    time.sleep(0.5)
    assert len(p.new_messages("alice")) == 1
    assert "discard" in p.logtext()


def test_bad_restriction_name_is_a_config_error(make_poshta):
    p = make_poshta(start=False)
    p.write_config("smtpd_recipient_restrictions = permit_mynetworks, reject_everything_bad")
    r = p.cli("check", check=False)
    assert r.returncode != 0
    assert "reject_everything_bad" in r.stderr


def test_postmap_by_its_own_name(tmp_path):
    from conftest import BIN
    link = tmp_path / "postmap"
    link.symlink_to(BIN)
    table = tmp_path / "access"
    table.write_text("127.1.2.4 OK\n127.1.2.0/24 REJECT\n")
    import subprocess
    r = subprocess.run([str(link), "-q", "127.1.2.4", f"cidr:{table}"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout.strip()) == (0, "OK")
    bad = tmp_path / "bad"
    bad.write_text("ok.example OK\nlonely\n")
    r = subprocess.run([str(link), f"hash:{bad}"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and f"{bad}:2" in r.stderr


def test_hold_action_queues_on_hold_until_released(make_poshta):
    p = make_poshta(start=False)
    senders = os.path.join(p.dir, "sender_access")
    write(senders, "review@suspect.example HOLD needs a look\n")
    p.write_config(f"smtpd_sender_restrictions = check_sender_access hash:{senders}")
    p.start()
    send(p, ["alice@example.org"], sender="review@suspect.example")
    time.sleep(1)
    assert p.new_messages("alice") == []
    listing = p.cli("queue").stdout
    held = [l for l in listing.splitlines() if "review@suspect.example" in l]
    assert held and held[0].split()[0].endswith("!"), listing
    qid = held[0].split()[0].rstrip("!*")
    p.cli("queue", "release", qid)
    p.wait_messages("alice", 1)
