"""farm.Executor on a real `farm up`, against the process pools, the same workloads in one run.

    python -m bench.bench_executor [--quick] [--workers N] [--hogs 2 | --skip-hogs]
                                   [--only farm] [--tcp]

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

Workloads (``--quick`` divides the counts by 4): 20,000 tiny calls with
chunksize 1, ten maps of 20,000 tiny calls with chunksize 500 in a row (one
takes about 8 ms, a scheduler tick or two), 2,000 calls of 1 ms CPU and 200 of
20 ms CPU (chunksize 1), all through ``map``; then 1,000 single
``submit(tiny).result()`` calls after 100 warm-up calls, for p50/p99 latency.
The functions are this module's, imported as ``bench.bench_executor``, so they
travel by name as in real programs. "Ideal" is N workers doing nothing but the
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
import math
import multiprocessing
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any, Protocol

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import farm  # noqa: E402
from farm.executor.call import DEFAULT_FUNCTION, TARGET  # noqa: E402
from farm.executor.signing import KEY_ENV  # noqa: E402
from tests.helpers.farmproc import FarmUp  # noqa: E402

N_TINY, N_1MS, N_20MS, N_LATENCY, N_LATENCY_WARM, N_WARM = 20_000, 2_000, 200, 1_000, 100, 200
#: Maps of N_TINY calls in chunks of 500 timed as one figure (one takes about 8 ms).
TINY_MAPS = 10
FARM, PPE, LOKY, MP = "farm", "ProcessPoolExecutor", "loky", "mp.Pool"
POOLS = (PPE, LOKY, MP)
ALIASES = {"farm": FARM, "ppe": PPE, "processpoolexecutor": PPE, "loky": LOKY}
ALIASES |= {"mp": MP, "mp.pool": MP}
LATENCY = "single calls"  # the latency run's row in the CPU table


# -- what the workers run (imported by name from bench.bench_executor) --


def tiny(x: int) -> int:
    return x + 1


def burn(ms: float) -> float:
    """Spin for ``ms`` of this thread's CPU time (not wall time: preemption does not help)."""
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        pass
    return ms


def hog() -> None:
    """A busy loop until killed (the hogs pass)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the benchmark's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        pass


def _tasks() -> ModuleType:
    # Run as __main__, our functions would travel by value; imported, by reference
    # (a name the workers import), which is how real programs submit work.
    from bench import bench_executor

    return bench_executor


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


def workloads(scale: int) -> list[Workload]:
    t = _tasks()
    n_tiny, n_1ms, n_20ms = N_TINY // scale, N_1MS // scale, N_20MS // scale
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


# -- CPU accounting --


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """user + sys CPU seconds of each live process."""
    out = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = t.user + t.system
    return out


class Probe(Protocol):
    def start(self) -> None: ...
    def stop(self, calls: int) -> dict[str, float]:
        """CPU µs per call for each role since start()."""
        ...


@dataclass(frozen=True)
class Processes:
    """The farm's processes at one moment, from its `farm ps` table."""

    supervisor: int
    server: int
    workers: dict[int, int]  # pid -> jobs done so far


def processes(up: FarmUp) -> Processes:
    rows = up.ps()
    (sup,) = (r["pid"] for r in rows if r["slot"] is None and r["function"] == "supervisor")
    (srv,) = (r["pid"] for r in rows if r["slot"] is None and r["function"] == "server")
    workers = {r["pid"]: r["jobs"] for r in rows if r["slot"] is not None and r["pid"]}
    return Processes(sup, srv, workers)


def key_file(up: FarmUp) -> Path:
    return up.tmp / "executor.key"


@contextmanager
def farm_up(tmp: Path, workers: int) -> Iterator[FarmUp]:
    """`farm up` with one pool of ``workers`` farm.python workers, all idle and the key
    made; stopped (and every process of it gone) on leaving."""
    pool = f'[functions."{DEFAULT_FUNCTION}"]\ntarget = "{TARGET}"\nworkers = {workers}\n'
    up = FarmUp(tmp, pool, extra_env={KEY_ENV: str(tmp / "executor.key")})
    try:
        up.expect_notify("READY=1", timeout=120)  # as systemd would see it: all workers up
        up.wait_idle({DEFAULT_FUNCTION: workers}, timeout=120)
        if not key_file(up).exists():
            raise RuntimeError(f"the supervisor made no key at {key_file(up)}")
        yield up
    finally:
        up.stop()


