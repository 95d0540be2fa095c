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

import _signal  # type: ignore[import-not-found]  # signal wraps each in enums: 300 µs, not 25
import functools
import inspect
import traceback
from types import CodeType, FrameType, FunctionType, MethodType

from farm.protocol.checks import as_bytes

__all__ = [
    "describe",
    "job_outcome",
    "note_signal_handlers",
    "raised_at",
    "result_data",
    "target_of",
]

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
    installed as ``work()`` began or still), such as ``sys.exit()`` on SIGTERM: the
    program's way to end, not the job's (farm's own handlers raise nothing: they call
    ``Worker.stop()``). An Exception a handler raises, as a SIGALRM one does to time a job
    out, fails the job as it always did."""
    if isinstance(exc, Exception):
        return True
    return not isinstance(exc, KeyboardInterrupt) and not _from_signal_handler(exc)


#: What a handler's frame is known by: its code, and for a decorator's wrapper, what the
#: wrapper wraps, which its frame must hold (a wrapper's one code runs for every function
#: it wraps: a job wrapped alike is not the handler). None: its code alone.
_Entry = tuple[CodeType, object]

#: The program's signal handlers as ``work()`` began (``note_signal_handlers``).
_noted: tuple[_Entry, ...] = ()


def note_signal_handlers() -> None:
    """Note the code of the signal handlers installed now: ``Worker.work()`` calls it as it
    begins, once the program (and the target it loaded) has installed its own. A handler
    that puts ``SIG_DFL`` back before it exits (so that a second SIGTERM kills) is no longer
    installed when its ``SystemExit`` is looked at; this is how it is still known."""
    global _noted
    _noted = tuple(_installed_handlers())


def _installed_handlers() -> list[_Entry]:
    """What each handler installed now is known by (about 25 µs for Linux's 62 signals)."""
    entries: list[_Entry] = []
    for signum in _signal.valid_signals():
        try:
            entries += _handler_entries(_signal.getsignal(signum))
        except (OSError, ValueError):  # a signal number this platform lists but refuses
            continue
    return entries


_UNWRAP = 8  # how many wrappers deep a handler's code is looked for


def _handler_entries(handler: object) -> list[_Entry]:
    """What a handler's frames are known by: a function's code, and each of its decorators'
    wrappers' with what it wraps (a wrapper may itself call ``sys.exit()``); a
    ``functools.partial``'s function's, a bound method's function's, an object's
    ``__call__``'s. None for SIG_DFL, SIG_IGN, None and a builtin (Python's SIGINT
    handler), which raise nothing of the program's."""
    entries: list[_Entry] = []
    for _ in range(_UNWRAP):  # a partial of an object whose __call__ is a method...: bounded
        if isinstance(handler, FunctionType):
            inner = getattr(handler, "__wrapped__", None)
            if inner is None or inner is handler or not callable(inner):
                return [*entries, (handler.__code__, None)]
            entries.append((handler.__code__, inner))
            handler = inner
            continue
        if isinstance(handler, functools.partial):
            handler = handler.func
        elif isinstance(handler, MethodType):
            handler = handler.__func__
        elif callable(handler) and isinstance(call := type(handler).__call__, FunctionType):
            handler = call  # an object's (SIG_DFL, SIG_IGN: ints; a builtin: a slot's)
        else:
            break
    # What a wrapper wraps is no Python function (a builtin), or wrappers ran past _UNWRAP:
    # the wrappers are known by their code alone.
    return [(code, None) for code, _ in entries]


def _is_handlers(frame: FrameType, entries: dict[CodeType, list[object]]) -> bool:
    """Whether ``frame`` is one of a handler's: its code is, and where that code is a
    decorator's wrapper, the frame holds the very function the handler's wrapper wraps."""
    wraps = entries.get(frame.f_code)
    if wraps is None:
        return False
    if any(inner is None for inner in wraps):
        return True
    return any(value is inner for value in frame.f_locals.values() for inner in wraps)


def _from_signal_handler(exc: BaseException) -> bool:
    """Whether ``exc`` came out of a signal handler of the program's -- its traceback passes
    through the code of one installed as ``work()`` began or installed now -- or was raised
    on catching what one raised (its ``__context__``, as ``except SystemExit: sys.exit(1)``
    in the job has). Looked at only for a BaseException that is not an Exception: rare, so
    the handlers installed now are read here, and nothing on the per-job path.

    Known by code, not by the frame's arguments: a handler runs on the frame the signal
    interrupted and is passed it, but what its arguments hold once it raised is their final
    value (``del frame``, as inspect's docs advise, hid it), and a job's own function passed
    an int and its caller's frame looked like one. A handler that ran and returned mid-job
    leaves no frame, so the job's own ``sys.exit()`` after it still fails just the job."""
    entries: dict[CodeType, list[object]] = {}  # a callable object may not hash
    for code, inner in (*_noted, *_installed_handlers()):
        entries.setdefault(code, []).append(inner)
    if not entries:
        return False
    seen: set[int] = set()  # a context chain may loop
    link: BaseException | None = exc
    while link is not None and not isinstance(link, Exception) and id(link) not in seen:
        seen.add(id(link))
        tb = link.__traceback__
        while tb is not None:
            if _is_handlers(tb.tb_frame, entries):
                return True
            tb = tb.tb_next
        link = link.__context__
    return False


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
