"""One thread at a time inside a blocking ``farm.Client`` (``one_thread``), and its
``close()``, which any thread may call (``close_wire``): the one inside then ends what it
waits on (a connect, a select) at once, as closed, rather than at its timeout."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from farm.client.blockingconn import Connections

__all__ = ["one_thread", "close_wire"]

P = ParamSpec("P")
R = TypeVar("R")


class Wired(Protocol):
    _wire: Connections


W = TypeVar("W", bound=Wired)


def one_thread(method: Callable[Concatenate[W, P], R]) -> Callable[Concatenate[W, P], R]:
    """Refuse a second thread while one is inside the client: its sessions are not
    thread-safe, and two threads reading one socket handed results to the wrong callers
    without a word. The same thread may come back in (a progress callback that calls)."""

    def guarded(self: W, /, *args: P.args, **kwargs: P.kwargs) -> R:
        wire = self._wire
        wire.check_fork()  # a lock a parent's thread held at fork() is replaced first
        using = wire.using
        if not using.acquire(blocking=False):
            raise RuntimeError(
                "this farm.Client is in use by another thread: a Client is not thread-safe;"
                " use one per thread (or farm.AsyncClient, or farm.Executor)"
            )
        # Whether a close() it meets is the end of this call (ServerUnavailable) or came
        # before it (RuntimeError); a callback's call, inside it, has its own.
        outer, wire.open_call = wire.open_call, not wire.closed
        try:
            return method(self, *args, **kwargs)
        finally:
            wire.open_call = outer
            using.release()
            # Closed by another thread meanwhile, which only shut the sockets down: closed
            # here, unless that thread has come in since and closes them (close_wire).
            if wire.closed and using.acquire(blocking=False):
                try:
                    wire.close()
                finally:
                    using.release()

    functools.update_wrapper(guarded, method)  # help() and signatures show the method's
    return guarded


def close_wire(wire: Connections) -> None:
    """``Client.close()``, from any thread. With another thread inside the client, its
    sockets are only shut down (``Connections.cut_short``): that ends its connect or its
    select() at once, and it closes them itself on its way out, as a descriptor closed
    under a thread that uses it may be handed meanwhile to a file opened elsewhere."""
    wire.check_fork()
    if not wire.using.acquire(blocking=False):
        wire.cut_short()
        if not wire.using.acquire(blocking=False):  # still inside: it closes them as it leaves
            return
    try:
        wire.close()
    finally:
        wire.using.release()
