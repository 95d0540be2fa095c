"""joblib's Parallel on the farm (backend "farm") against loky and multiprocessing, one run.

    python -m bench.bench_joblib [--workers 2] [--rounds 3] [--quick]

``farm up`` starts with one pool of ``--workers`` farm.python workers; loky and
multiprocessing get the same number of processes. Each backend runs the same
``Parallel(n_jobs=N)(delayed(f)(x) for x in ...)`` loops, interleaved over
``--rounds`` rounds (figures are medians): tiny calls (joblib batches them
itself), and calls of 1 ms of CPU, whose ideal is N × 1,000 calls/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from joblib import Parallel, delayed, parallel_config

import farm.joblib  # noqa: F401  (registers the backend "farm")
from bench.probes import farm_up, key_file
from bench.tasks import burn, tiny

BACKENDS = ("farm", "loky", "multiprocessing")


def run(config: dict[str, Any], n_jobs: int, fn: Callable[[Any], Any], args: list[Any]) -> float:
    with parallel_config(**config):
        parallel = Parallel(n_jobs=n_jobs)
        start = time.perf_counter()
        results = parallel(delayed(fn)(a) for a in args)
        elapsed = time.perf_counter() - start
    assert len(results) == len(args)
    return len(args) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a quarter of the calls")
    args = ap.parse_args()
    scale = 4 if args.quick else 1
    loads = [
        (f"{20_000 // scale:,} tiny calls", tiny, list(range(20_000 // scale)), None),
        (f"{2_000 // scale:,} calls of 1 ms CPU", burn, [1.0] * (2_000 // scale), 1000.0),
    ]
    n = args.workers
    with tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp, farm_up(Path(tmp), n) as up:
        configs: dict[str, dict[str, Any]] = {
            "farm": {
                "backend": "farm",
                "servers": [f"unix:{up.unix}"],
                "key_file": str(key_file(up)),
            },
            "loky": {"backend": "loky"},
            "multiprocessing": {"backend": "multiprocessing"},
        }
        for name in BACKENDS:  # warm-up: start the pools, import the functions
            run(configs[name], n, tiny, list(range(200)))
        rates: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for label, fn, xs, _ideal in loads:
                for name in BACKENDS:
                    rates.setdefault((label, name), []).append(run(configs[name], n, fn, xs))
    print(f"## joblib Parallel(n_jobs={n}): backend farm against loky and multiprocessing\n")
    print(
        f"`python -m bench.bench_joblib --workers {n} --rounds {args.rounds}`; calls/s, medians\n"
    )
    print("| workload | farm | loky | multiprocessing | farm/best | farm % ideal | best % ideal |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, _fn, _xs, ideal in loads:
        med = {name: statistics.median(rates[label, name]) for name in BACKENDS}
        best = max(("loky", "multiprocessing"), key=lambda b: med[b])
        pct = (
            (f"{med['farm'] / (n * ideal):.0%}", f"{med[best] / (n * ideal):.0%}")
            if ideal
            else ("-", "-")
        )
        print(
            f"| {label} | {med['farm']:,.0f} | {med['loky']:,.0f} | {med['multiprocessing']:,.0f}"
            f" | {med['farm'] / med[best]:.2f}x ({best}) | {pct[0]} | {pct[1]} |"
        )


if __name__ == "__main__":
    main()