class FarmProbe:
    """CPU of the supervisor, the server, the caller and the workers."""

    def __init__(self, up: FarmUp) -> None:
        self.up = up
        self.procs = processes(up)
        self.before: dict[int, float] = {}

    def start(self) -> None:
        self.procs = processes(self.up)  # outside the CPU window: ps costs the supervisor
        procs = self.procs
        self.before = cpu_seconds([procs.supervisor, procs.server, os.getpid(), *procs.workers])

    def stop(self, calls: int) -> dict[str, float]:
        after = cpu_seconds(list(self.before))
        jobs = processes(self.up).workers
        procs, before = self.procs, self.before
        used = {pid: after[pid] - before[pid] for pid in before if pid in after}
        workers = {pid: used[pid] for pid in procs.workers if pid in used}
        done = {pid: jobs.get(pid, n) - n for pid, n in procs.workers.items()}
        total_jobs = sum(done.values())
        busiest_us = math.nan
        if workers and total_jobs:
            busiest = max(workers, key=workers.__getitem__)
            busiest_calls = done.get(busiest, 0) * calls / total_jobs  # jobs may be chunks
            if busiest_calls:
                busiest_us = workers[busiest] / busiest_calls * 1e6
        return {
            "supervisor": used.get(procs.supervisor, math.nan) / calls * 1e6,
            "server": used.get(procs.server, math.nan) / calls * 1e6,
            "caller": used.get(os.getpid(), math.nan) / calls * 1e6,
            "workers": sum(workers.values()) / calls * 1e6,
            "busiest": busiest_us,
        }


class PoolProbe:
    """CPU of the caller and the pool's worker processes."""

    def __init__(self, workers: Sequence[int]) -> None:
        self.pids = [os.getpid(), *workers]
        self.before: dict[int, float] = {}

    def start(self) -> None:
        self.before = cpu_seconds(self.pids)

    def stop(self, calls: int) -> dict[str, float]:
        after = cpu_seconds(self.pids)
        used = {pid: after[pid] - self.before[pid] for pid in self.before if pid in after}
        me = os.getpid()
        return {
            "caller": used.get(me, math.nan) / calls * 1e6,
            "workers": sum(v for pid, v in used.items() if pid != me) / calls * 1e6,
        }


# -- the executors, behind one face --


@dataclass
class Runner:
    name: str
    map: Callable[[Callable[[Any], Any], list[Any], int], list[Any]]
    call: Callable[[Callable[[Any], Any], Any], Any]
    probe: Probe | None = None


def futures_runner(name: str, ex: Executor) -> Runner:
    return Runner(
        name,
        lambda fn, args, chunksize: list(ex.map(fn, args, chunksize=chunksize)),
        lambda fn, x: ex.submit(fn, x).result(),
    )


def pool_runner(pool: Pool) -> Runner:
    return Runner(
        MP,
        lambda fn, args, chunksize: pool.map(fn, args, chunksize=chunksize),
        lambda fn, x: pool.apply_async(fn, (x,)).get(),
    )


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _default_sigterm() -> None:
    """In a forked pool worker: SIGTERM (Pool.terminate) kills at once. The Python handler
    it inherits from main() runs only when the worker's main thread next runs Python code,
    and a signal that lands just before the worker blocks on its task queue's semaphore
    leaves it blocked there: terminate() then waited forever (seen once in ten runs)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def open_runner(name: str, workers: int, service: FarmUp | None, addr: str) -> Iterator[Runner]:
    """The executor ``name``, warmed up; shut down on leaving."""
    before = children()
    with ExitStack() as stack:
        if name == FARM:
            assert service is not None
            ex: Executor = farm.Executor(servers=[addr], key_file=str(key_file(service)))
            stack.callback(ex.shutdown)
            runner = futures_runner(name, ex)
        elif name == PPE:
            runner = futures_runner(name, stack.enter_context(ProcessPoolExecutor(workers)))
        elif name == LOKY:
            import loky  # type: ignore[import-not-found, import-untyped, unused-ignore]

            lex = loky.get_reusable_executor(max_workers=workers)
            stack.callback(lambda: lex.shutdown(wait=True, kill_workers=True))
            runner = futures_runner(name, lex)
        else:
            pool = Pool(workers, initializer=_default_sigterm)
            stack.callback(pool.join)  # last in, first out: terminate, then join
            stack.callback(pool.terminate)
            runner = pool_runner(pool)
        out = runner.map(_tasks().tiny, list(range(N_WARM)), 1)  # imports, connections, forks
        assert out == [x + 1 for x in range(N_WARM)]
        new = sorted(children() - before)
        runner.probe = FarmProbe(service) if service and name == FARM else PoolProbe(new)
        yield runner


# -- measuring --


@dataclass
class Results:
    """One executor's numbers: calls/s per workload, latency, CPU µs per call per role."""

    rate: dict[str, float] = field(default_factory=dict)
    p50: float = math.nan
    p99: float = math.nan
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)


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
    fn = _tasks().tiny
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


def median_of(rounds: list[Results]) -> Results:
    """Each figure the median of the rounds' (a noisy machine: see ``--rounds``)."""
    out = Results()
    for label in dict.fromkeys(k for r in rounds for k in r.rate):
        out.rate[label] = statistics.median(r.rate[label] for r in rounds if label in r.rate)
    for q in ("p50", "p99"):
        values = [getattr(r, q) for r in rounds if not math.isnan(getattr(r, q))]
        setattr(out, q, statistics.median(values) if values else math.nan)
    for label in dict.fromkeys(k for r in rounds for k in r.cpu):
        roles = dict.fromkeys(role for r in rounds for role in r.cpu.get(label, {}))
        out.cpu[label] = {
            role: statistics.median(
                r.cpu[label][role] for r in rounds if role in r.cpu.get(label, {})
            )
            for role in roles
        }
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


