"""farm.workeranswer: which of what a job raises fails the job and which ends the program,
and how a worker function's target is named in its one line."""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest

from farm import workeranswer
from farm.workeranswer import job_outcome, raised_at, result_data, target_of


def _raised(fn: Any) -> BaseException:
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError("it did not raise")


def test_a_jobs_own_exit_and_cancellation_fail_the_job_a_ctrl_c_does_not() -> None:
    assert job_outcome(_raised(lambda: sys.exit(3)))
    assert job_outcome(_raised(lambda: 1 / 0))
    assert job_outcome(asyncio.CancelledError())  # asyncio.run's, out of a job
    assert not job_outcome(KeyboardInterrupt())


def test_what_a_signal_handler_of_the_programs_own_raises_ends_the_program() -> None:
    # A SIGTERM handler that calls sys.exit() is the program's way to end: the job does not
    # swallow it. An Exception a handler raises (SIGALRM timing a job out) fails the job.
    def leave(signum: int, frame: Any) -> None:
        sys.exit(0)

    def time_out(signum: int, frame: Any) -> None:
        raise TimeoutError("the job ran too long")

    before = signal.getsignal(signal.SIGUSR1)
    try:
        for handler, ends in ((leave, True), (time_out, False)):
            signal.signal(signal.SIGUSR1, handler)
            exc = _raised(lambda: os.kill(os.getpid(), signal.SIGUSR1))
            assert job_outcome(exc) is not ends
    finally:
        signal.signal(signal.SIGUSR1, before)


def _leave_with(code: int, signum: int, frame: Any) -> None:
    sys.exit(code)


def _leave(signum: int, frame: Any) -> None:
    sys.exit(0)


def _quiet(signum: int, frame: FrameType | None) -> None:
    del frame  # unused, as inspect's docs advise for a frame kept: its arguments then hid it
    sys.exit(0)


def _once(signum: int, frame: Any) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second one kills at once
    sys.exit(0)


def _shut_down() -> None:
    sys.exit(0)


class _Stopper:
    def __call__(self, signum: int, frame: Any) -> None:
        sys.exit(0)

    def stop(self, signum: int, frame: Any) -> None:
        _shut_down()


@pytest.fixture
def usr1() -> Iterator[None]:
    """SIGUSR1's handler put back after the test, and the worker's note of the handlers
    taken again (it is the process's)."""
    before = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, before)
    workeranswer.note_signal_handlers()


@pytest.mark.parametrize(
    "handler",
    [
        _leave,
        _quiet,
        _once,  # gone (SIG_DFL) by the time the job's exception is looked at
        functools.partial(_leave_with, 0),
        _Stopper(),
        _Stopper().stop,  # and the frame that raises is below the handler's
        lambda *_: _shut_down(),
    ],
    ids=["plain", "del-frame", "reset", "partial", "object", "method", "varargs"],
)
def test_a_handler_of_any_shape_that_exits_ends_the_program(handler: Any, usr1: None) -> None:
    # Only a function still installed as the exception was looked at was known for one: a
    # handler that put SIG_DFL back first, a partial, an object's __call__ had their
    # sys.exit() swallowed as the job's, and the worker ignored its stop. Installed before
    # work() begins, as a program installs its own (work() notes them).
    signal.signal(signal.SIGUSR1, handler)
    workeranswer.note_signal_handlers()
    exc = _raised(lambda: os.kill(os.getpid(), signal.SIGUSR1))
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # gone too: a program's own reset
    assert isinstance(exc, SystemExit)
    assert not job_outcome(exc)


def test_a_handler_that_deletes_its_frame_argument_ends_the_program(usr1: None) -> None:
    # The handler was known by its arguments (signum, frame) as they were once it raised:
    # `del frame`, as inspect's docs advise, hid it, the job failed and the worker ignored
    # its stop.
    signal.signal(signal.SIGUSR1, _quiet)
    exc = _raised(lambda: os.kill(os.getpid(), signal.SIGUSR1))
    assert isinstance(exc, SystemExit)
    assert not job_outcome(exc)


def _check(code: int, frame: FrameType | None) -> None:
    if code:
        sys.exit(code)


def test_a_jobs_own_exit_from_a_function_given_an_int_and_a_frame_fails_the_job() -> None:
    # A job's own helper, passed an int and its caller's frame, looked like a signal handler
    # (its arguments end signum, frame, with the frame the one below): its sys.exit(3) ended
    # the worker, and the job ran job_retries times, a worker lost each time.
    exc = _raised(lambda: _check(3, inspect.currentframe()))
    assert isinstance(exc, SystemExit) and exc.code == 3
    assert job_outcome(exc)


