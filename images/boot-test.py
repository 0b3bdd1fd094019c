#!/usr/bin/env python3
"""Boot a poshta image under qemu (TCG) and use it as a mail server, power cuts included.

usage: images/boot-test.py [--profile generic-arm64|rpi-arm64|rpi-armv7] [--quick] [IMAGE_DIR]

Build the image first with a test user:
    IMAGE_USERS="alice:secret" images/build.sh generic-arm64

generic-arm64 boots under `qemu-system-aarch64 -M virt` (virtio disk and network);
rpi-arm64 under `-M raspi3b` with the Pi 3 B device tree, rpi-armv7 under
`qemu-system-arm -M raspi2b` with the Pi 2 B one (SD card, USB network: slower, and --quick is
implied: one boot, SMTP in and POP3 out). The image file is copied first, so the
built image stays clean. Ports are forwarded from 127.0.0.1 only (qemu user networking with
restrict=on: the guest reaches nothing else, and poshta.ntp=off keeps it from trying).

What the full run checks, boot by boot (each boot bounded by BOOT_TIMEOUT s, retried once:
about 1 boot in 17 hung during research):
 1. No poshta.conf on the FAT partition: the image's defaults, on a "card" 512 MiB larger
    than the image. The data partition has grown to the end (df /data on the serial
    console). Boot to the SMTP banner (the time is printed), send to alice@poshta.test with smtplib over STARTTLS, read it back
    with poplib over STLS through a second forwarded port. Then poshta's RSS is read on the
    serial console's shell (VmRSS, idle). qemu is killed: a power cut.
 2. A poshta.conf is written into the FAT partition with mtools (domain example.org, user
    carol with a plain-text password, user dave with an argon2id hash): boot, carol and dave
    log in over POP3, mail to carol@example.org is delivered. Then a sender keeps sending to
    carol and qemu is killed mid-load (another power cut).
 3. Boot again: every message acknowledged (250) before the cut is in carol's mailbox (read
    over POP3; duplicates are counted, losses fail the test). carol's plain-text password in
    poshta.conf has been replaced by its hash.
 4. poshta.conf is overwritten with garbage: the board still boots and serves on the last
    good configuration (carol logs in, example.org is still local), and the reason is in
    poshta-error.txt on the FAT partition.
 5. poshta.conf removed, a whole main.cf (another domain) on the FAT partition instead: it
    is applied, and poshta-error.txt is gone. Then the data partition is filled (fallocate
    on the console): poshta must answer 4xx, keep serving, and deliver every message it
    accepted once there is room again.
Exit status 0 when all hold.
"""

import os
import poplib
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BOOT_TIMEOUT = float(os.environ.get("BOOT_TIMEOUT", "90"))
DOMAIN = os.environ.get("IMAGE_DOMAIN", "poshta.test")
FIGURES = {}
GROW_MIB = 512  # the test's "card" is this much larger than the image


def say(msg):
    print(f"boot-test: {msg}", flush=True)


