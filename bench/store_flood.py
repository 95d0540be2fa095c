"""The owner's calls while another local user floods the store with background jobs.

    python -m bench.store_flood [--seconds 15] [--rounds 3] [--flooders 2]
        [--inflight 300] [--size 2048] [--store-sync normal] [--farm-root DIR ...]

Anyone who can reach the TCP port may submit stored background jobs, and each is
written to the SQLite store before its JOB_CREATED. This runs the deployment users
run: ``farm up`` with its default store (SQLite under ``$XDG_STATE_HOME``, here a
temporary directory), from a config that sets only the addresses (a free 127.0.0.1
port and a Unix socket) and two pools: one farm.python worker for the owner's
``farm.Executor`` and one ``workers.text:echo`` worker for the flooded function.
``--flooders`` TCP connections each keep ``--inflight`` SUBMIT_JOB_BG of ``--size``
bytes in flight for ``--seconds``; meanwhile the owner calls ``farm.Executor`` on the
Unix socket, one tiny call at a time. Printed per round: the calls' latency idle and
under the flood (p50, p99, max), the flood's acknowledged jobs, and the seconds the
store spent committing (the server's metrics).

``--farm-root DIR`` adds another checkout's farm (a git worktree of the commit before a
change: its supervisor, server and workers; the caller's Executor is this tree's), its
rounds interleaved with this tree's.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import farm
from bench.probes import key_file
from farm import protocol as p
from farm.client.admin import admin_query
from farm.executor.call import DEFAULT_FUNCTION, TARGET
from farm.executor.replay import shm_directory
from farm.executor.signing import KEY_ENV
from farm.protocol import PacketType as T
from tests.helpers.farmproc import FarmUp

ROOT = Path(__file__).resolve().parents[1]
FLOODED = b"flooded"
POOLS = f"""
[functions."{DEFAULT_FUNCTION}"]
target = "{TARGET}"
workers = 1

[functions.{FLOODED.decode()}]
target = "workers.text:echo"
workers = 1
"""


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


def tiny(x: int) -> int:
    return x + 1


def sequential(ex: farm.Executor, until: float) -> list[float]:
    """Seconds each tiny Executor call took, one at a time, until ``until``."""
    took = []
    n = 0
    while time.monotonic() < until:
        began = time.perf_counter()
        if ex.submit(tiny, n).result(timeout=60) != n + 1:
            raise RuntimeError("a call came back with another call's result")
        took.append(time.perf_counter() - began)
        n += 1
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


def start_farm(root: Path, tmp: Path, store_sync: str, store: str = "default") -> FarmUp:
    """``root``'s `farm up` in ``tmp``, ready: its default store, in ``tmp``'s state dir
    (or with ``store`` "none", none: what is left is the loop's reading of the flood)."""
    env = {
        KEY_ENV: str(tmp / "executor.key"),
        "XDG_STATE_HOME": str(tmp / "state"),
        "PYTHONPATH": f"{tmp}:{root}",
    }
    up = FarmUp(tmp, POOLS, extra_env=env, start=False)
    up.env.pop("STATE_DIRECTORY", None)  # under systemd: the default would be the service's
    text = up.config.read_text()
    # FarmUp's tests run without a store; this measures the default one.
    tuned = "" if store_sync == "normal" else f'store_sync = "{store_sync}"\n'
    if store == "none":
        tuned = 'store = "none"\n'
    up.config.write_text(text.replace('store = "none"\n', tuned))
    up.start()
    up.expect_notify("READY=1", timeout=120)
    up.wait_idle({DEFAULT_FUNCTION: 1, FLOODED.decode(): 1}, timeout=120)
    return up


def run(root: Path, args: argparse.Namespace) -> list[str]:
    tmp = Path(tempfile.mkdtemp(prefix="farm-flood-"))
    up = start_farm(root, tmp, args.store_sync, args.store)
    try:
        with farm.Executor(servers=[f"unix:{up.unix}"], key_file=str(key_file(up))) as ex:
            sequential(ex, time.monotonic() + 1)  # imports, the connection, the worker's cache
            idle = sequential(ex, time.monotonic() + 2)
            acked: mp.Queue = mp.Queue()
            stop_at = time.monotonic() + args.seconds
            floods = [
                mp.Process(target=flooder, args=(up.port, args.inflight, args.size, stop_at, acked))
                for _ in range(args.flooders)
            ]
            for f in floods:
                f.start()
            time.sleep(1)  # the flood under way: its first burst is not the steady state
            flooded = sequential(ex, stop_at - 0.5)
            total = sum(acked.get(timeout=args.seconds + 60) for _ in floods)
            for f in floods:
                f.join()
        committing = commit_seconds(f"unix:{up.unix}") if args.store == "default" else 0.0
    finally:
        up.stop()
        shutil.rmtree(shm_directory(key_file(up)), ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
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
    ap.add_argument(
        "--store",
        default="default",
        choices=["default", "none"],
        help="none: no store, so the flood costs only the loop's reading and queueing",
    )
    ap.add_argument("--farm-root", action="append", default=[], help="another checkout")
    args = ap.parse_args()
    roots = [ROOT, *(Path(r).resolve() for r in args.farm_root)]
    store = "no store" if args.store == "none" else "its default store"
    print(f"`farm up` ({store}), {args.flooders} TCP flooders; owner: farm.Executor")
    print("| farm | idle p50 | flooded p50 / p99 / max | flood acknowledged | committing |")
    print("|---|---:|---:|---:|---:|")
    for _ in range(args.rounds):
        for root in roots:
            print("| " + " | ".join(run(root, args)) + " |", flush=True)


if __name__ == "__main__":
    main()
