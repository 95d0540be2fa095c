"""A joblib parallel backend that runs ``Parallel`` on the farm.

::

    import farm.joblib  # registers the backend "farm" (or call farm.joblib.register())
    from joblib import Parallel, delayed, parallel_config

    with parallel_config(backend="farm"):
        squares = Parallel(n_jobs=-1)(delayed(pow)(x, 2) for x in range(1000))

``n_jobs=-1`` means the farm's ``farm.python`` workers (those of the pool named by
``function=``), as the server counts them (``n_jobs=-2`` one less, and so on, as in
joblib); a positive ``n_jobs`` caps this Parallel's calls in flight. joblib's
auto-batching, ``return_as="generator"`` and its re-raising of a task's exception work
as with loky, because the backend hands joblib's batches to a :class:`farm.Executor` and
gives back its futures. Backend parameters go to the Executor:
``parallel_config(backend="farm", servers=[...], key_file=...)``.

What differs from loky: the workers are the farm's, shared with every other
program that uses it and already running (nothing is started or stopped per
``Parallel``), and joblib's memory mapping of large NumPy arrays does not apply:
arguments travel pickled through the job server (a spill file over 1 MiB), each batch
with its own copy of an array; the backend warns of one over ``max_nbytes``, once per
``Parallel``.

Inside a call running on the pool the backend sends to (a task of this backend whose
code runs ``Parallel`` on the farm again), the inner ``Parallel`` runs its tasks in that
worker, one after another, as joblib's own process backends do when nested: sent to the
pool, they would wait for the very workers the outer tasks hold, for good once every
worker runs one.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from concurrent.futures import Future
from types import FrameType
from typing import Any, NamedTuple

from joblib import register_parallel_backend  # type: ignore[import-untyped]
from joblib._parallel_backends import (  # type: ignore[import-untyped]
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)
from joblib.disk import memstr_to_bytes  # type: ignore[import-untyped]

from farm import cgroups
from farm.errors import FarmError
from farm.executor import nesting
from farm.executor.call import DEFAULT_FUNCTION
from farm.executor.executor import Executor
from farm.executor.payload import note_tasks

__all__ = ["FarmBackend", "register", "farm_workers", "largest_array"]

log = logging.getLogger("farm.joblib")


def farm_workers(
    servers: str | list[str] | None = None, function: str = DEFAULT_FUNCTION
) -> int | None:
    """How many workers serve ``function`` (the pool the calls go to, ``farm.python``
    unless told) on the first server that answers, or None: where no farm answers, before
    `farm up` too (executor_servers refuses a socket that is missing there)."""
    from farm.client.admin import function_workers
    from farm.discovery import executor_servers
    from farm.errors import ServerUnavailable
    from farm.net import parse_servers

    try:
        addresses = parse_servers(executor_servers() if servers is None else servers)
    except ServerUnavailable:
        return None
    return function_workers(addresses, function)


class FarmBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's view of a :class:`farm.Executor` (see the module docstring)."""

    supports_retrieve_callback = True
    supports_inner_max_num_threads = False
    uses_threads = False
    supports_sharedmem = False
    default_n_jobs = -1

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **executor_kwargs: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=None)
        self.executor_kwargs = executor_kwargs
        self._executor: Executor | None = None
        self._n_jobs = 1  # configure's, for an executor made again by submit
        self._making = threading.Lock()
        self.parallel: Any = None
        self._max_nbytes: float | str | None = 1 << 20  # joblib's default, "1M"
        self._copies_said = False
        self._users_line: _Place | None = None  # where configure was called from

    def _nested_in_own_pool(self) -> bool:
        """This process is one of the workers of the pool this backend would send to."""
        pool: str = self.executor_kwargs.get("function", DEFAULT_FUNCTION)
        return nesting.serving == pool

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if self._nested_in_own_pool():
            return 1  # (configure runs them here, one after another)
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs > 0:
            return n_jobs
        pool = self.executor_kwargs.get("function", DEFAULT_FUNCTION)
        workers = farm_workers(self.executor_kwargs.get("servers"), pool)
        if not workers:
            # Nobody to ask, or no worker yet: size the batches for the cores this process
            # may use (its affinity and CPU quota, as loky's cpu_count() says); the calls
            # wait in the server's queue for workers, which is what the farm is for.
            workers = cgroups.usable_cpus()
        return max(workers + 1 + n_jobs, 1)

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        if require == "sharedmem":
            raise ValueError("the farm backend runs calls in other processes: no shared memory")
        if self._nested_in_own_pool():
            pool = self.executor_kwargs.get("function", DEFAULT_FUNCTION)
            warnings.warn(
                f"Parallel on the farm backend inside a call running on {pool!r}: its tasks"
                " run in this worker, one after another (sent to the same pool they would"
                " wait for the workers the outer calls hold). Send them to a pool of their"
                " own: parallel_config(backend='farm', function='farm.inner')",
                RuntimeWarning,
                stacklevel=2,
            )
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        n = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        # configure runs in the user's thread, inside Parallel.__call__; joblib dispatches
        # later batches from a done-callback in the executor's thread, whose stack has no
        # user's frame: the large-array warning points here then. A configure with none
        # (an abort's, from such a callback) keeps the place it had.
        self._users_line = _users_place() or self._users_line
        # Parallel's max_nbytes (None turns memmapping off; an abort's configure has none):
        # an array over it is one loky would have memory-mapped, one each batch copies here.
        self._max_nbytes = backend_kwargs.get("max_nbytes", self._max_nbytes)
        self._copies_said = False
        self._n_jobs = n
        self._ready()
        return n

    def _ready(self) -> Executor:
        """The executor, made if there is none. Every Parallel of a parallel_config block
        shares this backend: one run in the loop over another's generator ends with
        terminate(), which shut the outer one's executor down while it still had batches
        to send (its next submit failed, and the loop hung). loky's terminate leaves its
        reusable executor; here the outer Parallel's next batch gets a new one."""
        with self._making:
            if self._executor is None:
                self._executor = Executor(max_workers=self._n_jobs, **self.executor_kwargs)
            return self._executor

    def submit(self, func: Any, callback: Any = None) -> Future[Any]:
        executor = self._executor or self._ready()
        if not self._copies_said:
            self._say_copies(func)
        future = executor.submit(func)
        if future.done() and not future.cancelled():
            exc = future.exception()
            if exc is not None and not isinstance(exc, FarmError | OSError):
                # The batch would not pickle: say what in the user's tasks, as a submit of
                # their function would (docs/executor.md); notes on the batch name no one.
                note_tasks(exc, getattr(func, "items", ()))
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def _say_copies(self, batch: Any) -> None:
        """Warn, once per Parallel, of an argument that loky would have memory-mapped: here
        every batch pickles its own copy through a spill file (4x loky's time for 100 MB)."""
        size = largest_array(batch, self._max_nbytes)
        if size:
            self._copies_said = True
            # The user's line on this stack, else the one that ran this Parallel: a
            # batch dispatched from a done-callback in the executor's thread has none.
            place = _users_place() or self._users_line or _outermost()
            # warn_explicit with no registry: Python's default filter shows it at each
            # Parallel that copies (as docs/executor.md says), not once per process, which
            # is its registry's; "ignore", "once" and "error" filters still apply.
            warnings.warn_explicit(
                f"farm: each batch of this Parallel carries its own copy of a"
                f" {size / (1 << 20):.3g} MiB array (loky memory-maps it once): it is pickled,"
                " written to the spill directory and read back for every batch. Save it once"
                " (numpy.save) where the workers can read it and pass the path, to open with"
                " numpy.load(path, mmap_mode='r') in the task (docs/executor.md, 'Switching"
                " from ProcessPoolExecutor, loky or joblib')",
                UserWarning,
                place.filename,
                place.lineno,
                module=place.module,
                module_globals=place.module_globals,
            )

    def retrieve_result_callback(self, future: Future[Any]) -> Any:
        return future.result()

    def terminate(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task raised: drop what has not started (calls already on workers run to the end,
        their results ignored), and be ready for the next Parallel call if asked."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if ensure_ready and self.parallel is not None:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)


#: Modules whose frames are not the user's: the warning points past them.
_NOT_USERS = ("farm", "joblib", "concurrent.futures", "threading")


class _Place(NamedTuple):
    """A line of code, as warnings.warn_explicit takes it (module_globals: for linecache,
    to show the line of a module that a loader gave); no frame kept, nor its locals."""

    filename: str
    lineno: int
    module: str
    module_globals: dict[str, Any]


def _place(frame: FrameType) -> _Place:
    name = frame.f_globals.get("__name__", "<unknown>")
    return _Place(frame.f_code.co_filename, frame.f_lineno, name, frame.f_globals)


def _users_place() -> _Place | None:
    """The line of the user's code that runs the Parallel: the first frame on this thread's
    stack outside farm, joblib, and the threads that run their callbacks; None if none is
    (a batch dispatched from a done-callback in the executor's thread)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not any(name == top or name.startswith(f"{top}.") for top in _NOT_USERS):
            return _place(frame)
        frame = frame.f_back
    return None


def _outermost() -> _Place:
    """This thread's outermost frame: where to point when the user's line is not known."""
    frame = sys._getframe(1)
    while frame.f_back is not None:
        frame = frame.f_back
    return _place(frame)


def largest_array(batch: Any, max_nbytes: float | str | None) -> int:
    """The size of the first NumPy array over ``max_nbytes`` (a number, or joblib's "1M")
    among the arguments of a joblib batch's calls (those loky memory-maps), or 0."""
    numpy = sys.modules.get("numpy")  # no array without it: never imported for this
    if numpy is None or max_nbytes is None:
        return 0
    if isinstance(max_nbytes, str):  # Parallel converts it, but a backend may be handed it
        max_nbytes = memstr_to_bytes(max_nbytes)
    for _, args, kwargs in getattr(batch, "items", ()):
        for value in (*args, *kwargs.values()):
            if isinstance(value, numpy.ndarray) and value.nbytes > max_nbytes:
                return int(value.nbytes)
    return 0


def register() -> None:
    """Make ``parallel_config(backend="farm")`` (and ``parallel_backend("farm")``) available."""
    register_parallel_backend("farm", FarmBackend)


register()
