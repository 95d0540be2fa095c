"""What a job's function hands back, as the worker answers it, and the author's mistakes
said in one line that names their code.

A result that is not data (a dict, say) raised from inside farm's own frames, so its
traceback named farm's code alone, and "raised" of a function that raised nothing:
``result_data`` says which function (and target) returned what. ``sys.exit()`` in a job
(or argparse's, or click's, on a bad argument) went through the worker's ``except
Exception`` and ended the process: each time the job ran it killed a worker, so the job
ran ``job_retries`` times, and the supervisor's log named no code. ``job_outcome`` says which
of what a job raises is the job's to fail -- as ``ProcessPoolExecutor`` makes even
SystemExit its call's outcome -- and which still ends the program.
"""

from __future__ import annotations

import functools
import inspect
import traceback
from itertools import pairwise
from types import FrameType

from farm.protocol.checks import as_bytes

__all__ = ["describe", "job_outcome", "raised_at", "result_data", "target_of"]

#: What a job's function may return, as its one line says (farm.protocol.checks.Data also
#: takes bytearray and memoryview: docs/client.md).
RETURN = "return bytes, str or None"


def result_data(result: object, function: str, fn: object) -> bytes:
    """A job's result (not None) as it is sent; TypeError or ValueError in one line naming
    ``function`` and ``fn``'s target otherwise, the text its caller gets too. A coroutine
    is what a plain function that calls an ``async def`` one returns, which ``register``
    cannot see (it refuses an ``async def`` function itself): closed, so that no "never
    awaited" warning comes beside the error, and the error says what to do."""
    try:
        return as_bytes(result, "its result")
    except ValueError as exc:  # a str with a lone surrogate: as_bytes names it and the fix
        raise ValueError(f"{function} ({target_of(fn)}): {exc}") from None
    except TypeError:
        pass  # looked at below, off the per-job path
    said = f"{function} ({target_of(fn)}) returned"
    if inspect.iscoroutine(result):
        result.close()
        raise TypeError(
            f"{said} a coroutine; {RETURN}: run it in the function, e.g. return"
            f" asyncio.run({result.__name__}(job))"
        )
    if inspect.isasyncgen(result):  # never started: nothing to close, no warning to come
        raise TypeError(
            f"{said} an async generator; {RETURN}: run it to its end in the function, e.g."
            f" gather what {getattr(result, '__name__', 'it')}(job) yields under asyncio.run"
        )
    raise TypeError(f"{said} {type(result).__qualname__}; {RETURN}")


def target_of(fn: object) -> str:
    """``module:qualname`` of a worker function, as farm.toml's ``target`` names one (a
    wrapper made with ``functools.wraps`` names what it wraps; a partial its function; an
    object with ``__call__`` its class)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str):
        fn = type(fn)
        qualname = fn.__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}:{qualname}" if isinstance(module, str) else qualname


def job_outcome(exc: BaseException) -> bool:
    """Whether ``exc``, raised out of a job's function, fails that job (the worker lives
    on) rather than ending the program. Every Exception does, as before. Of the others
    (SystemExit from ``sys.exit()`` or argparse, asyncio's CancelledError out of
    ``asyncio.run``, GeneratorExit, a library's own), all do but two: KeyboardInterrupt,
    a Ctrl-C to a worker run by hand (supervised workers ignore SIGINT; ``farm worker``
    stops on it), and whatever a signal handler of the program's own raised (of any shape,
    installed still or not), such as ``sys.exit()`` on SIGTERM: the program's way to end,
    not the job's (farm's own handlers raise nothing: they call ``Worker.stop()``). An
    Exception a handler raises, as a SIGALRM one does to time a job out, fails the job as
    it always did."""
    if isinstance(exc, Exception):
        return True
    return not isinstance(exc, KeyboardInterrupt) and not _from_signal_handler(exc)


def _from_signal_handler(exc: BaseException) -> bool:
    """Whether ``exc`` came out of a Python signal handler, or was raised on catching what
    one raised (its ``__context__``, as ``except SystemExit: sys.exit(1)`` in the job has).
    Looked at only for a BaseException that is not an Exception: rare."""
    seen: set[int] = set()  # a context chain may loop
    link: BaseException | None = exc
    while link is not None and not isinstance(link, Exception) and id(link) not in seen:
        seen.add(id(link))
        tb, outer = link.__traceback__, None
        while tb is not None:
            frame = tb.tb_frame
            if outer is not None and _handles_signal_on(frame, outer):
                return True
            tb, outer = tb.tb_next, frame
        link = link.__context__
    return False


def _handles_signal_on(frame: FrameType, outer: FrameType) -> bool:
    """Whether ``frame`` is a signal handler's, run on top of ``outer``. Python runs a
    handler on whatever frame the signal interrupted and passes it that frame: its
    arguments end ``signum, frame`` with ``outer`` the frame. That holds whatever the
    handler is -- a function, a partial's, an object's ``__call__``, a bound method, a
    ``lambda *_`` -- and whether or not it is still installed. The code of the handlers
    installed as the exception is looked at told neither a partial nor an object (no code
    of their own), nor one that put SIG_DFL back before it exited (a second SIGTERM kills):
    their ``sys.exit()`` failed the job and the worker ignored its stop. A function the job
    passes an int and its own frame to, that raises a BaseException, is rarer still."""
    code = frame.f_code
    count = code.co_argcount
    if count < 2 and not code.co_flags & inspect.CO_VARARGS:
        return False  # cheap, and no f_locals made of a frame that cannot be one
    values = frame.f_locals
    args = [values.get(name) for name in code.co_varnames[:count]]
    if code.co_flags & inspect.CO_VARARGS:
        rest = values.get(code.co_varnames[count + code.co_kwonlyargcount])
        args.extend(rest if isinstance(rest, tuple) else ())
    return any(arg is outer and isinstance(signum, int) for signum, arg in pairwise(args))


def raised_at(exc: BaseException) -> str:
    """``FILE:LINE in FUNCTION``, where ``exc`` was raised (its innermost frame), or ""."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    where = frames[-1]
    return f"{where.filename}:{where.lineno} in {where.name}"


def describe(exc: BaseException) -> str:
    """ "Type: message", the text a job's exception is sent as; an exception whose str()
    raises is named as the traceback module names it, rather than ending the worker."""
    try:
        text = str(exc)
    except Exception:
        text = "<exception str() failed>"
    return f"{type(exc).__name__}: {text}"