def fail(msg, log_path=None):
    if log_path and os.path.exists(log_path):
        with open(log_path, "rb") as f:
            sys.stderr.write(f.read()[-4000:].decode(errors="replace"))
    sys.exit(f"boot-test: FAIL: {msg}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def banner(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(3)
            return s.recv(128).startswith(b"220")
    except OSError:
        return False


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the board's self-signed certificate from first boot
    return ctx


class Board:
    """One qemu run on a disk image: forwarded SMTP and POP3 ports, the serial console."""

    def __init__(self, profile, image_dir, disk, log_path):
        self.smtp = free_port()
        self.pop3 = free_port()
        while self.pop3 == self.smtp:
            self.pop3 = free_port()
        self.log_path = log_path
        net = f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.smtp}-:25,hostfwd=tcp:127.0.0.1:{self.pop3}-:110"
        append = "root=LABEL=poshta-root rootwait panic=-1 poshta.ntp=off"
        if profile.startswith("rpi-"):
            # The Pi 3 B for the 64-bit image, the Pi 2 B (Cortex-A7) for the 32-bit one.
            qemu, machine, dtb = {
                "rpi-arm64": ("qemu-system-aarch64", "raspi3b", "bcm2837-rpi-3-b.dtb"),
                "rpi-armv7": ("qemu-system-arm", "raspi2b", "bcm2836-rpi-2-b.dtb"),
            }[profile]
            # The Pi 3's PL011 (ttyAMA0) belongs to Bluetooth in the upstream device tree,
            # so its console is the mini UART (ttyS1), as on a real Pi: qemu's second serial.
            console = "ttyS1" if machine == "raspi3b" else "ttyAMA0"
            serial = ["-serial", "null", "-serial", "stdio"] if console == "ttyS1" else ["-serial", "stdio"]
            cmd = [
                qemu, "-M", machine, "-m", "1G",
                "-dtb", os.path.join(image_dir, dtb),
                "-append", f"console={console} {append}",
                "-display", "none", "-monitor", "none", *serial,
                "-drive", f"file={disk},if=sd,format=raw",
                "-netdev", net, "-device", "usb-net,netdev=n0",
            ]
        else:
            cmd = [
                "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "512M",
                "-append", f"console=ttyAMA0 {append}",
                "-drive", f"file={disk},if=virtio,format=raw",
                "-netdev", net, "-device", "virtio-net-pci,netdev=n0,romfile=",
            ]
            cmd += ["-nographic"]
        cmd += ["-kernel", os.path.join(image_dir, "vmlinuz"), "-initrd", os.path.join(image_dir, "initrd.img"),
                "-no-reboot"]
        self.log = open(log_path, "wb")
        self.start = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT)
        self.banner_secs = None

    def wait_banner(self):
        while time.monotonic() - self.start < BOOT_TIMEOUT:
            if self.proc.poll() is not None:
                return False
            if banner(self.smtp):
                self.banner_secs = time.monotonic() - self.start
                return True
            time.sleep(0.2)
        return False

    def kill(self):
        """A power cut: SIGKILL, no shutdown, nothing synced beyond what the guest did."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=20)
        self.log.close()

    def console(self, command, marker, timeout=30):
        """Run a shell command on the serial console; return its output up to `marker`.

        The command must print `marker` computed by the shell (so the echoed command line
        does not contain it)."""
        with open(self.log_path, "rb") as f:
            seen = len(f.read())
        self.proc.stdin.write(b"\n" + command.encode() + b"\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                out = f.read()[seen:].decode(errors="replace")
            if marker in out:
                return out[: out.index(marker)]
            time.sleep(0.3)
        return None


def boot(profile, image_dir, disk, tmp, name):
    """Boot, retrying once; return a Board showing its SMTP banner."""
    for attempt in (1, 2):
        log_path = os.path.join(tmp, f"console-{name}-{attempt}.log")
        b = Board(profile, image_dir, disk, log_path)
        if b.wait_banner():
            say(f"{name}: SMTP banner {b.banner_secs:.1f} s after qemu started (TCG)")
            FIGURES.setdefault("banner", []).append(b.banner_secs)
            return b
        b.kill()
        keep = os.path.join(ROOT, "dist", "boot-test-logs")
        os.makedirs(keep, exist_ok=True)
        shutil.copy(log_path, keep)
        say(f"{name}: attempt {attempt}: no SMTP banner within {BOOT_TIMEOUT:.0f} s (console log in {keep})")
        with open(log_path, "rb") as f:
            sys.stderr.write(f.read()[-3000:].decode(errors="replace"))
    fail(f"{name}: did not boot twice")


def send(port, rcpt, msgid, body="hello, board"):
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.ehlo("client.test")
        s.starttls(context=tls_context())
        s.ehlo("client.test")
        refused = s.sendmail("bob@client.test", [rcpt],
                             f"Subject: boot test\r\nMessage-ID: <{msgid}>\r\n\r\n{body}\r\n".encode())
        if refused:
            raise RuntimeError(f"refused: {refused}")


def pop3_ids(port, user, password):
    """Message-IDs in the user's mailbox (POP3 over STLS; nothing is deleted)."""
    p = poplib.POP3("127.0.0.1", port, timeout=60)
    try:
        p.stls(context=tls_context())
        p.user(user)
        p.pass_(password)
        count, _ = p.stat()
        ids = []
        for i in range(1, count + 1):
            _, lines, _ = p.top(i, 0)
            for line in lines:
                m = re.match(rb"(?i)message-id:\s*<([^>]+)>", line)
                if m:
                    ids.append(m.group(1).decode())
        return ids
    finally:
        p.quit()


