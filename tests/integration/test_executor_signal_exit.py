"""A signal handler of the program's own that raises while the caller's thread does the
executor's pump work (``result()`` reading its reply, ``submit`` sending its call), as
gunicorn's do: a sync worker's SIGABRT (its request timeout) and SIGQUIT handlers call
``sys.exit``. The exception reaches the caller, so the process exits as its handler asked;
the executor breaks, as the work it cut short is half done (docs/executor.md, Ctrl-C).
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
from tests.helpers import executorfarm
from tests.helpers.calls import add
from tests.helpers.executorfarm import ExecutorFarm
from tests.helpers.waiting import wait_for

shared_farm = executorfarm.shared_farm


def _exit(signum: int, frame: FrameType | None) -> None:
    sys.exit(3)  # gunicorn's Worker.handle_abort and handle_quit


@pytest.mark.parametrize("where", ["result", "submit"])
def test_a_signal_handler_s_sys_exit_in_the_pump_s_work_reaches_the_caller(
    shared_farm: ExecutorFarm, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # It was swallowed: the pump thread broke the executor with it, the caller's result()
    # raised BrokenFarmExecutor (submit returned as if nothing happened), and the process
    # lived on, every later call failing, where its handler had asked it to exit.
    caller = threading.get_ident()
    armed = threading.Event()
    previous = signal.signal(signal.SIGUSR1, _exit)
    try:
        with shared_farm.executor() as ex:
            assert ex.submit(add, 1, 1).result(timeout=30) == 2  # the pump is up, and asleep
            pump = ex._pump
            # result(): the caller reads its reply (_read); submit: it sends (_send_pending).
            name = "_read" if where == "result" else "_send_pending"
            work: Callable[..., None] = getattr(pump, name)

            def signalled(*args: Any) -> None:
                work(*args)
                if threading.get_ident() == caller and armed.is_set():
                    # The handler runs here, in the caller's thread, before this returns.
                    signal.raise_signal(signal.SIGUSR1)

            monkeypatch.setattr(pump, name, signalled)
            for _ in range(50):  # the pump thread may be awake (a late reply) and do it: again
                wait_for("the pump to sleep", lambda: pump._sleeping)
                try:
                    if where == "submit":
                        armed.set()
                    future = ex.submit(add, 2, 2)
                    if where == "result":  # armed past submit's own send
                        armed.set()
                    else:
                        armed.clear()
                    assert future.result(timeout=30) == 4
                except SystemExit as exc:
                    assert exc.code == 3
                    break
                finally:
                    armed.clear()
            else:
                pytest.fail(f"the caller's thread never did the pump's work ({where})")
            monkeypatch.setattr(pump, name, work)
            assert pump.finished.wait(30), "the pump thread ended"
            with pytest.raises(farm.executor.BrokenFarmExecutor):
                ex.submit(add, 3, 3)
    finally:
        signal.signal(signal.SIGUSR1, previous)
