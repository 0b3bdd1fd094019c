#!/usr/bin/env python3
"""A stand-in for the poshta binary, to test bench/smtp-deliver.sh before poshta runs.

Not a mail server: just enough of poshta's command line (`serve -c F`, `user add NAME
--password-stdin -c F`) and of SMTP to take smtp-source's messages and write each one,
streamed, to virtual_mailbox_base/USER/new/ (tmp/ then rename, with fsync). Listens on
smtpd_listen (127.0.0.1 only). Use: POSHTA=bench/fake_poshta.py bench/smtp-deliver.sh
"""

import os
import socketserver
import sys
import threading
import time

LINE_MAX = 1000 + 2  # RFC 5321 §4.5.3.1.6, plus CRLF


def load_cf(path):
    cf = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, _, v = line.partition("=")
                cf[k.strip()] = v.strip()
    return cf


class Session(socketserver.StreamRequestHandler):
    counter = 0
    lock = threading.Lock()

    def reply(self, text):
        self.wfile.write(text.encode() + b"\r\n")

    def handle(self):
        cf = self.server.cf
        self.reply(f"220 {cf.get('myhostname', 'localhost')} ESMTP fake-poshta")
        rcpts = []
        while True:
            line = self.rfile.readline(LINE_MAX)
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"HELO", b"EHLO"):
                self.reply("250 fake")
            elif verb == b"MAIL":
                rcpts = []
                self.reply("250 2.1.0 Ok")
            elif verb == b"RCPT":
                addr = line.split(b":", 1)[1].strip().strip(b"<>").decode(errors="replace")
                user, _, dom = addr.partition("@")
                if dom.lower() != cf.get("mydestination", "").lower() or user not in self.server.users:
                    self.reply("550 5.1.1 no such user")
                else:
                    rcpts.append(user)
                    self.reply("250 2.1.5 Ok")
            elif verb == b"DATA":
                if not rcpts:
                    self.reply("503 5.5.1 no recipients")
                    continue
                self.reply("354 go ahead")
                self.receive(rcpts)
            elif verb == b"QUIT":
                self.reply("221 bye")
                return
            elif verb == b"RSET":
                rcpts = []
                self.reply("250 Ok")
            else:
                self.reply("502 5.5.2 not here")

    def receive(self, rcpts):
        base = self.server.cf["virtual_mailbox_base"]
        with Session.lock:
            Session.counter += 1
            n = Session.counter
        name = f"{time.time():.6f}.{os.getpid()}_{n}.fake"
        tmps = []
        for u in rcpts:
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(base, u, sub), exist_ok=True)
            tmps.append(open(os.path.join(base, u, "tmp", name), "wb"))
        while True:
            line = self.rfile.readline(LINE_MAX)
            if not line:
                break
            if line == b".\r\n":
                break
            if line.startswith(b"."):
                line = line[1:]  # RFC 5321 §4.5.2
            for f in tmps:
                f.write(line)
        for u, f in zip(rcpts, tmps):
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.rename(os.path.join(base, u, "tmp", name), os.path.join(base, u, "new", name))
        self.reply("250 2.0.0 Ok: queued")


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128


def main(argv):
    cfpath = argv[argv.index("-c") + 1]
    cf = load_cf(cfpath)
    users_file = cf["mailbox_users_file"]
    if argv[0] == "user" and argv[1] == "add":
        pw = sys.stdin.readline().strip()
        with open(users_file, "a") as f:
            f.write(f"{argv[2]}:{'x' * len(pw)}\n")
        return 0
    if argv[0] == "serve":
        host, _, port = cf["smtpd_listen"].rpartition(":")
        assert host == "127.0.0.1"
        with open(users_file) as f:
            users = {line.split(":", 1)[0] for line in f if ":" in line}
        srv = Server((host, int(port)), Session)
        srv.cf, srv.users = cf, users
        print(f"fake-poshta: listening on {host}:{port}", file=sys.stderr)
        srv.serve_forever()
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
