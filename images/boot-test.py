#!/usr/bin/env python3
"""Boot the generic-arm64 image under qemu-system-aarch64 (TCG) and use it as a mail server.

usage: images/boot-test.py [IMAGE_DIR]     (default dist/images/generic-arm64)

Build the image first with a test user:
    IMAGE_USERS="alice:secret" images/build.sh generic-arm64

What it checks, in order:
 1. The image boots to poshta's SMTP banner (220) on a port forwarded from 127.0.0.1 only
    (qemu user networking with restrict=on: the guest reaches nothing else). The time from
    starting qemu to the banner is printed. Boot is bounded (BOOT_TIMEOUT s) and retried
    once: about 1 boot in 17 hung during research.
 2. A real SMTP client (smtplib, STARTTLS) sends a message to alice@$IMAGE_DOMAIN and gets
    250 (poshta answers 250 only after the message is on disk).
 3. qemu is killed (SIGKILL: a power cut, no shutdown) and the message is read back over a
    second path: the root partition, with debugfs, in /var/lib/poshta/mail/alice/new/.
Exit status 0 when all hold. The image file is copied first, so the built image stays clean.
"""

import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BOOT_TIMEOUT = float(os.environ.get("BOOT_TIMEOUT", "60"))
DOMAIN = os.environ.get("IMAGE_DOMAIN", "poshta.test")
BOOT_MIB = 64  # images/build.sh: FAT partition at 1 MiB, root right after it
ROOT_OFFSET = (1 + BOOT_MIB) * 1024 * 1024


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


def boot(image_dir, disk, log_path):
    """Start qemu; return (process, port, seconds to banner) or (None, None, None)."""
    port = free_port()
    cmd = [
        "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "512M",
        "-nographic", "-no-reboot",
        "-kernel", os.path.join(image_dir, "vmlinuz"),
        "-initrd", os.path.join(image_dir, "initrd.img"),
        "-append", "console=ttyAMA0 root=LABEL=poshta-root rootwait panic=-1",
        "-drive", f"file={disk},if=virtio,format=raw",
        "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:25",
        "-device", "virtio-net-pci,netdev=n0,romfile=",
    ]
    log = open(log_path, "wb")
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    while time.monotonic() - start < BOOT_TIMEOUT:
        if proc.poll() is not None:
            break
        if banner(port):
            return proc, port, time.monotonic() - start
        time.sleep(0.2)
    proc.kill()
    proc.wait(timeout=10)
    return None, None, None


def send(port):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the board's self-signed certificate from first boot
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.ehlo("client.test")
        s.starttls(context=ctx)
        s.ehlo("client.test")
        refused = s.sendmail(
            "bob@client.test", [f"alice@{DOMAIN}"],
            b"Subject: boot test\r\nMessage-ID: <boot-test@client.test>\r\n\r\nhello, board\r\n")
        if refused:
            raise RuntimeError(f"refused: {refused}")


def maildir_files(disk, tmp):
    part = os.path.join(tmp, "root.ext4")
    with open(disk, "rb") as src, open(part, "wb") as dst:
        src.seek(ROOT_OFFSET)
        shutil.copyfileobj(src, dst, 1 << 20)
    # After a power cut the last writes may be only in the ext4 journal, which debugfs does
    # not read: replay it first, as the kernel would at the next mount.
    subprocess.run(["e2fsck", "-E", "journal_only", "-y", part], capture_output=True, timeout=60)
    out = subprocess.run(["debugfs", "-R", "ls -p /var/lib/poshta/mail/alice/new", part],
                         capture_output=True, text=True, timeout=60).stdout
    names = [f.split("/")[5] for f in out.splitlines() if f.count("/") >= 6]
    files = [n for n in names if n not in (".", "..", "")]
    bodies = []
    for n in files:
        bodies.append(subprocess.run(
            ["debugfs", "-R", f"cat /var/lib/poshta/mail/alice/new/{n}", part],
            capture_output=True, timeout=60).stdout)
    return bodies


def main():
    image_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "dist/images/generic-arm64")
    img = os.path.join(image_dir, "poshta-generic-arm64.img")
    if not os.path.exists(img):
        sys.exit(f"boot-test: no image at {img} (IMAGE_USERS=alice:secret images/build.sh generic-arm64)")
    with tempfile.TemporaryDirectory() as tmp:
        disk = os.path.join(tmp, "disk.img")
        for attempt in (1, 2):
            shutil.copyfile(img, disk)
            log_path = os.path.join(tmp, f"console-{attempt}.log")
            proc, port, secs = boot(image_dir, disk, log_path)
            if proc:
                break
            print(f"boot-test: attempt {attempt}: no SMTP banner within {BOOT_TIMEOUT:.0f} s", file=sys.stderr)
            with open(log_path, "rb") as f:
                sys.stderr.write(f.read()[-3000:].decode(errors="replace"))
        else:
            sys.exit("boot-test: FAIL: did not boot twice")
        print(f"boot-test: SMTP banner {secs:.1f} s after qemu started (TCG)")
        try:
            send(port)
            print("boot-test: message accepted (250) over STARTTLS")
        finally:
            proc.kill()  # a power cut right after 250: no shutdown, no sync beyond poshta's
            proc.wait(timeout=10)
        # 250 means "in the queue on disk"; delivery may not have happened before the cut.
        # The next boot recovers the queue and delivers: boot again until the message is in
        # the Maildir (bounded), cutting the power each time.
        bodies = maildir_files(disk, tmp)
        for wait in (3, 10):
            if bodies:
                break
            log_path = os.path.join(tmp, f"console-after-cut-{wait}.log")
            proc, port, secs = boot(image_dir, disk, log_path)
            if not proc:
                proc, port, secs = boot(image_dir, disk, log_path)  # the one retry
            if not proc:
                sys.exit("boot-test: FAIL: no boot after the power cut")
            time.sleep(wait)
            proc.kill()
            proc.wait(timeout=10)
            bodies = maildir_files(disk, tmp)
            print(f"boot-test: rebooted after the cut (banner {secs:.1f} s), {len(bodies)} message(s) delivered")
        if len(bodies) != 1 or b"hello, board" not in bodies[0]:
            with open(log_path, "rb") as f:
                sys.stderr.write(f.read()[-3000:].decode(errors="replace"))
            sys.exit(f"boot-test: FAIL: expected the message in alice's Maildir, found {len(bodies)} files")
        print("boot-test: ok: the acknowledged message is in /var/lib/poshta/mail/alice/new (read with debugfs)")


if __name__ == "__main__":
    main()