def wait_for(port, user, password, want, timeout=60):
    """Poll POP3 until every id in `want` is there (delivery runs after the 250)."""
    deadline = time.monotonic() + timeout
    ids = []
    while time.monotonic() < deadline:
        try:
            ids = pop3_ids(port, user, password)
        except (OSError, poplib.error_proto) as e:
            ids = [f"(error: {e})"]
        if set(want) <= set(ids):
            return ids
        time.sleep(1)
    return ids


class Layout:
    def __init__(self, image_dir):
        self.values = {}
        with open(os.path.join(image_dir, "layout")) as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                self.values[k] = int(v)

    def fat(self, disk):
        return f"{disk}@@{self.values['boot_offset']}"


def mcopy_in(layout, disk, data, name, tmp):
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(data)
    subprocess.run(["mcopy", "-o", "-i", layout.fat(disk), path, f"::/{name}"], check=True, timeout=60)


def mtype(layout, disk, name):
    r = subprocess.run(["mtype", "-i", layout.fat(disk), f"::/{name}"], capture_output=True, timeout=60)
    return r.stdout if r.returncode == 0 else None


def data_file(layout, disk, path, tmp):
    """A file on the data partition, read with debugfs (after replaying the journal)."""
    part = os.path.join(tmp, "data.ext4")
    with open(disk, "rb") as src, open(part, "wb") as dst:
        # To the end of the disk: the first boot grows the data partition.
        src.seek(layout.values["data_offset"])
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            dst.write(chunk)
    subprocess.run(["e2fsck", "-E", "journal_only", "-y", part], capture_output=True, timeout=60)
    return subprocess.run(["debugfs", "-R", f"cat {path}", part], capture_output=True, timeout=60).stdout


def root_file(layout, disk, path, tmp):
    """A file on the (read-only) root partition, read with debugfs."""
    part = os.path.join(tmp, "root.ext4")
    with open(disk, "rb") as src, open(part, "wb") as dst:
        src.seek(layout.values["root_offset"])
        dst.write(src.read(layout.values["data_offset"] - layout.values["root_offset"]))
    return subprocess.run(["debugfs", "-R", f"cat {path}", part], capture_output=True, timeout=60).stdout


def measure_rss(b, when):
    # Started as root, poshta runs as mail_owner and keeps a small root helper for local
    # delivery: report both, the daemon (uid not 0) first.
    out = b.console(
        "sleep 2; for p in $(pidof poshta); do echo PID $p; grep -E 'Uid|VmRSS|RssAnon' /proc/$p/status; done; "
        "echo RSS-$((40+2))-END", "RSS-42-END")
    if out is None:
        say("could not read poshta's RSS on the console")
        return
    procs = []
    for block in out.split("PID ")[1:]:
        uid = re.search(r"Uid:\s+(\d+)", block)
        rss = re.search(r"VmRSS:\s+(\d+) kB", block)
        anon = re.search(r"RssAnon:\s+(\d+) kB", block)
        if uid and rss:
            procs.append((int(uid.group(1)) == 0, int(rss.group(1)), anon.group(1) if anon else "?"))
    procs.sort()
    if procs:
        helper, rss, anon = procs[0]
        FIGURES.setdefault("rss_kib", rss)
        text = f"VmRSS {rss} KiB, RssAnon {anon} KiB" + (" (the daemon)" if not helper else "")
        helpers = [p for p in procs[1:] if p[0]]
        if helpers:
            text += f"; root delivery helper VmRSS {helpers[0][1]} KiB"
        say(f"poshta in the image, {when}: {text}")
    if "stages" in FIGURES:
        return
    FIGURES["stages"] = True
    times = b.console("cat /run/boot-times; echo BT-$((5+5))", "BT-10", timeout=10)
    if times:
        say("boot stages (s since the kernel): " + " | ".join(
            l.strip() for l in times.splitlines() if re.match(r"^\d+\.\d+ ", l.strip())))
    boot_log = b.console("grep -E 'up: poshta starting' /var/log/boot.log | tail -1; echo BL-$((3+4))", "BL-7")
    if boot_log:
        m = re.search(r"\(([\d.]+) s after the kernel\)", boot_log)
        if m:
            say(f"rcS finished {m.group(1)} s after the kernel started")


