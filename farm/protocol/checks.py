"""Checks of what callers hand the client and worker APIs: clear TypeError/ValueError."""

from __future__ import annotations

import datetime as _dt
import functools
import inspect
import math
from typing import TypeAlias

from farm.protocol.codec import MAX_EPOCH, MAX_TIMEOUT, MAX_UNIQUE, MIN_TIMEOUT, text_bytes
from farm.protocol.kinds import PRIORITY_NAMES
from farm.protocol.tasks import Task

__all__ = [
    "Data",
    "as_bytes",
    "as_epoch",
    "check_callbacks",
    "check_map",
    "check_name",
    "check_unique",
    "check_priority",
    "check_schedule",
    "check_status_key",
    "check_task",
    "check_timeout",
    "check_seconds",
    "check_sync_worker",
    "coroutine_function",
    "sendable",
]


#: What a job's data, a worker's result or news may be: what ``as_bytes`` takes.
Data: TypeAlias = bytes | bytearray | memoryview | str


def as_bytes(data: object, what: str = "data") -> bytes:
    """bytes as they are, str as UTF-8; anything else is the caller's mistake. A str's
    surrogates that stand for bytes (os.fsdecode's, ``Job.function``'s) go out as those
    bytes, as a name's and a unique key's do (``text_bytes``); ValueError for one that
    stands for none, naming ``what``: a bare UnicodeEncodeError did not say it was the data."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        try:
            return text_bytes(data)
        except UnicodeEncodeError as e:
            # Not the whole text: data may be megabytes.
            raise ValueError(
                f"{what} holds a surrogate that stands for no byte ({data[e.start]!r} at"
                f" index {e.start}): encode it yourself, or pass bytes"
            ) from None
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(
        f"{what} must be bytes, bytearray, memoryview or str, not {type(data).__name__}"
    )


def check_name(function: object) -> str:
    """A function name as the clients, the worker and the Executor take it: refused only
    for what no job server can take on the wire (empty; a NUL, the packet's separator).
    What else farm's server refuses (``name_problem``: a control character, over 512
    bytes) gearmand serves, and the libraries talk to both: farm's server answers such a
    name with ERROR, which a client raises as ServerError naming the reason and a worker
    logs (docs/client.md)."""
    if not isinstance(function, str):
        raise TypeError(f"function must be a str, not {type(function).__name__}")
    if not function or "\0" in function:
        raise ValueError(f"function name {function!r} must be non-empty and contain no NUL")
    sendable(function, "function name")
    return function


def sendable(text: str, what: str) -> bytes:
    """``text`` as the bytes it goes out as (``text_bytes``: a key a PHP client sent, as
    farm.Worker hands it over, goes back as its bytes); ValueError if it stands for none."""
    try:
        return text_bytes(text)
    except UnicodeEncodeError:
        raise ValueError(f"{what} {text!r} holds a surrogate that stands for no byte") from None


def check_task(task: object, method: str) -> None:
    """``wait`` and ``abandon`` take the Task that ``submit`` returned, not its handle (a
    handle string, which ``status`` takes, raised AttributeError from inside them)."""
    if not isinstance(task, Task):
        given = type(task).__name__
        raise TypeError(f"{method}() takes the Task that submit() returned, not {given}")


def check_status_key(unique: object) -> str:
    """The unique key a status question names: as ``check_unique``, and not empty."""
    if unique is None:
        raise TypeError("status_unique needs a unique key (a str), not None")
    key = check_unique(unique)
    if not key:
        raise ValueError("status_unique needs a unique key, not an empty one")
    return key


def check_map(function: object, priority: object, max_in_flight: object) -> None:
    """A ``map``'s arguments, as the blocking and async clients take them."""
    check_name(function)
    check_priority(priority)
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ValueError(f"max_in_flight must be a positive int, not {max_in_flight!r}")


def _makes(fn: object) -> str | None:
    """What calling ``fn`` makes, as its definition says: "a coroutine" (``async def``),
    "an async generator" (``async def`` with ``yield``, which iscoroutinefunction does
    not see), or None."""
    if inspect.iscoroutinefunction(fn):
        return "a coroutine"
    if inspect.isasyncgenfunction(fn):
        return "an async generator"
    return None


