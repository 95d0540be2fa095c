"""A 200 MB NumPy array to one call and back: farm.Executor (through a spill file) against
ProcessPoolExecutor (through its pipe), in the same run.

    python -m bench.bench_large [--mb 200] [--rounds 5]

Prints a markdown table of the median round trip (seconds) and its throughput
(MB/s of argument plus result). The function returns its argument.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

import farm
from bench.probes import farm_up, key_file
from tests.helpers.calls import identity


def round_trip(ex: Executor, array: Any) -> float:
    start = time.perf_counter()
    back = ex.submit(identity, array).result()
    elapsed = time.perf_counter() - start
    assert back.shape == array.shape and back[-1] == array[-1]
    return elapsed


def measure(make: Callable[[], Executor], array: Any, rounds: int) -> list[float]:
    with make() as ex:
        ex.submit(identity, 0).result()  # warm: the worker is up and has imported numpy
        round_trip(ex, array[:1000])
        return [round_trip(ex, array) for _ in range(rounds)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the array (MB)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    array = np.arange(args.mb * 1_000_000 // 8, dtype=np.float64)
    with tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp, farm_up(Path(tmp), 1) as up:
        results = {
            "farm.Executor": measure(
                lambda: farm.Executor(1, servers=[f"unix:{up.unix}"], key_file=str(key_file(up))),
                array,
                args.rounds,
            ),
            "ProcessPoolExecutor": measure(lambda: ProcessPoolExecutor(1), array, args.rounds),
        }
    base = statistics.median(results["ProcessPoolExecutor"])
    print(f"\n{args.mb} MB float64 array to one call and back, median of {args.rounds}\n")
    print("| executor | round trip (s) | MB/s (both ways) | vs ProcessPoolExecutor |")
    print("|---|---:|---:|---:|")
    for name, times in results.items():
        median = statistics.median(times)
        print(f"| {name} | {median:.3f} | {2 * args.mb / median:,.0f} | {median / base:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