def full(profile, image_dir, img, tmp):
    layout = Layout(image_dir)
    disk = os.path.join(tmp, "disk.img")
    shutil.copyfile(img, disk)
    # A card larger than the image: the first boot grows the data partition to the end.
    os.truncate(disk, os.path.getsize(disk) + GROW_MIB * 1024 * 1024)

    # 1. Defaults (no poshta.conf).
    b = boot(profile, image_dir, disk, tmp, "boot 1 (defaults)")
    try:
        measure_rss(b, "after boot, before any login")
        df = b.console("df -k /data | tail -1; echo DF-$((6+6))", "DF-12", timeout=15) or ""
        m = re.search(r"\s(\d+)\s+\d+\s+\d+\s+\d+%\s+/data", df)
        size_mib = int(m.group(1)) // 1024 if m else 0
        want_mib = (layout.values["data_bytes"] >> 20) + GROW_MIB
        if size_mib < want_mib * 0.9:
            fail(f"the data partition was not grown to the card: df says {df.strip()!r}", b.log_path)
        say(f"boot 1: data partition grown to the end of the card: {size_mib} MiB for /data")
        send(b.smtp, f"alice@{DOMAIN}", "first@client.test")
        ids = wait_for(b.pop3, "alice", "secret", ["first@client.test"])
        if "first@client.test" not in ids:
            fail(f"alice's mailbox over POP3: {ids}", b.log_path)
        say("boot 1: smtplib -> poshta -> Maildir -> poplib: the message came back over POP3 (STLS)")
        measure_rss(b, "after a message and a POP3 login (argon2's 19 MiB work area, unmapped once no login waits)")
    finally:
        b.kill()

    # 2. poshta.conf on the FAT partition; then a power cut under load.
    users = data_file(layout, disk, "/etc/poshta/users", tmp).decode(errors="replace")
    m = re.search(r"^alice:(\$argon2id\$[^:\s]+)", users, re.M)
    if not m:
        fail(f"no hash for alice in the data partition's users file: {users!r}")
    conf = (
        "# written by images/boot-test.py\r\n"  # CRLF, as an editor on Windows would
        "domain = example.org\r\n"
        "mynetworks = 127.0.0.0/8\r\n"
        "user carol = pw one\r\n"
        f"user dave = {m.group(1)}\r\n"
        "message_size_limit = 2048000\r\n"
    )
    mcopy_in(layout, disk, conf.encode(), "poshta.conf", tmp)
    b = boot(profile, image_dir, disk, tmp, "boot 2 (poshta.conf)")
    acked = []
    try:
        send(b.smtp, "carol@example.org", "carol-1@client.test")
        ids = wait_for(b.pop3, "carol", "pw one", ["carol-1@client.test"])
        if "carol-1@client.test" not in ids:
            fail(f"carol (from poshta.conf) did not get her mail: {ids}", b.log_path)
        pop3_ids(b.pop3, "dave", "secret")  # a user given by hash logs in
        say("boot 2: poshta.conf applied: domain example.org, carol (password) and dave (hash) log in over POP3")

        stop = threading.Event()
        errors = []

        def load():
            n = 0
            while not stop.is_set() and n < 500:
                try:
                    with smtplib.SMTP("127.0.0.1", b.smtp, timeout=30) as s:
                        s.ehlo("client.test")
                        for _ in range(5):
                            n += 1
                            mid = f"load-{n}@client.test"
                            s.sendmail("bob@client.test", ["carol@example.org"],
                                       f"Subject: load {n}\r\nMessage-ID: <{mid}>\r\n\r\n{'x' * 2000}\r\n".encode())
                            acked.append(mid)  # only after the 250
                except (OSError, smtplib.SMTPException) as e:
                    errors.append(e)
                    return

        t = threading.Thread(target=load, daemon=True)
        t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 25 and time.monotonic() < deadline and t.is_alive():
            time.sleep(0.05)
        if len(acked) < 25:
            fail(f"the load did not get going: {len(acked)} accepted, {errors}", b.log_path)
    finally:
        b.kill()  # mid-load
    stop.set()
    t.join(timeout=40)
    say(f"boot 2: power cut with the sender still sending ({len(acked)} messages acknowledged)")

    # 3. Every acknowledged message survives.
    b = boot(profile, image_dir, disk, tmp, "boot 3 (after the cut)")
    try:
        want = ["carol-1@client.test"] + acked
        ids = wait_for(b.pop3, "carol", "pw one", want, timeout=120)
        lost = [i for i in want if i not in ids]
        if lost:
            fail(f"{len(lost)} acknowledged messages lost after the power cut: {lost[:5]}", b.log_path)
        dups = len(ids) - len(set(ids))
        say(f"boot 3: all {len(want)} acknowledged messages are in carol's mailbox ({dups} duplicates, "
            f"{len(set(ids)) - len(want)} more that were in flight at the cut)")
    finally:
        b.kill()
    conf_now = mtype(layout, disk, "poshta.conf") or b""
    if b"pw one" in conf_now or b"user carol = $argon2id$" not in conf_now:
        fail(f"carol's plain-text password is still in poshta.conf: {conf_now!r}")
    say("boot 3: carol's plain-text password in poshta.conf was replaced by its hash")

    # 4. A damaged poshta.conf: serve on the last good configuration, say why on the FAT.
    mcopy_in(layout, disk, b"domain = other.test\n\x00\x01\x02\xff garbage\x07\nuser eve\n", "poshta.conf", tmp)
    b = boot(profile, image_dir, disk, tmp, "boot 4 (damaged poshta.conf)")
    try:
        send(b.smtp, "carol@example.org", "carol-2@client.test")
        ids = wait_for(b.pop3, "carol", "pw one", ["carol-2@client.test"])
        if "carol-2@client.test" not in ids:
            fail("the last good configuration was not kept", b.log_path)
    finally:
        b.kill()
    err = mtype(layout, disk, "poshta-error.txt")
    if not err or b"control or NUL bytes" not in err:
        fail(f"no poshta-error.txt saying why: {err!r}")
    say("boot 4: damaged poshta.conf: still serving example.org for carol; poshta-error.txt says: "
        + err.decode(errors="replace").strip().splitlines()[-1])

    # 5. A whole main.cf on the FAT partition (and no poshta.conf): the image's default with
    #    another domain. The error file goes once a configuration applies.
    subprocess.run(["mdel", "-i", layout.fat(disk), "::/poshta.conf"], check=True, timeout=60)
    base = root_file(layout, disk, "/usr/share/poshta/main.cf", tmp)
    if b"queue_directory" not in base:
        fail(f"no default main.cf on the root partition: {base[:200]!r}")
    mcopy_in(layout, disk, base + b"\nmydomain = third.test\nmyhostname = mail.third.test\n", "main.cf", tmp)
    b = boot(profile, image_dir, disk, tmp, "boot 5 (main.cf on the FAT partition)")
    try:
        send(b.smtp, "carol@third.test", "carol-3@client.test")
        ids = wait_for(b.pop3, "carol", "pw one", ["carol-3@client.test"])
        if "carol-3@client.test" not in ids:
            fail("main.cf from the FAT partition was not applied", b.log_path)
        say("boot 5: main.cf from the FAT partition applied (third.test is local)")
        disk_full(b)
    finally:
        b.kill()
    if mtype(layout, disk, "poshta-error.txt") is not None:
        fail("poshta-error.txt is still there after a good configuration")
    say("boot 5: poshta-error.txt was removed once a configuration applied")


