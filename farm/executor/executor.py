"""farm.Executor: a ``concurrent.futures.Executor`` whose calls run on the farm's workers.

Data flow (after CPython's ``concurrent/futures/process.py``)::

    submit(fn, *args) / map(fn, *its)          caller's thread
      │  pickle, cloudpickle where it must (farm.executor.payload) → WorkItem(future, Call)
      ▼
    pending deque ──(when the pump sleeps: sent from the caller's thread, under its lock)
      ▼
    pump thread (Pump, farm.executor.pump: the one owner of connections and jobs in flight)
      │  up to max_workers jobs, waiting calls packed into batches (farm.executor.flight),
      │  each signed (HMAC, farm.executor.signing): Task → ClientSession.submit → one send per turn
      │  replies: ClientSession.receive → JobEnded → verify, unpickle, set the futures
      ▼
    job server ⇄ worker processes serving farm.executor.call:run_call ("farm.python")

The wire bookkeeping is ``farm.protocol.client.ClientSession``, as for ``farm.Client``;
this module only moves bytes and futures. A future becomes RUNNING when its job is sent
(a job on the server cannot be taken back, like a call already in ProcessPoolExecutor's
call queue). WORK_FAIL, which the server sends when the job's worker died (``job_retries``
times) or overran its timeout, and a worker past its pool's ``kill_rss_mb`` sends, fails
exactly that future with ``farm.WorkerLost``; the executor keeps working.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor as _BaseExecutor
from concurrent.futures import Future
from functools import partial
from typing import Any, TypeVar

from farm.discovery import executor_servers
from farm.errors import FarmError
from farm.executor import lifespan, nesting, spill
from farm.executor.arguments import (
    check_function,
    check_max_tasks_per_child,
    check_max_workers,
    keyword_max_workers_checked,
    old_forms,
    pool_window,
)
from farm.executor.call import DEFAULT_FUNCTION
from farm.executor.callerfiles import CallerFiles
from farm.executor.flight import MAX_BATCH, BrokenFarmExecutor, Call, WorkItem, fail_broken
from farm.executor.futures import CallFuture, results
from farm.executor.interrupts import whole
from farm.executor.mapping import Hand, MapCalls, check_buffersize, more_of, once, weak_hand
from farm.executor.nesting import warn_if_nested
from farm.executor.payload import (
    CALL_ID_SIZE,
    SINGLE,
    SPILLED,
    RemoteTraceback,
    dump_args,
    dump_fn,
    dump_initializer,
)
from farm.executor.pump import Pump
from farm.executor.signing import Signer, load_key
from farm.net import parse_servers
from farm.protocol.checks import check_priority

log = logging.getLogger("farm.executor")

__all__ = ["Executor", "RemoteTraceback", "BrokenFarmExecutor", "DEFAULT_FUNCTION"]

T = TypeVar("T")


class Executor(_BaseExecutor):
    """Runs calls on the farm's worker processes, as ProcessPoolExecutor runs them locally.

    The first five parameters are ProcessPoolExecutor's, in its order.
    ``max_workers``: how many of this executor's calls may be in flight on the
    farm at once, so at most that many run at once (None: the number of workers
    the first server reports for ``function``, asked once here; the CPU count
    when none answers or none is registered yet; the workers are the farm's).
    ``max_in_flight`` is its older name. The others wait here and can still be
    cancelled. ``mp_context`` is accepted and
    ignored (the farm starts its workers).

    ``initializer(*initargs)`` runs in a worker before one of this executor's
    calls when the last initializer that worker ran was another (the workers
    are shared: each runs the initializer of whichever executor's call it
    takes); if it raises, the executor breaks (BrokenFarmExecutor), as
    ProcessPoolExecutor does. ``max_tasks_per_child``: a supervised worker that
    ran this many of this executor's calls exits after the last one, and the
    supervisor starts a fresh one (calls then travel one per job, unbatched).

    ``servers``: as for ``farm.Client``, but None means the local farm's Unix
    socket only (farm.discovery; never TCP, which every local user can reach).
    A str, list or tuple of str in ``max_workers``' place, passed positionally, still
    means servers (DeprecationWarning); ``max_workers=`` that is not an int or None is a
    TypeError, as ProcessPoolExecutor's. ``function``: the pool serving
    ``farm.executor.call:run_call``, a reserved ``farm.*`` name (ValueError
    otherwise). ``priority``: "high", "normal" or "low" for every job.
    ``key_file``: the farm's secret key (default $FARM_KEY_FILE, else
    ~/.local/state/farm/executor.key).

    Arguments and results whose pickle is over 1 MiB travel as files in
    ``spill_dir`` (default: ``$FARM_SPILL_DIR``, else ``[executor] spill_dir`` of
    the config, else ``spill`` beside the key file), at most ``max_spill_mb`` MiB
    each (default: ``$FARM_MAX_SPILL_MB``, the config's, else 4096); see
    "Large data" in docs/executor.md.
    """

    @keyword_max_workers_checked
    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        servers: str | Iterable[str] | None = None,
        function: str = DEFAULT_FUNCTION,
        priority: str = "normal",
        max_in_flight: int | None = None,
        key_file: str | None = None,
        connect_timeout: float = 5.0,
        spill_dir: str | os.PathLike[str] | None = None,
        max_spill_mb: int | None = None,
    ) -> None:
        servers, workers = old_forms(max_workers, servers, max_in_flight)
        checked = check_max_workers(workers)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        check_max_tasks_per_child(max_tasks_per_child)
        del mp_context  # the farm starts its workers
        self._signer = Signer(load_key(key_file))
        self._files = CallerFiles(key_file, spill_dir, max_spill_mb)
        init = None if initializer is None else dump_initializer(initializer, tuple(initargs))
        addresses = parse_servers(executor_servers() if servers is None else servers)
        function = check_function(function)
        self._function = function  # warned of at a send from a call, not here (nesting)
        checked, window = pool_window(checked, addresses, function, connect_timeout)
        self._max_workers = checked
        priority = check_priority(priority)
        # The initializer's sections, once every argument is checked: a large one is a file.
        self._setup_of = (init, secrets.token_bytes(CALL_ID_SIZE), max_tasks_per_child)
        setup = self._files.setup(*self._setup_of)
        self._pump_args: dict[str, Any] = dict(
            servers=addresses,
            signer=self._signer,
            function=function,
            priority=priority,
            max_in_flight=window,
            connect_timeout=connect_timeout,
            setup=setup,
            max_batch=MAX_BATCH if max_tasks_per_child is None else 1,  # a worker counts jobs
            workers=checked,
        )
        self._shutdown = False
        self._start_state()

    def _start_state(self) -> None:
        """The pump and what its threads share: made here, and again in a forked child."""
        self._pump = Pump(**self._pump_args)
        # Its files go once its calls are done: after shutdown(wait=False) too, or at exit.
        self._pump.on_finished = self._files.remove_all
        self._pump.on_lost = self._files.remove_results  # results of calls lost with a server
        # Shared by the futures of every executor of the process (see CallFuture, lifespan):
        # one Condition per call cost a fifth of the caller's CPU for tiny calls.
        self._condition = lifespan.state.condition
        self._thread: threading.Thread | None = None
        self._shutdown_lock = threading.Lock()
        # An executor dropped without shutdown() still lets its pump finish and exit.
        self._finalizer = weakref.finalize(self, self._pump.stop)
        # Last: another thread's check in submit() must not see the new generation while
        # the state it guards is still the parent's.
        self._generation = lifespan.state.generation

    def _renew(self) -> None:
        """First use in a child forked from the process that made this executor: a pump of
        the child's own (lifespan). The parent's calls stay the parent's, and its spill
        files: the child writes its own copy of a large initializer, which the parent may
        remove while the child still runs."""
        with lifespan.renewing():
            if self._generation == lifespan.state.generation:
                return  # another thread of the child renewed it
            self._finalizer.detach()  # the parent's pump is not to be woken from here
            self._pump.forget()
            self._files = self._files.fresh()
            self._pump_args["setup"] = self._files.setup(*self._setup_of)
            self._start_state()

    # -- the concurrent.futures API --

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` on a worker; its Future holds the outcome."""
        if self._generation != lifespan.state.generation:
            self._renew()
        if nesting.serving is not None:  # in a farm worker: the call, only where it may warn
            warn_if_nested(self._function)
        try:
            fn_bytes = dump_fn(fn)
            body = dump_args(args, kwargs)
        except Exception as exc:  # unpicklable: the future says so, as ProcessPoolExecutor's
            return self._enqueue(None, exc)
        key = None  # of a function large enough for a file (CallerFiles.shared)
        if len(fn_bytes) > spill.SPILL_THRESHOLD:
            try:
                fn_bytes, key = self._files.shared(fn_bytes)
            except (FarmError, OSError) as exc:  # too large, no spill directory, a bad config
                return self._enqueue(None, exc)
        future = None
        try:
            if len(body) > spill.SPILL_THRESHOLD:
                future = self._enqueue_spilled(fn_bytes, SINGLE, body)
            else:
                future = self._enqueue(Call(fn_bytes, SINGLE, body), None)
        finally:
            if key is not None:
                self._files.use(key, [] if future is None else [future])
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: bool = False,
    ) -> Iterator[T]:
        """Like ``builtins.map`` run on the farm; ``chunksize`` calls travel as one job.

        The iterables are read at once, or with ``buffersize`` (as in Python 3.14)
        that many chunks ahead of the results asked for; results are yielded in
        order. A call that raised raises when its result is due (with chunks: the
        whole chunk's). ``timeout`` counts from this call, as in concurrent.futures.
        ``progress``: draw a progress bar of the calls done on standard error
        while the results are read, when it is a terminal (farm.executor.progress).
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        check_buffersize(buffersize)
        if self._generation != lifespan.state.generation:
            self._renew()
        if nesting.serving is not None:  # in a farm worker: the call, only where it may warn
            warn_if_nested(self._function)
        end_time = None if timeout is None else timeout + time.monotonic()
        shared: bytes | None = None  # the key of a function large enough for a file
        try:
            pickled = dump_fn(fn)  # once for the whole map
            if len(pickled) > spill.SPILL_THRESHOLD:
                pickled, shared = self._files.shared(pickled)
            fn_bytes: bytes | None = pickled
            fn_error: Exception | None = None
        except Exception as exc:  # unpicklable, or its file cannot be written
            fn_bytes, fn_error = None, exc
        calls = MapCalls(fn_bytes, fn_error, iterables, chunksize, lazy=buffersize is not None)
        futures: list[Future[Any]] = []
        keep = buffersize is not None  # the map holds a large function's file until it ends
        try:
            calls.read(self._hand(), futures, buffersize)
        except BaseException as exc:
            keep = False  # no iterator will end: the map's hold goes now
            if not isinstance(exc, Exception):
                # A Ctrl-C (or SystemExit) while a long input was read: the program is being
                # stopped, and nobody will ask for the results. Those not sent yet go, and
                # the `with`'s exit does not wait for them; those sent run on, as in a pool.
                # CPython's map cancels nothing here (ProcessPoolExecutor runs them all):
                # docs/executor.md lists it among the differences.
                for future in futures:
                    future.cancel()
            # An input that raises an ordinary error leaves the calls read to run, as
            # CPython's map does: only Ctrl-C means the program is stopping.
            raise
        finally:
            if shared is not None:
                self._files.use(shared, futures, keep=keep)
        bar = None
        if progress:
            from farm.executor.progress import Bar

            name = getattr(fn, "__name__", None) or "calls"
            bar = Bar(name, sum(calls.sizes) if buffersize is None else None)
            for future, size in zip(futures, calls.sizes, strict=True):
                bar.track(future, size)
        more = ended = None
        if buffersize is not None:
            files, key = self._files, shared  # not self: the iterator holds it weakly

            def used(got: list[Future[Any]]) -> None:
                if key is not None:
                    files.use(key, got, keep=True)

            more = more_of(weak_hand(self._hand), calls, used, bar)
            if key is not None:
                ended = once(partial(files.release, key))
        due = results(futures, end_time, chunked=chunksize > 1, more=more, ended=ended)
        out = due if bar is None else bar.shown(due)
        if ended is not None:  # an iterator dropped before its first next() runs no finally
            weakref.finalize(out, ended)
        return out

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; ``cancel_futures`` cancels those not yet sent; ``wait`` for the rest."""
        if self._generation != lifespan.state.generation:
            self._renew()
        with self._shutdown_lock:
            self._shutdown = True
            if cancel_futures:
                # RUNNING ones (a batch left them unrun) finish, as ProcessPoolExecutor's do.
                self._pump.put_back([i for i in self._pump.take_pending() if not i.future.cancel()])
            self._pump.stop()
        if wait and self._thread is not None:
            if threading.current_thread() is self._thread:
                # A done-callback (the pump thread runs them), which cannot wait for itself.
                raise RuntimeError("cannot wait for the executor from one of its done-callbacks")
            self._thread.join()
        if wait or self._thread is None:
            self._files.remove_all()

    # -- internals --

    def _hand(self) -> Hand:
        """How map hands its calls over (farm.executor.mapping). It checks no fork: map
        renewed the pump just before, and a lazy map's ``more`` raises in a forked child
        before it asks (mapping.more_of)."""
        return Hand(self._enqueue, self._enqueue_spilled, self._nudge)

    def _nudge(self) -> None:
        try:
            if self._thread is not None:
                self._pump.nudge()
        except BaseException:  # a Ctrl-C before nudge's guard: the sleeping pump sends them
            self._pump.wake()
            raise

    def _enqueue(
        self, call: Call | None, error: Exception | None, hold: bool = False
    ) -> Future[Any]:
        with self._shutdown_lock:
            if self._pump.broken is not None:
                raise BrokenFarmExecutor(self._pump.broken) from self._pump.broken_by
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if lifespan.state.exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            future: Future[Any] = CallFuture(self._pump, self._condition)
            if error is not None:
                future.set_exception(error)
                return future
            if self._thread is None:
                self._start_pump()
            assert call is not None, "a call without an error has its payload"
            self._pump.put(WorkItem(future, call), hold=hold)
            broken = self._pump.why_broken()
            if broken is not None:
                # The pump broke between the check above and put(): nobody will take it.
                fail_broken(self._pump.take_pending(), broken, self._pump.broken_by)
            return future

    def _enqueue_spilled(self, fn_bytes: bytes, kind: int, body: bytes) -> Future[Any]:
        """A call whose pickle is over SPILL_THRESHOLD: written to a spill file, its reference
        sent; the file is removed when the future is done, whatever the outcome."""
        try:
            reference = self._files.write(body)
        except (FarmError, OSError) as exc:  # too large, no spill directory, a bad config
            return self._enqueue(None, exc)
        del body
        try:
            future = self._enqueue(Call(fn_bytes, kind | SPILLED, reference), None)
        except BaseException:
            self._files.remove(reference)
            raise
        self._files.remove_when_done(future, reference)
        return future

    def _start_pump(self) -> None:
        # Started on first use, not in __init__, so creating an executor before
        # fork() leaves no thread behind; a daemon so that a forgotten executor
        # cannot hang the interpreter (lifespan's exit hook still drains it).
        thread = threading.Thread(target=self._pump.run, name="farm-executor", daemon=True)
        # A Ctrl-C while start() waits for the thread to run made it raise with the thread
        # running: the next submit started a second one on this pump. Held, it comes after.
        with whole():
            self._pump.started = True
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: the next submit tries again
                self._pump.started = False
                raise
            # Else a Ctrl-C raised by a SIGINT handler of the program's own (whole() does not
            # hold it) left start() with the thread running or (rarely) never made: started
            # stays set, so that stop() never closes the sockets under a running pump, and
            # _thread unset, so the next submit starts a thread again (Pump.run lets one in).
            self._thread = thread
            lifespan.started(self._pump)
