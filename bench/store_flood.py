"""The owner's calls while another local user floods the store with background jobs.

    python -m bench.store_flood [--seconds 15] [--rounds 3] [--flooders 2]
        [--inflight 300] [--size 2048] [--store-sync normal] [--farm-root DIR ...]

Anyone who can reach the TCP port may submit stored background jobs, and each is
written to the SQLite store before its JOB_CREATED. This starts a farm server with
its default store (in a temporary directory) on a free 127.0.0.1 port and a Unix
socket, a worker that ends the flooded function's jobs at once and an echo worker.
``--flooders`` TCP connections each keep ``--inflight`` SUBMIT_JOB_BG of ``--size``
bytes in flight for ``--seconds``; meanwhile one client on the Unix socket (the
owner's, as farm.Executor's) runs sequential foreground jobs. Printed per round:
their latency idle and under the flood (p50, p99, max), the flood's acknowledged
jobs, and the seconds the store spent committing (its metrics).

``--farm-root DIR`` adds another checkout (a git worktree of the commit before a
change), its rounds interleaved with this tree's.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.server_load import FUNC, PAYLOAD, echo_worker
from farm import protocol as p
from farm.client.admin import admin_query
from farm.protocol import PacketType as T
from tests.helpers.servers import free_port, wait_connectable

ROOT = Path(__file__).resolve().parents[1]
FLOODED = b"flooded"


def drain_worker(port: int) -> None:
    """Ends each flooded job at once, so the store deletes as it adds."""
    s = socket.create_connection(("127.0.0.1", port))
    dec = p.Decoder(allow_admin=False)
    grab = p.encode_req(T.GRAB_JOB)
    s.sendall(p.encode_req(T.CAN_DO, FLOODED) + grab)
    while data := s.recv(262144):
        out = bytearray()
        for pkt in dec.feed(data):
            if pkt.type == T.JOB_ASSIGN:
                out += p.encode_req(T.WORK_COMPLETE, pkt.args[0], b"") + grab
            elif pkt.type == T.NO_JOB:
                out += p.encode_req(T.PRE_SLEEP)
            elif pkt.type == T.NOOP:
                out += grab
        if out:
            s.sendall(out)


def flooder(port: int, inflight: int, size: int, stop_at: float, acked: mp.Queue) -> None:
    """Keeps ``inflight`` background submits unanswered until ``stop_at``."""
    s = socket.create_connection(("127.0.0.1", port))
    dec = p.Decoder(allow_admin=False)
    data = os.urandom(size)
    sent = 0

    def submits(n: int) -> bytes:
        nonlocal sent
        sent += n
        return b"".join(
            p.encode_req(T.SUBMIT_JOB_BG, FLOODED, str(sent - i).encode(), data) for i in range(n)
        )

    s.sendall(submits(inflight))
    while time.monotonic() < stop_at:
        got = sum(pkt.type in (T.JOB_CREATED, T.ERROR) for pkt in dec.feed(s.recv(262144)))
        if got:
            s.sendall(submits(got))
    acked.put(sent - inflight)
    s.close()


def sequential(unix: str, until: float) -> list[float]:
    """Seconds each foreground echo job took on the Unix socket, one at a time."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(unix)
    dec = p.Decoder(allow_admin=False)
    submit = p.encode_req(T.SUBMIT_JOB, FUNC, b"", PAYLOAD)
    took = []
    while time.monotonic() < until:
        began = time.perf_counter()
        s.sendall(submit)
        done = False
        while not done:
            done = any(pkt.type == T.WORK_COMPLETE for pkt in dec.feed(s.recv(65536)))
        took.append(time.perf_counter() - began)
    s.close()
    return took


def commit_seconds(addr: str) -> float:
    text = admin_query(addr, "metrics", timeout=30)
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("farm_store_commit_seconds_sum")
    )


def ms(samples: list[float], q: float) -> str:
    return f"{sorted(samples)[min(len(samples) - 1, int(len(samples) * q))] * 1e3:.2f}"


def run(root: Path, args: argparse.Namespace) -> list[str]:
    top = Path(tempfile.mkdtemp(prefix="farm-flood-"))
    port, unix = free_port(), str(top / "s.sock")
    addr = f"127.0.0.1:{port}"
    argv = [sys.executable, "-m", "farm.server", "--port", str(port), "--unix", unix]
    argv += ["--store", str(top / "jobs.db"), "--store-sync", args.store_sync]
    env = {**os.environ, "PYTHONPATH": str(root)}
    server = subprocess.Popen(argv, cwd=root, env=env, stderr=subprocess.DEVNULL)
    helpers: list[mp.Process] = []
    try:
        wait_connectable(addr, server, timeout=30)
        helpers += [
            mp.Process(target=echo_worker, args=(addr, True), daemon=True),
            mp.Process(target=drain_worker, args=(port,), daemon=True),
        ]
        for h in helpers:
            h.start()
        idle = sequential(unix, time.monotonic() + 2)
        acked: mp.Queue = mp.Queue()
        stop_at = time.monotonic() + args.seconds
        floods = [
            mp.Process(target=flooder, args=(port, args.inflight, args.size, stop_at, acked))
            for _ in range(args.flooders)
        ]
        for f in floods:
            f.start()
        time.sleep(1)  # the flood under way: its first burst is not the steady state
        flooded = sequential(unix, stop_at - 0.5)
        total = sum(acked.get(timeout=args.seconds + 60) for _ in floods)
        for f in floods:
            f.join()
        committing = commit_seconds(addr)
    finally:
        for h in helpers:
            h.kill()
        server.terminate()
        server.wait(30)
        shutil.rmtree(top, ignore_errors=True)
    return [
        str(root),
        f"{ms(idle, 0.5)} ms",
        f"{ms(flooded, 0.5)} / {ms(flooded, 0.99)} / {max(flooded) * 1e3:.1f} ms",
        f"{total:,}",
        f"{committing:.1f} s",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--flooders", type=int, default=2)
    ap.add_argument("--inflight", type=int, default=300)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--store-sync", default="normal", choices=["normal", "full"])
    ap.add_argument("--farm-root", action="append", default=[], help="another checkout")
    args = ap.parse_args()
    roots = [ROOT, *(Path(r).resolve() for r in args.farm_root)]
    print("| server | idle p50 | flooded p50 / p99 / max | flood acknowledged | committing |")
    print("|---|---:|---:|---:|---:|")
    for _ in range(args.rounds):
        for root in roots:
            print("| " + " | ".join(run(root, args)) + " |", flush=True)


if __name__ == "__main__":
    main()
