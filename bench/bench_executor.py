"""farm.Executor against ProcessPoolExecutor(2), the same workloads in one run.

    python -m bench.bench_executor [--quick]

farm: its server (``--job-retries 1``) plus two worker processes serving
``farm.executor.call:run_call`` as ``farm.python``, pinned to cores 0 and 1
(os.sched_setaffinity), with a throwaway key file. The pool: the stdlib's
ProcessPoolExecutor(2). Workloads: 20,000 tiny calls (chunksize 1 and 500),
2,000 calls of 1 ms CPU, 200 of 20 ms CPU (``map``), then single
``submit().result()`` latency p50/p99. "Ideal" is two workers doing nothing
but the CPU work. Prints a markdown table with farm/pool ratios.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import farm  # noqa: E402
from farm.executor.signing import KEY_ENV, ensure_key  # noqa: E402
from tests.helpers.servers import start_farm_server  # noqa: E402


def tiny(x: int) -> int:
    return x + 1


def burn(ms: float) -> float:
    """Spin for ``ms`` of this thread's CPU time (not wall time: preemption does not help)."""
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass
    return ms


def _tasks() -> Callable[..., object]:
    # Run as __main__, our functions would travel by value; imported, by reference
    # (a name the workers import), which is how real programs submit work.
    from bench import bench_executor

    return bench_executor


def workloads(quick: bool) -> list[tuple[str, Callable[[Executor], float], float | None]]:
    """(label, run(executor) -> seconds, ideal calls/s or None)."""
    t = _tasks()
    scale = 4 if quick else 1
    n_tiny, n_1ms, n_20ms = 20000 // scale, 2000 // scale, 200 // scale

    def timed(n: int, fn: Callable, args: list, chunksize: int) -> Callable[[Executor], float]:
        def run(ex: Executor) -> float:
            start = time.perf_counter()
            out = list(ex.map(fn, args, chunksize=chunksize))
            elapsed = time.perf_counter() - start
            assert len(out) == n
            return n / elapsed

        return run

    return [
        (
            f"{n_tiny:,} tiny calls, chunksize 1",
            timed(n_tiny, t.tiny, list(range(n_tiny)), 1),
            None,
        ),
        (
            f"{n_tiny:,} tiny calls, chunksize 500",
            timed(n_tiny, t.tiny, list(range(n_tiny)), 500),
            None,
        ),
        (f"{n_1ms:,} calls of 1 ms CPU", timed(n_1ms, t.burn, [1.0] * n_1ms, 1), 2000.0),
        (f"{n_20ms:,} calls of 20 ms CPU", timed(n_20ms, t.burn, [20.0] * n_20ms, 1), 100.0),
    ]


def latency(ex: Executor, n: int) -> tuple[float, float]:
    fn = _tasks().tiny
    for i in range(100):
        ex.submit(fn, i).result()
    lat = []
    for i in range(n):
        start = time.perf_counter()
        ex.submit(fn, i).result()
        lat.append((time.perf_counter() - start) * 1e6)
    lat.sort()
    return lat[n // 2], lat[n * 99 // 100]


def measure(ex: Executor, quick: bool) -> dict[str, float]:
    list(ex.map(_tasks().tiny, range(200)))  # warm up: imports, connections
    rows = {label: run(ex) for label, run, _ in workloads(quick)}
    rows["p50"], rows["p99"] = latency(ex, 300 if quick else 1000)
    return rows


def start_farm(key: Path) -> tuple[object, list[subprocess.Popen]]:
    server = start_farm_server("--job-retries", "1")
    env = dict(os.environ, **{KEY_ENV: str(key)})
    cmd = [sys.executable, "-c", "from farm.cli import main; main()", "worker"]
    cmd += ["farm.executor.call:run_call", "--name", "farm.python", "--server", server.addr]
    workers = [subprocess.Popen(cmd, cwd=ROOT, env=env) for _ in range(2)]
    cores = sorted(os.sched_getaffinity(0))
    for i, w in enumerate(workers):
        os.sched_setaffinity(w.pid, {cores[i % len(cores)]})
    return server, workers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a quarter of the calls")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        key = ensure_key(Path(tmp) / "executor.key")
        os.environ[KEY_ENV] = str(key)
        server, workers = start_farm(key)
        try:
            with farm.Executor(server.addr) as ex:  # type: ignore[attr-defined]
                mine = measure(ex, args.quick)
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait(5)
            server.stop()  # type: ignore[attr-defined]
    with ProcessPoolExecutor(2) as pool:
        theirs = measure(pool, args.quick)
    print(
        "\n| workload | farm.Executor | ProcessPoolExecutor(2) | farm/pool | farm % ideal"
        " | pool % ideal |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for label, _, ideal in workloads(args.quick):
        a, b = mine[label], theirs[label]
        pa = f"{100 * a / ideal:.0f}%" if ideal else "-"
        pb = f"{100 * b / ideal:.0f}%" if ideal else "-"
        print(f"| {label} (calls/s) | {a:,.0f} | {b:,.0f} | {a / b:.2f}x | {pa} | {pb} |")
    for key_, label in (("p50", "single call p50 µs"), ("p99", "single call p99 µs")):
        a, b = mine[key_], theirs[key_]
        print(f"| {label} | {a:,.0f} | {b:,.0f} | {a / b:.2f}x (lower is better) | - | - |")


if __name__ == "__main__":
    main()