def _logged(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        return fn(*args)

    return wrapper


@_logged
def _decorated_stop(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


@_logged
def _decorated_job() -> None:
    sys.exit(3)


def test_a_decorated_jobs_own_exit_is_not_taken_for_a_handler_decorated_alike(
    usr1: None,
) -> None:
    # A decorator's wrapper runs one code for every function it wraps: a job wrapped as the
    # program's handler was, that called sys.exit(3), read as the handler's exit and ended
    # the worker. The handler is known by the code under its wrappers.
    signal.signal(signal.SIGUSR1, _decorated_stop)
    workeranswer.note_signal_handlers()
    stop = _raised(lambda: os.kill(os.getpid(), signal.SIGUSR1))
    assert isinstance(stop, SystemExit) and not job_outcome(stop)
    own = _raised(_decorated_job)
    assert isinstance(own, SystemExit) and job_outcome(own)


def _exit_after(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        fn(*args)
        sys.exit(0)  # the wrapper ends the program, after the handler's cleanup

    return wrapper


@_exit_after
def _cleanup_then_exit(signum: int, frame: FrameType | None) -> None:
    pass


@_exit_after
def _job_then_exit() -> None:
    pass


def _wrapping_builtin() -> Any:
    def wrapper(signum: int, frame: FrameType | None) -> None:
        sys.exit(0)

    wrapper.__wrapped__ = print  # type: ignore[attr-defined]  # what it wraps is no function
    return wrapper


def _wrapping_itself() -> Any:
    def wrapper(signum: int, frame: FrameType | None) -> None:
        sys.exit(0)

    wrapper.__wrapped__ = wrapper  # type: ignore[attr-defined]
    return wrapper


@pytest.mark.parametrize(
    "handler",
    [_cleanup_then_exit, _wrapping_builtin(), _wrapping_itself()],
    ids=["wrapper-exits", "wraps-builtin", "wraps-itself"],
)
def test_a_decorated_handler_whose_wrapper_exits_ends_the_program(handler: Any, usr1: None) -> None:
    # Known by the function under its wrappers alone, a handler whose wrapper itself calls
    # sys.exit() (its traceback passes through the wrapper only), one wrapping a builtin and
    # one that names itself as what it wraps were taken for the job's exit.
    signal.signal(signal.SIGUSR1, handler)
    workeranswer.note_signal_handlers()
    stop = _raised(lambda: os.kill(os.getpid(), signal.SIGUSR1))
    assert isinstance(stop, SystemExit) and not job_outcome(stop)
    own = _raised(_job_then_exit)  # the same wrapper's code, around the job's own function
    assert isinstance(own, SystemExit) and job_outcome(own)


def test_a_jobs_own_exit_after_a_handler_ran_in_it_fails_the_job() -> None:
    # A signal handled mid-job (its handler returned) does not make the job's own exit the
    # program's; nor does an exiting handler installed, not run.
    seen: list[int] = []

    def count(signum: int, frame: Any) -> None:
        seen.append(signum)

    def job() -> None:
        os.kill(os.getpid(), signal.SIGUSR1)
        sys.exit(3)

    before = (signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGUSR2))
    try:
        signal.signal(signal.SIGUSR1, count)
        signal.signal(signal.SIGUSR2, _Stopper())
        exc = _raised(job)
    finally:
        signal.signal(signal.SIGUSR1, before[0])
        signal.signal(signal.SIGUSR2, before[1])
    assert seen == [signal.SIGUSR1]
    assert job_outcome(exc)


def test_a_job_that_catches_a_handlers_exit_and_exits_again_ends_the_program(
    usr1: None,
) -> None:
    # `except SystemExit: cleanup(); sys.exit(1)` in the job: the handler's exit is the
    # second one's context, and it is still the program's way to end.
    def job() -> None:
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
        except SystemExit:
            sys.exit(1)

    signal.signal(signal.SIGUSR1, _Stopper())
    workeranswer.note_signal_handlers()  # as work() begins
    exc = _raised(job)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    assert isinstance(exc, SystemExit) and exc.code == 1
    assert not job_outcome(exc)


def test_raised_at_names_the_line_that_raised() -> None:
    exc = _raised(lambda: sys.exit(3))
    line = sys._getframe().f_lineno - 1
    assert raised_at(exc) == f"{__file__}:{line} in <lambda>"


class _Callable:
    def __call__(self, job: Any) -> bytes:
        return b""

    def method(self, job: Any) -> bytes:
        return b""


def rdict(job: Any) -> Any:
    return {}


@pytest.mark.parametrize(
    ("fn", "named"),
    [
        (rdict, f"{__name__}:rdict"),
        (functools.partial(rdict), f"{__name__}:rdict"),
        (functools.wraps(rdict)(lambda job: rdict(job)), f"{__name__}:rdict"),
        (_Callable(), f"{__name__}:_Callable"),
        (_Callable().method, f"{__name__}:_Callable.method"),
    ],
)
def test_a_target_is_named_as_farm_toml_names_one(fn: Any, named: str) -> None:
    assert target_of(fn) == named


def test_a_result_that_is_not_data_names_the_function_and_what_to_return() -> None:
    with pytest.raises(TypeError) as refused:
        result_data({}, "rdict", rdict)
    assert str(refused.value) == (
        f"rdict ({__name__}:rdict) returned dict; return bytes, str or None"
    )
    with pytest.raises(ValueError, match=rf"^rdict \({__name__}:rdict\): its result holds a"):
        result_data("\ud800", "rdict", rdict)
    assert result_data(memoryview(b"ok"), "rdict", rdict) == b"ok"
