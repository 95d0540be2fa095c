"""farm.executor.interrupts.whole: the SIGINT handler around the pump's work in the caller's
thread. No signal is sent here (a stray SIGINT could end the test session): these check
which handler is in place, before, inside and after."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from farm.executor.interrupts import whole


@pytest.fixture
def pythons_handler() -> Iterator[None]:
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def own(signum: int, frame: FrameType | None) -> None:
    pass


def test_python_s_handler_is_held_inside_and_back_after(pythons_handler: object) -> None:
    with whole():
        inside = signal.getsignal(signal.SIGINT)
    assert inside is not signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_handler_the_block_installs_stays(pythons_handler: object) -> None:
    """A done-callback run inside (a program's own Ctrl-C handling) sets a handler: whole()
    must not put Python's back over it."""
    with whole():
        signal.signal(signal.SIGINT, own)
    assert signal.getsignal(signal.SIGINT) is own


def test_a_program_s_own_handler_is_left_alone(pythons_handler: object) -> None:
    signal.signal(signal.SIGINT, own)
    with whole():
        assert signal.getsignal(signal.SIGINT) is own
    assert signal.getsignal(signal.SIGINT) is own


def test_other_threads_change_nothing(pythons_handler: object) -> None:
    seen: list[object] = []

    def run() -> None:
        with whole():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert seen == [signal.default_int_handler]


def test_a_held_ctrl_c_is_raised_as_a_plain_keyboard_interrupt(pythons_handler: object) -> None:
    # It was raised as HeldInterrupt, a subclass of its own: a notebook's Ctrl-C that
    # landed in the executor's work showed "HeldInterrupt:" where every other one shows
    # "KeyboardInterrupt", as docs/executor.md says it is raised. The signal goes to the
    # block's own handler (whole() holds it), never to the test session's.
    with pytest.raises(KeyboardInterrupt) as info, whole():
        signal.raise_signal(signal.SIGINT)
    assert type(info.value) is KeyboardInterrupt