def disk_full(b):
    """Fill the data partition: poshta must answer 4xx (never 5xx, never lose an accepted
    message), and deliver everything once there is room again."""
    out = b.console(
        "i=0; while [ $i -lt 400 ] && fallocate -l 8M /data/fill.$i 2>/dev/null; do i=$((i+1)); done; "
        "fallocate -l 64k /data/fill.small1 2>/dev/null; fallocate -l 4k /data/fill.small2 2>/dev/null; "
        "sync; df -k /data | tail -1; echo FULL-$((2*3))", "FULL-6", timeout=120)
    if out is None:
        fail("could not fill the data partition on the console", b.log_path)
    acked, refused = [], None
    for n in range(1, 41):
        mid = f"full-{n}@client.test"
        try:
            # 64 KB each: poshta's queue keeps up to 1 MiB written ahead of its records
            # (QUEUE_PREALLOCATE_BYTES), and that space still takes mail on a full
            # filesystem, safely; 40 of these are more than it.
            send(b.smtp, "carol@third.test", mid, body=("y" * 998 + "\r\n") * 64)
            acked.append(mid)
        except smtplib.SMTPResponseException as e:
            refused = (e.smtp_code, e.smtp_error)
            break
        except smtplib.SMTPRecipientsRefused as e:
            refused = list(e.recipients.values())[0]
            break
    if refused is None:
        fail(f"the data partition is full but poshta kept accepting ({len(acked)} messages)", b.log_path)
    if not 400 <= refused[0] < 500:
        fail(f"a full disk must be a temporary failure (4xx), got {refused}", b.log_path)
    if not banner(b.smtp):
        fail("poshta stopped answering on a full disk", b.log_path)
    say(f"boot 5: data partition full: {len(acked)} more accepted, then {refused[0]} "
        f"{refused[1].decode(errors='replace')[:60]!r}; still serving")
    b.console("rm -f /data/fill.*; sync; poshta queue flush -c /etc/poshta/main.cf; echo FREE-$((3*3))", "FREE-9",
              timeout=60)
    send(b.smtp, "carol@third.test", "after-full@client.test")
    want = ["carol-3@client.test", "after-full@client.test"] + acked
    ids = wait_for(b.pop3, "carol", "pw one", want, timeout=120)
    lost = [i for i in want if i not in ids]
    if lost:
        fail(f"{len(lost)} messages accepted on the nearly full disk were not delivered: {lost[:5]}", b.log_path)
    say(f"boot 5: room again: a new message and all {len(acked)} accepted near the limit were delivered")


