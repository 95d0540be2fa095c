"""farm.Executor: a ``concurrent.futures.Executor`` whose calls run on the farm's workers.

Data flow (after CPython's ``concurrent/futures/process.py``)::

    submit(fn, *args) / map(fn, *its)          caller's thread
      │  cloudpickle + HMAC (farm.executor.signing) → _WorkItem(future, payload)
      ▼
    pending deque ──(a wake-up byte, only when the pump sleeps)──┐
                                                                 ▼
    pump thread (_Pump: the one owner of connections and in-flight counts)
      │  up to max_in_flight jobs: Task → ClientSession.submit → one send per turn
      │  replies: ClientSession.receive → JobEnded → verify, unpickle, set the future
      ▼
    job server ⇄ worker processes serving farm.executor.call:run_call ("farm.python")

The wire bookkeeping is ``farm.protocol.client.ClientSession``, as for ``farm.Client``;
this module only moves bytes and futures. A future becomes RUNNING when its
job is sent (a job on the server cannot be taken back, like a call already
in ProcessPoolExecutor's call queue). WORK_FAIL, which the server sends when
the job's worker died (``job_retries`` times) or overran its timeout, fails
exactly that future with ``farm.WorkerLost``; the executor keeps working.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor as _BaseExecutor
from concurrent.futures import Future
from concurrent.futures._base import BrokenExecutor
from itertools import islice
from typing import Any, TypeVar

from farm.discovery import executor_servers
from farm.executor.call import CHUNK, DEFAULT_FUNCTION, SINGLE, RemoteTraceback, dump, dump_fn
from farm.executor.pump import Call, Pump, WorkItem
from farm.executor.signing import Signer, load_key
from farm.net import parse_servers
from farm.protocol.checks import check_name, check_priority

__all__ = ["Executor", "RemoteTraceback", "DEFAULT_FUNCTION"]

T = TypeVar("T")

_live_pumps: weakref.WeakSet[Pump] = weakref.WeakSet()


class Executor(_BaseExecutor):
    """Runs calls on the farm's worker processes, as ProcessPoolExecutor runs them locally.

    ``servers``: as for ``farm.Client``, but None means the local farm's Unix
    socket only (farm.discovery; never TCP, which every local user can reach).
    ``function``: the pool serving ``farm.executor.call:run_call``.
    ``priority``: "high", "normal" or "low" for every job. ``max_in_flight``:
    jobs sent to the server and not yet answered (enough to keep the workers
    busy; the rest wait here and can still be cancelled). ``key_file``: the
    farm's secret key (default $FARM_KEY_FILE, else ~/.local/state/farm/executor.key).
    """

    def __init__(
        self,
        servers: str | Iterable[str] | None = None,
        *,
        function: str = DEFAULT_FUNCTION,
        priority: str = "normal",
        max_in_flight: int = 64,
        key_file: str | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight must be a positive int, not {max_in_flight!r}")
        self._signer = Signer(load_key(key_file))
        self._pump = Pump(
            parse_servers(executor_servers() if servers is None else servers),
            self._signer,
            check_name(function),
            check_priority(priority),
            max_in_flight,
            connect_timeout,
        )
        self._thread: threading.Thread | None = None
        self._shutdown = False
        self._shutdown_lock = threading.Lock()
        # An executor dropped without shutdown() still lets its pump finish and exit.
        weakref.finalize(self, self._pump.stop)

    # -- the concurrent.futures API --

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` on a worker; its Future holds the outcome."""
        try:
            call = Call(dump_fn(fn), SINGLE, dump((args, kwargs)))
        except Exception as exc:  # unpicklable: the future says so, as ProcessPoolExecutor's
            return self._enqueue(None, exc)
        return self._enqueue(call, None)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """Like ``builtins.map`` run on the farm; ``chunksize`` calls travel as one job.

        The iterables are read at once; results are yielded in order. A call
        that raised raises when its result is due (with chunks: the whole
        chunk's). ``timeout`` counts from this call, as in concurrent.futures.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        try:
            fn_bytes: bytes | None = dump_fn(fn)  # once for the whole map
            fn_error: Exception | None = None
        except Exception as exc:
            fn_bytes, fn_error = None, exc
        calls = zip(*iterables, strict=False)  # the shortest iterable ends it
        futures: list[Future[Any]] = []
        while chunk := list(islice(calls, chunksize)):
            if fn_bytes is None:
                futures.append(self._enqueue(None, fn_error))
                continue
            try:
                if chunksize == 1:
                    call = Call(fn_bytes, SINGLE, dump((chunk[0], {})))
                else:
                    call = Call(fn_bytes, CHUNK, dump(chunk))
            except Exception as exc:
                futures.append(self._enqueue(None, exc))
                continue
            futures.append(self._enqueue(call, None))
        return _results(futures, end_time, chunked=chunksize > 1)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; ``cancel_futures`` cancels those not yet sent; ``wait`` for the rest."""
        with self._shutdown_lock:
            self._shutdown = True
            if cancel_futures:
                for item in self._pump.take_pending():
                    item.future.cancel()
            self._pump.stop()
        if wait and self._thread is not None:
            self._thread.join()

    # -- internals --

    def _enqueue(self, call: Call | None, error: Exception | None) -> Future[Any]:
        with self._shutdown_lock:
            if self._pump.broken is not None:
                raise BrokenExecutor(self._pump.broken)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future[Any] = Future()
            if error is not None:
                future.set_exception(error)
                return future
            if self._thread is None:
                self._start_pump()
            assert call is not None, "a call without an error has its payload"
            self._pump.put(WorkItem(future, call))
            broken = self._pump.why_broken()
            if broken is not None:
                # The pump broke between the check above and put(): nobody will take it.
                for item in self._pump.take_pending():
                    if not item.future.done():
                        item.future.set_exception(BrokenExecutor(broken))
            return future

    def _start_pump(self) -> None:
        # Started on first use, not in __init__, so creating an executor before
        # fork() leaves no thread behind; a daemon so that a forgotten executor
        # cannot hang the interpreter (the atexit hook below still drains it).
        self._thread = threading.Thread(target=self._pump.run, name="farm-executor", daemon=True)
        self._thread.start()
        _live_pumps.add(self._pump)


def _results(futures: list[Future[Any]], end_time: float | None, *, chunked: bool) -> Iterator[Any]:
    """Yield the futures' results in order; cancel what is left if the caller stops early."""
    futures.reverse()  # pop() from the end is O(1) and drops each reference when done
    try:
        while futures:
            future = futures.pop()
            try:
                left = None if end_time is None else end_time - time.monotonic()
                result = future.result(left)
            finally:
                future.cancel()  # no-op when done; frees a pending one on timeout
            if chunked:
                yield from result
            else:
                yield result
    finally:
        for future in futures:
            future.cancel()


@atexit.register
def _drain_at_exit() -> None:
    """At interpreter exit, every executor finishes what was submitted (as ProcessPoolExecutor)."""
    for pump in list(_live_pumps):
        pump.stop()
    for pump in list(_live_pumps):
        pump.finished.wait()
