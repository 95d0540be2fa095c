"""What a blocking worker serves: ``register``, the ``function`` decorator, ``unregister``
and ``unregister_all``, callable from any thread while ``work()`` runs (then under the send
lock, since the loop writes to the same sessions). A mixin of ``farm.worker.Worker``, which
owns the loop that acts on them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar, overload

from farm.protocol.checks import Data, check_name, check_sync_worker, check_timeout
from farm.protocol.codec import text_bytes, wire_text
from farm.workerjob import Job
from farm.workerlinks import ServerLink

__all__ = ["F", "WorkerFunction", "WorkerFunctions"]

WorkerFunction = Callable[[Job], "Data | None"]
#: A decorated worker function keeps its own type (``Worker.function``).
F = TypeVar("F", bound=WorkerFunction)


def _as_served(name: str) -> str:
    """``name`` as its jobs come (``job.function``: the text of the bytes its CAN_DO sends).
    "\\udcc3\\udca9" stands for the bytes of "é": registered as it was spelled, its jobs,
    which came as "é", failed with LookupError ("this worker has no function 'é'")."""
    try:
        return wire_text(text_bytes(name))
    except (UnicodeEncodeError, AttributeError):  # stands for no bytes: never registered
        return name


class WorkerFunctions:
    """The registration half of ``Worker`` (see the module docstring)."""

    _functions: dict[str, WorkerFunction]
    _timeouts: dict[str, float | None]
    _servers: list[ServerLink]
    _send_lock: threading.Lock
    _drain_asked: bool  # unregister_all() was called; the loop acts on it
    _drained: bool
    _reset_abilities: Callable[[], None]
    _wake: Callable[[], None]

    def register(self, name: str, fn: WorkerFunction, timeout: float | None = None) -> None:
        """Serve ``name`` with ``fn(job)``; ``timeout`` (seconds) is sent as CAN_DO_TIMEOUT.
        ``fn`` is a plain function: an ``async def`` one is refused (TypeError)."""
        if not isinstance(name, str):  # check_name's TypeError: register has said ValueError
            raise ValueError(f"function name must be a non-empty str without NUL, not {name!r}")
        # Non-empty, no NUL, and sendable as its bytes (one that stands for none is refused)
        name = _as_served(check_name(name))
        if not callable(fn):
            raise TypeError(f"{name}: the worker function must be callable, not {fn!r}")
        check_sync_worker(name, fn)  # an async def one failed each of its jobs
        check_timeout(name, timeout)
        with self._send_lock:  # from another thread while work() runs: the loop writes too
            # Under the lock, as work() copies them into its sessions: else one registered
            # between the copy and the sessions being the worker's was in neither.
            self._functions[name] = fn
            self._timeouts[name] = timeout
            if self._drain_asked:  # an unregister_all() the loop has not acted on: it first
                self._reset_abilities()
            self._drained = False  # a function registered is served: take jobs again
            for server in self._servers:
                server.session.add_ability(name, timeout)
        self._wake()  # a loop asleep in select sends the CAN_DO now, not at its next event

    @overload
    def function(self, name: F, timeout: float | None = None) -> F: ...

    @overload
    def function(
        self, name: str | None = None, timeout: float | None = None
    ) -> Callable[[F], F]: ...

    def function(
        self, name: str | F | None = None, timeout: float | None = None
    ) -> Callable[[F], F] | F:
        """Decorator form of ``register``; the name defaults to the function's.
        ``@worker.function``, without parentheses, registers the function too."""
        if callable(name):  # @worker.function: it was handed the function itself
            self.register(name.__name__, name, timeout)
            return name

        def decorate(fn: F) -> F:
            self.register(name or fn.__name__, fn, timeout)
            return fn

        return decorate

    def unregister(self, name: str) -> None:
        """Stop serving ``name``: CANT_DO to every server, and a reconnect does not register
        it again; the worker's other functions serve on. From a job (any job), the CANT_DO
        follows its answer. KeyError if ``name`` is not registered (libgearman's
        ``gearman_worker_unregister`` returns GEARMAN_NO_REGISTERED_FUNCTION then, and sends
        nothing)."""
        name = _as_served(name)
        with self._send_lock:  # as register(): the loop and work()'s sessions read these
            if name not in self._functions:
                raise KeyError(name)
            del self._functions[name], self._timeouts[name]
            for server in self._servers:
                server.session.remove_ability(name)
        self._wake()  # a loop asleep in select sends the CANT_DO now

    def unregister_all(self) -> None:
        """Stop taking jobs: RESET_ABILITIES to every server; ``work()`` keeps running, and
        a ``register`` after this serves that function (only it)."""
        self._drain_asked = True
        self._wake()
