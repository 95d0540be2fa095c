"""farm.Executor on a real `farm up`, against the process pools, the same workloads in one run.

    python -m bench.bench_executor [--quick] [--scale K] [--workers N] [--hogs 2 | --skip-hogs]
                                   [--only farm] [--tcp] [--rounds 5]

The farm is the deployment users run: ``farm up -c tmp/farm.toml``, started by
``tests.helpers.farmproc.FarmUp`` as in bench_supervisor. Its config sets only
addresses (a free TCP port, a Unix socket, a control socket, all in a temp dir),
``store = "none"``, the stop grace and one pool,
``[functions."farm.python"] target = "farm.executor.call:run_call", workers = N``
— so none of the built-in default pools run. ``$FARM_KEY_FILE`` points the
supervisor and this process at a temp key, which the supervisor creates. We
measure once the control socket's process table (``farm ps --json``) shows
the server ready and every farm.python worker idle. ``farm.Executor`` connects
through the Unix socket (``--tcp``: the TCP port).

Peers, each with N workers (N = ``--workers``, default: the cores this process
may run on): ``concurrent.futures.ProcessPoolExecutor(N)``,
``loky.get_reusable_executor(N)`` (skipped, with a line saying so, when loky is
not installed) and ``multiprocessing.Pool(N)`` (``pool.map(fn, args, chunksize)``;
single calls as ``apply_async(fn, (x,)).get()``). Each is warmed up with 200
tiny calls before its workloads.

Workloads (``--quick`` divides the counts by 4, ``--scale K`` multiplies those of
the maps): 20,000 tiny calls with chunksize 1, ten maps of 20,000 tiny calls with
chunksize 500 in a row (one takes about 8 ms, a scheduler tick or two), 2,000 calls
of 1 ms CPU and 200 of 20 ms CPU (chunksize 1), all through ``map``; then 1,000 single
``submit(tiny).result()`` calls after 100 warm-up calls, for p50/p99 latency.
The functions are bench/tasks.py's, imported as ``bench.tasks``, so they travel
by name as in real programs. "Ideal" is N workers doing nothing but the
CPU work (1 ms: N x 1000 calls/s; 20 ms: N x 50 calls/s).

CPU per call: around each farm workload we read the CPU time (user + sys,
psutil) of every process on the path — the supervisor, the job server, each
farm.python worker (pids from the control socket's ``ps``) and the caller (this
process, pump thread included) — and divide by the calls. "busiest worker" is
the worker that used the most CPU, divided by the calls it ran (its jobs done,
from ``ps``, times calls per job). The same for ProcessPoolExecutor: this
process and its worker children.

Hogs (``--hogs K``, default 2; ``--skip-hogs``): a second pass with K busy-loop
processes running, every workload again for the farm and for the pool that did
best on that row in the first pass; the ratio is farm / that pool.

Everything stops by itself: the supervisor gets SIGTERM and is waited for, the
pools are shut down, the hogs killed and the temp dir removed, also on Ctrl-C,
SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import tasks  # noqa: E402
from bench.executor_tables import (  # noqa: E402
    FARM,
    LATENCY,
    LOKY,
    MP,
    POOLS,
    PPE,
    Results,
    best_pools,
    median_of,
    print_hog_table,
    print_tables,
)
from bench.probes import farm_up, processes  # noqa: E402
from bench.runners import Runner, open_runner  # noqa: E402
from bench.tasks import hog  # noqa: E402
from farm.executor.call import DEFAULT_FUNCTION, TARGET  # noqa: E402

N_TINY, N_1MS, N_20MS, N_LATENCY, N_LATENCY_WARM = 20_000, 2_000, 200, 1_000, 100
#: Maps of N_TINY calls in chunks of 500 timed as one figure (one takes about 8 ms).
TINY_MAPS = 10
ALIASES = {"farm": FARM, "ppe": PPE, "processpoolexecutor": PPE, "loky": LOKY}
ALIASES |= {"mp": MP, "mp.pool": MP}


# -- workloads --


@dataclass(frozen=True)
class Workload:
    label: str
    fn: Callable[[Any], Any]
    args: list[Any]
    chunksize: int
    ideal_per_worker: float | None  # calls/s of one worker doing only the CPU work
    # maps in a row per measurement: a map that takes milliseconds is one scheduler tick
    # or two on a small machine, so one of them measures the tick more than the map
    repeat: int = 1

    def ideal(self, workers: int) -> float | None:
        return None if self.ideal_per_worker is None else workers * self.ideal_per_worker


def workloads(factor: float) -> list[Workload]:
    """The four rows, with every count times ``factor`` (--quick, --scale)."""
    t = tasks
    n_tiny, n_1ms, n_20ms = (max(1, round(n * factor)) for n in (N_TINY, N_1MS, N_20MS))
    return [
        Workload(f"{n_tiny:,} tiny calls, chunksize 1", t.tiny, list(range(n_tiny)), 1, None),
        Workload(
            f"{TINY_MAPS} maps of {n_tiny:,} tiny calls, chunksize 500",
            t.tiny,
            list(range(n_tiny)),
            500,
            None,
            repeat=TINY_MAPS,
        ),
        Workload(f"{n_1ms:,} calls of 1 ms CPU", t.burn, [1.0] * n_1ms, 1, 1000.0),
        Workload(f"{n_20ms:,} calls of 20 ms CPU", t.burn, [20.0] * n_20ms, 1, 50.0),
    ]


# -- measuring --


def run_workload(runner: Runner, w: Workload, out: Results, probe: bool) -> None:
    probe_ = runner.probe if probe else None
    if probe_:
        probe_.start()
    start = time.perf_counter()
    for _ in range(w.repeat):
        got = runner.map(w.fn, w.args, w.chunksize)
        assert len(got) == len(w.args), (runner.name, w.label, len(got))
    elapsed = time.perf_counter() - start
    calls = len(w.args) * w.repeat
    if probe_:
        out.cpu[w.label] = probe_.stop(calls)
    out.rate[w.label] = calls / elapsed


def run_latency(runner: Runner, n: int, out: Results, probe: bool) -> None:
    fn = tasks.tiny
    for i in range(N_LATENCY_WARM):
        runner.call(fn, i)
    lat = []
    probe_ = runner.probe if probe else None
    if probe_:
        probe_.start()
    for i in range(n):
        start = time.perf_counter()
        runner.call(fn, i)
        lat.append((time.perf_counter() - start) * 1e6)
    if probe_:
        out.cpu[LATENCY] = probe_.stop(n)
    lat.sort()
    out.p50, out.p99 = lat[n // 2], lat[n * 99 // 100]


def measure(
    runner: Runner, loads: list[Workload], n_latency: int | None, probe: bool, out: Results
) -> Results:
    for w in loads:
        run_workload(runner, w, out, probe)
    if n_latency:
        run_latency(runner, n_latency, out, probe)
    return out


def interleaved(
    names: list[str], rounds: int, run: Callable[[str], Results | None]
) -> dict[str, Results]:
    """``run`` each executor ``rounds`` times, rotating the order each round; medians."""
    got: dict[str, list[Results]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            result = run(name)
            if result is not None:
                got[name].append(result)
    return {name: median_of(rs) for name, rs in got.items() if rs}


@contextmanager
def hogs(count: int) -> Iterator[None]:
    procs = [multiprocessing.Process(target=hog, daemon=True) for _ in range(count)]
    try:
        for p in procs:
            p.start()
        yield
    finally:
        for p in procs:
            if p.pid is not None:
                p.kill()
        for p in procs:
            if p.pid is not None:
                p.join(10)


# -- main --


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a quarter of the calls")
    ap.add_argument(
        "--scale",
        type=int,
        default=1,
        metavar="K",
        help="K times the calls of every row (for many workers: 16 run 2,000 calls of 1 ms"
        " in 1/8 s, where one late start weighs on the figure)",
    )
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="N")
    ap.add_argument("--hogs", type=int, default=2, help="busy loops in the second pass")
    ap.add_argument("--skip-hogs", action="store_true", help="no second pass")
    ap.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only these (farm, ppe, loky, mp); repeatable",
    )
    ap.add_argument("--tcp", action="store_true", help="connect farm.Executor over TCP")
    ap.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="run every executor this many times, interleaved; each figure is the median",
    )
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if args.scale < 1:
        ap.error("--scale must be >= 1")
    only = [ALIASES.get(name.lower()) for name in args.only or [FARM, *POOLS]]
    if None in only:
        ap.error(f"--only takes {', '.join(sorted(ALIASES))}")
    args.only = only
    return args


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: the farm stops, dirs go


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    main_pid = os.getpid()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != main_pid:  # a forked pool worker inherited this handler
            os._exit(128 + signum)
        _exit_on_sigterm(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    # Pool workers started by spawn (loky) import bench from the repository root too.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    n = args.workers
    factor = args.scale / (4 if args.quick else 1)
    loads = workloads(factor)
    n_latency = N_LATENCY // 4 if args.quick else N_LATENCY
    names = [name for name in (FARM, *POOLS) if name in args.only]
    cmd = shlex.join(
        [os.path.basename(sys.executable), "-m", "bench.bench_executor", *sys.argv[1:]]
    )
    print(f"## farm.Executor vs process pools\n\n`{cmd}`\n")
    cores = sorted(os.sched_getaffinity(0))
    print(f"- N = {n} workers for farm and each pool; cores available: {len(cores)} {cores}")
    if LOKY in names and importlib.util.find_spec("loky") is None:
        print("- loky is not installed (pip install loky): skipped")
        names.remove(LOKY)

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="farm-bench-")))
        service, addr = None, ""
        if FARM in names:
            service = stack.enter_context(farm_up(tmp, n))
            addr = service.addr if args.tcp else f"unix:{service.unix}"
            procs = processes(service)
            print(
                f"- farm: `python -m farm.cli up --config farm.toml` (supervisor pid"
                f" {procs.supervisor}, server pid {procs.server}); only pool:"
                f' [functions."{DEFAULT_FUNCTION}"] target = "{TARGET}", workers = {n};'
                f" farm.Executor connects to `{addr}`"
            )
        print(f"- every figure: the median of {args.rounds} interleaved rounds")

        def calm(name: str) -> Results:
            with open_runner(name, n, service, addr) as runner:
                return measure(runner, loads, n_latency, True, Results())

        base = interleaved(names, args.rounds, calm)
        best = best_pools(base, loads)
        print_tables(base, loads, n, best)

        if args.skip_hogs or args.hogs < 1:
            return

        def hogged_run(name: str) -> Results | None:
            mine = [w for w in loads if name == FARM or best.get(w.label) == name]
            latency = n_latency if name == FARM or best.get(LATENCY) == name else None
            if not mine and not latency:
                return None
            with open_runner(name, n, service, addr) as runner:
                return measure(runner, mine, latency, False, Results())

        with hogs(args.hogs):
            hogged = interleaved(names, args.rounds, hogged_run)
        print_hog_table(base, hogged, loads, best, args.hogs)


if __name__ == "__main__":
    main()