def quick(profile, image_dir, img, tmp):
    disk = os.path.join(tmp, "disk.img")
    shutil.copyfile(img, disk)
    if profile.startswith("rpi-"):
        # qemu's SD card must be a power of two in size.
        size = os.path.getsize(disk)
        p2 = 1 << (size - 1).bit_length()
        os.truncate(disk, p2)
    b = boot(profile, image_dir, disk, tmp, f"{profile}")
    try:
        measure_rss(b, "after boot, before any login")
        send(b.smtp, f"alice@{DOMAIN}", "quick@client.test")
        ids = wait_for(b.pop3, "alice", "secret", ["quick@client.test"])
        if "quick@client.test" not in ids:
            fail(f"alice's mailbox over POP3: {ids}", b.log_path)
        say(f"{profile}: smtplib -> poshta -> poplib round trip ok")
    finally:
        b.kill()


def main():
    args = sys.argv[1:]
    profile = "generic-arm64"
    if "--profile" in args:
        i = args.index("--profile")
        profile = args[i + 1]
        del args[i:i + 2]
    is_quick = "--quick" in args or profile.startswith("rpi-")
    args = [a for a in args if a != "--quick"]
    image_dir = args[0] if args else os.path.join(ROOT, "dist/images", profile)
    img = os.path.join(image_dir, f"poshta-{profile}.img")
    if not os.path.exists(img):
        sys.exit(f"boot-test: no image at {img} (IMAGE_USERS=alice:secret images/build.sh {profile})")
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        (quick if is_quick else full)(profile, image_dir, img, tmp)
    banners = FIGURES.get("banner", [])
    say(f"ok: {len(banners)} boots, banner {min(banners):.1f}-{max(banners):.1f} s, "
        f"idle RSS {FIGURES.get('rss_kib', '?')} KiB, {time.monotonic() - start:.0f} s in all")


if __name__ == "__main__":
    main()
