"""What the server's own code costs per job, without sockets: a figure that holds still.

    python -m bench.server_cost [--jobs 20000] [--rounds 5] [--instructions]
        [--farm-root DIR ...]

``bench.server_load`` measures the server as users run it, and on a small shared VM
its figures move 10-50% from minute to minute. This drives the server's connections
in one process instead: a client (lazy-created, as farm.Executor) and a worker (held
grab, as farm's Worker) on transports that only count their writes, on a uvloop loop,
so the job model, the codec, the write batching and the deadlines all run as in the
server, and only the system calls are left out. Two patterns: sequential jobs (one in
flight) and pipelined ones (16 submitted per read).

Figures: CPU time per job (the fastest of ``--rounds``), or with ``--instructions``
the instructions per job that valgrind's cachegrind counts (the difference of two runs
of different lengths, so start-up cancels out): exact from run to run, what a change
to the hot path is judged by. ``--farm-root`` adds another checkout (a git worktree of
the commit before a change), measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = b"0123456789abcdef"
PATTERNS = {"sequential": 1, "pipelined": 16}


class CountingTransport:
    """A transport that takes every write and keeps nothing but the count."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def drive(jobs: int, batch: int) -> float:
    """Run ``jobs`` echo jobs through one server's connections; CPU seconds they took."""
    from farm import protocol as p
    from farm.protocol import PacketType as T
    from farm.server.connection import Connection
    from farm.server.hub import Hub
    from farm.server.options import parse_args

    hub = Hub(parse_args(["--store", "none"]))
    hub.loop = asyncio.get_running_loop()  # before the options: lazy-created needs it
    client, worker = Connection(hub), Connection(hub)
    for conn in (client, worker):
        conn.connection_made(CountingTransport())  # type: ignore[arg-type]
    client.data_received(p.encode_req(T.OPTION_REQ, p.OPTION_LAZY_CREATED))
    worker.data_received(
        p.encode_req(T.OPTION_REQ, p.OPTION_HELD_GRAB)
        + p.encode_req(T.CAN_DO, b"echo")
        + p.encode_req(T.GRAB_JOB)
    )
    await asyncio.sleep(0)
    assert client.lazy_created and worker.may_hold_grab
    # The handles the server will give (it numbers its jobs from first_number), so the
    # worker's answers are made before the clock starts; a wrong guess fails below.
    first = getattr(hub.jobs, "first_number", 1)  # 1: a checkout from before it
    answers = [
        p.encode_req(T.WORK_COMPLETE, hub.jobs.prefix + str(n).encode(), PAYLOAD)
        + p.encode_req(T.GRAB_JOB)
        for n in range(first, first + jobs)
    ]
    submits = p.encode_req(T.SUBMIT_JOB, b"echo", b"", PAYLOAD) * batch
    it = iter(answers)
    began = time.process_time()
    for _ in range(jobs // batch):
        client.data_received(submits)
        await asyncio.sleep(0)  # the loop turn: the hub's flush pushes the first job
        for _ in range(batch):
            worker.data_received(next(it))
            await asyncio.sleep(0)
    took = time.process_time() - began
    if hub.jobs.jobs:
        raise RuntimeError(f"{len(hub.jobs.jobs)} jobs did not end")
    return took


def run_here(jobs: int, batch: int) -> float:
    import uvloop

    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(drive(jobs, batch))
    finally:
        loop.close()


def run_child(
    root: Path, jobs: int, batch: int, wrapper: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Drive ``root``'s server in a fresh process: this file run as a script (under
    ``wrapper``, e.g. valgrind), so that ``farm`` comes from PYTHONPATH, that is ``root``,
    not from this checkout. It prints the CPU seconds and where farm came from."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(jobs), str(batch)]
    done = subprocess.run(
        [*wrapper, *command],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
    )
    where = done.stdout.strip().partition(" ")[2]
    if not where.startswith(str(root)):
        raise RuntimeError(f"measured the farm at {where!r}, not the one at {root}")
    return done


def cpu_per_job(root: Path, jobs: int, batch: int, rounds: int) -> float:
    """µs of CPU per job, the fastest of ``rounds`` runs (each in a fresh process)."""
    best = float("inf")
    for _ in range(rounds):
        seconds = run_child(root, jobs, batch).stdout.split()[0]
        best = min(best, float(seconds) / jobs * 1e6)
    return best


def instructions_per_job(root: Path, jobs: int, batch: int) -> float:
    """Instructions per job as cachegrind counts them (two run lengths, differenced)."""
    valgrind = (
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
    )

    def count(n: int) -> int:
        out = run_child(root, n, batch, valgrind).stderr
        match = re.search(r"I\s+refs:\s+([\d,]+)", out)
        if match is None:
            raise RuntimeError(f"no instruction count in valgrind's output:\n{out}")
        return int(match.group(1).replace(",", ""))

    short, long = jobs // 4, jobs
    return (count(long) - count(short)) / (long - short)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        import farm

        print(run_here(int(sys.argv[2]), int(sys.argv[3])), Path(farm.__file__).resolve())
        return
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--instructions", action="store_true", help="count with valgrind")
    ap.add_argument("--farm-root", action="append", default=[], metavar="DIR")
    args = ap.parse_args()
    if args.instructions and shutil.which("valgrind") is None:
        ap.error("--instructions needs valgrind (apt-get install valgrind)")
    roots = [ROOT] + [Path(r).resolve() for r in args.farm_root]
    unit = "instructions" if args.instructions else "CPU µs"
    jobs = min(args.jobs, 4800) if args.instructions else args.jobs
    print(f"| server | {unit} per sequential job | {unit} per pipelined job |")
    print("|---|---:|---:|")
    for root in roots:
        cells = []
        for batch in PATTERNS.values():
            if args.instructions:
                cells.append(f"{instructions_per_job(root, jobs, batch):,.0f}")
            else:
                cells.append(f"{cpu_per_job(root, jobs, batch, args.rounds):.1f}")
        print(f"| {root} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