def coroutine_function(fn: object) -> tuple[str, str] | None:
    """The name of ``fn`` and what calling it makes ("a coroutine", "an async generator")
    when its definition is ``async def``: a function or method, or an object whose class's
    ``__call__`` is one, each also through ``functools.partial``; None otherwise. (A plain
    function that returns a coroutine is not seen: only calling it would tell.)"""
    inner = fn
    while isinstance(inner, functools.partial):
        inner = inner.func
    if (makes := _makes(inner)) is not None:
        return str(getattr(inner, "__qualname__", None) or getattr(inner, "__name__", "it")), makes
    if callable(inner) and (makes := _makes(type(inner).__call__)) is not None:  # the class's
        return f"a {type(inner).__qualname__} object (its __call__)", makes
    return None


def check_sync_worker(name: str, fn: object) -> None:
    """A worker function is called in the worker's thread, and what it returns is the
    job's result: an ``async def`` one returned a coroutine (or an async generator), never
    run, and every one of its jobs failed ("must be bytes ... not coroutine"). Refused
    where it is registered."""
    found = coroutine_function(fn)
    if found is None:
        return
    label, makes = found
    # Handler.run, an object, a partial (whose bound arguments a name would drop): 'fn'.
    called = label if label.isidentifier() and not isinstance(fn, functools.partial) else "fn"
    if makes == "a coroutine":
        runs = f"lambda job: asyncio.run({called}(job))"
    else:  # asyncio.run takes no async generator: what it yields is to be gathered
        runs = f"one that gathers what {called}(job) yields under asyncio.run and returns bytes"
    raise TypeError(
        f"{name}: the worker function {label} is async def (calling it makes {makes});"
        " farm.Worker calls it in its own thread and sends back what it returns, so each"
        f" of its jobs would fail: register a plain function that runs it, e.g. {runs}"
    )


def check_callbacks(
    on_status: object, on_data: object, on_warning: object, *, on_loop: bool = False
) -> None:
    """A call's callbacks are called, never awaited, as asyncio's ``call_soon`` calls its
    own: an ``async def`` one made a coroutine that never ran (a RuntimeWarning alone said
    so). Refused before the job is sent; ``on_loop``: an AsyncClient's, which may start a
    task."""
    given = {"on_status": on_status, "on_data": on_data, "on_warning": on_warning}
    for what, fn in given.items():
        found = None if fn is None else coroutine_function(fn)
        if found is not None:
            label, makes = found
            instead = ", which may start a task (asyncio.create_task) to await" if on_loop else ""
            raise TypeError(
                f"{what}: {label} is async def (calling it makes {makes}); callbacks are called"
                f" and never awaited, so it would never run: pass a plain function{instead}"
            )


def check_unique(unique: object) -> str:
    if unique is None:
        return ""
    if not isinstance(unique, str):
        raise TypeError(f"unique must be a str, not {type(unique).__name__}")
    if "\0" in unique or len(sendable(unique, "unique key")) > MAX_UNIQUE:
        raise ValueError(f"unique key must be at most {MAX_UNIQUE} bytes without NUL: {unique!r}")
    return unique


#: WORK_STATUS's numbers as servers and peers keep them: libgearman's and PHP's sendStatus
#: take uint32, gearmand keeps the numerator's low 32 bits and refuses a denominator of more
#: than 10 digits (closing the worker's connection at times).
STATUS_MAX = 2**32 - 1


def check_status(numerator: object, denominator: object) -> tuple[int, int]:
    """``send_status``'s numbers as ints (``int()`` of what it is given, as it always took
    them), refused where a server would mangle or drop them: a total of bytes past 4 GiB
    never reached the client through farm's server and broke the job through gearmand's."""
    fields = []
    for name, given in (("numerator", numerator), ("denominator", denominator)):
        try:
            value = int(given)  # type: ignore[call-overload]  # as before: 2.7 is 2
        except OverflowError:  # an infinity: out of range, as any other (not its own error)
            value = -1
        if not 0 <= value <= STATUS_MAX:
            raise ValueError(
                f"send_status's {name} must be from 0 to {STATUS_MAX:,} (WORK_STATUS carries"
                f" 32 bits), not {given!r}: scale the progress, e.g. to megabytes or per mille"
            )
        fields.append(value)
    return fields[0], fields[1]