# -- output --


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "-"
    if digits == 0 and abs(value) < 10:
        return f"{value:.1f}"
    return f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def pct(value: float | None, ideal: float | None) -> str:
    if value is None or ideal is None or math.isnan(value):
        return "-"
    return f"{100 * value / ideal:.0f}%"


def best_pools(res: dict[str, Results], loads: list[Workload]) -> dict[str, str]:
    """Row -> the pool that did best on it (highest calls/s; lowest p50 for latency)."""
    pools = [p for p in POOLS if p in res]
    best = {}
    for w in loads:
        rated = [p for p in pools if w.label in res[p].rate]
        if rated:
            best[w.label] = max(rated, key=lambda p: res[p].rate[w.label])
    timed = [p for p in pools if not math.isnan(res[p].p50)]
    if timed:
        best[LATENCY] = min(timed, key=lambda p: res[p].p50)
    return best


def print_tables(
    res: dict[str, Results], loads: list[Workload], workers: int, best: dict[str, str]
) -> None:
    empty = Results()
    get = {name: res.get(name, empty) for name in (FARM, *POOLS)}
    f = get[FARM]
    print("\n### Throughput (calls/s, higher is better)\n")
    print(
        f"| workload | farm | {PPE} | loky | mp.Pool | farm/best pool"
        " | farm % ideal | best pool % ideal |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for w in loads:
        cells = [fmt(get[n].rate.get(w.label)) for n in (FARM, *POOLS)]
        b = best.get(w.label)
        bv = get[b].rate.get(w.label) if b else None
        versus = f"{ratio(f.rate.get(w.label), bv)} ({b})" if b else "-"
        ideal = w.ideal(workers)
        print(
            f"| {w.label} | {' | '.join(cells)} | {versus}"
            f" | {pct(f.rate.get(w.label), ideal)} | {pct(bv, ideal)} |"
        )

    print("\n### Single `submit(tiny).result()` latency (µs, lower is better)\n")
    print(f"| | farm | {PPE} | loky | mp.Pool | farm/{PPE} |")
    print("|---|---:|---:|---:|---:|---:|")
    for q in ("p50", "p99"):
        cells = [fmt(getattr(get[n], q)) for n in (FARM, *POOLS)]
        print(f"| {q} | {' | '.join(cells)} | {ratio(getattr(f, q), getattr(get[PPE], q))} |")

    print("\n### CPU per call (µs of user+sys CPU, summed over the processes in each role)\n")
    print(
        "| workload | farm supervisor | farm server | farm caller | farm workers"
        f" | farm busiest worker | farm total | {PPE} caller | {PPE} workers | {PPE} total |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label in [w.label for w in loads] + [LATENCY]:
        c, p = f.cpu.get(label, {}), get[PPE].cpu.get(label, {})
        ftotal = sum(c.get(k, math.nan) for k in ("supervisor", "server", "caller", "workers"))
        ptotal = p.get("caller", math.nan) + p.get("workers", math.nan)
        values: list[float | None] = [
            c.get(k) for k in ("supervisor", "server", "caller", "workers", "busiest")
        ]
        values += [ftotal, p.get("caller"), p.get("workers"), ptotal]
        print(f"| {label} | {' | '.join(fmt(v) for v in values)} |")
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    print(
        "\n(busiest worker: the farm worker that used the most CPU, per call it ran."
        f" The kernel counts CPU time in {tick:,.0f} µs ticks per process: divide by the"
        " calls for the resolution of a cell. Ideal: N workers doing only the CPU work.)"
    )


def print_hog_table(
    base: dict[str, Results],
    hogged: dict[str, Results],
    loads: list[Workload],
    best: dict[str, str],
    count: int,
) -> None:
    print(f"\n### With {count} busy-loop hog processes running (farm vs the row's best pool)\n")
    print("| workload | farm | best pool | that pool | farm/pool | farm vs no hogs |")
    print("|---|---:|---|---:|---:|---:|")
    f = hogged.get(FARM, Results())
    for w in loads:
        b = best.get(w.label)
        bv = hogged[b].rate.get(w.label) if b and b in hogged else None
        mine = f.rate.get(w.label)
        calm = base[FARM].rate.get(w.label) if FARM in base else None
        print(
            f"| {w.label} (calls/s) | {fmt(mine)} | {b or '-'} | {fmt(bv)} | {ratio(mine, bv)}"
            f" | {ratio(mine, calm)} |"
        )
    b = best.get(LATENCY)
    for q in ("p50", "p99"):
        mine = getattr(f, q)
        bv = getattr(hogged[b], q) if b and b in hogged else None
        calm = getattr(base[FARM], q) if FARM in base else None
        print(
            f"| single call {q} (µs, lower is better) | {fmt(mine)} | {b or '-'} | {fmt(bv)}"
            f" | {ratio(mine, bv)} | {ratio(mine, calm)} |"
        )


# -- main --


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a quarter of the calls")
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
    scale = 4 if args.quick else 1
    loads = workloads(scale)
    n_latency = N_LATENCY // scale
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
