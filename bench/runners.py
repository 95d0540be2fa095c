"""The executors a benchmark compares, behind one face (``Runner``): farm.Executor against
a running `farm up`, ProcessPoolExecutor, loky's reusable executor and multiprocessing.Pool,
each warmed up before it is measured, with the probe that reads its processes' CPU."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from multiprocessing.pool import Pool
from typing import Any

import psutil

import farm
from bench import tasks
from bench.executor_tables import FARM, LOKY, MP, PPE
from bench.probes import FarmProbe, PoolProbe, Probe, key_file
from tests.helpers.farmproc import FarmUp

__all__ = ["N_WARM", "Runner", "open_runner"]

#: Calls each executor runs before it is measured: imports, connections, forks.
N_WARM = 200


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
        out = runner.map(tasks.tiny, list(range(N_WARM)), 1)  # imports, connections, forks
        assert out == [x + 1 for x in range(N_WARM)]
        new = sorted(children() - before)
        runner.probe = FarmProbe(service) if service and name == FARM else PoolProbe(new)
        yield runner