def check_priority(priority: object) -> str:
    if not isinstance(priority, str) or priority not in PRIORITY_NAMES:
        choices = ", ".join(PRIORITY_NAMES)
        raise ValueError(f"priority must be one of {choices}, not {priority!r}")
    return priority


def as_epoch(when: object) -> int:
    """Epoch seconds from a datetime or a number (SUBMIT_JOB_EPOCH), rounded up: the wire
    carries whole seconds, and a job held "until then" must not run before then (rounded
    down, ``when=time.time() + 1`` ran up to a second early, at once for a fraction)."""
    if isinstance(when, _dt.datetime):
        seconds = when.timestamp()
    elif isinstance(when, int | float) and not isinstance(when, bool):
        seconds = when
    else:
        raise TypeError(f"when must be a datetime or epoch seconds, not {type(when).__name__}")
    if not math.isfinite(seconds):
        raise ValueError(f"when must be a finite number of epoch seconds, not {when!r}")
    # farm's server refuses an epoch out of its range with an ERROR: said here, before the
    # job is sent. (Milliseconds, time.time() * 1000, are past it; gearmand took them, for
    # a job due some 55,000 years on.)
    if seconds < 0:
        raise ValueError(
            f"when is out of range: {when!r} is before 1970; when= takes epoch seconds"
            " from 0 to 2**40"
        )
    if seconds > MAX_EPOCH:
        raise ValueError(
            f"when is out of range: {when!r} is past 2**40 epoch seconds (the year 36812),"
            " the most taken: milliseconds (time.time() * 1000)? when= takes seconds"
        )
    return math.ceil(seconds)


def check_schedule(when: object, priority: str, background: bool) -> tuple[int | None, bool]:
    """``submit(when=...)``: the epoch and the background flag it implies (SUBMIT_JOB_EPOCH
    is background at normal priority); ``(None, background)`` when not scheduled."""
    if when is None:
        return None, background
    if priority != "normal":
        raise ValueError("a scheduled (when=) job has no priority; leave it 'normal'")
    return as_epoch(when), True


def check_timeout(name: str, timeout: object) -> float | None:
    """A worker's CAN_DO_TIMEOUT for ``name``: seconds from MIN_TIMEOUT to MAX_TIMEOUT, or
    None. A server refuses a longer one (ERROR, and no registration made): said here,
    not found out as a worker that is never sent the function's jobs. A shorter one no
    server reads as asked (MIN_TIMEOUT): it was sent as 1 s while ``job.timeout`` said
    what was asked."""
    if timeout is None:
        return None
    # One message for every bad value, the floor in it: "> 0" said 0.5 would do.
    bad = f"{name}: timeout must be a number of seconds from {MIN_TIMEOUT} to {MAX_TIMEOUT}"
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT  # also refuses nan and inf
    ):
        raise ValueError(f"{bad}, not {timeout!r}")
    if timeout < MIN_TIMEOUT:
        raise ValueError(
            f"{bad}, not {timeout!r}: it goes out in milliseconds, and farm's server reads a"
            " number under 1000 as seconds"
        )
    return timeout


def check_seconds(value: object, what: str = "timeout", *, look: bool = False) -> float | None:
    """A client's wait: None (no limit), or a number of seconds > 0 and at most MAX_TIMEOUT;
    with ``look`` (waiting for a job already sent), 0 or less too: a look that does not
    wait, as ``Future.result(0)``. Checked before anything is sent: a call given a bad
    timeout submitted its job, then failed, and the job ran on unwatched."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number of seconds or None, not {value!r}")
    if not (look or value > 0) or not value <= MAX_TIMEOUT:  # refuses nan and inf too
        raise ValueError(
            f"{what} must be a number of seconds > 0 and at most {MAX_TIMEOUT}, or None,"
            f" not {value!r}"
        )
    return value
