"""The supervisor's reaction times and footprint, on a real `farm up`.

    python -m bench.bench_supervisor [--kills 5] [--scale 32]

Measures, on a farm with a local server:
* kill -9 -> replacement serving: SIGKILL the only worker of a function, then
  time a job submitted right away until its answer (the replacement took it);
* `farm scale reverse=N`: from the command until N workers report idle, and
  the scale back down until the drained workers have exited;
* the RSS (and USS) of an idle worker, the server and the supervisor.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farm.client import Client  # noqa: E402
from tests.helpers.farmproc import FarmUp  # noqa: E402
from tests.helpers.waiting import wait_for  # noqa: E402

SOLO = """
[functions.solo{i}]
target = "workers.text:reverse"
workers = 1
"""
FUNCTIONS = """
[functions.reverse]
target = "workers.text:reverse"
workers = 2
"""


def farm_cli(*args: str) -> None:
    cmd = [sys.executable, "-c", "from farm.cli import main; main()", *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def kill_to_serving(up: FarmUp, client: Client, function: str) -> float:
    """SIGKILL a function's only worker; time a job sent right away until it is answered.

    Each round uses its own function: a slot killed again within a minute is
    backed off on purpose, which is not what this measures.
    """
    (victim,) = up.workers(function)
    os.kill(victim["pid"], signal.SIGKILL)
    start = time.perf_counter()
    assert client.call(function, "abc", timeout=30) == b"cba"
    return time.perf_counter() - start


def scale_to(up: FarmUp, n: int) -> float:
    start = time.perf_counter()
    farm_cli("scale", f"reverse={n}", "--control", up.control)

    def settled() -> bool:
        rows = up.workers("reverse")
        return len(rows) == n and all(r["state"] == "idle" for r in rows)

    wait_for(f"{n} idle reverse workers", settled, timeout=120)
    return time.perf_counter() - start


def memory(pid: int) -> tuple[float, float]:
    info = psutil.Process(pid).memory_full_info()
    return info.rss / 2**20, info.uss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--scale", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        solos = {f"solo{i}": 1 for i in range(args.kills)}
        up = FarmUp(Path(tmp), FUNCTIONS + "".join(SOLO.format(i=i) for i in range(args.kills)))
        try:
            up.expect_notify("READY=1")
            up.wait_idle({"reverse": 2, **solos})
            client = Client(up.addr)
            client.call("reverse", "warm", timeout=10)
            kills = [kill_to_serving(up, client, name) for name in solos]
            worker_mem = memory(up.workers("reverse", "idle")[0]["pid"])
            procs = {r["function"]: r["pid"] for r in up.ps()}
            server_mem, sup_mem = memory(procs["server"]), memory(procs["supervisor"])
            up_time = scale_to(up, args.scale)
            down_time = scale_to(up, 2)
            wait_for("drained workers gone", lambda: not up.workers(state="draining"), 60)
            client.close()
        except BaseException:
            print(up.read_log()[-3000:], file=sys.stderr)
            raise
        finally:
            up.stop()
    cpus = len(os.sched_getaffinity(0))
    print(f"\nfarm supervisor on {cpus} cores (Python {sys.version.split()[0]})\n")
    print("| measure | value |")
    print("|---|---|")
    median, worst = statistics.median(kills) * 1000, max(kills) * 1000
    print(f"| kill -9 -> replacement serves a job (median of {len(kills)}) "
          f"| {median:.0f} ms (max {worst:.0f} ms) |")  # fmt: skip
    print(f"| `farm scale reverse={args.scale}` (2 -> {args.scale}, all idle) "
          f"| {up_time:.2f} s |")  # fmt: skip
    print(f"| `farm scale reverse=2` ({args.scale} -> 2, drained) | {down_time:.2f} s |")
    print(f"| idle worker RSS / USS | {worker_mem[0]:.1f} / {worker_mem[1]:.1f} MiB |")
    print(f"| job server RSS / USS | {server_mem[0]:.1f} / {server_mem[1]:.1f} MiB |")
    print(f"| supervisor RSS / USS | {sup_mem[0]:.1f} / {sup_mem[1]:.1f} MiB |")


if __name__ == "__main__":
    main()
