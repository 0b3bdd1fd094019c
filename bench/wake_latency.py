#!/usr/bin/env python3
"""What one request/answer round trip costs on this machine when nothing does any work.

Why: on a virtual machine a process that sleeps (in `recv`, `epoll_wait`, a futex) halts
its vCPU, and waking it again costs a VM exit and an interrupt. A one-command-at-a-time
client (poplib, smtp-source) pays that on both sides of every command, whatever the server
does, so it is a floor under every per-command figure in pop3-fetch.sh and smtp-deliver.sh.
This script measures that floor so the benchmark figures can be read against it.

Two processes exchange one byte over a TCP connection on 127.0.0.1 (never any other
address), N times, in three ways:
  blocking   both sides block in recv(): two wake-ups per round trip (what real clients
             and servers that sleep when idle, poshta and Dovecot alike, pay);
  spin-echo  the answering side polls a non-blocking socket instead of sleeping: one
             wake-up per round trip (the asking side still sleeps);
  spin-both  both sides poll: no wake-up; Python's own per-call cost.
The wake-up's cost is then about (blocking - spin-both) / 2.

Usage: bench/wake_latency.py [N]   (default 20000; bounded by N and a 60 s alarm)
Prints one line per way (median of 5 rounds, µs per round trip) and a JSON line.
"""

import json
import os
import signal
import socket
import statistics
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
ROUNDS = 5


def pair():
    lsn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(1)
    a = socket.create_connection(lsn.getsockname())
    b, _ = lsn.accept()
    lsn.close()
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


def recv1(s, spin):
    if not spin:
        return s.recv(1)
    while True:
        try:
            return s.recv(1)
        except BlockingIOError:
            pass


def run(spin_echo, spin_ask):
    a, b = pair()
    pid = os.fork()
    if pid == 0:
        # The answering side: echo N bytes, then exit.
        a.close()
        b.setblocking(not spin_echo)
        try:
            for _ in range(N):
                if not recv1(b, spin_echo):
                    break
                b.send(b"x")
        finally:
            os._exit(0)
    b.close()
    a.setblocking(not spin_ask)
    t0 = time.perf_counter()
    for _ in range(N):
        a.send(b"x")
        if not recv1(a, spin_ask):
            raise SystemExit("the echo side went away")
    dt = time.perf_counter() - t0
    a.close()
    os.waitpid(pid, 0)
    return dt / N * 1e6


def main():
    signal.alarm(60)  # bound the whole run in time as well as in count
    ways = {"blocking": (False, False), "spin-echo": (True, False), "spin-both": (True, True)}
    out = {}
    for name, (se, sa) in ways.items():
        out[name] = round(statistics.median(run(se, sa) for _ in range(ROUNDS)), 1)
        print(f"{name:10} {out[name]:7.1f} µs per round trip (median of {ROUNDS} x {N})")
    out["wake_us"] = round((out["blocking"] - out["spin-both"]) / 2, 1)
    print(f"one wake-up of a sleeping process: ~{out['wake_us']} µs")
    out.update(n=N, rounds=ROUNDS, cpus=os.cpu_count())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
