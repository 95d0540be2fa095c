"""`farm restart` of a 16-slot pool of workers.text:reverse under a steady client load.

    python -m bench.restart [--workers 16] [--clients 8] [--before 3]

Runs `farm up` in a temporary directory, keeps ``--clients`` client processes
calling ``reverse`` back to back, and prints how long `farm restart` took and
the jobs per second the clients completed before it and during it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from farm.pools.control import ControlUnavailable, request

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def client(
    addr: str, counts: multiprocessing.Array, index: int, halt: multiprocessing.Event
) -> None:  # type: ignore[type-arg]  # multiprocessing's proxies are untyped
    from farm.client import Client

    with Client(addr) as c:
        while not halt.is_set():
            c.call("reverse", "Hello World!", timeout=30)
            counts[index] += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--before", type=float, default=3.0, help="seconds measured before")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="farm-restart-"))
    port, control = free_port(), str(tmp / "control.sock")
    (tmp / "farm.toml").write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}", "unix:{tmp}/gearman.sock"]\nstore = "none"\n'
        f'[supervisor]\ncontrol = "{control}"\nmetrics = "off"\n'
        f'[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = {args.workers}\n'
    )
    farm = [sys.executable, "-c", "from farm.cli import main; main()"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    up = subprocess.Popen(
        [*farm, "up", "-c", str(tmp / "farm.toml")], env=env, stderr=subprocess.DEVNULL
    )
    try:
        while True:  # until every worker is idle
            try:
                rows = request(control, {"cmd": "ps"})["processes"]
                if sum(r["state"] == "idle" for r in rows) == args.workers:
                    break
            except ControlUnavailable:
                pass
            time.sleep(0.1)  # polling another process's start-up
        counts = multiprocessing.Array("q", args.clients)
        halt = multiprocessing.Event()
        procs = [
            multiprocessing.Process(target=client, args=(f"127.0.0.1:{port}", counts, i, halt))
            for i in range(args.clients)
        ]
        for p in procs:
            p.start()
        time.sleep(1.0)  # warm up
        n0, t0 = sum(counts), time.monotonic()
        time.sleep(args.before)
        n1, t1 = sum(counts), time.monotonic()
        out = subprocess.run(
            [*farm, "restart", "--control", control], env=env, capture_output=True, text=True
        )
        n2, t2 = sum(counts), time.monotonic()
        halt.set()
        for p in procs:
            p.join()
        print(
            json.dumps(
                {
                    "workers": args.workers,
                    "clients": args.clients,
                    "restart_exit": out.returncode,
                    "restart_seconds": round(t2 - t1, 2),
                    "jobs_per_s_before": round((n1 - n0) / (t1 - t0)),
                    "jobs_per_s_during": round((n2 - n1) / (t2 - t1)),
                    "cli_said": out.stdout.strip().splitlines()[-1:],
                }
            )
        )
    finally:
        up.terminate()
        up.wait(30)


if __name__ == "__main__":
    main()
