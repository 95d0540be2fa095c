"""The floor under a single call's latency: how long bare Python processes take to pass
16 bytes along a chain of Unix sockets and back, with no work on the way.

    python -m bench.hop_floor [--calls 3000] [--rounds 5]

ProcessPoolExecutor's call crosses two processes (caller, worker, caller); farm's
crosses four (caller, server, worker, server, caller). Here each process only relays:
``2 hops`` is a caller and an echoing child, ``4 hops`` puts a relaying child between
them, as the job server sits between farm's caller and worker. The difference of the
two is what the fourth process costs before any of its code runs (the wake-ups, the
system calls); whatever a real call costs beyond its row is the processes' own work.
Every figure is the median of ``--calls`` round trips; rounds interleave the chains.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import statistics
import time

PAYLOAD = b"x" * 16


def _echo(sock: socket.socket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)
    os._exit(0)


def _relay(a: socket.socket, b: socket.socket) -> None:
    selector = selectors.DefaultSelector()
    selector.register(a, selectors.EVENT_READ, b)
    selector.register(b, selectors.EVENT_READ, a)
    while True:
        for key, _ in selector.select():
            data = key.fileobj.recv(65536)  # type: ignore[union-attr]
            if not data:
                os._exit(0)
            key.data.sendall(data)


def _child(run: object, keep: tuple[socket.socket, ...], close: tuple[socket.socket, ...]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            for sock in close:
                sock.close()
            run(*keep)  # type: ignore[operator]
        finally:
            os._exit(1)
    return pid


def _round_trips(sock: socket.socket, calls: int) -> float:
    """Median µs of ``calls`` round trips, after 200 to warm up."""
    times = []
    for _ in range(calls + 200):
        began = time.perf_counter_ns()
        sock.sendall(PAYLOAD)
        sock.recv(65536)
        times.append(time.perf_counter_ns() - began)
    return statistics.median(times[200:]) / 1000


def two_hops(calls: int) -> float:
    a, b = socket.socketpair()
    pid = _child(_echo, (b,), (a,))
    b.close()
    try:
        return _round_trips(a, calls)
    finally:
        a.close()
        os.waitpid(pid, 0)


def four_hops(calls: int) -> float:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    relay = _child(_relay, (b, c), (a, d))
    echo = _child(_echo, (d,), (a, b, c))
    for sock in (b, c, d):
        sock.close()
    try:
        return _round_trips(a, calls)
    finally:
        a.close()
        os.waitpid(relay, 0)
        os.waitpid(echo, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.calls < 1 or args.rounds < 1:
        ap.error("--calls and --rounds must be at least 1")
    two, four = [], []
    for _ in range(args.rounds):
        two.append(two_hops(args.calls))
        four.append(four_hops(args.calls))
    t, f = statistics.median(two), statistics.median(four)
    print(f"## Round-trip floor, bare Python over Unix sockets (medians of {args.rounds} rounds)")
    print()
    print("| chain | p50 µs |")
    print("|---|---:|")
    print(f"| 2 hops (caller, worker: ProcessPoolExecutor's) | {t:.0f} |")
    print(f"| 4 hops (caller, server, worker: farm's) | {f:.0f} |")
    print(f"| what the server's process adds | {f - t:.0f} |")


if __name__ == "__main__":
    main()
