"""A signal handler of the program's own that raises while the caller's thread does the
executor's pump work (``result()`` reading its reply, ``submit`` sending its call), as
gunicorn's do: a sync worker's SIGABRT (its request timeout) and SIGQUIT handlers call
``sys.exit``, and a web app's request alarm raises its timeout and serves on. The exception
reaches the caller, so the process exits as its handler asked; and the executor goes on
working, for the app that serves the next request (docs/executor.md, Ctrl-C).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

import farm
from farm.net import READ_SIZE
from tests.helpers import executorfarm
from tests.helpers.calls import add
from tests.helpers.executorfarm import ExecutorFarm
from tests.helpers.waiting import wait_for

shared_farm = executorfarm.shared_farm


class RequestTimeout(TimeoutError):
    """What a web app's alarm handler raises (told apart from result()'s own timeout)."""


def _exit(signum: int, frame: FrameType | None) -> None:
    sys.exit(3)  # gunicorn's Worker.handle_abort and handle_quit


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise RequestTimeout("request time limit")  # a request's alarm; the app serves on


@pytest.mark.parametrize("handler", [_exit, _alarm], ids=["exit", "alarm"])
@pytest.mark.parametrize("where", ["result", "submit", "half_read"])
def test_a_signal_handler_s_exception_in_the_pump_s_work_reaches_the_caller(
    shared_farm: ExecutorFarm,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    handler: Callable[[int, FrameType | None], None],
) -> None:
    # It was swallowed: the pump thread broke the executor with it, the caller's result()
    # raised BrokenFarmExecutor (submit returned as if nothing happened), and the process
    # lived on, every later call failing, where its handler had asked it to exit. Then it
    # reached the caller, but the executor still broke: a web app that answered the timed
    # out request and served on got BrokenFarmExecutor ("the executor's pump thread failed:
    # TimeoutError: request time limit") from every later call.
    caller = threading.get_ident()
    armed = threading.Event()
    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        with shared_farm.executor() as ex:
            assert ex.submit(add, 1, 1).result(timeout=30) == 2  # the pump is up, and asleep
            pump = ex._pump
            # result(): the caller reads its reply (_read); submit: it sends (_send_pending);
            # half_read: the handler runs once the reply left the socket, before it is read.
            name = "_send_pending" if where == "submit" else "_read"
            work: Callable[..., None] = getattr(pump, name)

            def signalled(*args: Any) -> None:
                here = threading.get_ident() == caller and armed.is_set()
                if here and where == "half_read":
                    args[0].sock.recv(READ_SIZE)  # what select said was there
                else:
                    work(*args)
                if here:
                    # The handler runs here, in the caller's thread, before this returns.
                    signal.raise_signal(signal.SIGUSR1)

            monkeypatch.setattr(pump, name, signalled)
            downs: list[str] = []
            monkeypatch.setattr(pump._picker, "mark_down", lambda addr, *_: downs.append(addr))
            future = None
            for _ in range(50):  # the pump thread may be awake (a late reply) and do it: again
                wait_for("the pump to sleep", lambda: pump._sleeping)
                try:
                    if where == "submit":
                        armed.set()
                    future = ex.submit(add, 2, 2)
                    if where != "submit":  # armed past submit's own send
                        armed.set()
                    else:
                        armed.clear()
                    assert future.result(timeout=30) == 4
                except SystemExit as exc:
                    assert handler is _exit and exc.code == 3
                    break
                except RequestTimeout as exc:
                    assert handler is _alarm and str(exc) == "request time limit"
                    break
                finally:
                    armed.clear()
            else:
                pytest.fail(f"the caller's thread never did the pump's work ({where})")
            monkeypatch.setattr(pump, name, work)
            if where == "half_read":  # its reply lost with the connection: it fails
                assert future is not None
                with pytest.raises(farm.ServerUnavailable, match="closed by the executor"):
                    future.result(timeout=30)
            elif where == "result":  # the call cut short is settled: its result, or lost
                assert future is not None
                try:
                    assert future.result(timeout=30) == 4
                except farm.ServerUnavailable:
                    pass
            # The next request's calls run.
            assert ex.submit(add, 3, 3).result(timeout=30) == 6
            assert list(ex.map(add, [1, 2, 3], [4, 5, 6], timeout=30)) == [5, 7, 9]
            assert not pump.finished.is_set() and pump.broken is None
            # Dropped by the executor, not by the server: not tried last for a while.
            assert downs == [], downs
    finally:
        signal.signal(signal.SIGUSR1, previous)


class _CutLock:
    """The pump's lock, with the handler raising as a helper's acquire() returns it taken
    (Python runs a pending handler right after a call returns, before the next line)."""

    def __init__(self, real: Any, caller: int, armed: threading.Event) -> None:
        self.real, self.caller, self.armed = real, caller, armed

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self.real.acquire(blocking, timeout)
        if got and threading.get_ident() == self.caller and self.armed.is_set():
            self.armed.clear()
            signal.raise_signal(signal.SIGUSR1)
        return bool(got)

    def release(self) -> None:
        self.real.release()

    def _is_owned(self) -> bool:
        return bool(self.real._is_owned())


@pytest.mark.parametrize("where", ["result_lock", "submit_lock"])
def test_a_handler_s_exception_as_a_helper_takes_the_lock_leaves_the_executor_working(
    shared_farm: ExecutorFarm, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # Raised as acquire() returned the pump's lock (result(): wait_here's; submit: its
    # send's), before the flag that said it was taken: the lock stayed taken, and the pump
    # thread, and every later call, waited on it for good.
    caller = threading.get_ident()
    armed = threading.Event()
    previous = signal.signal(signal.SIGUSR1, _alarm)
    try:
        with shared_farm.executor() as ex:
            assert ex.submit(add, 1, 1).result(timeout=30) == 2  # the pump is up, and asleep
            pump = ex._pump
            monkeypatch.setattr(pump, "_lock", _CutLock(pump._lock, caller, armed))
            for _ in range(50):  # the pump thread may be awake (a late reply): again
                wait_for("the pump to sleep", lambda: pump._sleeping)
                try:
                    if where == "submit_lock":
                        armed.set()
                    future = ex.submit(add, 2, 2)
                    if where != "submit_lock":  # armed past submit's own turn
                        armed.set()
                    assert future.result(timeout=30) == 4
                except RequestTimeout:
                    break
                finally:
                    armed.clear()
            else:
                pytest.fail(f"the handler never ran where it was meant to ({where})")
            wait_for("the pump to sleep", lambda: pump._sleeping)  # a submit's to wake it
            assert ex.submit(add, 3, 3).result(timeout=10) == 6
            assert ex.submit(add, 4, 4).result(timeout=10) == 8
    finally:
        signal.signal(signal.SIGUSR1, previous)
